"""Walking a log's segments: listing them, the prune marker, and the scan that checks
headers, seals, the CRC chain and seq continuity (`scan_log`), with the incomplete-
transaction check at its tail.
"""

from __future__ import annotations

import itertools
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from crc32c import crc32c

from memstate.core.codec import decode_head
from memstate.core.errors import (
    InvariantViolation,
    MidLogCorruption,
    SchemaError,
)
from memstate.store import fsio
from memstate.store.format import (
    CHAIN_SEED,
    HeaderProblem,
    SegmentHeader,
    parse_segment_name,
)
from memstate.store.problems import LogProblem, ProblemKind, SegmentInfo
from memstate.store.segio import Frame, FrameWalk, SegmentFile

ORIGIN_FILENAME = "ORIGIN"
MAX_BATCH_RECORDS = 4096


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
    return fsio.numbered_files(log_dir, parse_segment_name)


OnRecord = Callable[[int, memoryview, str, int], None]
"""Called by `scan_log` for each valid record: (seq, payload, segment file name, frame offset)."""


# --- the segment walker ---------------------------------------------------------------------------


class SegmentVisit:
    """One segment the walker has opened and whose header it accepted; `walk` yields its frames.

    The caller iterates `walk` to its end (or stops the whole walk); the walker then checks what
    the walk found (an invalid frame, the seal) before it opens the next segment."""

    __slots__ = ("header", "last", "path", "walk")

    def __init__(self, path: Path, header: SegmentHeader, walk: FrameWalk, *, last: bool) -> None:
        self.path = path
        self.header = header
        self.walk = walk
        self.last = last


class SegmentWalker:
    """The one walk over a log's segments, shared by `scan_log` (start-up, `verify`, repair) and
    `LogReader.read_frames` (every other read).

    Iterating it opens the listed segments in order from `start` and, for each one: checks its
    header and its links to the segment before (`checked_header`; with `linked_start` the first
    one is linked to the log's start too, else it vouches for itself), positions a `FrameWalk`
    and yields it as a `SegmentVisit`; once the caller has read the frames, it records the
    segment's `SegmentInfo`, classifies an invalid frame (torn tail or corruption) and compares a
    sealed segment's frames with its seal. The walk stops at the first problem, kept in
    `problem` (`seal_mismatch` says it was a seal that does not match the frames).

    - `trust_seals`: a sealed segment that is not the last is checked from its seal only (no
      frames yielded for it).
    - `skip_to`: where a segment's acknowledged prefix is intact (its CRC32C, `verified_prefix`),
      its walk starts at this seq (or at the end of the prefix) instead of its first frame.
    - `to_seq`: segments that start after it are not opened.
    - `beside_writer`: a segment that vanished while listed (prune, repair) ends the walk if it
      was the last one; an earlier one is corruption.
    """

    def __init__(
        self,
        listed: Sequence[tuple[int, Path]],
        *,
        origin: LogOrigin | None = None,
        start: int = 0,
        linked_start: bool = True,
        trust_seals: bool = False,
        skip_to: int | None = None,
        to_seq: int | None = None,
        beside_writer: bool = False,
    ) -> None:
        self.listed = listed
        self.origin = origin
        self.start = start
        self.linked_start = linked_start
        self.trust_seals = trust_seals
        self.skip_to = skip_to
        self.to_seq = to_seq
        self.beside_writer = beside_writer
        self.segments: list[SegmentInfo] = []
        self.problem: LogProblem | None = None
        self.seal_mismatch = False
        # (seq, chain CRC) where the last segment's walk started.
        self.tail_start: tuple[int, int] = (0, CHAIN_SEED)

    def __iter__(self) -> Iterator[SegmentVisit]:
        listed = self.listed
        for index in range(self.start, len(listed)):
            base, path = listed[index]
            if self.to_seq is not None and base > self.to_seq:
                return
            last = index == len(listed) - 1
            try:
                segment = SegmentFile(path)
            except FileNotFoundError:
                if not self.beside_writer:
                    raise
                if last:
                    return  # removed under us by a prune or repair: nothing more to read
                raise MidLogCorruption("segment vanished while reading", file=str(path)) from None
            with segment:
                header = self._header(segment.header(), path, base)
                if header is None:
                    return
                if header.sealed and not last and self.trust_seals:
                    sealed = _sealed_info(segment, header, path)
                    if isinstance(sealed, LogProblem):
                        self.problem = sealed
                        return
                    self.segments.append(sealed)
                    continue
                walk = self._walk(segment, header)
                if last:
                    self.tail_start = (walk.last_seq, walk.chain_crc)
                yield SegmentVisit(path, header, walk, last=last)
                self.segments.append(
                    _info(
                        path,
                        header,
                        walk.last_seq,
                        walk.chain_crc,
                        walk.end,
                        segment.size,
                        walk.body_crc,
                    )
                )
                self.problem = self._after_walk(segment, header, walk, path, last=last)
                if self.problem is not None:
                    return

    def _header(
        self, decoded: SegmentHeader | HeaderProblem, path: Path, base: int
    ) -> SegmentHeader | None:
        if self.segments or self.linked_start:
            checked = checked_header(
                self.segments[-1] if self.segments else None, self.origin, decoded, path, base
            )
        else:
            checked = _standalone_header(decoded, path, base)
        if isinstance(checked, LogProblem):
            self.problem = checked
            return None
        return checked

    def _walk(self, segment: SegmentFile, header: SegmentHeader) -> FrameWalk:
        """A walk from the segment's first frame, or from `skip_to` inside its intact prefix."""
        mark = header.mark
        if (
            self.skip_to is not None
            and self.skip_to > header.base_seq
            and mark is not None
            and not mark.sealed
        ):
            prefix = segment.verified_prefix(header)
            if prefix is not None:
                if self.skip_to > prefix.acked_seq:
                    return FrameWalk(
                        segment,
                        prefix.body_end,
                        prefix.acked_seq + 1,
                        prefix.chain_crc,
                        body_crc=prefix.body_crc,
                    )
                # The frames before the first one wanted are skipped by their heads.
                offset, chain = segment.locate(header, prefix, self.skip_to)
                return FrameWalk(segment, offset, self.skip_to, chain)
        return FrameWalk(segment, header.frames_start, header.base_seq, header.prev_chain_crc)

    def _after_walk(
        self,
        segment: SegmentFile,
        header: SegmentHeader,
        walk: FrameWalk,
        path: Path,
        *,
        last: bool,
    ) -> LogProblem | None:
        """What the walk found wrong: an invalid frame, or frames that do not match the seal."""
        failure = walk.failure
        if failure is not None:
            verdict = segment.classify(failure, last_segment=last)
            return LogProblem(
                "torn_tail" if verdict.torn else "corruption",
                str(path),
                failure.offset,
                failure.expected_seq,
                verdict.reason,
            )
        seal = header.mark
        if seal is None or not seal.sealed:
            return None
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
        if not wrong:
            return None
        self.seal_mismatch = True
        return LogProblem(
            "corruption",
            str(path),
            header.frames_start,
            header.base_seq,
            f"the frames of sealed segment {path.name} do not match its seal "
            f"({', '.join(wrong)}): the seal or the segment is damaged",
            segment_level=True,
        )


# --- scanning -------------------------------------------------------------------------------------


@dataclass
class LogScan:
    """Result of a scan. `problem` is the first problem found (scanning stops there)."""

    log_dir: Path
    segments: list[SegmentInfo]
    problem: LogProblem | None
    origin: LogOrigin | None
    tail_frames: list[Frame] = field(default_factory=list)  # the last segment's last ones
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
    whose seal never landed) has every frame checked: length bound, CRC chain, seq continuity
    (without `full` or `on_record`, an acknowledged prefix whose CRC32C matches its mark is
    checked by that CRC and only the frames after it are walked).

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
    quick = not full and on_record is None
    walker = SegmentWalker(
        listed, origin=origin, trust_seals=quick, skip_to=sys.maxsize if quick else None
    )
    for visit in walker:
        # One more than a batch: recovery needs the chain CRC of the record before a dropped
        # transaction, which may be the first of the batch. Transactions never straddle the end
        # of the acknowledged prefix (a mark is written after a whole batch).
        keep: deque[tuple[int, int, memoryview, int, int]] = deque(
            maxlen=MAX_BATCH_RECORDS + 1 if visit.last else 0
        )
        name = visit.path.name
        # Plain tuples while walking (a struct per frame costs ~10% of a scan); the kept tail
        # becomes `Frame`s once.
        for unnamed in visit.walk.unnamed():
            if on_record is not None:
                offset, seq, payload, _, _ = unnamed
                on_record(seq, payload, name, offset)
            keep.append(unnamed)
        if visit.last:
            scan.tail_frames = [Frame(*unnamed) for unnamed in keep]
    scan.segments = walker.segments
    scan.problem = walker.problem
    scan.tail_start = walker.tail_start
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
    segment: SegmentFile, header: SegmentHeader, path: Path
) -> SegmentInfo | LogProblem:
    """A sealed segment checked from its seal alone: its size must be the sealed length."""
    seal = header.mark
    if seal is None:
        raise InvariantViolation(f"{path.name}: checked as sealed but has no mark")
    if segment.size != seal.body_end or seal.body_end < header.frames_start:
        return LogProblem(
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
    return _info(path, header, seal.acked_seq, seal.chain_crc, seal.body_end, segment.size, 0)


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


def checked_header(
    previous: SegmentInfo | None,
    origin: LogOrigin | None,
    decoded: SegmentHeader | HeaderProblem,
    path: Path,
    name_base: int,
) -> SegmentHeader | LogProblem:
    """Link-check one decoded segment header against the segment before it (`previous`) or, for
    the first one, the log's start (seq 1, or the prune marker `origin`)."""
    expected_seq = previous.last_seq + 1 if previous else name_base

    def fail(kind: ProblemKind, offset: int, message: str) -> LogProblem:
        return LogProblem(kind, str(path), offset, expected_seq, message, segment_level=True)

    if isinstance(decoded, HeaderProblem):
        return fail(
            "newer_format" if decoded.newer_format else "corruption",
            decoded.offset,
            decoded.message,
        )
    header = decoded
    if header.base_seq != name_base:
        return fail(
            "corruption",
            16,
            f"file name says the segment starts at seq {name_base} but its header says "
            f"{header.base_seq} (renamed or swapped segment)",
        )
    if previous is not None:
        if header.base_seq != previous.last_seq + 1:
            return fail(
                "corruption",
                16,
                f"sequence gap between segments: {previous.name} ends at seq "
                f"{previous.last_seq} but this one starts at {header.base_seq} "
                "(missing segment?)",
            )
        if header.prev_chain_crc != previous.chain_crc:
            return fail(
                "corruption",
                12,
                f"CRC chain break: header carries {header.prev_chain_crc:08x} but "
                f"{previous.name} ends with {previous.chain_crc:08x} (stale or swapped segment)",
            )
    elif header.base_seq == 1:
        if header.prev_chain_crc != CHAIN_SEED:
            return fail("corruption", 12, "first segment does not start the CRC chain at its seed")
    elif origin is None or header.base_seq > origin.base_seq:
        return fail(
            "corruption",
            16,
            f"the log starts at seq {header.base_seq}: the segments before it are missing "
            "(no prune record covers them)",
        )
    if (
        origin is not None
        and header.base_seq == origin.base_seq
        and header.prev_chain_crc != origin.prev_chain_crc
    ):
        return fail("corruption", 12, "CRC chain break at the start of the pruned log")
    return header


def _standalone_header(
    decoded: SegmentHeader | HeaderProblem, path: Path, base: int
) -> SegmentHeader | LogProblem:
    """The first segment a reader opens in the middle of the log: the header's own CRC vouches
    for its chain value; only its name is checked against it."""
    if isinstance(decoded, HeaderProblem):
        kind: ProblemKind = "newer_format" if decoded.newer_format else "corruption"
        return LogProblem(kind, str(path), decoded.offset, base, decoded.message)
    if decoded.base_seq != base:
        return LogProblem(
            "corruption",
            str(path),
            16,
            base,
            f"file name says seq {base} but the header says {decoded.base_seq}",
        )
    return decoded


def find_incomplete_transaction(scan: LogScan) -> LogProblem | None:
    """An input at the tail whose announced decisions are not all present, or None.

    Looks back over the last segment's valid frames (a transaction never spans segments and is
    at most one batch long) for the last record that announces decisions.
    """
    if not scan.segments or not scan.tail_frames:
        return None
    path = str(scan.log_dir / scan.segments[-1].name)
    return incomplete_transaction(scan.tail_frames, path)


def incomplete_transaction(frames: Sequence[Frame], path: str) -> LogProblem | None:
    """`find_incomplete_transaction` over explicit frames (the valid frames of one segment)."""
    for index in range(len(frames) - 1, max(len(frames) - 2 - MAX_BATCH_RECORDS, -1), -1):
        frame = frames[index]
        offset, seq = frame.offset, frame.seq
        try:
            head = decode_head(frame.payload)
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
