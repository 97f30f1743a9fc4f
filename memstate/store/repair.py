"""Offline, explicit log repair (`memstate log repair`): the salvage modes start-up never uses.

Theory of operation
-------------------
Start-up tolerates exactly one kind of damage, a torn tail, and refuses everything else (see
`memstate.store.inspection`). When it refuses, a human decides, and this module does what they
chose:

- `torn_tail` — what start-up would do: cut an incomplete write (and an incomplete transaction)
  off the end of the last segment. Refuses if the damage is anything else.
- `point_in_time` — RocksDB's kPointInTimeRecovery: keep everything before the first problem
  (bad CRC, seq gap, chain break, missing or swapped segment), drop the rest.
- `truncate_after` — keep records up to a given seq, drop everything after it (to undo a bad
  import, or to cut just before a record that does not decode).

Rules: it takes the writer lock (so it refuses while a daemon runs: `LockHeld`, exit 75); it
never deletes bytes — a segment it shortens is first copied to `<name>.broken-<UTC>`, segments
it drops are renamed to such names, and checkpoints beyond the new end are moved aside the same
way; a transaction cut in half is dropped whole; a log written by a newer format version is
never cut (that would destroy data this build cannot read). `dry_run` reports the plan only.

Order of operations is crash-safe: later segments are moved aside newest first, then the cut
segment is copied and truncated, so an interrupted repair leaves a shorter prefix that the next
run (or start-up) handles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from memstate.core.errors import InvariantViolation, MidLogCorruption, SchemaError
from memstate.store import fsio
from memstate.store.checkpoint import list_checkpoints
from memstate.store.format import (
    LOG_DIRNAME,
    MARK_SLOTS,
    SEGMENT_HEADER_BYTES,
    HeaderProblem,
    Mark,
    encode_mark,
    mark_slot_offset,
)
from memstate.store.inspection import inspect_log
from memstate.store.problems import LogProblem, SegmentInfo
from memstate.store.scan import SegmentWalker, incomplete_transaction, list_segments
from memstate.store.segio import Frame, SegmentFile

RepairMode = Literal["torn_tail", "point_in_time", "truncate_after"]


class RepairAction(msgspec.Struct, frozen=True):
    """One change made (or planned, in a dry run)."""

    action: Literal["truncate_segment", "move_segment_aside", "move_checkpoint_aside", "lower_mark"]
    file: str
    new_size_bytes: int  # for truncate_segment; 0 otherwise
    bytes_dropped: int
    broken_copy: str  # the .broken-* copy or new name ("" in a dry run)


class RepairReport(msgspec.Struct, frozen=True):
    """What `repair_log` found and did."""

    mode: RepairMode
    dry_run: bool
    problem: LogProblem | None  # the first problem found before repairing (None: clean)
    last_seq_before: int  # last valid seq before repairing
    last_seq: int  # last seq kept
    records_dropped: int  # valid records dropped (tail after the cut, incomplete transaction)
    actions: list[RepairAction]

    @property
    def changed(self) -> bool:
        return bool(self.actions)


class _Cut(msgspec.Struct, frozen=True):
    index: int  # segment index (in the on-disk listing) that is cut or, with offset None, dropped
    offset: int | None  # keep bytes [0, offset) of that segment; None: drop the whole segment
    last_seq: int  # last seq kept


def repair_log(
    state_dir: Path,
    *,
    mode: RepairMode,
    seq: int | None = None,
    dry_run: bool = False,
    fsync: bool = True,
) -> RepairReport:
    """Repair the log of `state_dir` offline (see the module docstring for the modes)."""
    state_dir = Path(state_dir)
    if (mode == "truncate_after") != (seq is not None):
        raise InvariantViolation("truncate_after needs a seq, and only it takes one")
    lock = fsio.DirLock.acquire(state_dir, purpose="log repair")
    try:
        return _repair_locked(state_dir, mode=mode, seq=seq, dry_run=dry_run, fsync=fsync)
    finally:
        lock.release()


def _repair_locked(
    state_dir: Path, *, mode: RepairMode, seq: int | None, dry_run: bool, fsync: bool
) -> RepairReport:
    log_dir = state_dir / LOG_DIRNAME
    # Start-up's verdict (acknowledged mark included) over every frame: repair is about damage.
    scan = inspect_log(state_dir, full=True)
    listed = list_segments(log_dir)
    problem = scan.problem
    if problem is not None and problem.kind == "newer_format":
        raise SchemaError(
            f"{problem.file}: {problem.message}; refusing to cut a log written by a newer memstate"
        )
    if mode == "torn_tail" and problem is not None and not problem.recoverable:
        raise MidLogCorruption(
            f"{problem.message}: this is not a torn tail; `memstate log repair --point-in-time` "
            "keeps everything before it",
            file=problem.file,
            offset=problem.offset,
            seq=problem.seq,
        )
    cut = _first_cut(scan.segments, listed, problem, mode=mode, seq=seq)
    cut = _drop_incomplete_transaction(listed, cut, scan.first_seq())
    actions: list[RepairAction] = []
    records_dropped = 0
    if cut is not None:
        actions, records_dropped = _apply_cut(
            state_dir, listed, cut, scan.last_seq, dry_run=dry_run, fsync=fsync
        )
    last_seq = cut.last_seq if cut is not None else scan.last_seq
    return RepairReport(
        mode=mode,
        dry_run=dry_run,
        problem=problem,
        last_seq_before=scan.last_seq,
        last_seq=last_seq,
        records_dropped=records_dropped,
        actions=actions,
    )


def _first_cut(
    segments: list[SegmentInfo],
    listed: list[tuple[int, Path]],
    problem: LogProblem | None,
    *,
    mode: RepairMode,
    seq: int | None,
) -> _Cut | None:
    if mode == "truncate_after":
        if seq is None:
            raise InvariantViolation("repair mode truncate_after needs a sequence number")
        return _cut_after(segments, listed, seq)
    if problem is None:
        if not segments:
            return None
        tail = segments[-1]
        return _Cut(index=len(segments) - 1, offset=tail.end_offset, last_seq=tail.last_seq)
    if problem.segment_level:
        last = segments[-1].last_seq if segments else problem.seq - 1
        return _Cut(index=len(segments), offset=None, last_seq=last)
    return _Cut(index=len(segments) - 1, offset=problem.offset, last_seq=segments[-1].last_seq)


def _cut_after(segments: list[SegmentInfo], listed: list[tuple[int, Path]], seq: int) -> _Cut:
    first = segments[0].base_seq if segments else 1
    last_valid = segments[-1].last_seq if segments else 0
    if seq > last_valid or seq < first - 1:
        raise InvariantViolation(
            f"seq {seq} is not in the valid log (it holds seqs {first}..{last_valid}); nothing "
            "to truncate after it"
        )
    for index, segment in enumerate(segments):
        if segment.base_seq - 1 <= seq <= segment.last_seq:
            _, frames = _frames_of(listed[index], None)
            kept = [frame for frame in frames if frame.seq <= seq]
            return _Cut(index=index, offset=_end_of(listed[index][1], kept), last_seq=seq)
    raise InvariantViolation(f"seq {seq} not found in any segment")  # pragma: no cover


def _frames_of(listed: tuple[int, Path], upto: int | None) -> tuple[int, list[Frame]]:
    """(base seq, valid frames that start before `upto`) of a segment (None: all of them)."""
    frames: list[Frame] = []
    walker = SegmentWalker([listed], linked_start=False)
    for visit in walker:
        for frame in visit.walk:
            if upto is not None and frame.offset >= upto:
                return visit.header.base_seq, frames
            # A copy: the view would pin the chunk it points into.
            frames.append(msgspec.structs.replace(frame, payload=memoryview(bytes(frame.payload))))
        return visit.header.base_seq, frames
    return 1, []  # a header that does not decode: nothing in it is kept


def _drop_incomplete_transaction(
    listed: list[tuple[int, Path]], cut: _Cut | None, first_seq: int
) -> _Cut | None:
    """Move the cut back to the start of a transaction it would otherwise split."""
    if cut is None:
        return None
    if cut.offset is None:
        # The whole segment `index` goes; the new tail is the previous segment, kept whole.
        if cut.index == 0:
            return _Cut(index=0, offset=None, last_seq=first_seq - 1)
        path = listed[cut.index - 1][1]
        base, frames = _frames_of(listed[cut.index - 1], None)
        tail_index, tail_offset = cut.index - 1, _end_of(path, frames)
    else:
        path = listed[cut.index][1]
        base, frames = _frames_of(listed[cut.index], cut.offset)
        tail_index, tail_offset = cut.index, _end_of(path, frames)
    incomplete = incomplete_transaction(frames, str(path))
    if incomplete is not None:
        return _Cut(index=tail_index, offset=incomplete.offset, last_seq=incomplete.seq - 1)
    if cut.offset is None:
        return cut
    last = frames[-1].seq if frames else base - 1
    return _Cut(index=tail_index, offset=tail_offset, last_seq=last)


def _end_of(path: Path, frames: list[Frame]) -> int:
    if frames:
        return frames[-1].end
    with SegmentFile(path) as segment:
        header = segment.header()
    return SEGMENT_HEADER_BYTES if isinstance(header, HeaderProblem) else header.frames_start


def _apply_cut(
    state_dir: Path,
    listed: list[tuple[int, Path]],
    cut: _Cut,
    last_valid: int,
    *,
    dry_run: bool,
    fsync: bool,
) -> tuple[list[RepairAction], int]:
    actions: list[RepairAction] = []
    first_dropped = cut.index if cut.offset is None else cut.index + 1
    for _, path in reversed(listed[first_dropped:]):
        size = path.stat().st_size
        moved = "" if dry_run else str(fsio.move_aside(path, fsync=fsync))
        actions.append(RepairAction("move_segment_aside", str(path), 0, size, moved))
    if cut.offset is not None:
        path = listed[cut.index][1]
        size = path.stat().st_size
        if size > cut.offset:
            copy = ""
            if not dry_run:
                copy = str(fsio.keep_broken_copy(path, fsync=fsync))
                fsio.truncate_durably(path, cut.offset, fsync=fsync)
            actions.append(
                RepairAction("truncate_segment", str(path), cut.offset, size - cut.offset, copy)
            )
    new_last = cut.index if cut.offset is not None else cut.index - 1
    if new_last >= 0 and actions:
        action = _lower_mark(listed[new_last], cut.last_seq, dry_run=dry_run, fsync=fsync)
        if action is not None:
            actions.append(action)
    for seq, path in list_checkpoints(state_dir):
        if seq > cut.last_seq:
            moved = "" if dry_run else str(fsio.move_aside(path, fsync=fsync))
            actions.append(RepairAction("move_checkpoint_aside", str(path), 0, 0, moved))
    actions.sort(key=lambda a: (a.action != "move_segment_aside", a.file))
    return actions, max(last_valid - cut.last_seq, 0)


def _lower_mark(
    listed: tuple[int, Path], last_seq: int, *, dry_run: bool, fsync: bool
) -> RepairAction | None:
    """Make the new last segment's mark say what it now holds: records up to `last_seq`,
    unsealed (its successors are gone). Without this, start-up would refuse the repaired log
    for the acknowledged records the repair chose to drop. Both slots are rewritten, fsynced."""
    path = listed[1]
    with SegmentFile(path) as segment:
        header = segment.header()
    if isinstance(header, HeaderProblem) or header.mark is None:
        return None  # format 1: no mark
    # Damage after the cut (a dry run) ends the walk; the frames up to `last_seq` come before it.
    kept = [frame for frame in _frames_of(listed, None)[1] if frame.seq <= last_seq]
    chain = kept[-1].chain_crc if kept else header.prev_chain_crc
    end = kept[-1].end if kept else header.frames_start
    with SegmentFile(path) as segment:
        body_crc = segment.body_crc(header.frames_start, end)
    mark = header.mark
    if mark.acked_seq <= last_seq and not mark.sealed:
        return None
    if not dry_run:
        fd = os.open(path, os.O_WRONLY)
        try:
            for generation in range(mark.generation + 1, mark.generation + 1 + MARK_SLOTS):
                lowered = Mark(
                    acked_seq=last_seq,
                    chain_crc=chain,
                    generation=generation,
                    body_end=end,
                    body_crc=body_crc,
                )
                fsio.pwrite_all(fd, encode_mark(lowered), mark_slot_offset(generation))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return RepairAction("lower_mark", str(path), 0, 0, "")
