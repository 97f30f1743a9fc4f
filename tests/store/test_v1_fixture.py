"""A log recorded by a schema-v1 build still replays (tests/fixtures/v1-log, committed bytes).

Goal: schema evolution works end to end on stored bytes: the v1 `daemon_started` (with
`version`) comes out as the current type (with `memstate_version`), every other record decodes
through the upcaster chain, and start-up recovery rebuilds the state the recorded decisions
describe. The fixture is read from a copy, so the committed files are never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from memstate.core.events import SCHEMA_VERSION, DaemonStarted
from memstate.history.replay import replay_state
from memstate.store.log import EventLog, LogReader, verify
from memstate.store.recovery import recover_state

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1-log"


def test_fixture_really_is_schema_v1() -> None:
    raw = [msgspec.msgpack.decode(r.payload) for r in LogReader(FIXTURE).read_raw()]
    assert len(raw) == 12
    assert {record["schema_v"] for record in raw} == {1}
    assert raw[0]["event"]["kind"] == "daemon_started"
    assert raw[0]["event"]["version"] == "0.0.9"
    assert "memstate_version" not in raw[0]["event"]
    assert len(list((FIXTURE / "log").glob("*.evlog"))) == 2


def test_v1_log_replays_with_current_types(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    shutil.copytree(FIXTURE, state_dir)
    assert verify(state_dir).ok
    envelopes = list(LogReader(state_dir).read())
    assert all(e.schema_v == SCHEMA_VERSION for e in envelopes)
    started = envelopes[0].event
    assert isinstance(started, DaemonStarted)
    assert started.memstate_version == "0.0.9"

    with EventLog.open(state_dir, fsync=False) as log:  # the writer accepts the old log
        assert not log.recovery.truncated and log.last_seq == 12
        log.append([(DaemonStarted(memstate_version="0.1.0", reducer_version=1), 0)], ts_ns=1)
    recovered = recover_state(state_dir)
    assert recovered.decoded_events == 13
    assert recovered.state == replay_state(envelopes)
    assert sorted(recovered.state.pods) == ["v1-pod-b", "v1-pod-c"]
    assert all(record.allocation is not None for record in recovered.state.pods.values())
