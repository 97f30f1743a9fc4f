"""The record codec: byte-stable round trips, the upcaster chain, refusal of newer schemas.

Method: encode real events (made by the reducer) and decode them back; hand-build v1 records as
builtins the way a v1 build encoded them and check they come out as current types.
"""

from __future__ import annotations

import msgspec
import pytest

from memstate.core import codec
from memstate.core.errors import EXIT_DATAERR, SchemaError
from memstate.core.events import (
    EVENT_KINDS,
    SCHEMA_VERSION,
    DaemonStarted,
    Envelope,
    PodRemovalRequested,
)
from tests.store.helpers import standard_batches


def envelopes() -> list[Envelope]:
    found = []
    seq = 0
    for batch in standard_batches(40, seed=3):
        for event, decisions in batch:
            seq += 1
            found.append(Envelope(seq, 10**18 + seq, SCHEMA_VERSION, event, decisions))  # type: ignore[arg-type]
    return found


def test_round_trip_is_byte_identical() -> None:
    records = envelopes()
    kinds = {e.event.kind for e in records}
    assert {"daemon_started", "pod_admitted", "pod_removed", "node_reconfigured"} <= kinds
    for envelope in records:
        data = codec.encode_envelope(envelope)
        decoded = codec.decode_envelope(data)
        assert decoded == envelope
        assert codec.encode_envelope(decoded) == data


def test_head_decodes_without_the_body() -> None:
    envelope = Envelope(7, 1, SCHEMA_VERSION, PodRemovalRequested(uid="u"), 1)
    head = codec.decode_head(codec.encode_envelope(envelope))
    assert (head.seq, head.schema_v, head.decisions) == (7, SCHEMA_VERSION, 1)


def v1_daemon_started(**extra: object) -> bytes:
    """A daemon_started record as a v1 build wrote it: `version`, schema_version omitted."""
    event = {"kind": "daemon_started", "version": "0.0.9", "reducer_version": 1, **extra}
    return msgspec.msgpack.encode(
        {"seq": 1, "ts_ns": 5, "schema_v": 1, "event": event, "decisions": 0}
    )


def test_v1_daemon_started_is_upcast() -> None:
    envelope = codec.decode_envelope(v1_daemon_started())
    assert envelope.schema_v == SCHEMA_VERSION
    assert envelope.event == DaemonStarted(memstate_version="0.0.9", reducer_version=1)
    assert envelope.decisions == 0


def test_v1_record_that_also_decodes_as_v2_still_goes_through_the_chain() -> None:
    # A v1 pod_removal_requested is valid v2 too; it must still be stamped as upcast.
    raw = {
        "seq": 3,
        "ts_ns": 9,
        "schema_v": 1,
        "event": {"kind": "pod_removal_requested", "uid": "u"},
    }
    envelope = codec.decode_envelope(msgspec.msgpack.encode(raw))
    assert envelope == Envelope(3, 9, SCHEMA_VERSION, PodRemovalRequested(uid="u"))


def test_v1_daemon_started_with_its_schema_version_field_is_upcast() -> None:
    envelope = codec.decode_envelope(v1_daemon_started(schema_version=1, python="3.11.7"))
    assert envelope.event == DaemonStarted(
        memstate_version="0.0.9", reducer_version=1, python="3.11.7"
    )


def test_upcast_works_on_builtins_without_mutating_them() -> None:
    raw = msgspec.msgpack.decode(v1_daemon_started(python="3.11.7"))
    before = repr(raw)
    upgraded = codec.upcast(raw)
    assert repr(raw) == before
    assert upgraded["schema_v"] == SCHEMA_VERSION
    assert upgraded["event"]["memstate_version"] == "0.0.9"
    assert "version" not in upgraded["event"]


def test_every_upcaster_is_keyed_on_a_known_kind_and_an_old_version() -> None:
    for kind, version in codec.UPCASTERS:
        assert kind in EVENT_KINDS
        assert codec.OLDEST_SCHEMA_VERSION <= version < SCHEMA_VERSION


@pytest.mark.parametrize("schema_v", [SCHEMA_VERSION + 1, 0])
def test_unknown_schema_versions_are_refused(schema_v: int) -> None:
    raw = {"seq": 1, "ts_ns": 1, "schema_v": schema_v, "event": {"kind": "daemon_restarted"}}
    with pytest.raises(SchemaError) as error:
        codec.decode_envelope(msgspec.msgpack.encode(raw))
    assert error.value.exit_code == EXIT_DATAERR


def test_unknown_kind_or_field_in_a_current_record_is_refused() -> None:
    for event in ({"kind": "no_such_event"}, {"kind": "daemon_restarted", "surprise": 1}):
        raw = {"seq": 1, "ts_ns": 1, "schema_v": SCHEMA_VERSION, "event": event}
        with pytest.raises(SchemaError):
            codec.decode_envelope(msgspec.msgpack.encode(raw))


def test_garbage_is_a_schema_error_not_a_crash() -> None:
    with pytest.raises(SchemaError):
        codec.decode_envelope(b"\xc1\xff\x00")


def test_encoding_an_old_schema_envelope_is_refused() -> None:
    with pytest.raises(SchemaError):
        codec.encode_envelope(Envelope(1, 1, SCHEMA_VERSION - 1, PodRemovalRequested(uid="u")))
