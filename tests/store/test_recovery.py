"""Recovery on open: torn tails are cut, everything else is refused at the right place.

Method: build a real log (several segments), then damage copies of its files the way crashes and
disks do — truncate the last frame at every byte offset, zero-fill it, flip one bit at every byte
before it, remove or swap segments — and open it with the real writer. Expected outcomes come
from the frame table of the undamaged log, never from the code under test.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from memstate.core.errors import EXIT_DATAERR, LogCorruption, MidLogCorruption, SchemaError
from memstate.core.events import CgroupOrphanFound, DaemonStarted, Envelope
from memstate.core.state import State
from memstate.store.checkpoint import write_checkpoint
from memstate.store.format import (
    BASE_HEADER_BYTES,
    FORMAT_VERSION,
    SEGMENT_HEADER_BYTES,
    padded_size,
)
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.verify import verify
from memstate.store.writer import EventLog
from tests.store.helpers import BASE_TS_NS, Batch, Node, build_log, standard_batches


@dataclass(frozen=True)
class FrameAt:
    segment: str
    offset: int
    end: int  # end of the padding
    seq: int
    payload_end: int


@dataclass
class Built:
    state_dir: Path
    written: list[Envelope]
    frames: list[FrameAt]
    files: dict[str, bytes]

    @property
    def last_segment(self) -> str:
        return max(self.files)

    def restore(self, name: str | None = None) -> None:
        """Put back the pristine log (only `name` if given) and drop anything recovery added."""
        log_dir = self.state_dir / "log"
        if name is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            log_dir.mkdir(parents=True)
        for entry in log_dir.iterdir():
            if entry.name not in self.files:
                entry.unlink()
        for file_name, data in self.files.items():
            if name is None or file_name == name:
                (log_dir / file_name).write_bytes(data)

    def write(self, name: str, data: bytes) -> Path:
        path = self.state_dir / "log" / name
        path.write_bytes(data)
        return path


def frame_table(state_dir: Path) -> list[FrameAt]:
    return [
        FrameAt(
            r.segment,
            r.offset,
            r.offset + padded_size(len(r.payload)),
            r.seq,
            r.offset + 16 + len(r.payload),
        )
        for r in LogReader(state_dir).read_raw()
    ]


def build(tmp_path: Path, batches: list[Batch], segment_bytes: int = 1024) -> Built:
    """A log as a crash leaves it: the last batch written but not yet acknowledged."""
    state_dir = tmp_path / "state"
    written = build_log(
        state_dir, batches, segment_bytes=segment_bytes, last_batch_acknowledged=False
    )
    files = {p.name: p.read_bytes() for p in sorted((state_dir / "log").glob("*.evlog"))}
    return Built(state_dir, written, frame_table(state_dir), files)


def log_ending_with_a_note(tmp_path: Path, transactions: int = 30) -> Built:
    """Node start, random churn, and a lone note as the very last record."""
    batches = standard_batches(transactions, seed=11, per_batch=2)
    batches.append([(CgroupOrphanFound(path="/sys/fs/cgroup/kubepods.slice/orphan"), None)])
    built = build(tmp_path, batches, segment_bytes=1024 if transactions > 10 else 700)
    assert len(built.files) >= 3
    return built


def records(state_dir: Path) -> list[Envelope]:
    return list(LogReader(state_dir).read())


# --- torn tails -----------------------------------------------------------------------------------


def test_last_frame_truncated_at_every_byte_offset(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    last = built.frames[-1]
    original = built.files[last.segment]
    assert last.end == len(original)
    built.restore()
    for cut in range(last.offset, last.end):
        built.restore(last.segment)
        built.write(last.segment, original[:cut])
        with EventLog.open(built.state_dir, fsync=False) as log:
            report = log.recovery
            assert log.last_seq == last.seq - 1
        assert report.truncated == (cut > last.offset), cut
        if cut > last.offset:
            assert (report.segment, report.offset) == (last.segment, last.offset)
            assert report.bytes_dropped == cut - last.offset
            assert Path(report.broken_copy).read_bytes() == original[:cut]
            assert ".broken-" in Path(report.broken_copy).name
        assert records(built.state_dir) == built.written[:-1]
        assert (built.state_dir / "log" / last.segment).stat().st_size == last.offset


def test_last_frame_zero_filled_from_every_offset(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    last = built.frames[-1]
    original = built.files[last.segment]
    built.restore()
    for start in range(last.offset, last.end):
        for extra_zeros in (0, 4096):
            built.restore(last.segment)
            damaged = original[:start] + bytes(len(original) - start + extra_zeros)
            built.write(last.segment, damaged)
            unchanged = damaged[: last.end] == original
            with EventLog.open(built.state_dir, fsync=False) as log:
                report = log.recovery
            if unchanged:
                # Zeroing bytes that were zero (padding) changes nothing in the frame.
                assert records(built.state_dir) == built.written
                assert report.truncated == (extra_zeros > 0)
                assert report.offset == (last.end if extra_zeros else 0)
            else:
                assert report.truncated and report.offset == last.offset, start
                assert records(built.state_dir) == built.written[:-1]


def test_zeros_after_a_clean_end_are_cut_without_losing_records(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    built.restore()
    built.write(built.last_segment, built.files[built.last_segment] + bytes(700))
    with EventLog.open(built.state_dir, fsync=False) as log:
        assert log.recovery.truncated and log.recovery.bytes_dropped == 700
        note = log.recovery.tail_truncated_event()
        assert note is not None and note.bytes_dropped == 700
        # What the daemon does next: record the truncation as the first new record.
        appended = log.append([(note, None)], ts_ns=BASE_TS_NS)
    assert records(built.state_dir) == built.written + appended
    assert verify(built.state_dir).ok


def test_incomplete_transaction_at_the_tail_is_dropped_whole(tmp_path: Path) -> None:
    node = Node(21)
    batches = node.start()
    while True:
        batch = node.churn()
        if batch[0][1] == 1:  # an input with exactly one decision
            break
        batches.append(batch)
    batches.append([(CgroupOrphanFound(path="/a"), None), *batch])  # note + whole transaction
    built = build(tmp_path, batches, segment_bytes=1 << 20)
    note, request, decision = built.frames[-3:]
    original = built.files[decision.segment]
    for cut in (decision.offset, decision.offset + 5, decision.end - 1):
        built.restore()
        built.write(decision.segment, original[:cut])
        with EventLog.open(built.state_dir, fsync=False) as log:
            report = log.recovery
            assert log.last_seq == note.seq
        assert report.truncated and report.offset == request.offset
        assert report.incomplete_transaction_seq == request.seq
        assert report.records_dropped == 1
        assert report.bytes_dropped == cut - request.offset
        # The note of the same (unacknowledged) batch was complete and durable: it stays.
        assert records(built.state_dir) == built.written[:-2]


def test_reader_stops_cleanly_at_an_incomplete_tail_without_recovering(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    last = built.frames[-1]
    built.restore()
    built.write(last.segment, built.files[last.segment][: last.offset + 9])
    assert records(built.state_dir) == built.written[:-1]
    report = verify(built.state_dir)
    assert report.ok and report.tail is not None and report.tail.kind == "torn_tail"
    assert report.tail.offset == last.offset
    # Read-only: nothing was changed.
    assert (built.state_dir / "log" / last.segment).stat().st_size == last.offset + 9


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    built.restore()
    leftover = built.write("00000000000000999999.evlog.tmp", b"half a header")
    (built.state_dir / "snap").mkdir()
    snap_tmp = built.state_dir / "snap" / "00000000000000000005.snap.tmp"
    snap_tmp.write_bytes(b"x")
    with EventLog.open(built.state_dir, fsync=False) as log:
        assert set(log.recovery.removed_temp_files) == {str(leftover), str(snap_tmp)}
        assert not log.recovery.truncated
    assert not leftover.exists() and not snap_tmp.exists()


# --- corruption -----------------------------------------------------------------------------------


def start_up(state_dir: Path) -> None:
    """What the daemon does before READY with the log: open (recovery) and `recover_state`."""
    with EventLog.open(state_dir, fsync=False):
        recover_state(state_dir)


def expect_refusal(built: Built, segment: str, low: int, high: int) -> LogCorruption | SchemaError:
    """Open must refuse, name `segment`, report an offset in [low, high), change nothing."""
    path = built.state_dir / "log" / segment
    before = (sorted(p.name for p in path.parent.iterdir()), path.read_bytes())
    with pytest.raises((LogCorruption, SchemaError)) as error:
        start_up(built.state_dir)
    exc = error.value
    assert exc.exit_code == EXIT_DATAERR
    assert (sorted(p.name for p in path.parent.iterdir()), path.read_bytes()) == before
    if isinstance(exc, LogCorruption):
        assert exc.file.endswith(segment), (exc.file, segment)
        assert exc.offset is not None and low <= exc.offset < high, (exc.offset, low, high)
        assert exc.seq is not None
        assert "memstate log repair --point-in-time" in str(exc)
        assert isinstance(exc, MidLogCorruption)
    else:
        assert segment in str(exc) and "newer" in str(exc)
    return exc


def test_one_flipped_bit_anywhere_before_the_tail_is_refused_at_its_frame(tmp_path: Path) -> None:
    """One bit (index = byte index mod 8) in every segment-header byte, every frame-head byte,
    every padding byte and every seventh payload byte of a small multi-segment log.

    The hypothesis tests in test_recovery_properties.py flip random bits in random logs.
    """
    built = log_ending_with_a_note(tmp_path, transactions=6)
    last = built.frames[-1]
    frames_by_segment: dict[str, list[FrameAt]] = {}
    for frame in built.frames:
        frames_by_segment.setdefault(frame.segment, []).append(frame)
    built.restore()
    checked = 0
    for name, original in built.files.items():
        for byte in range(len(original)):
            if name == last.segment and byte >= last.offset:
                continue  # the last frame: see the next test
            if not _sampled(byte, frames_by_segment[name]):
                continue
            damaged = bytearray(original)
            damaged[byte] ^= 1 << (byte % 8)
            built.write(name, bytes(damaged))
            if BASE_HEADER_BYTES <= byte < SEGMENT_HEADER_BYTES:
                # One damaged mark slot is what a torn mark write leaves: the other slot (one
                # batch older) is used, and nothing is lost.
                start_up(built.state_dir)
                assert (
                    records(built.state_dir) == built.written[:-1]
                    or records(built.state_dir) == built.written
                )
                built.restore()
                checked += 1
                continue
            if byte < SEGMENT_HEADER_BYTES:
                low, high = 0, BASE_HEADER_BYTES
            else:
                frame = next(f for f in frames_by_segment[name] if f.offset <= byte < f.end)
                low, high = frame.offset, frame.offset + 1
            exc = expect_refusal(built, name, low, high)
            if isinstance(exc, LogCorruption) and byte >= SEGMENT_HEADER_BYTES:
                assert exc.seq == next(
                    f.seq for f in frames_by_segment[name] if f.offset <= byte < f.end
                )
            built.write(name, original)
            checked += 1
    assert checked > 800


def _sampled(byte: int, frames: list[FrameAt]) -> bool:
    if byte < SEGMENT_HEADER_BYTES:
        return True
    frame = next(f for f in frames if f.offset <= byte < f.end)
    return byte < frame.offset + 16 or byte >= frame.payload_end or byte % 7 == 0


def test_flipped_bit_in_the_last_frame_is_refused_or_drops_only_that_frame(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    last = built.frames[-1]
    original = built.files[last.segment]
    outcomes = set()
    built.restore()
    head_bits = range(last.offset * 8, (last.offset + 16) * 8)  # every bit of the 16-byte head
    body_bits = range((last.offset + 16) * 8 + 3, last.end * 8, 8)  # one bit per other byte
    for bit in [*head_bits, *body_bits]:
        built.restore(last.segment)
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        built.write(last.segment, bytes(damaged))
        try:
            with EventLog.open(built.state_dir, fsync=False) as log:
                assert log.recovery.truncated and log.recovery.offset == last.offset
        except MidLogCorruption as exc:
            assert exc.offset == last.offset
            outcomes.add("refused")
            continue
        assert records(built.state_dir) == built.written[:-1]
        outcomes.add("dropped")
    assert "refused" in outcomes  # most flips are clearly not a torn write


def test_removed_middle_segment_is_refused(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    names = sorted(built.files)
    built.restore()
    (built.state_dir / "log" / names[1]).unlink()
    exc = expect_refusal(built, names[2], 16, 17)
    assert "gap" in str(exc)


def test_removed_first_segment_is_refused(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    names = sorted(built.files)
    built.restore()
    (built.state_dir / "log" / names[0]).unlink()
    exc = expect_refusal(built, names[1], 16, 17)
    assert "missing" in str(exc)


def test_removed_last_segment_is_refused_because_the_one_before_is_sealed(
    tmp_path: Path,
) -> None:
    # No checkpoint needed: a segment is sealed only after its successor exists.
    built = log_ending_with_a_note(tmp_path)
    names = sorted(built.files)
    built.restore()
    (built.state_dir / "log" / names[-1]).unlink()
    with pytest.raises(MidLogCorruption, match=r"sealed.*missing") as error:
        EventLog.open(built.state_dir, fsync=False)
    assert error.value.exit_code == EXIT_DATAERR
    assert verify(built.state_dir).problem is not None


def test_removed_last_segment_is_refused_when_a_checkpoint_covers_it(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    names = sorted(built.files)
    built.restore()
    with EventLog.open(built.state_dir, fsync=False) as log:
        seq, crc = log.last_seq, log.chain_crc
    write_checkpoint(built.state_dir, State(), seq=seq, chain_crc=crc, fsync=False)
    (built.state_dir / "log" / names[-1]).unlink()
    with pytest.raises(MidLogCorruption, match="missing") as error:
        EventLog.open(built.state_dir, fsync=False)
    assert error.value.exit_code == EXIT_DATAERR


def test_swapped_segments_are_refused(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    first, second = sorted(built.files)[1:3]
    built.restore()
    built.write(first, built.files[second])
    built.write(second, built.files[first])
    exc = expect_refusal(built, first, 16, 17)
    assert "swapped" in str(exc)


def test_segment_from_another_log_breaks_the_chain(tmp_path: Path) -> None:
    built = log_ending_with_a_note(tmp_path)
    other_batches = standard_batches(30, seed=99, per_batch=2)
    # A different first record: every chain CRC of the other log differs from ours.
    other_batches[0] = [(DaemonStarted(memstate_version="9.9.9", reducer_version=1), 0)]
    other = build(tmp_path / "other", other_batches)
    shared = sorted(set(built.files) & set(other.files) - {min(built.files)})
    assert shared, "the two logs share no segment base to swap"
    name = shared[0]
    built.restore()
    built.write(name, other.files[name])
    exc = expect_refusal(built, name, 12, 13)
    assert "chain" in str(exc)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    from crc32c import crc32c

    built = log_ending_with_a_note(tmp_path)
    name = built.last_segment
    header = bytearray(built.files[name][:SEGMENT_HEADER_BYTES])
    struct.pack_into("<H", header, 8, FORMAT_VERSION + 1)
    struct.pack_into("<I", header, 28, crc32c(bytes(header[:28])))
    built.restore()
    built.write(name, bytes(header) + built.files[name][SEGMENT_HEADER_BYTES:])
    with pytest.raises(SchemaError, match="newer") as error:
        EventLog.open(built.state_dir, fsync=False)
    assert error.value.exit_code == EXIT_DATAERR
    assert name in str(error.value) and "offset 8" in str(error.value)
