"""A log recorded by a schema-v1 build still replays (tests/fixtures/v1-log, committed bytes).

Goal: schema evolution works end to end on stored bytes: the v1 `daemon_started` (with
`version`) comes out as the current type (with `memstate_version`), every other record decodes
through the upcaster chain, and start-up recovery rebuilds the state the recorded decisions
describe. The fixture is read from a copy, so the committed files are never touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec

from memstate.core.events import SCHEMA_VERSION, DaemonStarted
from memstate.history.replay import replay_state
from memstate.store.format import SegmentHeader, decode_segment_header
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.verify import verify
from memstate.store.writer import EventLog

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


def test_format_1_segments_still_read_and_the_writer_continues_in_format_2(
    tmp_path: Path,
) -> None:
    # The fixture's segments are format 1 (32-byte header, no mark slots).
    for path in (FIXTURE / "log").glob("*.evlog"):
        header = decode_segment_header(path.read_bytes())
        assert isinstance(header, SegmentHeader) and header.format_version == 1
    state_dir = tmp_path / "state"
    shutil.copytree(FIXTURE, state_dir)
    with EventLog.open(state_dir, fsync=False) as log:
        log.append([(DaemonStarted(memstate_version="0.1.0", reducer_version=1), 0)], ts_ns=1)
    segments = sorted((state_dir / "log").glob("*.evlog"))
    assert len(segments) == 3  # the old two, untouched, and a new format 2 one from seq 13
    new = decode_segment_header(segments[-1].read_bytes())
    assert isinstance(new, SegmentHeader) and (new.format_version, new.base_seq) == (2, 13)
    assert new.mark is not None and new.mark.acked_seq == 13
    for path in segments[:2]:
        assert path.read_bytes() == (FIXTURE / "log" / path.name).read_bytes()
    report = verify(state_dir, full=True)
    assert report.ok and report.last_seq == 13
    # The new segment's mark now guards the records it holds.
    os.truncate(segments[-1], segments[-1].stat().st_size - 8)
    assert verify(state_dir).problem is not None
