"""The byte form of a log record, and schema evolution.

Theory of operation
-------------------
A log record's payload is one `Envelope` encoded as msgpack by msgspec. Encoding uses
`order="deterministic"` so an event encodes to the same bytes however its dicts were built; a
record re-encoded after decoding is byte-identical, which export/import and replay comparisons
rely on.

Decoding has a fast path and a slow path:

- **fast path** — a typed decode straight into `Envelope` (tagged union on `kind`). It is taken
  only when the record says `schema_v == SCHEMA_VERSION`; a typed decode that succeeds on an
  *older* record is thrown away, because an old record can decode cleanly under new types and
  still mean something else.
- **slow path** — for `schema_v < SCHEMA_VERSION`: decode to builtins, run the upcaster chain
  (`UPCASTERS`, keyed on the stable kind tag and the version an upcaster starts from), stamp the
  envelope with the current `schema_v`, then `msgspec.convert` into `Envelope`. The reducer only
  ever sees current types.
- a record with `schema_v` newer than this build → `SchemaError` (exit 65). Exact replay needs
  complete understanding, so the build refuses instead of skipping what it does not know.

Rules for changing events (docs/event-log.md, "Schema evolution"):
- additive changes (a new optional field with a default, a new kind) need nothing here;
- a rename, a change of type or of meaning bumps `SCHEMA_VERSION` in `memstate.core.events` and
  adds an upcaster `(kind, old_version) → dict` here that rewrites the old body into the new one;
  renaming a *kind* is an upcaster that changes `body["kind"]` (later steps see the new tag);
- never change a released field default (omitted defaults would be misread).

This module is pure: bytes in, values out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from memstate.core.errors import SchemaError
from memstate.core.events import SCHEMA_VERSION, Envelope

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Rewrites one event body (a plain dict with `kind`) from version v to v + 1. Never mutates."""


def _daemon_started_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    # Schema v2 renamed `daemon_started.version` to `memstate_version` (it was ambiguous next to
    # `reducer_version`) and dropped `daemon_started.schema_version` (the envelope's `schema_v`
    # says the same; v1 builds omitted it anyway, as it always equalled its default).
    upgraded = dict(body)
    if "version" in upgraded:
        upgraded["memstate_version"] = upgraded.pop("version")
    upgraded.pop("schema_version", None)
    return upgraded


UPCASTERS: Mapping[tuple[str, int], Upcaster] = {
    ("daemon_started", 1): _daemon_started_v1_to_v2,
}
"""(kind tag, from schema version) → upcaster to the next version. Missing entries: unchanged."""

OLDEST_SCHEMA_VERSION = 1


class EnvelopeHead(msgspec.Struct, frozen=True):
    """The envelope fields every schema version has, decoded without touching the event body.

    Used by the store where only the transaction structure matters (which record is an input
    announcing how many decisions follow). Unknown fields are skipped on purpose.
    """

    seq: int
    schema_v: int
    decisions: int | None = None


_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_DECODER = msgspec.msgpack.Decoder(Envelope)
_HEAD_DECODER = msgspec.msgpack.Decoder(EnvelopeHead)
_RAW_DECODER = msgspec.msgpack.Decoder()


def encode_envelope(envelope: Envelope) -> bytes:
    """The payload bytes of a record. Refuses envelopes not stamped with this build's schema."""
    if envelope.schema_v != SCHEMA_VERSION:
        raise SchemaError(
            f"refusing to encode seq {envelope.seq} with schema_v {envelope.schema_v}: this build "
            f"writes schema {SCHEMA_VERSION} only (records are upcast when read, never rewritten)"
        )
    return _ENCODER.encode(envelope)


def typed_decode() -> Callable[[bytes | memoryview], Envelope]:
    """`decode_envelope`'s fast path alone, for a loop over many records (start-up): a result
    is an answer only when its `schema_v` is `SCHEMA_VERSION`; otherwise, and when it raises
    (`msgspec.MsgspecError`), `decode_envelope` gives the answer (an upcast, or the error)."""
    return _DECODER.decode


def decode_head(data: bytes | memoryview) -> EnvelopeHead:
    """Only `seq`, `schema_v` and `decisions` of a record (cheap: the body is skipped)."""
    try:
        return _HEAD_DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        raise SchemaError(f"record does not decode as an envelope: {exc}") from None


def decode_envelope(data: bytes | memoryview) -> Envelope:
    """Payload bytes → a current-schema `Envelope` (upcasting older records)."""
    try:
        envelope = _DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        head = decode_head(data)
        _check_version(head.schema_v)
        if head.schema_v == SCHEMA_VERSION:
            raise SchemaError(f"seq {head.seq}: record does not decode: {exc}") from None
        return _decode_old(data)
    if envelope.schema_v == SCHEMA_VERSION:
        return envelope
    _check_version(envelope.schema_v)
    return _decode_old(data)


def _check_version(schema_v: int) -> None:
    if schema_v > SCHEMA_VERSION:
        raise SchemaError(
            f"record written with schema version {schema_v}; this build understands up to "
            f"{SCHEMA_VERSION} (upgrade memstate to read this log)"
        )
    if schema_v < OLDEST_SCHEMA_VERSION:
        raise SchemaError(f"record has an invalid schema version {schema_v}")


def _decode_old(data: bytes | memoryview) -> Envelope:
    raw = _RAW_DECODER.decode(data)
    if not isinstance(raw, dict):
        raise SchemaError("record is not a msgpack map")
    upgraded = upcast(raw)
    try:
        return msgspec.convert(upgraded, Envelope)
    except msgspec.ValidationError as exc:
        raise SchemaError(
            f"seq {upgraded.get('seq')}: upcast record does not validate: {exc}"
        ) from None


def upcast(raw: dict[str, Any]) -> dict[str, Any]:
    """An envelope in builtin form (any known schema) → the same envelope at `SCHEMA_VERSION`.

    Runs every upcaster from the record's version up; the result carries the current
    `schema_v`. Does not mutate `raw`.
    """
    version = raw.get("schema_v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SchemaError(f"record has no integer schema_v (got {version!r})")
    _check_version(version)
    body = raw.get("event")
    if not isinstance(body, dict):
        raise SchemaError(f"seq {raw.get('seq')}: record has no event map")
    body = upcast_event(body, version)
    upgraded = dict(raw)
    upgraded["event"] = body
    upgraded["schema_v"] = SCHEMA_VERSION
    return upgraded


def upcast_event(body: dict[str, Any], from_version: int) -> dict[str, Any]:
    """One event body (builtin form with `kind`) from `from_version` to `SCHEMA_VERSION`."""
    _check_version(from_version)
    for version in range(from_version, SCHEMA_VERSION):
        kind = body.get("kind")
        if not isinstance(kind, str):
            raise SchemaError(f"event body has no string kind (got {kind!r})")
        step = UPCASTERS.get((kind, version))
        if step is not None:
            body = step(body)
    return body
