"""Checking a log without changing it: `memstate log verify` and the daemon's background check.

`verify` gives start-up's verdict by running start-up's own reads (`check_startup_reads` in
memstate.store.recovery), so the two can never disagree (docs/event-log.md, "What start-up checks");
`full=True` and `check_sealed_bodies` add the sealed segments' bodies, which start-up trusts to
their seals. Kept apart from the writer and reader modules so they do not import recovery.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from memstate.core.errors import LogCorruption, SchemaError
from memstate.store.format import CHAIN_SEED, LOG_DIRNAME, HeaderProblem
from memstate.store.inspection import inspect_log
from memstate.store.problems import LogProblem, SegmentInfo
from memstate.store.reader import decode_at
from memstate.store.recovery import check_startup_reads
from memstate.store.scan import find_incomplete_transaction, list_segments
from memstate.store.segio import SegmentFile


class VerifyReport(msgspec.Struct, frozen=True):
    """What `verify` found. `problem` is the first non-recoverable problem (None: log is sound).

    `tail` is a recoverable problem at the end (a torn tail or an incomplete transaction of
    unacknowledged records) that the next `EventLog.open` (or `memstate log repair
    --truncate-torn-tail`) will cut off; while a daemon is writing it can also be a batch in
    flight. `sealed_unread` counts sealed segments checked from their seal only (not `full`).
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
    full: bool = False
    sealed_unread: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None

    def raise_for_problem(self) -> None:
        """Raise the first problem's error (exit 65), if any."""
        if self.problem is not None:
            raise self.problem.to_error()


def verify(
    state_dir: Path,
    *,
    decode: bool = True,
    full: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check the log without modifying anything (no lock needed).

    By default this is exactly start-up's verdict (`inspect_log`, then what `recover_state`
    reads: the segment holding the checkpoint's seq and every record after it, decoded): same
    problem, file, offset and seq. `full` adds every frame of every sealed segment, compared
    with its seal, and (with `decode`) decodes every record. `decode=False` checks framing only.
    With `full`, `on_progress` is called with the seq of every frame walked (a progress bar).
    """
    state_dir = Path(state_dir)
    log_dir = state_dir / LOG_DIRNAME
    schema_problem: list[LogProblem] = []

    def check(seq: int, payload: memoryview, segment: str, offset: int) -> None:
        if schema_problem:
            return
        try:
            decode_at(payload, seq, segment, offset)
        except SchemaError as exc:
            schema_problem.append(
                LogProblem("schema", str(log_dir / segment), offset, seq, str(exc))
            )
        except LogCorruption as exc:
            schema_problem.append(
                LogProblem("corruption", str(log_dir / segment), offset, seq, exc.message)
            )

    def walked(seq: int, payload: memoryview, segment: str, offset: int) -> None:
        if on_progress is not None:
            on_progress(seq)
        if decode:
            check(seq, payload, segment, offset)

    # Without `full` no hook: a hook makes the scan walk every sealed segment's frames.
    hooked = full and (decode or on_progress is not None)
    try:
        scan = inspect_log(state_dir, full=full, on_record=walked if hooked else None)
    except LogCorruption as exc:
        damaged = LogProblem("corruption", exc.file, exc.offset or 0, exc.seq or 0, exc.message)
        return VerifyReport(
            str(state_dir), [], 1, 0, CHAIN_SEED, 0, decode, problem=damaged, full=full
        )
    problem = scan.problem
    if schema_problem and (problem is None or _before(schema_problem[0], problem)):
        problem = schema_problem[0]
    tail: LogProblem | None = None
    if problem is not None and problem.recoverable:
        tail, problem = problem, None
    if problem is None:
        # An incomplete transaction starts before a torn frame: it is where the cut will be.
        tail = find_incomplete_transaction(scan) or tail
        if decode:
            problem = check_startup_reads(state_dir)
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
        full=full,
        sealed_unread=0 if full else sum(1 for s in scan.segments[:-1] if s.sealed),
    )


def check_sealed_bodies(state_dir: Path) -> LogProblem | None:
    """Compare every sealed segment's bytes with its seal (length and body CRC32C).

    This is the part of `verify --full` that start-up leaves out (it checks sealed segments from
    their seal only); the daemon runs it in the background after READY. Chunked, C-speed CRC.
    """
    for _, path in list_segments(Path(state_dir) / LOG_DIRNAME):
        try:
            segment = SegmentFile(path)
        except FileNotFoundError:
            continue  # pruned meanwhile
        with segment:
            header = segment.header()
            if isinstance(header, HeaderProblem):
                return LogProblem("corruption", str(path), header.offset, 0, header.message)
            seal = header.mark
            if seal is None or not seal.sealed:
                continue
            if segment.size != seal.body_end:
                return LogProblem(
                    "corruption",
                    str(path),
                    min(segment.size, seal.body_end),
                    seal.acked_seq,
                    f"sealed segment is {segment.size} bytes long but its seal says "
                    f"{seal.body_end}",
                )
            found = segment.body_crc(header.frames_start, seal.body_end)
            if found != seal.body_crc:
                return LogProblem(
                    "corruption",
                    str(path),
                    header.frames_start,
                    header.base_seq,
                    f"sealed segment body CRC {found:08x} does not match its seal "
                    f"{seal.body_crc:08x}: records {header.base_seq}..{seal.acked_seq} are "
                    "damaged",
                )
    return None


def _before(a: LogProblem, b: LogProblem) -> bool:
    return (a.seq, a.offset) < (b.seq, b.offset)
