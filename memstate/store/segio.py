"""Reading segments in bounded chunks: the frame walk and the body CRC of sealed segments.

Every reader of the log (start-up, `verify`, replay tools) goes through `FrameWalk`, which reads a
segment with `pread` in chunks of `READ_CHUNK_BYTES` (more only for one frame bigger than that)
instead of loading the whole 16 MiB file. Peak memory is then independent of segment size and
of the log's length, and no 16 MiB buffer ends up in glibc's heap, where a freed block is kept
rather than returned to the system (glibc raises its mmap threshold to the size of the last
freed mmapped block, so the next 16 MiB read comes from the heap and stays there).

Payload views yielded by the walk point into the chunk just read (an immutable `bytes`), so they
stay valid as long as the caller holds them; nothing is copied per frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
from crc32c import crc32c

from memstate.store.format import (
    FRAME_HEAD,
    FRAME_HEAD_BYTES,
    MAX_PAYLOAD_BYTES,
    SEGMENT_HEADER_BYTES,
    Classification,
    FrameFailure,
    HeaderProblem,
    Mark,
    SegmentHeader,
    classify_failure,
    decode_segment_header,
    iter_frames,
    padded_size,
)

READ_CHUNK_BYTES = 1 << 20


class Frame(msgspec.Struct, frozen=True, gc=False):
    """One valid frame of a segment, as a walk finds it.

    `gc=False`: it holds ints and a view of immutable bytes, never a cycle, and the read path
    makes one per record."""

    offset: int  # file offset of the frame's head
    seq: int
    payload: memoryview  # into the chunk just read (immutable bytes): valid while held
    end: int  # file offset just past the frame (padding included)
    chain_crc: int  # the chain CRC after this record


class SegmentFile:
    """An open segment (read-only): its size, its header bytes, and chunked access."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise

    def header(self) -> SegmentHeader | HeaderProblem:
        """The decoded header (format 1 or 2) read with one small `pread`.

        The size is taken again *after* the header is read: a writer updates the mark only
        after the bytes it describes are in the file, so a reader beside a running writer never
        sees a mark (or seal) that ends past the size it uses."""
        decoded = decode_segment_header(self.pread(SEGMENT_HEADER_BYTES, 0))
        self.size = os.fstat(self.fd).st_size
        return decoded

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` (fewer only at the end of the file)."""
        parts: list[bytes] = []
        while size > 0:
            chunk = os.pread(self.fd, size, offset)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def body_crc(self, start: int, end: int) -> int:
        """Plain CRC32C of bytes [start, end), read in bounded chunks into one buffer.

        One buffer per call, filled with `preadv`: no allocation per chunk, so checking a
        whole log leaves nothing behind in the allocator's free lists."""
        crc = 0
        offset = start
        buffer = bytearray(min(READ_CHUNK_BYTES, max(end - start, 0)))
        view = memoryview(buffer)
        while offset < end:
            count = os.preadv(self.fd, [view[: min(len(buffer), end - offset)]], offset)
            if count <= 0:
                break
            crc = crc32c(view[:count], crc)
            offset += count
        return crc

    def verified_prefix(self, header: SegmentHeader) -> Mark | None:
        """The segment's mark if the frames it covers are intact (their CRC32C, at C speed).

        Lets readers skip the frame-by-frame walk over acknowledged records: the mark says
        where they end, the seq and chain CRC there, and the CRC of their bytes. None when
        there is no usable mark (format 1, an unknown end, a file shorter than the mark says,
        or bytes that differ); the caller then walks every frame, which finds the problem.
        """
        mark = header.mark
        if mark is None or not header.frames_start <= mark.body_end <= self.size:
            return None
        if self.body_crc(header.frames_start, mark.body_end) != mark.body_crc:
            return None
        return mark

    def locate(self, header: SegmentHeader, prefix: Mark, seq: int) -> tuple[int, int]:
        """(offset of frame `seq`, chain CRC before it) inside a verified acknowledged prefix.

        Walks frame heads only (length, then the next head): the prefix's CRC32C already vouches
        for every byte, so nothing is re-checked. `seq` may be one past the prefix (its end).
        """
        if not header.base_seq <= seq <= prefix.acked_seq + 1:
            raise ValueError(
                f"seq {seq} is not in the prefix {header.base_seq}..{prefix.acked_seq}"
            )
        offset, current, chain = header.frames_start, header.base_seq, header.prev_chain_crc
        chunk_start, chunk = offset, b""
        while current < seq:
            if offset + FRAME_HEAD_BYTES > chunk_start + len(chunk):
                chunk_start = offset
                chunk = self.pread(min(READ_CHUNK_BYTES, prefix.body_end - offset), offset)
            stored, length, _ = FRAME_HEAD.unpack_from(chunk, offset - chunk_start)
            chain = stored
            offset += padded_size(length)
            current += 1
        return offset, chain

    def classify(self, failure: FrameFailure, *, last_segment: bool) -> Classification:
        """The torn-tail verdict on `failure`, reading the rest of the file from its offset."""
        rest = self.pread(self.size - failure.offset, failure.offset) if last_segment else b""
        return classify_failure(rest, failure, last_segment=last_segment, base=failure.offset)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> SegmentFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FrameWalk:
    """Iterate the valid frames of a segment from `start`, in chunks. The iteration ends at the
    first invalid frame, kept in `failure` (a `FrameFailure` with file offsets; None when the
    walk reached the end of the file). After it, `end`, `last_seq`, `chain_crc` and `body_crc`
    (plain CRC32C of the frames up to `end`) describe the valid prefix."""

    def __init__(
        self,
        segment: SegmentFile,
        start: int,
        expected_seq: int,
        chain_crc: int,
        *,
        body_crc: int = 0,
    ) -> None:
        self.segment = segment
        self.start = start
        self.end = start
        self.last_seq = expected_seq - 1
        self.chain_crc = chain_crc
        self.body_crc = body_crc  # of the frames before `start` (a verified prefix), if any
        self.failure: FrameFailure | None = None

    def __iter__(self) -> Iterator[Frame]:
        for offset, seq, payload, end, chain_crc in self.unnamed():
            yield Frame(offset, seq, payload, end, chain_crc)

    def unnamed(self) -> Iterator[tuple[int, int, memoryview, int, int]]:
        """The frames as plain tuples (offset, seq, payload, end, chain CRC), in `Frame`'s field
        order: for `LogReader.read_frames` alone, the read path under every other read, where
        building a struct per record costs a measurable share of the framing."""
        size = self.segment.size
        offset = self.start
        want = READ_CHUNK_BYTES
        while offset < size:
            chunk = self.segment.pread(min(want, size - offset), offset)
            at_eof = offset + len(chunk) >= size
            view = memoryview(chunk)
            consumed = 0
            want = READ_CHUNK_BYTES
            try:
                for f_offset, seq, begin, stop, f_end, crc in iter_frames(
                    chunk, 0, self.last_seq + 1, self.chain_crc
                ):
                    yield offset + f_offset, seq, view[begin:stop], offset + f_end, crc
                    consumed, self.last_seq, self.chain_crc = f_end, seq, crc
            except FrameFailure as failure:
                straddles = not at_eof and failure.kind in ("incomplete_header", "past_eof")
                if straddles and consumed == 0:
                    # One frame longer than a chunk: read again from its start, all of it.
                    needed = _frame_size_at(chunk)
                    straddles = needed > len(chunk)
                    want = needed
                if not straddles:
                    self._advance(view, consumed, offset)
                    failure.offset += offset
                    self.failure = failure
                    return
            self._advance(view, consumed, offset)
            offset += consumed

    def _advance(self, view: memoryview, consumed: int, offset: int) -> None:
        if consumed:
            self.body_crc = crc32c(view[:consumed], self.body_crc)
            self.end = offset + consumed


def _frame_size_at(chunk: bytes) -> int:
    """The padded size the frame head at the start of `chunk` declares (0 if unreadable)."""
    if len(chunk) < FRAME_HEAD_BYTES:
        return 0
    _, length, _ = FRAME_HEAD.unpack_from(chunk, 0)
    return padded_size(length) if 0 < length <= MAX_PAYLOAD_BYTES else 0
