"""The writer: group commit, sequence and chain bookkeeping, rotation, the lock, failure modes.

Method: real files in a temporary directory; `os.pwrite`/`os.fsync` are wrapped only to count
calls or to inject the failures a disk produces (EIO on fsync, ENOSPC part-way through a write).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memstate.core.errors import (
    EXIT_IOERR,
    EXIT_TEMPFAIL,
    InvariantViolation,
    LockHeld,
    LogDiskFull,
    LogIOError,
    MidLogCorruption,
)
from memstate.core.events import (
    SCHEMA_VERSION,
    CgroupOrphanFound,
    Envelope,
    PodAdmitted,
    PodRemovalRequested,
    PodRemoved,
)
from memstate.history.replay import replay_state
from memstate.store.checkpoint import write_checkpoint
from memstate.store.format import (
    SEGMENT_HEADER_BYTES,
    SegmentHeader,
    decode_segment_header,
    segment_name,
)
from memstate.store.reader import LogReader
from memstate.store.scan import read_origin
from memstate.store.verify import verify
from memstate.store.writer import EventLog
from tests.store.helpers import BASE_TS_NS, Node, build_log, standard_batches


def read_all(state_dir: Path) -> list[Envelope]:
    return list(LogReader(state_dir).read())


def test_append_assigns_contiguous_seqs_and_survives_reopen(tmp_path: Path) -> None:
    node = Node(1)
    with EventLog.open(tmp_path, fsync=True) as log:
        assert (log.last_seq, log.recovery.truncated) == (0, False)
        acked: list[Envelope] = []
        for index, batch in enumerate(node.start() + [node.group(3) for _ in range(5)]):
            result = log.append(batch, ts_ns=BASE_TS_NS + index)
            assert [e.seq for e in result] == list(
                range(len(acked) + 1, len(acked) + len(batch) + 1)
            )
            assert all(
                e.ts_ns == BASE_TS_NS + index and e.schema_v == SCHEMA_VERSION for e in result
            )
            assert [(e.event, e.decisions) for e in result] == batch
            acked.extend(result)
        last, chain = log.last_seq, log.chain_crc
    assert read_all(tmp_path) == acked
    with EventLog.open(tmp_path) as log:
        assert (log.last_seq, log.chain_crc) == (last, chain)
        assert not log.recovery.truncated
        more = log.append([(PodRemovalRequested(uid="nobody"), 0)], ts_ns=BASE_TS_NS + 99)
    assert more[0].seq == last + 1
    assert read_all(tmp_path) == acked + more


def test_one_fsync_per_batch_and_one_small_mark_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(2)
    calls: list[str] = []
    real_fsync, real_pwrite = os.fsync, os.pwrite
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "pwrite", lambda fd, data, off: (calls.append("pwrite"), real_pwrite(fd, data, off))[1]
    )
    with EventLog.open(tmp_path, segment_bytes=1 << 20) as log:
        for batch in node.start():
            log.append(batch, ts_ns=BASE_TS_NS)
        calls.clear()
        batch = node.group(20)
        log.append(batch, ts_ns=BASE_TS_NS)
        assert len(batch) >= 20
        # The batch, its fsync, then the mark (made durable by the next fsync).
        assert calls == ["pwrite", "fsync", "pwrite"]


def test_segments_rotate_between_batches_and_chain(tmp_path: Path) -> None:
    batches = standard_batches(120, per_batch=3)
    written = build_log(tmp_path, batches, segment_bytes=2048)
    names = sorted(p.name for p in (tmp_path / "log").glob("*.evlog"))
    assert len(names) > 5
    # Each segment is named by the first seq it holds and starts at a batch boundary.
    batch_starts, seq = set(), 1
    for batch in batches:
        batch_starts.add(seq)
        seq += len(batch)
    previous_end_crc = 0
    reader = LogReader(tmp_path)
    for name in names:
        raw = (tmp_path / "log" / name).read_bytes()
        header = decode_segment_header(raw[:SEGMENT_HEADER_BYTES])
        assert isinstance(header, SegmentHeader)
        assert name == segment_name(header.base_seq)
        assert header.base_seq in batch_starts
        assert header.prev_chain_crc == previous_end_crc
        # The chain CRC at the end of this segment is the next header's prev_chain_crc.
        last_in_segment = max(r.seq for r in reader.read_raw() if r.segment == name)
        end_crc = reader.chain_crc_at(last_in_segment)
        assert end_crc is not None
        previous_end_crc = end_crc
    assert read_all(tmp_path) == written
    report = verify(tmp_path)
    assert report.ok and report.tail is None and report.records == len(written)


def test_a_batch_larger_than_a_segment_goes_into_one_segment(tmp_path: Path) -> None:
    node = Node(4)
    written = build_log(tmp_path, [*node.start(), node.group(40)], segment_bytes=512)
    big = [p for p in (tmp_path / "log").glob("*.evlog") if p.stat().st_size > 512]
    assert len(big) >= 1
    assert read_all(tmp_path) == written


def test_second_writer_gets_lock_held_with_exit_75(tmp_path: Path) -> None:
    with EventLog.open(tmp_path):
        with pytest.raises(LockHeld) as error:
            EventLog.open(tmp_path)
        assert error.value.exit_code == EXIT_TEMPFAIL
        assert f"pid {os.getpid()}" in str(error.value)
    EventLog.open(tmp_path).close()  # released on close


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from memstate.store.writer import EventLog
        log = EventLog.open(Path({str(tmp_path)!r}))
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {child.pid}"):
            EventLog.open(tmp_path)
    finally:
        child.kill()
        child.wait()
    EventLog.open(tmp_path).close()  # the kernel dropped the flock with the process


def test_readers_need_no_lock(tmp_path: Path) -> None:
    node = Node(5)
    with EventLog.open(tmp_path) as log:
        first = log.append(node.start()[0], ts_ns=BASE_TS_NS)
        assert list(LogReader(tmp_path).read()) == first
        assert verify(tmp_path).ok


def test_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(6)
    log = EventLog.open(tmp_path)
    acked = log.append(node.start()[0], ts_ns=BASE_TS_NS)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(LogIOError) as error:
        log.append(node.start()[1], ts_ns=BASE_TS_NS)
    assert error.value.exit_code == EXIT_IOERR and error.value.errno == errno.EIO
    monkeypatch.setattr(os, "fsync", real_fsync)
    # Never retried: even with a healthy fsync every later call refuses.
    with pytest.raises(LogIOError, match="unusable"):
        log.append(node.start()[2], ts_ns=BASE_TS_NS)
    with pytest.raises(LogIOError):
        log.prune_segments(through_seq=1)
    log.close()
    log.close()
    with EventLog.open(tmp_path) as reopened:
        recovered = read_all(tmp_path)
        assert recovered[: len(acked)] == acked  # the acknowledged batch is there
        assert reopened.last_seq == len(recovered)


def test_disk_full_mid_write_is_cut_back_and_log_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(7)
    log = EventLog.open(tmp_path)
    acked = [e for batch in node.start() for e in log.append(batch, ts_ns=BASE_TS_NS)]
    size_before = log.segment_path.stat().st_size
    real_pwrite = os.pwrite
    state = {"calls": 0}

    def half_then_enospc(fd: int, data: bytes, offset: int) -> int:
        state["calls"] += 1
        if state["calls"] == 1:
            return real_pwrite(fd, bytes(data)[: len(data) // 2], offset)  # a short write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    with pytest.raises(LogDiskFull) as error:
        log.append(node.group(5), ts_ns=BASE_TS_NS)
    assert error.value.exit_code == EXIT_IOERR and error.value.errno == errno.ENOSPC
    assert log.segment_path.stat().st_size == size_before  # the partial batch is gone
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    later = log.append(node.group(2), ts_ns=BASE_TS_NS + 1)  # not poisoned
    assert later[0].seq == acked[-1].seq + 1
    log.close()
    assert read_all(tmp_path) == acked + later


def test_malformed_batches_are_rejected_before_anything_is_written(tmp_path: Path) -> None:
    node = Node(8)
    with EventLog.open(tmp_path) as log:
        log.append(node.start()[0], ts_ns=BASE_TS_NS)
        size = log.segment_path.stat().st_size
        admission = node.churn()
        assert len(admission) == 2
        decision = admission[1][0]
        bad_batches = [
            [],
            [(admission[0][0], 1)],  # the decision is missing: a split transaction
            [(admission[0][0], 2), (decision, None)],
            [(decision, 0)],  # a decision cannot announce decisions
            [(admission[0][0], 1), (CgroupOrphanFound(path="/x"), None)],  # not a decision
            [(admission[0][0], -1)],
        ]
        for batch in bad_batches:
            with pytest.raises(InvariantViolation):
                log.append(batch, ts_ns=BASE_TS_NS)
        with pytest.raises(InvariantViolation):
            log.append(admission, ts_ns=-1)
        assert log.segment_path.stat().st_size == size
        assert log.last_seq == 1
        assert isinstance(decision, PodAdmitted | PodRemoved)


def test_append_envelopes_requires_the_next_seq(tmp_path: Path) -> None:
    with EventLog.open(tmp_path) as log:
        good = Envelope(1, BASE_TS_NS, SCHEMA_VERSION, PodRemovalRequested(uid="a"), 0)
        assert log.append_envelopes([good]) == [good]
        with pytest.raises(InvariantViolation):
            log.append_envelopes([good])
    assert read_all(tmp_path) == [good]


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path)
    log.close()
    with pytest.raises(InvariantViolation, match="closed"):
        log.append([(PodRemovalRequested(uid="a"), 0)], ts_ns=0)


def test_prune_keeps_the_log_verifiable_and_detects_later_removals(tmp_path: Path) -> None:
    batches = standard_batches(80, per_batch=2)
    written = build_log(tmp_path, batches, segment_bytes=1024)
    segments = sorted((tmp_path / "log").glob("*.evlog"))
    assert len(segments) >= 4
    cut_seq = int(segments[2].name[:20]) - 1  # everything in the first two segments
    # Pruning is for logs with a checkpoint at or after the cut: start-up begins there.
    crc = LogReader(tmp_path).chain_crc_at(cut_seq)
    assert crc is not None
    kept_state = replay_state([e for e in written if e.seq <= cut_seq])
    write_checkpoint(tmp_path, kept_state, seq=cut_seq, chain_crc=crc, fsync=False)
    with EventLog.open(tmp_path) as log:
        removed = log.prune_segments(through_seq=cut_seq)
    assert removed == [segments[0].name, segments[1].name]
    origin = read_origin(tmp_path / "log")
    assert origin is not None and origin.base_seq == cut_seq + 1
    report = verify(tmp_path)
    assert report.ok and report.first_seq == cut_seq + 1
    assert list(LogReader(tmp_path).read(1)) == [e for e in written if e.seq > cut_seq]
    EventLog.open(tmp_path).close()
    # Removing one more segment by hand is still caught: the prune record does not cover it.
    segments[2].unlink()
    with pytest.raises(MidLogCorruption, match="missing"):
        EventLog.open(tmp_path)


def test_readers_see_a_clean_prefix_while_the_writer_writes(tmp_path: Path) -> None:
    """Lock-free readers beside a live writer (with rotations) never fail and never see a
    partial record or half a transaction: every read is a prefix of the final log."""
    import threading

    node = Node(9)
    batches = node.start() + [node.group(2) for _ in range(600)]
    done = threading.Event()
    written: list[Envelope] = []

    def writer() -> None:
        with EventLog.open(tmp_path, fsync=False, segment_bytes=4096) as log:
            for index, batch in enumerate(batches):
                written.extend(log.append(batch, ts_ns=BASE_TS_NS + index))
        done.set()

    EventLog.open(tmp_path).close()  # create the directories before the readers start
    thread = threading.Thread(target=writer)
    thread.start()
    snapshots = []
    try:
        while not done.is_set():
            snapshots.append(read_all(tmp_path))
            report = verify(tmp_path, decode=False)
            assert report.ok, report.problem
    finally:
        thread.join()
    final = read_all(tmp_path)
    assert final == written
    assert len(snapshots) > 3
    assert any(0 < len(s) < len(final) for s in snapshots), "no read overlapped the writer"
    for snapshot in snapshots:
        assert snapshot == final[: len(snapshot)]
        if snapshot:  # never an input without its decisions
            assert (snapshot[-1].decisions or 0) == 0 or snapshot[-1].event.role != "input"
