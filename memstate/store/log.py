"""The durable event log: segments, append with group commit, recovery on open, readers.

Theory of operation
-------------------
The log is the source of truth; everything else (state, checkpoints, the cgroup tree) is derived
from it. It lives in `<state_dir>/log/` as segment files named by the first sequence number they
hold (`%020d.evlog`, Kafka's convention: `--from-seq N` finds its segment by name). The byte layout
and the torn-tail rules are in `memstate.store.format`; this module does the file work.

**One writer.** `EventLog.open` takes an exclusive `flock` on `<state_dir>/LOCK` (a second
writer gets `LockHeld`, exit 75). Readers (`LogReader`, `verify`) take no lock and only ever see a
prefix of what the writer wrote, so tools work beside a running daemon; they stop cleanly at an
incomplete tail.

**Append** (`EventLog.append`) is group commit by construction: the caller hands over a batch —
typically an input event and the decisions `decide` returned for it, or whatever the daemon's
writer task drained from its queue — and the log encodes and frames all of it, writes it with one
`pwrite`, calls `fsync` once, and only then returns the envelopes. Returning is the
acknowledgement: nothing the caller saw returned can be lost by a crash.

- A failed fsync is fatal and never retried ("fsyncgate": the kernel may have dropped the dirty
  pages and will not report it twice). The log object is *poisoned*: every later call raises
  `LogIOError` (exit 74); the process must exit and recover from what is durable.
- A failed write (ENOSPC, EDQUOT, EIO) is cut back off the file (ftruncate + fsync), so the log
  on disk is exactly what was acknowledged and stays appendable once space is freed. The caller
  sees `LogDiskFull` or `LogIOError`; nothing of the batch was acknowledged.
- A batch never spans segments: a new segment is started *before* a batch that would overflow
  the current one (created as a temp file with its header, fsynced, renamed, directory fsynced).

**Transactions.** An input record announces how many decision records follow it
(`Envelope.decisions`); the writer only accepts batches where every such transaction is whole.
Since a batch is acknowledged as a unit, a transaction cut short at the tail was never
acknowledged, and recovery drops it together with any torn frame.

**Acknowledged mark and seals.** After each commit the writer rewrites a mark in the segment
header (last acknowledged seq, its chain CRC, the end and CRC32C of the acknowledged frames; two
alternating slots, `memstate.store.format`), made durable by the next fsync; at rotation the
closing segment's mark becomes its seal. So a log cut inside or at the end of acknowledged
records is refused, and sealed segments are checked from their seal at start-up.

**Recovery on open** (`inspect_log`, shared with `verify` and repair) checks every header and
seal, the active segment (its acknowledged prefix by CRC32C, the frames after it one by one) and
the rules beyond the frames (the mark, checkpoints past the end). A torn tail of unacknowledged
records in the last segment is copied to `<segment>.broken-<UTC>`, truncated and fsynced, and
reported in `EventLog.recovery`; the caller then appends a `log_tail_truncated` note. Anything
else is refused with file, offset and seq (`MidLogCorruption`, exit 65), pointing to
`memstate log verify` and `memstate log repair`; salvage is offline and explicit only
(`memstate.store.repair`).

`fsync=False` exists for tests and benchmarks only. Production code never sets it: the daemon
has no configuration that reaches it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno as errno_codes
import itertools
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec
from crc32c import crc32c

from memstate.core.codec import decode_envelope, decode_head, encode_envelope
from memstate.core.errors import (
    InvariantViolation,
    LogCorruption,
    LogDiskFull,
    LogIOError,
    MemstateError,
    MidLogCorruption,
    SchemaError,
    TornTail,
)
from memstate.core.events import (
    SCHEMA_VERSION,
    Envelope,
    Event,
    LogTailTruncated,
    known_event,
)
from memstate.store import fsio
from memstate.store.format import (
    CHAIN_SEED,
    LOG_DIRNAME,
    SEGMENT_HEADER_BYTES,
    SNAP_DIRNAME,
    FrameFailure,
    HeaderProblem,
    Mark,
    SegmentHeader,
    append_frame,
    encode_mark,
    encode_segment_header,
    mark_slot_offset,
    parse_segment_name,
    segment_name,
)
from memstate.store.segio import FrameWalk, SegmentFile, WalkedFrame
from memstate.store.transactions import TransactionProblem, envelope_itself, group_transactions

ORIGIN_FILENAME = "ORIGIN"
DEFAULT_SEGMENT_BYTES = 16 << 20
MAX_BATCH_RECORDS = 4096
REPAIR_HINT = (
    "run `memstate log verify` for details; `memstate log repair --point-in-time` keeps "
    "everything before this point (with .broken copies of the rest)"
)

# --- reports --------------------------------------------------------------------------------------

ProblemKind = Literal[
    "torn_tail",  # recoverable: an incomplete write at the end of the last segment
    "incomplete_transaction",  # recoverable: an input whose decisions are not all there
    "corruption",  # refuse
    "newer_format",  # refuse: written by a newer build
    "schema",  # refuse: a record that does not decode (newer schema_v, or damage)
]


class LogProblem(msgspec.Struct, frozen=True):
    """The first thing wrong with a log, located precisely.

    `offset` is the byte offset in `file` where the bad frame (or header) starts, `seq` the
    sequence number expected there. `segment_level` problems (bad header, missing or swapped
    segment) concern the whole file rather than a frame in it.
    """

    kind: ProblemKind
    file: str
    offset: int
    seq: int
    message: str
    segment_level: bool = False

    @property
    def recoverable(self) -> bool:
        """True when truncation loses nothing acknowledged (torn tail, incomplete txn)."""
        return self.kind in ("torn_tail", "incomplete_transaction")

    def to_error(self) -> MemstateError:
        """The exception memstate raises for this problem (exit 65 in every case)."""
        if self.kind in ("newer_format", "schema"):
            return SchemaError(f"{self.file}: offset {self.offset}: seq {self.seq}: {self.message}")
        if self.recoverable:
            return TornTail(self.message, file=self.file, offset=self.offset, seq=self.seq)
        return MidLogCorruption(
            f"{self.message}; {REPAIR_HINT}", file=self.file, offset=self.offset, seq=self.seq
        )


class RecoveryReport(msgspec.Struct, frozen=True):
    """What `EventLog.open` did to the tail. `truncated=False` means the log ended cleanly."""

    truncated: bool = False
    segment: str = ""  # file name of the truncated segment
    offset: int = 0  # its new length: where the dropped bytes started
    bytes_dropped: int = 0
    broken_copy: str = ""  # path of the `.broken-*` copy of the segment before truncation
    reason: str = ""
    incomplete_transaction_seq: int | None = None  # seq of a dropped, incomplete input
    records_dropped: int = 0  # complete frames dropped with that transaction
    removed_temp_files: tuple[str, ...] = ()  # leftovers of an interrupted rotation/checkpoint

    def tail_truncated_event(self) -> LogTailTruncated | None:
        """The note the daemon appends after a truncation (None if nothing was cut)."""
        if not self.truncated:
            return None
        return LogTailTruncated(
            segment=self.segment,
            offset=self.offset,
            bytes_dropped=self.bytes_dropped,
            broken_copy=self.broken_copy,
        )


class SegmentInfo(msgspec.Struct, frozen=True):
    """One segment as found by a scan (`end_offset`: end of its last valid frame)."""

    name: str
    base_seq: int
    prev_chain_crc: int
    last_seq: int  # base_seq - 1 when empty
    chain_crc: int
    end_offset: int
    size_bytes: int
    format_version: int = 1
    sealed: bool = False  # closed at rotation; checked from its seal unless a full check
    acked_seq: int = 0  # the segment's mark: records up to here were acknowledged
    mark_generation: int = 0
    body_crc: int = 0  # plain CRC32C of its frames (valid prefix); 0 if not read

    @property
    def record_count(self) -> int:
        return self.last_seq - self.base_seq + 1


class RawRecord(NamedTuple):
    """One framed record as stored: its seq, payload bytes, segment file name and frame offset."""

    seq: int
    payload: bytes
    segment: str
    offset: int


class LogOrigin(msgspec.Struct, frozen=True):
    """Where a pruned log legitimately starts (`log/ORIGIN`); absent for an unpruned log."""

    base_seq: int
    prev_chain_crc: int


_ORIGIN = struct.Struct("<8sQII")
_ORIGIN_MAGIC = b"MEMSTORG"


def encode_origin(origin: LogOrigin) -> bytes:
    head = _ORIGIN.pack(_ORIGIN_MAGIC, origin.base_seq, origin.prev_chain_crc, 0)[:20]
    return head + struct.pack("<I", crc32c(head))


def read_origin(log_dir: Path) -> LogOrigin | None:
    """The prune marker, None if the log was never pruned; damage raises `MidLogCorruption`."""
    path = log_dir / ORIGIN_FILENAME
    try:
        data = fsio.read_file(path)
    except FileNotFoundError:
        return None
    if len(data) != _ORIGIN.size:
        raise MidLogCorruption(f"prune marker has {len(data)} bytes", file=str(path), offset=0)
    magic, base_seq, prev_crc, stored = _ORIGIN.unpack(data)
    if magic != _ORIGIN_MAGIC or crc32c(data[:20]) != stored or base_seq < 1:
        raise MidLogCorruption("prune marker is damaged", file=str(path), offset=0)
    return LogOrigin(base_seq=base_seq, prev_chain_crc=prev_crc)


def prunable_segments(log_dir: Path, *, through_seq: int) -> list[Path]:
    """The segments whose records all have seq <= `through_seq`, oldest first; never the newest
    (the one being written). Reads names only, so it needs no lock (`log prune --dry-run`)."""
    listed = list_segments(log_dir)
    return [
        path
        for (_, path), (next_base, _) in itertools.pairwise(listed)
        if next_base - 1 <= through_seq
    ]


def list_segments(log_dir: Path) -> list[tuple[int, Path]]:
    """(base_seq, path) of every segment, in order; temp files and broken copies are skipped."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        base = parse_segment_name(name)
        if base is not None:
            found.append((base, log_dir / name))
    found.sort()
    return found


# --- scanning ---------------------------------------------------------------------------------

OnRecord = Callable[[int, memoryview, str, int], None]
"""Called by `scan_log` for each valid record: (seq, payload, segment file name, frame offset)."""


@dataclass
class LogScan:
    """Result of a scan. `problem` is the first problem found (scanning stops there)."""

    log_dir: Path
    segments: list[SegmentInfo]
    problem: LogProblem | None
    origin: LogOrigin | None
    tail_frames: list[WalkedFrame] = field(default_factory=list)  # the last segment's last ones
    # (seq, chain CRC) just before the first of `tail_frames`: the segment's start, or the end
    # of its acknowledged prefix when that was checked by its CRC instead of walked.
    tail_start: tuple[int, int] = (0, CHAIN_SEED)

    @property
    def last_seq(self) -> int:
        """Seq of the last valid record (before any problem)."""
        if self.segments:
            return self.segments[-1].last_seq
        return self.origin.base_seq - 1 if self.origin else 0

    @property
    def chain_crc(self) -> int:
        """Chain CRC after the last valid record."""
        if self.segments:
            return self.segments[-1].chain_crc
        return self.origin.prev_chain_crc if self.origin else CHAIN_SEED

    def first_seq(self) -> int:
        if self.segments:
            return self.segments[0].base_seq
        return self.origin.base_seq if self.origin else 1


def scan_log(log_dir: Path, *, full: bool = False, on_record: OnRecord | None = None) -> LogScan:
    """Check the segments in order: headers, names, seq continuity, the CRC chain, the seals.

    A *sealed* segment (format 2, closed at rotation) that is not the last one is checked from
    its header and seal only — header CRC, seal CRC, file size equal to the sealed length, and
    the links to its neighbours (base seq, chain CRC) — unless `full` (then its frames are walked
    and its body CRC compared too). Every other segment (the last one, format 1 segments, one
    whose seal never landed) has every frame checked: length bound, CRC chain, seq continuity.

    Stops at the first problem, classified as a torn tail (recoverable) or not. Does not decode
    payloads unless `on_record` does (which reads every segment's frames). Segments are read in
    bounded chunks. The last segment's last frames are kept (up to `MAX_BATCH_RECORDS` + 1) so
    the caller can look for an incomplete transaction.
    """
    origin = read_origin(log_dir)
    listed = list_segments(log_dir)
    scan = LogScan(log_dir=log_dir, segments=[], problem=None, origin=origin)
    if not listed:
        if origin is not None:
            scan.problem = LogProblem(
                "corruption",
                str(log_dir),
                0,
                origin.base_seq,
                f"no segments, but the log was pruned to start at seq {origin.base_seq}: "
                "every segment is missing",
                segment_level=True,
            )
        return scan
    for index, (name_base, path) in enumerate(listed):
        last = index == len(listed) - 1
        with SegmentFile(path) as segment:
            header = _checked_header(scan, segment.header(), path, name_base)
            if header is None:
                return scan
            if header.sealed and not last and not full and on_record is None:
                info = _sealed_info(scan, segment, header, path)
            else:
                fast = not full and on_record is None and not header.sealed
                info = _walk_segment(
                    scan, segment, header, path, last=last, fast=fast, on_record=on_record
                )
        if info is None:
            return scan
        scan.segments.append(info)
        if scan.problem is not None:
            return scan
    tail = scan.segments[-1]
    if tail.sealed and not _successor_appeared(log_dir, tail):
        scan.problem = LogProblem(
            "corruption",
            str(log_dir / tail.name),
            tail.size_bytes,
            tail.last_seq + 1,
            f"the last segment {tail.name} is sealed (a segment is sealed only after the next "
            f"one exists): the segment that held seq {tail.last_seq + 1} onwards is missing",
            segment_level=True,
        )
    return scan


def _successor_appeared(log_dir: Path, tail: SegmentInfo) -> bool:
    """A writer seals a segment just after creating its successor: a reader that listed the
    directory before that sees a sealed last segment. Listing again tells the two apart; the
    reader's view then ends at the sealed segment (a prefix, as always)."""
    return any(base == tail.last_seq + 1 for base, _ in list_segments(log_dir))


def _sealed_info(
    scan: LogScan, segment: SegmentFile, header: SegmentHeader, path: Path
) -> SegmentInfo | None:
    """A sealed segment checked from its seal alone: its size must be the sealed length."""
    seal = header.mark
    if seal is None:
        raise InvariantViolation(f"{path.name}: checked as sealed but has no mark")
    if segment.size != seal.body_end or seal.body_end < header.frames_start:
        scan.problem = LogProblem(
            "corruption",
            str(path),
            min(segment.size, seal.body_end),
            seal.acked_seq + 1,
            f"sealed segment is {segment.size} bytes long but its seal says {seal.body_end} "
            f"(records up to seq {seal.acked_seq} were sealed in it): "
            + (
                "the end of the segment is missing"
                if segment.size < seal.body_end
                else "bytes were appended after it was sealed"
            ),
        )
        return None
    return _info(path, header, seal.acked_seq, seal.chain_crc, seal.body_end, segment.size, 0)


def _walk_segment(
    scan: LogScan,
    segment: SegmentFile,
    header: SegmentHeader,
    path: Path,
    *,
    last: bool,
    fast: bool,
    on_record: OnRecord | None,
) -> SegmentInfo:
    """Check every frame of a segment (and a sealed one's seal against what was read).

    With `fast`, the acknowledged prefix its mark describes is checked by its CRC32C (C speed)
    and only the frames after it are walked (normally none: what a crash left, or nothing)."""
    # One more than a batch: recovery needs the chain CRC of the record before a dropped
    # transaction, which may be the first of the batch. Transactions never straddle the end
    # of the acknowledged prefix (a mark is written after a whole batch).
    keep: deque[WalkedFrame] = deque(maxlen=MAX_BATCH_RECORDS + 1 if last else 0)
    prefix = segment.verified_prefix(header) if fast else None
    if prefix is not None:
        walk = FrameWalk(
            segment,
            prefix.body_end,
            prefix.acked_seq + 1,
            prefix.chain_crc,
            body_crc=prefix.body_crc,
        )
    else:
        walk = FrameWalk(segment, header.frames_start, header.base_seq, header.prev_chain_crc)
    if last:
        scan.tail_start = (walk.last_seq, walk.chain_crc)
    try:
        for frame in walk:
            if on_record is not None:
                on_record(frame[1], frame[2], path.name, frame[0])
            keep.append(frame)
    except FrameFailure as failure:
        verdict = segment.classify(failure, last_segment=last)
        scan.problem = LogProblem(
            "torn_tail" if verdict.torn else "corruption",
            str(path),
            failure.offset,
            failure.expected_seq,
            verdict.reason,
        )
    info = _info(path, header, walk.last_seq, walk.chain_crc, walk.end, segment.size, walk.body_crc)
    if last:
        scan.tail_frames = list(keep)
    seal = header.mark
    if scan.problem is None and seal is not None and seal.sealed:
        wrong = [
            what
            for what, found, sealed in (
                ("length", walk.end, seal.body_end),
                ("last seq", walk.last_seq, seal.acked_seq),
                ("chain CRC", walk.chain_crc, seal.chain_crc),
                ("body CRC", walk.body_crc, seal.body_crc),
            )
            if found != sealed
        ]
        if wrong:
            scan.problem = LogProblem(
                "corruption",
                str(path),
                header.frames_start,
                header.base_seq,
                f"the frames of sealed segment {path.name} do not match its seal "
                f"({', '.join(wrong)}): the seal or the segment is damaged",
                segment_level=True,
            )
    return info


def _info(  # noqa: PLR0917 - one constructor call, all positional for brevity at the call sites
    path: Path,
    header: SegmentHeader,
    last_seq: int,
    chain_crc: int,
    end: int,
    size: int,
    body_crc: int,
) -> SegmentInfo:
    mark = header.mark
    return SegmentInfo(
        name=path.name,
        base_seq=header.base_seq,
        prev_chain_crc=header.prev_chain_crc,
        last_seq=last_seq,
        chain_crc=chain_crc,
        end_offset=end,
        size_bytes=size,
        format_version=header.format_version,
        sealed=header.sealed,
        acked_seq=mark.acked_seq if mark is not None else header.base_seq - 1,
        mark_generation=mark.generation if mark is not None else 0,
        body_crc=body_crc,
    )


def _checked_header(
    scan: LogScan, decoded: SegmentHeader | HeaderProblem, path: Path, name_base: int
) -> SegmentHeader | None:
    """Link-check one decoded segment header; on failure record the problem, return None."""
    previous = scan.segments[-1] if scan.segments else None
    expected_seq = previous.last_seq + 1 if previous else name_base

    def fail(kind: ProblemKind, offset: int, message: str) -> None:
        scan.problem = LogProblem(
            kind, str(path), offset, expected_seq, message, segment_level=True
        )

    if isinstance(decoded, HeaderProblem):
        fail(
            "newer_format" if decoded.newer_format else "corruption",
            decoded.offset,
            decoded.message,
        )
        return None
    header = decoded
    if header.base_seq != name_base:
        fail(
            "corruption",
            16,
            f"file name says the segment starts at seq {name_base} but its header says "
            f"{header.base_seq} (renamed or swapped segment)",
        )
        return None
    origin = scan.origin
    if previous is not None:
        if header.base_seq != previous.last_seq + 1:
            fail(
                "corruption",
                16,
                f"sequence gap between segments: {previous.name} ends at seq "
                f"{previous.last_seq} but this one starts at {header.base_seq} "
                "(missing segment?)",
            )
            return None
        if header.prev_chain_crc != previous.chain_crc:
            fail(
                "corruption",
                12,
                f"CRC chain break: header carries {header.prev_chain_crc:08x} but "
                f"{previous.name} ends with {previous.chain_crc:08x} (stale or swapped segment)",
            )
            return None
    elif header.base_seq == 1:
        if header.prev_chain_crc != CHAIN_SEED:
            fail("corruption", 12, "first segment does not start the CRC chain at its seed")
            return None
    elif origin is None or header.base_seq > origin.base_seq:
        fail(
            "corruption",
            16,
            f"the log starts at seq {header.base_seq}: the segments before it are missing "
            "(no prune record covers them)",
        )
        return None
    if (
        origin is not None
        and header.base_seq == origin.base_seq
        and header.prev_chain_crc != origin.prev_chain_crc
    ):
        fail("corruption", 12, "CRC chain break at the start of the pruned log")
        return None
    return header


def find_incomplete_transaction(scan: LogScan) -> LogProblem | None:
    """An input at the tail whose announced decisions are not all present, or None.

    Looks back over the last segment's valid frames (a transaction never spans segments and is
    at most one batch long) for the last record that announces decisions.
    """
    if not scan.segments or not scan.tail_frames:
        return None
    path = str(scan.log_dir / scan.segments[-1].name)
    return incomplete_transaction(scan.tail_frames, path)


def incomplete_transaction(frames: Sequence[WalkedFrame], path: str) -> LogProblem | None:
    """`find_incomplete_transaction` over explicit frames (the valid frames of one segment)."""
    for index in range(len(frames) - 1, max(len(frames) - 2 - MAX_BATCH_RECORDS, -1), -1):
        offset, seq, payload, _, _ = frames[index]
        try:
            head = decode_head(payload)
        except SchemaError as exc:
            raise SchemaError(f"{path}: offset {offset}: seq {seq}: {exc}") from None
        if head.decisions is None:
            continue
        present = len(frames) - 1 - index
        if present >= head.decisions:
            return None
        return LogProblem(
            "incomplete_transaction",
            path,
            offset,
            seq,
            f"seq {seq} announces {head.decisions} decision records but only {present} follow "
            "(the batch was never acknowledged)",
        )
    return None


# --- the writer -----------------------------------------------------------------------------------


class EventLog:
    """The single writer of a state directory's log. Use `EventLog.open`; a context manager."""

    def __init__(
        self,
        *,
        state_dir: Path,
        lock: fsio.DirLock,
        fsync: bool,
        segment_bytes: int,
        recovery: RecoveryReport,
        segment_path: Path,
        segment_offset: int,
        last_seq: int,
        chain_crc: int,
        mark_generation: int,
        body_crc: int,
    ) -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / LOG_DIRNAME
        self.recovery = recovery
        self._lock = lock
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._segment_path = segment_path
        self._fd: int | None = os.open(segment_path, os.O_WRONLY)
        self._offset = segment_offset
        self._last_seq = last_seq
        self._chain_crc = chain_crc
        self._poisoned: str | None = None
        # The active segment's mark (docs/event-log.md, "Acknowledged mark"): generation of the
        # last mark written, running CRC32C of its frames (for the seal), and whether a mark was
        # written since the last fsync (close makes it durable).
        self._mark_generation = mark_generation
        self._body_crc = body_crc
        self._mark_unsynced = False

    # -- opening and recovery --

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> EventLog:
        """Lock the state directory, recover the log and open it for appending.

        Raises `LockHeld` (exit 75) if another writer holds the lock, `MidLogCorruption` or
        `SchemaError` (exit 65) if the log is damaged beyond a torn tail or newer than this
        build, `LogIOError` (exit 74) on I/O failure. `fsync=False` is for tests and benchmarks
        only. After a truncation, `recovery.tail_truncated_event()` is the note to append.
        """
        if segment_bytes < SEGMENT_HEADER_BYTES + 64:
            raise InvariantViolation(f"segment_bytes {segment_bytes} is too small")
        state_dir = Path(state_dir)
        try:
            fsio.ensure_dir(state_dir / LOG_DIRNAME, fsync=fsync)
            fsio.ensure_dir(state_dir / SNAP_DIRNAME, fsync=fsync)
            lock = fsio.DirLock.acquire(state_dir, purpose="the log writer")
        except OSError as exc:
            raise LogIOError(f"{state_dir}: {exc.strerror}", errno=exc.errno) from None
        try:
            return cls._recover_and_open(state_dir, lock, fsync=fsync, segment_bytes=segment_bytes)
        except OSError as exc:
            lock.release()
            raise LogIOError(
                f"{exc.filename or state_dir}: {exc.strerror}", errno=exc.errno
            ) from None
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _recover_and_open(
        cls, state_dir: Path, lock: fsio.DirLock, *, fsync: bool, segment_bytes: int
    ) -> EventLog:
        log_dir = state_dir / LOG_DIRNAME
        removed = _remove_temp_files(log_dir, state_dir / SNAP_DIRNAME, fsync=fsync)
        scan = inspect_log(state_dir)
        report = truncate_recoverable_tail(scan, fsync=fsync, removed_temp_files=removed)
        generation, body_crc = 1, 0
        if scan.segments:
            tail = scan.segments[-1]
            path, offset = (
                log_dir / tail.name,
                report.offset if report.truncated else tail.end_offset,
            )
            last_seq = _last_seq_after(scan, report)
            chain = _chain_after(scan, report)
            if tail.format_version == 1:
                # A format 1 segment has no mark slots: continue in a new format 2 segment (an
                # empty one is replaced, the rename is atomic).
                path = _create_segment(log_dir, last_seq + 1, chain, fsync=fsync)
                offset = SEGMENT_HEADER_BYTES
            else:
                generation = tail.mark_generation
                body_crc = tail.body_crc
                if report.truncated:
                    with SegmentFile(path) as segment:
                        body_crc = segment.body_crc(SEGMENT_HEADER_BYTES, offset)
        else:
            path = _create_segment(log_dir, 1, CHAIN_SEED, fsync=fsync)
            offset, last_seq, chain = SEGMENT_HEADER_BYTES, 0, CHAIN_SEED
        return cls(
            state_dir=state_dir,
            lock=lock,
            fsync=fsync,
            segment_bytes=segment_bytes,
            recovery=report,
            segment_path=path,
            segment_offset=offset,
            last_seq=last_seq,
            chain_crc=chain,
            mark_generation=generation,
            body_crc=body_crc,
        )

    # -- state --

    @property
    def last_seq(self) -> int:
        """Sequence number of the last durable record (0 for an empty log)."""
        return self._last_seq

    @property
    def chain_crc(self) -> int:
        """Chain CRC after the last durable record (what a checkpoint at `last_seq` records)."""
        return self._chain_crc

    @property
    def segment_path(self) -> Path:
        """The segment appends currently go to."""
        return self._segment_path

    # -- appending --

    def append(self, items: Sequence[tuple[Event, int | None]], *, ts_ns: int) -> list[Envelope]:
        """Append a batch durably: one write, one fsync, then return the envelopes.

        `items` are `(event, decisions)` pairs; `decisions` is the number of decision records
        that follow an input in this batch (None for records that announce nothing). Sequence
        numbers are assigned consecutively; every envelope gets `ts_ns`. Raises `LogDiskFull`
        (nothing acknowledged, log still usable), `LogIOError` (after a failed fsync the log is
        poisoned) or `InvariantViolation` for a malformed batch.
        """
        self._check_usable()
        if isinstance(ts_ns, bool) or not isinstance(ts_ns, int) or ts_ns < 0:
            raise InvariantViolation(f"ts_ns must be a non-negative int, got {ts_ns!r}")
        first = self._last_seq + 1
        envelopes = [
            Envelope(
                seq=first + index,
                ts_ns=ts_ns,
                schema_v=SCHEMA_VERSION,
                event=known_event(event),
                decisions=decisions,
            )
            for index, (event, decisions) in enumerate(items)
        ]
        return self._commit(envelopes)

    def append_envelopes(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Append prepared envelopes (import, tools): seqs must continue the log, one fsync."""
        self._check_usable()
        batch = list(envelopes)
        for index, envelope in enumerate(batch):
            if envelope.seq != self._last_seq + 1 + index:
                raise InvariantViolation(
                    f"envelope seq {envelope.seq} does not continue the log "
                    f"(expected {self._last_seq + 1 + index})"
                )
        return self._commit(batch)

    def _commit(self, envelopes: list[Envelope]) -> list[Envelope]:
        check_batch(envelopes)
        buffer = bytearray()
        crc = self._chain_crc
        for envelope in envelopes:
            payload = encode_envelope(envelope)
            try:
                crc = append_frame(buffer, envelope.seq, payload, crc)
            except ValueError as exc:
                raise InvariantViolation(f"seq {envelope.seq}: {exc}") from None
        if self._offset > SEGMENT_HEADER_BYTES and self._offset + len(buffer) > self._segment_bytes:
            self._rotate()
        self._write_durably(buffer)
        self._offset += len(buffer)
        self._last_seq = envelopes[-1].seq
        self._chain_crc = crc
        self._body_crc = crc32c(buffer, self._body_crc)
        # The mark for this batch goes to the page cache only: the next commit's fsync (or the
        # one at close or rotation) makes it durable, so it never runs ahead of durable data.
        self._write_mark(sealed=False)
        return envelopes

    def _write_mark(self, *, sealed: bool) -> None:
        """Write the active segment's mark (or its seal) into its older slot; no fsync."""
        generation = self._mark_generation + 1
        mark = Mark(
            acked_seq=self._last_seq,
            chain_crc=self._chain_crc,
            generation=generation,
            sealed=sealed,
            body_end=self._offset,
            body_crc=self._body_crc,
        )
        try:
            fsio.pwrite_all(self._require_fd(), encode_mark(mark), mark_slot_offset(generation))
        except OSError as exc:
            raise self._poison(
                f"{self._segment_path}: could not write the acknowledged mark: {exc.strerror}",
                exc,
            ) from None
        self._mark_generation = generation
        self._mark_unsynced = True

    def _write_durably(self, buffer: bytearray) -> None:
        fd = self._require_fd()
        try:
            fsio.pwrite_all(fd, buffer, self._offset)
        except OSError as exc:
            self._cut_back(fd, exc)
            if exc.errno in (errno_codes.ENOSPC, errno_codes.EDQUOT):
                raise LogDiskFull(
                    f"{self._segment_path}: no space left for a batch of {len(buffer)} bytes; "
                    "nothing of it was acknowledged (free space, then retry)",
                    errno=exc.errno,
                ) from None
            raise LogIOError(
                f"{self._segment_path}: write failed: {exc.strerror}; nothing of the batch was "
                "acknowledged",
                errno=exc.errno,
            ) from None
        if self._fsync:
            try:
                os.fsync(fd)
            except OSError as exc:
                raise self._poison(
                    f"fsync of {self._segment_path} failed: {exc.strerror}", exc
                ) from None
        self._mark_unsynced = False

    def _cut_back(self, fd: int, cause: OSError) -> None:
        """Remove a partially written batch so the file holds exactly what was acknowledged."""
        try:
            os.ftruncate(fd, self._offset)
            if self._fsync:
                os.fsync(fd)
        except OSError as exc:
            raise self._poison(
                f"{self._segment_path}: could not remove a partial batch after "
                f"'{cause.strerror}': {exc.strerror}",
                exc,
            ) from None

    def _rotate(self) -> None:
        """Start the next segment before a batch that would overflow the current one.

        The successor is created (durably) first, then the current segment is sealed and
        fsynced: a sealed segment therefore always has a successor, which lets start-up detect
        a removed last segment. A crash in between leaves an unsealed non-last segment, which
        is simply checked frame by frame.
        """
        base = self._last_seq + 1
        try:
            path = _create_segment(self.log_dir, base, self._chain_crc, fsync=self._fsync)
        except _DirSyncFailed as failed:
            raise self._poison(str(failed), failed.cause) from None
        except OSError as exc:
            if exc.errno in (errno_codes.ENOSPC, errno_codes.EDQUOT):
                raise LogDiskFull(
                    f"{self.log_dir}: no space left to start segment {segment_name(base)}",
                    errno=exc.errno,
                ) from None
            raise LogIOError(
                f"{self.log_dir}: could not start segment {segment_name(base)}: {exc.strerror}",
                errno=exc.errno,
            ) from None
        self._write_mark(sealed=True)
        if self._fsync:
            try:
                os.fsync(self._require_fd())
            except OSError as exc:
                raise self._poison(
                    f"fsync of the seal of {self._segment_path} failed", exc
                ) from None
        new_fd = os.open(path, os.O_WRONLY)
        old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self._segment_path = path
        self._offset = SEGMENT_HEADER_BYTES
        self._mark_generation = 1  # a new segment's slots hold generations 0 and 1
        self._body_crc = 0
        self._mark_unsynced = False

    def _poison(self, message: str, cause: OSError) -> LogIOError:
        self._poisoned = message
        return LogIOError(
            f"{message}; the log refuses further appends (a failed fsync is never retried); "
            "restart memstate to recover from what is durable",
            errno=cause.errno,
        )

    def _check_usable(self) -> None:
        if self._poisoned is not None:
            raise LogIOError(
                f"log unusable after an earlier failure: {self._poisoned}; restart memstate"
            )
        self._require_fd()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise InvariantViolation("the event log is closed")
        return self._fd

    # -- retention --

    def prunable_segments(self, *, through_seq: int) -> list[Path]:
        """The segments `prune_segments(through_seq=...)` would delete, oldest first."""
        return [
            path
            for path in prunable_segments(self.log_dir, through_seq=through_seq)
            if path != self._segment_path
        ]

    def prune_segments(self, *, through_seq: int) -> list[str]:
        """Delete whole segments whose records all have seq <= `through_seq`.

        Only for `through_seq` at or before a valid checkpoint (start-up needs a checkpoint to
        begin after a pruned prefix). The segment being written is never removed. A prune
        record (`log/ORIGIN`) is written first, so an interrupted prune is finished by the next
        one and a segment removed by anything else is still detected as missing.
        """
        self._check_usable()
        victims = self.prunable_segments(through_seq=through_seq)
        if not victims:
            return []
        listed = list_segments(self.log_dir)
        keep_path = listed[len(victims)][1]
        with SegmentFile(keep_path) as kept:
            header = kept.header()
        if isinstance(header, HeaderProblem):
            raise MidLogCorruption(header.message, file=str(keep_path), offset=header.offset)
        origin = LogOrigin(base_seq=header.base_seq, prev_chain_crc=header.prev_chain_crc)
        fsio.atomic_write(self.log_dir / ORIGIN_FILENAME, encode_origin(origin), fsync=self._fsync)
        for path in victims:
            os.unlink(path)
        if self._fsync:
            fsio.fsync_dir(self.log_dir)
        return [path.name for path in victims]

    # -- closing --

    def close(self) -> None:
        """Make the last mark durable, close the segment and release the lock.

        Idempotent; never raises (a failed fsync here only leaves the mark one batch behind:
        every acknowledged record was already durable)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            if self._mark_unsynced and self._fsync and self._poisoned is None:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
            os.close(fd)
        self._lock.release()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_batch(envelopes: Sequence[Envelope]) -> None:
    """Reject malformed batches: empty, too long, or with a transaction that is not whole."""
    if not envelopes:
        raise InvariantViolation("an append needs at least one event")
    if len(envelopes) > MAX_BATCH_RECORDS:
        raise InvariantViolation(
            f"a batch holds at most {MAX_BATCH_RECORDS} records, got {len(envelopes)}"
        )
    check_transactions(envelopes)


def check_transactions(envelopes: Iterable[Envelope]) -> None:
    """`InvariantViolation` unless `envelopes` are whole transactions (the grouping rule is
    memstate.store.transactions') whose announced counts are whole numbers on inputs."""
    try:
        for transaction in group_transactions(envelopes, envelope_itself):
            _check_announcement(transaction.head)
    except TransactionProblem as problem:
        head = problem.head
        _check_announcement(head)  # its own count is checked before what follows it
        if problem.kind == "orphan_decision":
            raise InvariantViolation(
                f"seq {head.seq}: {head.event.kind} is a decision that no input in the batch "
                "announces: a transaction must be appended whole"
            ) from None
        if problem.kind == "cut_short":
            raise InvariantViolation(
                f"seq {head.seq} announces {head.decisions} decisions but the batch holds only "
                f"{len(problem.taken) - 1} after it: a transaction must be appended whole"
            ) from None
        offender = problem.offender
        raise InvariantViolation(
            f"seq {offender.seq if offender else 0}: "
            f"{offender.event.kind if offender else 'a record'} cannot be one of the decisions "
            f"announced by seq {head.seq}"
        ) from None


def _check_announcement(envelope: Envelope) -> None:
    """Only inputs announce decisions, and a count is a whole number."""
    decisions = envelope.decisions
    if decisions is None:
        return
    if isinstance(decisions, bool) or decisions < 0:
        raise InvariantViolation(f"seq {envelope.seq}: decisions must be >= 0")
    if envelope.event.role != "input":
        raise InvariantViolation(
            f"seq {envelope.seq}: only inputs announce decisions ({envelope.event.kind} "
            f"is a {envelope.event.role})"
        )


class _DirSyncFailed(Exception):
    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(message)
        self.cause = cause


def _create_segment(log_dir: Path, base_seq: int, prev_chain_crc: int, *, fsync: bool) -> Path:
    """Temp file with the header → fsync → rename → fsync the directory."""
    path = log_dir / segment_name(base_seq)
    temp = path.with_name(path.name + ".tmp")
    try:
        fsio.write_new_file(temp, encode_segment_header(base_seq, prev_chain_crc), fsync=fsync)
        os.rename(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if fsync:
        try:
            fsio.fsync_dir(log_dir)
        except OSError as exc:
            raise _DirSyncFailed(
                f"fsync of directory {log_dir} failed: {exc.strerror}", exc
            ) from None
    return path


def inspect_log(
    state_dir: Path, *, full: bool = False, on_record: OnRecord | None = None
) -> LogScan:
    """The one verdict on a log's files that start-up (`EventLog.open`) and `verify` share.

    `scan_log`, then the rules that look beyond the frames, in this order: a recoverable tail
    (torn frame, incomplete transaction) may be cut only if no *acknowledged* record goes with
    it (the segment's mark), and no valid checkpoint may lie beyond the end of the log. A
    violation replaces `scan.problem` with a non-recoverable one (exit 65) naming what is missing.
    """
    scan = scan_log(Path(state_dir) / LOG_DIRNAME, full=full, on_record=on_record)
    if scan.problem is None or scan.problem.recoverable:
        beyond = _acknowledged_beyond_end(scan) or _checkpoint_beyond_end(Path(state_dir), scan)
        if beyond is not None:
            scan.problem = beyond
    return scan


def end_after_recovery(scan: LogScan) -> int:
    """The last seq the log keeps once a recoverable tail is cut."""
    incomplete = find_incomplete_transaction(scan)
    return incomplete.seq - 1 if incomplete is not None else scan.last_seq


def _acknowledged_beyond_end(scan: LogScan) -> LogProblem | None:
    """A segment whose mark says more was acknowledged than it holds lost acknowledged records.

    Marks are written only after the fsync that made their records durable, so after a crash a
    mark is never ahead of the data: this is a cut at a record boundary, a torn tail over
    acknowledged records (`truncate -s -8`), or a shortened file, never a crash.
    """
    if not scan.segments:
        return None
    end = end_after_recovery(scan)
    for index, segment in enumerate(scan.segments):
        last = index == len(scan.segments) - 1
        kept = end if last else segment.last_seq
        if segment.acked_seq <= kept:
            continue
        cut = ""
        if last and scan.problem is not None:
            what = scan.problem.kind.replace("_", " ")
            cut = f" once the {what} at offset {scan.problem.offset} is cut"
        elif last and kept < segment.last_seq:
            cut = " once the incomplete transaction is cut"
        return LogProblem(
            "corruption",
            str(scan.log_dir / segment.name),
            segment.end_offset,
            kept + 1,
            f"the log ends at seq {kept}{cut}, but the segment's mark records seq "
            f"{segment.acked_seq} as acknowledged: acknowledged records {kept + 1}.."
            f"{segment.acked_seq} are missing (the segment was cut at or inside acknowledged "
            "records)",
        )
    return None


def _checkpoint_beyond_end(state_dir: Path, scan: LogScan) -> LogProblem | None:
    """A valid checkpoint beyond the end of the log means durable records went missing.

    Checkpoints are written only after the records they cover are durable, and repair moves
    aside those it cuts past, so this catches what the chain cannot: a whole last segment of a
    format 1 log that was removed, or a log restored from an older backup.
    """
    from memstate.store.checkpoint import list_checkpoints, load_checkpoint

    end = end_after_recovery(scan)
    for seq, path in reversed(list_checkpoints(state_dir)):
        if seq <= end:
            return None
        try:
            load_checkpoint(path)
        except (LogCorruption, SchemaError):
            continue  # a damaged checkpoint proves nothing; start-up will skip it
        tail = scan.segments[-1] if scan.segments else None
        return LogProblem(
            "corruption",
            str(scan.log_dir / tail.name) if tail else str(scan.log_dir),
            tail.end_offset if tail else 0,
            end + 1,
            f"the log ends at seq {end}, but checkpoint {path.name} covers records up to seq "
            f"{seq}: records that were durable are missing (a removed last segment, or a log "
            "restored from an older copy)",
        )
    return None


def _remove_temp_files(log_dir: Path, snap_dir: Path, *, fsync: bool) -> tuple[str, ...]:
    """Delete leftovers of an interrupted rotation or checkpoint (they hold nothing durable)."""
    removed: list[str] = []
    for directory in (log_dir, snap_dir):
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        doomed = [name for name in names if name.endswith(".tmp")]
        for name in doomed:
            os.unlink(directory / name)
            removed.append(str(directory / name))
        if doomed and fsync:
            fsio.fsync_dir(directory)
    return tuple(removed)


def truncate_recoverable_tail(
    scan: LogScan, *, fsync: bool, removed_temp_files: tuple[str, ...] = ()
) -> RecoveryReport:
    """Apply the recovery policy to a scan: cut a torn tail / incomplete transaction, or refuse.

    Raises the problem's error for anything that is not recoverable. The segment is copied to
    a `.broken-*` file (durably) before it is truncated.
    """
    problem = scan.problem
    if problem is not None and not problem.recoverable:
        raise problem.to_error()
    incomplete = find_incomplete_transaction(scan)
    if problem is None and incomplete is None:
        return RecoveryReport(removed_temp_files=removed_temp_files)
    tail = scan.segments[-1]
    log_path = scan.log_dir / tail.name
    cut = incomplete.offset if incomplete is not None else tail.end_offset
    reasons = []
    if problem is not None:
        reasons.append(f"torn tail at offset {problem.offset}: {problem.message}")
    if incomplete is not None:
        reasons.append(
            f"incomplete transaction at offset {incomplete.offset}: {incomplete.message}"
        )
    dropped_frames = 0
    if incomplete is not None:
        dropped_frames = sum(1 for frame in scan.tail_frames if frame[0] >= incomplete.offset)
    copy = fsio.keep_broken_copy(log_path, fsync=fsync)
    fsio.truncate_durably(log_path, cut, fsync=fsync)
    return RecoveryReport(
        truncated=True,
        segment=tail.name,
        offset=cut,
        bytes_dropped=tail.size_bytes - cut,
        broken_copy=str(copy),
        reason="; ".join(reasons),
        incomplete_transaction_seq=incomplete.seq if incomplete else None,
        records_dropped=dropped_frames,
        removed_temp_files=removed_temp_files,
    )


def _last_seq_after(scan: LogScan, report: RecoveryReport) -> int:
    if report.incomplete_transaction_seq is not None:
        return report.incomplete_transaction_seq - 1
    return scan.last_seq


def _chain_after(scan: LogScan, report: RecoveryReport) -> int:
    if report.incomplete_transaction_seq is None:
        return scan.chain_crc
    target = report.incomplete_transaction_seq - 1
    if target == scan.tail_start[0]:
        return scan.tail_start[1]
    for frame in scan.tail_frames:
        if frame[1] == target:
            return frame[4]
    raise InvariantViolation(f"chain CRC of seq {target} not found in the scanned tail")


# --- readers --------------------------------------------------------------------------------------


class LogReader:
    """Lock-free reader of a state directory's log.

    Works beside a running writer: it sees a prefix of the log and stops cleanly at an
    incomplete tail. Every segment it reads is checked (header, CRC chain from the segment
    start, seq continuity, links between the segments it reads); damage raises
    `MidLogCorruption`. Reading from seq N opens the segment whose name says it holds N and
    decodes nothing before N.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.log_dir = self.state_dir / LOG_DIRNAME
        self.decoded_count = 0  # envelopes decoded by `read` (what start-up tests count)

    def segments(self) -> list[tuple[int, Path]]:
        """(base_seq, path) of the segments present now."""
        return list_segments(self.log_dir)

    def first_seq(self) -> int:
        """The first seq the log holds (1 unless pruned)."""
        listed = self.segments()
        return listed[0][0] if listed else 1

    def read_frames(
        self, from_seq: int = 1, to_seq: int | None = None
    ) -> Iterator[tuple[memoryview, int, int, str, int]]:
        """(payload, seq, frame offset, segment name, chain CRC after it) of valid records.

        The hot path under every other read: payloads are views into the segment just read
        (no copy), valid while the caller holds them.
        """
        listed = self.segments()
        if not listed:
            return
        bases = [base for base, _ in listed]
        start = max(bisect.bisect_right(bases, from_seq) - 1, 0)
        previous: SegmentInfo | None = None
        for index in range(start, len(listed)):
            base, path = listed[index]
            if to_seq is not None and base > to_seq:
                return
            last = index == len(listed) - 1
            try:
                segment = SegmentFile(path)
            except FileNotFoundError:
                if last:
                    return  # removed under us by a prune or repair: nothing more to read
                raise MidLogCorruption("segment vanished while reading", file=str(path)) from None
            with segment:
                header = self._header(segment.header(), path, base, previous)
                name = path.name
                mark = header.mark
                prefix = (
                    segment.verified_prefix(header)
                    if mark is not None and not mark.sealed and from_seq > header.base_seq
                    else None
                )
                if prefix is not None:
                    # The acknowledged prefix is checked by its CRC; the frames before the first
                    # one wanted are skipped by their heads instead of walked.
                    start_seq = min(from_seq, prefix.acked_seq + 1)
                    offset, chain = segment.locate(header, prefix, start_seq)
                    walk = FrameWalk(segment, offset, start_seq, chain)
                else:
                    walk = FrameWalk(
                        segment, header.frames_start, header.base_seq, header.prev_chain_crc
                    )
                try:
                    for offset, seq, payload, _, crc in walk:
                        if to_seq is not None and seq > to_seq:
                            return
                        if seq >= from_seq:
                            yield payload, seq, offset, name, crc
                except FrameFailure as failure:
                    verdict = segment.classify(failure, last_segment=last)
                    if verdict.torn:
                        return  # an incomplete tail: stop cleanly
                    raise LogProblem(
                        "corruption",
                        str(path),
                        failure.offset,
                        failure.expected_seq,
                        verdict.reason,
                    ).to_error() from None
                seal = header.mark
                if (
                    seal is not None
                    and seal.sealed
                    and (
                        walk.end,
                        walk.last_seq,
                        walk.chain_crc,
                        walk.body_crc,
                    )
                    != (seal.body_end, seal.acked_seq, seal.chain_crc, seal.body_crc)
                ):
                    raise MidLogCorruption(
                        f"the frames of sealed segment {name} do not match its seal",
                        file=str(path),
                        offset=header.frames_start,
                        seq=header.base_seq,
                    )
                previous = SegmentInfo(
                    name=path.name,
                    base_seq=header.base_seq,
                    prev_chain_crc=header.prev_chain_crc,
                    last_seq=walk.last_seq,
                    chain_crc=walk.chain_crc,
                    end_offset=walk.end,
                    size_bytes=segment.size,
                )

    def _header(
        self,
        decoded: SegmentHeader | HeaderProblem,
        path: Path,
        base: int,
        previous: SegmentInfo | None,
    ) -> SegmentHeader:
        scan = LogScan(
            log_dir=self.log_dir, segments=[previous] if previous else [], problem=None, origin=None
        )
        if previous is None:
            # Reading from the middle: the header's own CRC vouches for its chain value.
            if isinstance(decoded, HeaderProblem):
                kind: ProblemKind = "newer_format" if decoded.newer_format else "corruption"
                raise LogProblem(kind, str(path), decoded.offset, base, decoded.message).to_error()
            if decoded.base_seq != base:
                raise LogProblem(
                    "corruption",
                    str(path),
                    16,
                    base,
                    f"file name says seq {base} but the header says {decoded.base_seq}",
                ).to_error()
            return decoded
        header = _checked_header(scan, decoded, path, base)
        if header is None:
            if scan.problem is None:
                raise InvariantViolation("a rejected header left no problem")
            raise scan.problem.to_error()
        return header

    def read_with_crc(
        self, from_seq: int = 1, to_seq: int | None = None
    ) -> Iterator[tuple[RawRecord, int]]:
        """Valid records with seq in [from_seq, to_seq], each with the chain CRC after it."""
        for payload, seq, offset, segment, crc in self.read_frames(from_seq, to_seq):
            yield RawRecord(seq, bytes(payload), segment, offset), crc

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[RawRecord]:
        """Valid records as stored, without decoding (benchmarks, tools)."""
        for payload, seq, offset, segment, _ in self.read_frames(from_seq, to_seq):
            yield RawRecord(seq, bytes(payload), segment, offset)

    def read(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        complete_transactions: bool = True,
    ) -> Iterator[Envelope]:
        """Decoded envelopes with seq in [from_seq, to_seq] (upcast to the current schema).

        With `complete_transactions` (the default) an input whose announced decisions are not
        all in the log yet (a tail being written, or a crash not yet recovered) is held back,
        like the rest of an incomplete tail.
        """
        pending: list[Envelope] = []
        owed = 0
        frames = self.read_frames(from_seq, None if complete_transactions else to_seq)
        for payload, seq, offset, segment, _ in frames:
            self.decoded_count += 1
            envelope = decode_at(payload, seq, segment, offset)
            if owed:
                pending.append(envelope)
                owed -= 1
                if owed == 0:
                    yield from (e for e in pending if to_seq is None or e.seq <= to_seq)
                    pending.clear()
            elif complete_transactions and envelope.decisions:
                pending.append(envelope)
                owed = envelope.decisions
            elif to_seq is None or envelope.seq <= to_seq:
                yield envelope
            if not owed and to_seq is not None and envelope.seq >= to_seq:
                return

    def chain_crc_at(self, seq: int) -> int | None:
        """The chain CRC after record `seq` (None if the log does not hold it)."""
        listed = self.segments()
        if seq == 0 and (not listed or listed[0][0] == 1):
            return CHAIN_SEED
        if listed and seq == listed[0][0] - 1:
            with SegmentFile(listed[0][1]) as first:
                header = first.header()
            if isinstance(header, HeaderProblem):
                raise MidLogCorruption(header.message, file=str(listed[0][1]), offset=0)
            return header.prev_chain_crc
        holder = [path for base, path in listed if base <= seq][-1:]
        if holder:
            with SegmentFile(holder[0]) as segment:
                header = segment.header()
                prefix = (
                    segment.verified_prefix(header)
                    if not isinstance(header, HeaderProblem)
                    and header.mark is not None
                    and not header.mark.sealed
                    and header.base_seq <= seq <= header.mark.acked_seq
                    else None
                )
                if prefix is not None and not isinstance(header, HeaderProblem):
                    # Inside the CRC-checked acknowledged prefix: the chain CRC after `seq` is
                    # the stored CRC of its frame, found by walking frame heads only.
                    return segment.locate(header, prefix, seq + 1)[1]
        for record, crc in self.read_with_crc(seq, seq):
            if record.seq == seq:
                return crc
        return None


def decode_record(record: RawRecord) -> Envelope:
    """Decode one stored record, naming its place in any error; checks the seq matches."""
    return decode_at(record.payload, record.seq, record.segment, record.offset)


def decode_at(payload: bytes | memoryview, seq: int, segment: str, offset: int) -> Envelope:
    """`decode_record` for a payload found at `segment`:`offset` in frame `seq`."""
    try:
        envelope = decode_envelope(payload)
    except SchemaError as exc:
        raise SchemaError(f"{segment}: offset {offset}: seq {seq}: {exc}") from None
    if envelope.seq != seq:
        # Pair check: the CRC vouches for the bytes, this for the writer that framed them.
        raise MidLogCorruption(
            f"frame says seq {seq} but its envelope says {envelope.seq}",
            file=segment,
            offset=offset,
            seq=seq,
        )
    return envelope


# --- verification ---------------------------------------------------------------------------------
