"""Lock-free reading of a state directory's log: `LogReader` and the decoding of a stored
record that names its place in any error.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from memstate.core.codec import decode_envelope
from memstate.core.errors import (
    MidLogCorruption,
    SchemaError,
)
from memstate.core.events import (
    Envelope,
)
from memstate.store.format import (
    CHAIN_SEED,
    LOG_DIRNAME,
    HeaderProblem,
)
from memstate.store.scan import SegmentWalker, list_segments
from memstate.store.segio import SegmentFile


class RawRecord(NamedTuple):
    """One framed record as stored: its seq, payload bytes, segment file name and frame offset."""

    seq: int
    payload: bytes
    segment: str
    offset: int


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
        last = sys.maxsize if to_seq is None else to_seq  # one comparison per frame
        for name, frames in self.segment_frames(from_seq, to_seq):
            for offset, seq, payload, _, chain_crc in frames:
                if seq > last:
                    return
                if seq >= from_seq:
                    yield payload, seq, offset, name, chain_crc

    def segment_frames(
        self, from_seq: int = 1, to_seq: int | None = None
    ) -> Iterator[tuple[str, Iterator[tuple[int, int, memoryview, int, int]]]]:
        """`read_frames` one segment at a time, for a caller that reads every frame itself:
        (segment name, its frames as (offset, seq, payload, end, chain CRC)).

        The frames of a segment may start before `from_seq` (the caller skips them) and run
        past `to_seq`; each segment's frames are read to their end (or the caller stops) before
        the next segment is opened, and damage found after them raises, as in `read_frames`.
        """
        listed = self.segments()
        if not listed:
            return
        bases = [base for base, _ in listed]
        walker = SegmentWalker(
            listed,
            start=max(bisect.bisect_right(bases, from_seq) - 1, 0),
            linked_start=False,
            skip_to=from_seq,
            to_seq=to_seq,
            beside_writer=True,
        )
        for visit in walker:
            yield visit.path.name, visit.walk.unnamed()
        problem = walker.problem
        if problem is None or problem.kind == "torn_tail":
            return  # the end, or an incomplete tail: stop cleanly
        if walker.seal_mismatch:
            raise MidLogCorruption(
                f"the frames of sealed segment {Path(problem.file).name} do not match its seal",
                file=problem.file,
                offset=problem.offset,
                seq=problem.seq,
            )
        raise problem.to_error()

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
