"""The durable event log's writer: segments, append with group commit, recovery on open.

Theory of operation
-------------------
The log is the source of truth; everything else (state, checkpoints, the cgroup tree) is derived
from it. It lives in `<state_dir>/log/` as segment files named by the first sequence number they
hold (`%020d.evlog`, Kafka's convention: `--from-seq N` finds its segment by name). The byte layout
and the torn-tail rules are in `memstate.store.format`; walking the segments is
`memstate.store.scan`, reading them `memstate.store.reader`; this module writes.

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

import contextlib
import errno as errno_codes
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from crc32c import crc32c

from memstate.core.codec import encode_envelope
from memstate.core.errors import (
    InvariantViolation,
    LogDiskFull,
    LogIOError,
    MidLogCorruption,
)
from memstate.core.events import (
    SCHEMA_VERSION,
    Envelope,
    Event,
    known_event,
)
from memstate.store import fsio
from memstate.store.format import (
    CHAIN_SEED,
    LOG_DIRNAME,
    SEGMENT_HEADER_BYTES,
    SNAP_DIRNAME,
    HeaderProblem,
    Mark,
    append_frame,
    encode_mark,
    encode_segment_header,
    mark_slot_offset,
    segment_name,
)
from memstate.store.inspection import (
    chain_after_recovery,
    inspect_log,
    last_seq_after_recovery,
    remove_temp_files,
    truncate_recoverable_tail,
)
from memstate.store.problems import RecoveryReport
from memstate.store.scan import (
    MAX_BATCH_RECORDS,
    ORIGIN_FILENAME,
    LogOrigin,
    encode_origin,
    list_segments,
    prunable_segments,
)
from memstate.store.segio import SegmentFile
from memstate.store.transactions import TransactionProblem, envelope_itself, group_transactions

DEFAULT_SEGMENT_BYTES = 16 << 20


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
        removed = remove_temp_files(log_dir, state_dir / SNAP_DIRNAME, fsync=fsync)
        scan = inspect_log(state_dir)
        report = truncate_recoverable_tail(scan, fsync=fsync, removed_temp_files=removed)
        generation, body_crc = 1, 0
        if scan.segments:
            tail = scan.segments[-1]
            path, offset = (
                log_dir / tail.name,
                report.offset if report.truncated else tail.end_offset,
            )
            last_seq = last_seq_after_recovery(scan, report)
            chain = chain_after_recovery(scan, report)
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
