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

**Recovery on open** scans every segment (headers, CRC chain, seq continuity; payloads are not
decoded). A torn tail in the last segment is copied to `<segment>.broken-<UTC>`, truncated and
fsynced, and reported in `EventLog.recovery`; the caller then appends a `log_tail_truncated`
note. Anything else is refused with file, offset and seq (`MidLogCorruption`, exit 65), pointing
to `memstate log verify` and `memstate log repair`; salvage is offline and explicit only
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, cast

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
    EVENT_KINDS,
    SCHEMA_VERSION,
    AnyEvent,
    Envelope,
    Event,
    LogTailTruncated,
)
from memstate.store import fsio
from memstate.store.format import (
    CHAIN_SEED,
    LOG_DIRNAME,
    SEGMENT_HEADER_BYTES,
    SNAP_DIRNAME,
    Frame,
    FrameFailure,
    HeaderProblem,
    SegmentHeader,
    append_frame,
    classify_failure,
    decode_segment_header,
    encode_segment_header,
    iter_frames,
    parse_segment_name,
    segment_name,
)

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


# --- scanning -------------------------------------------------------------------------------------

OnRecord = Callable[[int, memoryview, str, int], None]
"""Called by `scan_log` for each valid record: (seq, payload, segment file name, frame offset)."""


@dataclass
class LogScan:
    """Result of a full scan. `problem` is the first problem found (scanning stops there)."""

    log_dir: Path
    segments: list[SegmentInfo]
    problem: LogProblem | None
    origin: LogOrigin | None
    tail_data: bytes = b""  # content of the last segment scanned
    tail_frames: list[Frame] = field(default_factory=list)

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


def scan_log(log_dir: Path, *, on_record: OnRecord | None = None) -> LogScan:
    """Check every segment in order: headers, names, seq continuity, the CRC chain.

    Stops at the first problem, classified as a torn tail (recoverable) or not. Does not decode
    payloads unless `on_record` does. The frames of the last segment are kept (up to
    `MAX_BATCH_RECORDS`) so the caller can look for an incomplete transaction.
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
        data = fsio.read_file(path)
        header = _checked_header(scan, data, path, name_base)
        if header is None:
            return scan
        # One more than a batch: recovery needs the chain CRC of the record before a dropped
        # transaction, which may be the first of the batch.
        keep: deque[Frame] = deque(maxlen=MAX_BATCH_RECORDS + 1 if last else 0)
        end, last_seq, chain = SEGMENT_HEADER_BYTES, header.base_seq - 1, header.prev_chain_crc
        view = memoryview(data)
        try:
            for frame in iter_frames(data, SEGMENT_HEADER_BYTES, header.base_seq, chain):
                if on_record is not None:
                    on_record(frame[1], view[frame[2] : frame[3]], path.name, frame[0])
                keep.append(frame)
                end, last_seq, chain = frame[4], frame[1], frame[5]
        except FrameFailure as failure:
            verdict = classify_failure(data, failure, last_segment=last)
            scan.problem = LogProblem(
                "torn_tail" if verdict.torn else "corruption",
                str(path),
                failure.offset,
                failure.expected_seq,
                verdict.reason,
            )
        scan.segments.append(
            SegmentInfo(
                name=path.name,
                base_seq=header.base_seq,
                prev_chain_crc=header.prev_chain_crc,
                last_seq=last_seq,
                chain_crc=chain,
                end_offset=end,
                size_bytes=len(data),
            )
        )
        if last:
            scan.tail_data = data
            scan.tail_frames = list(keep)
        if scan.problem is not None:
            return scan
    return scan


def _checked_header(scan: LogScan, data: bytes, path: Path, name_base: int) -> SegmentHeader | None:
    """Decode and link-check one segment header; on failure record the problem, return None."""
    previous = scan.segments[-1] if scan.segments else None
    expected_seq = previous.last_seq + 1 if previous else name_base

    def fail(kind: ProblemKind, offset: int, message: str) -> None:
        scan.problem = LogProblem(
            kind, str(path), offset, expected_seq, message, segment_level=True
        )

    decoded = decode_segment_header(data)
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
    return incomplete_transaction(scan.tail_data, scan.tail_frames, path)


def incomplete_transaction(data: bytes, frames: Sequence[Frame], path: str) -> LogProblem | None:
    """`find_incomplete_transaction` over explicit frames (the valid frames of one segment)."""
    view = memoryview(data)
    for index in range(len(frames) - 1, max(len(frames) - 2 - MAX_BATCH_RECORDS, -1), -1):
        offset, seq, start, end, _, _ = frames[index]
        try:
            head = decode_head(view[start:end])
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
        scan = scan_log(log_dir)
        if scan.problem is None or scan.problem.recoverable:
            _refuse_if_shorter_than_checkpoints(state_dir, scan)
        report = truncate_recoverable_tail(scan, fsync=fsync, removed_temp_files=removed)
        if scan.segments:
            tail = scan.segments[-1]
            path, offset = (
                log_dir / tail.name,
                report.offset if report.truncated else tail.end_offset,
            )
            last_seq = _last_seq_after(scan, report)
            chain = _chain_after(scan, report)
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
                event=_known_event(event),
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
        return envelopes

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
        """Start the next segment before a batch that would overflow the current one."""
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
        new_fd = os.open(path, os.O_WRONLY)
        old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self._segment_path = path
        self._offset = SEGMENT_HEADER_BYTES

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
        listed = list_segments(self.log_dir)
        return [
            path
            for (_, path), (next_base, _) in itertools.pairwise(listed)
            if next_base - 1 <= through_seq and path != self._segment_path
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
        header = decode_segment_header(fsio.read_file(keep_path)[:SEGMENT_HEADER_BYTES])
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
        """Close the segment and release the lock. Idempotent; never raises for a poisoned log."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._lock.release()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _known_event(event: Event) -> AnyEvent:
    if type(event) not in _KNOWN_TYPES:
        raise InvariantViolation(f"{type(event).__name__} is not an event of the catalogue")
    return cast("AnyEvent", event)


_KNOWN_TYPES = frozenset(EVENT_KINDS.values())


def check_batch(envelopes: Sequence[Envelope]) -> None:
    """Reject malformed batches: empty, too long, or with a transaction that is not whole."""
    if not envelopes:
        raise InvariantViolation("an append needs at least one event")
    if len(envelopes) > MAX_BATCH_RECORDS:
        raise InvariantViolation(
            f"a batch holds at most {MAX_BATCH_RECORDS} records, got {len(envelopes)}"
        )
    index = 0
    while index < len(envelopes):
        envelope = envelopes[index]
        decisions = envelope.decisions
        index += 1
        if decisions is None:
            continue
        if isinstance(decisions, bool) or decisions < 0:
            raise InvariantViolation(f"seq {envelope.seq}: decisions must be >= 0")
        if envelope.event.role != "input":
            raise InvariantViolation(
                f"seq {envelope.seq}: only inputs announce decisions ({envelope.event.kind} "
                f"is a {envelope.event.role})"
            )
        following = envelopes[index : index + decisions]
        if len(following) < decisions:
            raise InvariantViolation(
                f"seq {envelope.seq} announces {decisions} decisions but the batch holds only "
                f"{len(following)} after it: a transaction must be appended whole"
            )
        for decision in following:
            if decision.event.role != "decision" or decision.decisions is not None:
                raise InvariantViolation(
                    f"seq {decision.seq}: {decision.event.kind} cannot be one of the decisions "
                    f"announced by seq {envelope.seq}"
                )
        index += decisions


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


def _refuse_if_shorter_than_checkpoints(state_dir: Path, scan: LogScan) -> None:
    """A valid checkpoint beyond the end of the log means durable records went missing.

    Checkpoints are written only after the records they cover are durable, and repair moves
    aside those it cuts past, so this catches what the chain cannot: a whole *last* segment
    that was removed (or a log restored from an older backup).
    """
    from memstate.store.checkpoint import list_checkpoints, load_checkpoint

    end = scan.last_seq
    for seq, path in reversed(list_checkpoints(state_dir)):
        if seq <= end:
            return
        try:
            load_checkpoint(path)
        except (LogCorruption, SchemaError):
            continue  # a damaged checkpoint proves nothing; start-up will skip it
        tail = scan.segments[-1].name if scan.segments else LOG_DIRNAME
        raise MidLogCorruption(
            f"the log ends at seq {end}, but checkpoint {path.name} covers records up to seq "
            f"{seq}: records that were durable are missing (a removed last segment, or a log "
            f"restored from an older copy); {REPAIR_HINT}",
            file=str(scan.log_dir / tail),
            seq=end + 1,
        )


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
    tail = scan.segments[-1]
    if target == tail.base_seq - 1:
        return tail.prev_chain_crc
    for frame in scan.tail_frames:
        if frame[1] == target:
            return frame[5]
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
                data = fsio.read_file(path)
            except FileNotFoundError:
                if last:
                    return  # removed under us by a prune or repair: nothing more to read
                raise MidLogCorruption("segment vanished while reading", file=str(path)) from None
            header = self._header(data, path, base, previous)
            view = memoryview(data)
            name = path.name
            end, last_seq, chain = SEGMENT_HEADER_BYTES, header.base_seq - 1, header.prev_chain_crc
            try:
                for offset, seq, begin, stop, frame_end, crc in iter_frames(
                    data, SEGMENT_HEADER_BYTES, header.base_seq, chain
                ):
                    last_seq, chain, end = seq, crc, frame_end
                    if to_seq is not None and seq > to_seq:
                        return
                    if seq >= from_seq:
                        yield view[begin:stop], seq, offset, name, crc
            except FrameFailure as failure:
                verdict = classify_failure(data, failure, last_segment=last)
                if verdict.torn:
                    return  # an incomplete tail: stop cleanly
                raise LogProblem(
                    "corruption", str(path), failure.offset, failure.expected_seq, verdict.reason
                ).to_error() from None
            previous = SegmentInfo(
                name=path.name,
                base_seq=header.base_seq,
                prev_chain_crc=header.prev_chain_crc,
                last_seq=last_seq,
                chain_crc=chain,
                end_offset=end,
                size_bytes=len(data),
            )

    def _header(
        self, data: bytes, path: Path, base: int, previous: SegmentInfo | None
    ) -> SegmentHeader:
        scan = LogScan(
            log_dir=self.log_dir, segments=[previous] if previous else [], problem=None, origin=None
        )
        if previous is None:
            # Reading from the middle: the header's own CRC vouches for its chain value.
            decoded = decode_segment_header(data)
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
        header = _checked_header(scan, data, path, base)
        if header is None:
            assert scan.problem is not None
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
            header = decode_segment_header(fsio.read_file(listed[0][1])[:SEGMENT_HEADER_BYTES])
            if isinstance(header, HeaderProblem):
                raise MidLogCorruption(header.message, file=str(listed[0][1]), offset=0)
            return header.prev_chain_crc
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


class VerifyReport(msgspec.Struct, frozen=True):
    """What `verify` found. `problem` is the first non-recoverable problem (None: log is sound).

    `tail` is a recoverable problem at the end (a torn tail or an incomplete transaction) that
    the next `EventLog.open` (or `memstate log repair --truncate-torn-tail`) will cut off; while
    a daemon is writing it can also be a batch in flight.
    """

    state_dir: str
    segments: list[SegmentInfo]
    first_seq: int
    last_seq: int
    chain_crc: int
    records: int
    decoded: bool
    problem: LogProblem | None = None
    tail: LogProblem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def raise_for_problem(self) -> None:
        """Raise the first problem's error (exit 65), if any."""
        if self.problem is not None:
            raise self.problem.to_error()


def verify(state_dir: Path, *, decode: bool = True) -> VerifyReport:
    """Check the whole log without modifying anything (no lock needed).

    Verifies headers, file names, seq continuity, the CRC chain and, with `decode`, that every
    payload decodes under this build's schema (a newer `schema_v` is reported as a problem).
    """
    state_dir = Path(state_dir)
    log_dir = state_dir / LOG_DIRNAME
    schema_problem: list[LogProblem] = []

    def check(seq: int, payload: memoryview, segment: str, offset: int) -> None:
        if schema_problem:
            return
        try:
            decode_record(RawRecord(seq, bytes(payload), segment, offset))
        except SchemaError as exc:
            schema_problem.append(
                LogProblem("schema", str(log_dir / segment), offset, seq, str(exc))
            )
        except LogCorruption as exc:
            schema_problem.append(
                LogProblem("corruption", str(log_dir / segment), offset, seq, exc.message)
            )

    try:
        scan = scan_log(log_dir, on_record=check if decode else None)
    except LogCorruption as exc:
        damaged = LogProblem("corruption", exc.file, exc.offset or 0, exc.seq or 0, exc.message)
        return VerifyReport(str(state_dir), [], 1, 0, CHAIN_SEED, 0, decode, problem=damaged)
    problem = scan.problem
    if schema_problem and (problem is None or _before(schema_problem[0], problem)):
        problem = schema_problem[0]
    tail: LogProblem | None = None
    if problem is not None and problem.recoverable:
        tail, problem = problem, None
    if problem is None:
        # An incomplete transaction starts before a torn frame: it is where the cut will be.
        tail = find_incomplete_transaction(scan) or tail
    first = scan.first_seq()
    records = sum(segment.record_count for segment in scan.segments)
    return VerifyReport(
        state_dir=str(state_dir),
        segments=scan.segments,
        first_seq=first,
        last_seq=scan.last_seq,
        chain_crc=scan.chain_crc,
        records=records,
        decoded=decode,
        problem=problem,
        tail=tail,
    )


def _before(a: LogProblem, b: LogProblem) -> bool:
    return (a.seq, a.offset) < (b.seq, b.offset)
