"""Offline repair: explicit modes, `.broken` copies of everything removed, never while locked.

Method: build real logs, damage them, run `repair_log`, then check what was kept (against the
written envelopes), that every removed byte still exists in a `.broken-*` file, and that the
repaired log opens cleanly with the real writer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from crc32c import crc32c

from memstate.core.errors import (
    EXIT_DATAERR,
    EXIT_TEMPFAIL,
    LockHeld,
    MidLogCorruption,
    SchemaError,
)
from memstate.core.events import Envelope
from memstate.history.replay import replay_state
from memstate.store.checkpoint import list_checkpoints, write_checkpoint
from memstate.store.format import FORMAT_VERSION
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.repair import repair_log
from memstate.store.verify import check_sealed_bodies, verify
from memstate.store.writer import EventLog
from tests.store.helpers import build_log, standard_batches


def make_log(tmp_path: Path) -> tuple[Path, list[Envelope]]:
    """A log as a crash leaves it (the last batch written, not acknowledged)."""
    state_dir = tmp_path / "state"
    written = build_log(
        state_dir,
        standard_batches(40, seed=8, per_batch=2),
        segment_bytes=1024,
        last_batch_acknowledged=False,
    )
    return state_dir, written


def frame_offsets(state_dir: Path) -> dict[int, tuple[str, int]]:
    return {r.seq: (r.segment, r.offset) for r in LogReader(state_dir).read_raw()}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def transaction_start(written: list[Envelope], seq: int) -> int:
    """The seq where the transaction containing `seq` starts."""
    start, owed = 1, 0
    for envelope in written:
        if owed:
            owed -= 1
        else:
            start, owed = envelope.seq, envelope.decisions or 0
        if envelope.seq == seq:
            return start
    raise AssertionError(seq)


def broken_files(state_dir: Path) -> list[Path]:
    return sorted(p for p in state_dir.rglob("*") if ".broken-" in p.name)


def test_torn_tail_mode_cuts_what_start_up_would(tmp_path: Path) -> None:
    state_dir, written = make_log(tmp_path)
    segment, offset = frame_offsets(state_dir)[written[-1].seq]
    path = state_dir / "log" / segment
    original = path.read_bytes()
    path.write_bytes(original[: offset + 10])
    report = repair_log(state_dir, mode="torn_tail", fsync=False)
    assert report.changed and report.problem is not None and report.problem.kind == "torn_tail"
    (action,) = report.actions
    assert action.action == "truncate_segment" and Path(action.broken_copy).exists()
    assert Path(action.broken_copy).read_bytes() == original[: offset + 10]
    expected = written[: transaction_start(written, written[-1].seq) - 1]
    assert list(LogReader(state_dir).read()) == expected
    assert report.last_seq == expected[-1].seq
    with EventLog.open(state_dir, fsync=False) as log:
        assert not log.recovery.truncated


def test_torn_tail_mode_refuses_mid_log_corruption(tmp_path: Path) -> None:
    state_dir, _written = make_log(tmp_path)
    segment, offset = frame_offsets(state_dir)[10]
    flip(state_dir / "log" / segment, offset + 20)
    before = {p.name: p.read_bytes() for p in (state_dir / "log").iterdir()}
    with pytest.raises(MidLogCorruption, match="--point-in-time") as error:
        repair_log(state_dir, mode="torn_tail", fsync=False)
    assert error.value.exit_code == EXIT_DATAERR
    assert {p.name: p.read_bytes() for p in (state_dir / "log").iterdir()} == before


def test_point_in_time_keeps_everything_before_the_damage(tmp_path: Path) -> None:
    state_dir, written = make_log(tmp_path)
    offsets = frame_offsets(state_dir)
    damaged_seq = written[len(written) // 2].seq
    segment, offset = offsets[damaged_seq]
    keep_until = transaction_start(written, damaged_seq) - 1
    # Checkpoints before and after the damage (at transaction ends): the later one must be
    # moved aside, the earlier one must still be used.
    early = next(s for s in range(keep_until, 0, -1) if transaction_start(written, s + 1) == s + 1)
    for seq in (early, written[-1].seq):
        crc = LogReader(state_dir).chain_crc_at(seq)
        assert crc is not None
        state = replay_state([e for e in written if e.seq <= seq])
        write_checkpoint(state_dir, state, seq=seq, chain_crc=crc, fsync=False)
    files_before = {p.name: p.read_bytes() for p in (state_dir / "log").glob("*.evlog")}
    flip(state_dir / "log" / segment, offset + 17)
    # Start-up begins at the late checkpoint and does not read the damaged sealed segment
    # (docs/event-log.md, "What start-up checks"); the full check finds it.
    assert verify(state_dir).ok
    full = verify(state_dir, full=True)
    assert full.problem is not None and full.problem.file.endswith(segment)
    sealed = check_sealed_bodies(state_dir)
    assert sealed is not None and sealed.file.endswith(segment)

    dry = repair_log(state_dir, mode="point_in_time", dry_run=True, fsync=False)
    assert dry.actions and not broken_files(state_dir)

    report = repair_log(state_dir, mode="point_in_time", fsync=False)
    assert report.last_seq == keep_until
    assert report.records_dropped == report.last_seq_before - keep_until
    assert list(LogReader(state_dir).read()) == written[:keep_until]
    assert verify(state_dir).ok
    # Nothing was deleted: every dropped segment is a .broken file with its original bytes
    # (the damaged one with the flipped bit), and the later checkpoint was moved aside too.
    moved = {a.file: a.broken_copy for a in report.actions if a.action == "move_segment_aside"}
    for file, copy in moved.items():
        name = Path(file).name
        assert Path(copy).exists() and not Path(file).exists()
        if name != segment:
            assert Path(copy).read_bytes() == files_before[name]
    assert [seq for seq, _ in list_checkpoints(state_dir)] == [early]
    assert any(a.action == "move_checkpoint_aside" for a in report.actions)
    with EventLog.open(state_dir, fsync=False) as log:
        assert log.last_seq == keep_until and not log.recovery.truncated
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq == early
    assert recovered.state == replay_state(written[:keep_until])


def test_point_in_time_after_a_missing_segment(tmp_path: Path) -> None:
    state_dir, written = make_log(tmp_path)
    names = sorted(p.name for p in (state_dir / "log").glob("*.evlog"))
    (state_dir / "log" / names[2]).unlink()
    report = repair_log(state_dir, mode="point_in_time", fsync=False)
    keep_until = int(names[2][:20]) - 1
    assert report.last_seq == keep_until
    assert list(LogReader(state_dir).read()) == written[:keep_until]
    assert len([a for a in report.actions if a.action == "move_segment_aside"]) == len(names) - 3
    EventLog.open(state_dir, fsync=False).close()


def test_truncate_after_a_seq_never_splits_a_transaction(tmp_path: Path) -> None:
    state_dir, written = make_log(tmp_path)
    inside = next(e.seq + 1 for e in written[20:] if e.decisions)  # a decision record
    report = repair_log(state_dir, mode="truncate_after", seq=inside, fsync=False)
    expected_last = transaction_start(written, inside) + next(
        e.decisions or 0 for e in written if e.seq == transaction_start(written, inside)
    )
    assert expected_last == inside  # one decision: cutting after it keeps the whole transaction
    assert report.last_seq == inside
    assert list(LogReader(state_dir).read()) == written[:inside]
    input_seq = transaction_start(written, inside)
    report = repair_log(state_dir, mode="truncate_after", seq=input_seq, fsync=False)
    assert report.last_seq == input_seq - 1  # the input without its decision is dropped too
    assert list(LogReader(state_dir).read()) == written[: input_seq - 1]
    assert len(broken_files(state_dir)) >= 2


def test_clean_log_needs_no_repair(tmp_path: Path) -> None:
    state_dir, written = make_log(tmp_path)
    for mode in ("torn_tail", "point_in_time"):
        report = repair_log(state_dir, mode=mode, fsync=False)  # type: ignore[arg-type]
        assert not report.changed and report.problem is None
        assert report.last_seq == written[-1].seq


def test_repair_refuses_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    state_dir, _ = make_log(tmp_path)
    with EventLog.open(state_dir, fsync=False), pytest.raises(LockHeld) as error:
        repair_log(state_dir, mode="point_in_time", fsync=False)
    assert error.value.exit_code == EXIT_TEMPFAIL


def test_repair_never_cuts_a_newer_format(tmp_path: Path) -> None:
    state_dir, _ = make_log(tmp_path)
    last = max((state_dir / "log").glob("*.evlog"))
    data = bytearray(last.read_bytes())
    struct.pack_into("<H", data, 8, FORMAT_VERSION + 1)
    struct.pack_into("<I", data, 28, crc32c(bytes(data[:28])))
    last.write_bytes(bytes(data))
    with pytest.raises(SchemaError, match="newer"):
        repair_log(state_dir, mode="point_in_time", fsync=False)
    assert last.read_bytes() == bytes(data)
