"""The one verdict on a log's files that start-up and `verify` share (`inspect_log`), and
the recovery policy that cuts a recoverable tail (`truncate_recoverable_tail`).
"""

from __future__ import annotations

import os
from pathlib import Path

from memstate.core.errors import (
    InvariantViolation,
    LogCorruption,
    SchemaError,
)
from memstate.store import fsio
from memstate.store.format import (
    LOG_DIRNAME,
)
from memstate.store.problems import LogProblem, RecoveryReport
from memstate.store.scan import LogScan, OnRecord, find_incomplete_transaction, scan_log


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


def remove_temp_files(log_dir: Path, snap_dir: Path, *, fsync: bool) -> tuple[str, ...]:
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
        dropped_frames = sum(1 for frame in scan.tail_frames if frame.offset >= incomplete.offset)
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


def last_seq_after_recovery(scan: LogScan, report: RecoveryReport) -> int:
    """The last seq the log holds once `report`'s cut is made."""
    if report.incomplete_transaction_seq is not None:
        return report.incomplete_transaction_seq - 1
    return scan.last_seq


def chain_after_recovery(scan: LogScan, report: RecoveryReport) -> int:
    """The chain CRC after the last record the log holds once `report`'s cut is made."""
    if report.incomplete_transaction_seq is None:
        return scan.chain_crc
    target = report.incomplete_transaction_seq - 1
    if target == scan.tail_start[0]:
        return scan.tail_start[1]
    for frame in scan.tail_frames:
        if frame.seq == target:
            return frame.chain_crc
    raise InvariantViolation(f"chain CRC of seq {target} not found in the scanned tail")
