"""The on-disk byte layout of log segments, and the torn-tail vs corruption classification.

This module knows bytes only (no files): the writer, the readers, `verify`, recovery and repair
all parse through it, so they can never disagree about what a valid log is.

Segment header (32 bytes, little-endian)
----------------------------------------
    0  magic            8s   b"MEMSTLOG"
    8  format_version   u16  FORMAT_VERSION (readers check magic and version before anything)
   10  flags            u16  0 (reserved)
   12  prev_chain_crc   u32  chain CRC after the last record of the previous segment (0: genesis)
   16  base_seq         u64  sequence number of the first record in this segment (= file name)
   24  reserved         u32  0
   28  header_crc       u32  CRC32C of bytes 0..27

Bytes 0..11 (magic, version, flags) stay where they are in every future format version, so an
old build can always say "newer format" instead of "garbage".

Format 2 adds two **mark slots** after those 32 bytes (frames then start at byte 112); format 1
segments have none (frames start at byte 32) and still read. Each slot (40 bytes) is a mark:

    0  acked_seq   u64  every record up to this seq was acknowledged (durable and returned)
    8  body_end    u64  end of the frame of acked_seq (sealed: the segment's length)
   16  chain_crc   u32  chain CRC after acked_seq
   20  body_crc    u32  plain CRC32C of bytes frames_start..body_end (the acknowledged frames)
   24  flags       u32  bit 0: sealed (the segment is closed, a successor exists)
   28  generation  u32  incremented on every mark write (the newer of two valid slots wins)
   32  reserved    u32  0
   36  slot_crc    u32  CRC32C of bytes 0..35 of the slot

The writer rewrites the *older* slot after each group commit (one small pwrite, made durable by
the next commit's fsync, or by the fsync at close or rotation), so a torn mark write leaves the
other slot intact. A mark never runs ahead of durable data: it is written only after the fsync
that made its records durable. Because it carries the CRC32C of the acknowledged frames, start-up
checks that prefix of the active segment at C speed and walks frame by frame only what follows
it (normally nothing). At rotation the closing segment's mark becomes its **seal** (last
seq, chain CRC, body length and body CRC), fsynced; start-up then checks a sealed segment from
its 112 bytes and its size alone, and `log verify --full` (and the daemon after READY) checks its
body against the body CRC.

Record frame (16-byte head, payload, zero padding to a multiple of 8)
---------------------------------------------------------------------
    0  crc     u32  CRC32C of bytes 4..end-of-padding, seeded with the previous record's crc
    4  length  u32  payload bytes, 1..MAX_PAYLOAD_BYTES
    8  seq     u64  previous seq + 1, always
   16  payload      one msgpack `Envelope` (memstate.core.codec)
       padding      zeros up to the next multiple of 8

Why this shape:
- **Chained CRC32C** (etcd): each record's CRC is seeded with the previous one and each segment
  header carries the running value, so a record that is altered, dropped, duplicated or moved,
  and a segment that is missing, stale or swapped, all break the chain. CRC32C is hardware
  accelerated (the `crc32c` package); it detects accidents, not tampering.
- The CRC covers the length, the seq, the payload *and* the padding: every byte of a segment is
  covered by exactly one checksum (its header or its frame), so any single flipped bit is found.
- **Bounded length** (etcd#14098): a length above `MAX_PAYLOAD_BYTES` is never a torn write.
- **8-byte alignment** (etcd): the 16-byte head never straddles a sector or page, so a power
  loss cannot leave half a length field; it is either there, zeros, or missing.

Torn tail vs corruption
-----------------------
A crash can only damage what was being written when it happened: the end of the last segment.
What it leaves there is a *prefix* of the last write, possibly followed by zeros (a file size
that reached the disk before the data did). So the first bad frame is a **torn tail** only if
it is in the last segment and it is the last thing in the file:

- its 16-byte head is incomplete, or
- its head is intact (valid length, expected seq), its declared end lies past the end of file,
  and no valid frame chained to it can be found further on (a flipped bit in a length field of
  an earlier frame would otherwise pass for a torn write and lose acknowledged records), or
- its CRC fails (or its length is 0/absurd) and the file ends in a run of zeros that starts
  inside (or before the end of) that frame: nothing non-zero follows it.

Everything else — a bad CRC with data after it, a valid CRC with the wrong seq, a bad header,
trouble in a segment that is not the last — is **mid-log corruption**: memstate refuses and a
human decides (docs/event-log.md, "Recovery policy"). A bit flip inside the *last* frame can be
indistinguishable from a torn write (RocksDB's wiki says the same of any tail-tolerant mode);
that frame is then dropped like a torn one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Literal

import msgspec
from crc32c import crc32c

LOG_MAGIC = b"MEMSTLOG"
FORMAT_VERSION = 2
SEGMENT_HEADER = struct.Struct("<8sHHIQII")
BASE_HEADER_BYTES = SEGMENT_HEADER.size  # 32: the whole header of a format 1 segment
MARK_SLOT = struct.Struct("<QQIIIIII")
MARK_SLOT_BYTES = MARK_SLOT.size  # 40
MARK_SLOTS = 2
SEGMENT_HEADER_BYTES = BASE_HEADER_BYTES + MARK_SLOTS * MARK_SLOT_BYTES  # 112: frames start here
MARK_SEALED = 1
FRAME_HEAD = struct.Struct("<IIQ")
FRAME_HEAD_BYTES = FRAME_HEAD.size  # 16
FRAME_ALIGN = 8
MAX_PAYLOAD_BYTES = 1 << 20
CHAIN_SEED = 0  # chain CRC "before" seq 1

# A state directory holds these two directories (layout: memstate/store/__init__.py).
LOG_DIRNAME = "log"
SNAP_DIRNAME = "snap"

SEGMENT_SUFFIX = ".evlog"
SEGMENT_NAME_DIGITS = 20

if (
    BASE_HEADER_BYTES != 32 or SEGMENT_HEADER_BYTES != 112 or FRAME_HEAD_BYTES != 16
):  # pragma: no cover - layout guard
    raise ImportError("memstate.store.format: unexpected struct sizes")

FailureKind = Literal[
    "incomplete_header",  # fewer than 16 bytes left
    "bad_length",  # length 0 or above MAX_PAYLOAD_BYTES
    "past_eof",  # declared end beyond the end of the data
    "crc_mismatch",  # chained CRC does not match
    "seq_mismatch",  # CRC fine but not previous seq + 1 (a gap or a repeat)
]


def segment_name(base_seq: int) -> str:
    """`00000000000000000001.evlog`: segments are named by the first seq they hold."""
    return f"{base_seq:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The base seq in a segment file name, or None for any other file (temp, broken copies)."""
    stem = name.removesuffix(SEGMENT_SUFFIX)
    if stem == name or len(stem) != SEGMENT_NAME_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def padded_size(length: int) -> int:
    """Bytes a frame with a `length`-byte payload occupies (head + payload + padding)."""
    return FRAME_HEAD_BYTES + ((length + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1))


# --- segment header -------------------------------------------------------------------------------


class Mark(msgspec.Struct, frozen=True):
    """What a segment's mark slots say: acknowledged up to `acked_seq`; `sealed` when closed."""

    acked_seq: int
    chain_crc: int
    generation: int = 0
    sealed: bool = False
    body_end: int = 0  # end of the frame of acked_seq (sealed: the segment's length); 0: unknown
    body_crc: int = 0  # CRC32C of the frames before body_end (bytes frames_start..body_end)


class SegmentHeader(msgspec.Struct, frozen=True):
    """The decoded, checked header of a segment (and, from format 2, its best mark)."""

    format_version: int
    base_seq: int
    prev_chain_crc: int
    mark: Mark | None = None  # None for format 1 (no slots)
    damaged_slots: int = 0  # slots whose CRC fails (one is a torn mark write; tolerated)

    @property
    def frames_start(self) -> int:
        """Offset of the first frame: after the slots (format 2) or the 32-byte header (1)."""
        return frames_start(self.format_version)

    @property
    def sealed(self) -> bool:
        return self.mark is not None and self.mark.sealed


def frames_start(format_version: int) -> int:
    """Where frames begin in a segment of `format_version`."""
    return BASE_HEADER_BYTES if format_version == 1 else SEGMENT_HEADER_BYTES


def encode_segment_header(base_seq: int, prev_chain_crc: int, *, format_version: int = 0) -> bytes:
    """The header bytes of a new segment: format 2 (current) with both slots marking nothing
    acknowledged yet (`base_seq - 1`), or the 32 bytes of format 1 (fixtures, tests)."""
    version = format_version or FORMAT_VERSION
    if base_seq < 1:
        raise ValueError(f"base_seq must be >= 1, got {base_seq}")
    if version not in (1, 2):
        raise ValueError(f"cannot write segment format {version}")
    head = SEGMENT_HEADER.pack(LOG_MAGIC, version, 0, prev_chain_crc, base_seq, 0, 0)
    crc = crc32c(head[:28])
    header = head[:28] + struct.pack("<I", crc)
    if version == 1:
        return header
    empty = Mark(acked_seq=base_seq - 1, chain_crc=prev_chain_crc, body_end=SEGMENT_HEADER_BYTES)
    return header + encode_mark(empty) + encode_mark(msgspec.structs.replace(empty, generation=1))


def encode_mark(mark: Mark) -> bytes:
    """The 40 bytes of one mark slot."""
    flags = MARK_SEALED if mark.sealed else 0
    body = MARK_SLOT.pack(
        mark.acked_seq,
        mark.body_end,
        mark.chain_crc,
        mark.body_crc,
        flags,
        mark.generation & 0xFFFFFFFF,
        0,
        0,
    )[:36]
    return body + struct.pack("<I", crc32c(body))


def mark_slot_offset(generation: int) -> int:
    """Byte offset of the slot a mark of `generation` is written to (they alternate)."""
    return BASE_HEADER_BYTES + (generation % MARK_SLOTS) * MARK_SLOT_BYTES


def decode_mark(data: bytes | memoryview) -> Mark | None:
    """One slot's mark, or None if its CRC (or a field) says it is damaged or torn."""
    acked, body_end, chain, body_crc, flags, generation, reserved, stored = MARK_SLOT.unpack_from(
        data, 0
    )
    if crc32c(bytes(data[:36])) != stored or reserved != 0 or flags & ~MARK_SEALED:
        return None
    sealed = bool(flags & MARK_SEALED)
    return Mark(
        acked_seq=acked,
        chain_crc=chain,
        generation=generation,
        sealed=sealed,
        body_end=body_end,
        body_crc=body_crc,
    )


class HeaderProblem(msgspec.Struct, frozen=True):
    """Why a segment header is unusable. `newer_format` is not damage but still a refusal."""

    message: str
    offset: int
    newer_format: bool = False


def decode_segment_header(data: bytes | memoryview) -> SegmentHeader | HeaderProblem:
    """Check magic, then version, then the header CRC, then (format 2) the mark slots."""
    if len(data) < BASE_HEADER_BYTES:
        return HeaderProblem(
            f"segment header incomplete ({len(data)} of {BASE_HEADER_BYTES} bytes); headers "
            "are written before the segment is renamed into place, so this is damage",
            offset=0,
        )
    magic = bytes(data[0:8])
    if magic != LOG_MAGIC:
        return HeaderProblem(f"bad segment magic {magic!r} (expected {LOG_MAGIC!r})", offset=0)
    (version,) = struct.unpack_from("<H", data, 8)
    if version > FORMAT_VERSION:
        return HeaderProblem(
            f"segment format version {version} is newer than this build understands "
            f"({FORMAT_VERSION}); upgrade memstate (or the version field is damaged)",
            offset=8,
            newer_format=True,
        )
    _, version, flags, prev_crc, base_seq, reserved, stored_crc = SEGMENT_HEADER.unpack_from(
        data, 0
    )
    if crc32c(bytes(data[:28])) != stored_crc:
        return HeaderProblem("segment header CRC mismatch", offset=0)
    if version < 1 or flags != 0 or reserved != 0 or base_seq < 1:
        return HeaderProblem(
            f"segment header has invalid fields (version {version}, flags {flags}, "
            f"base_seq {base_seq})",
            offset=0,
        )
    if version == 1:
        return SegmentHeader(format_version=1, base_seq=base_seq, prev_chain_crc=prev_crc)
    if len(data) < SEGMENT_HEADER_BYTES:
        return HeaderProblem(
            f"segment mark slots incomplete ({len(data)} of {SEGMENT_HEADER_BYTES} bytes)",
            offset=BASE_HEADER_BYTES,
        )
    marks = [
        decode_mark(memoryview(data)[offset : offset + MARK_SLOT_BYTES])
        for offset in range(BASE_HEADER_BYTES, SEGMENT_HEADER_BYTES, MARK_SLOT_BYTES)
    ]
    valid = [mark for mark in marks if mark is not None and mark.acked_seq >= base_seq - 1]
    if not valid:
        # Only one slot is ever written at a time: both bad is damage, not a torn mark write.
        return HeaderProblem("both mark slots are damaged", offset=BASE_HEADER_BYTES)
    best = max(valid, key=lambda mark: (mark.generation, mark.acked_seq))
    return SegmentHeader(
        format_version=version,
        base_seq=base_seq,
        prev_chain_crc=prev_crc,
        mark=best,
        damaged_slots=MARK_SLOTS - len(valid),
    )


# --- frames ---------------------------------------------------------------------------------------


def encode_frame(seq: int, payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    """One framed record and its chain CRC."""
    buffer = bytearray()
    crc = append_frame(buffer, seq, payload, prev_crc)
    return bytes(buffer), crc


def append_frame(buffer: bytearray, seq: int, payload: bytes, prev_crc: int) -> int:
    """Frame `payload` at the end of `buffer`; return its chain CRC (the next frame's seed)."""
    length = len(payload)
    if not 0 < length <= MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {length} bytes is outside 1..{MAX_PAYLOAD_BYTES}")
    start = len(buffer)
    size = padded_size(length)
    buffer += FRAME_HEAD.pack(0, length, seq)
    buffer += payload
    buffer += bytes(size - FRAME_HEAD_BYTES - length)
    crc = crc32c(memoryview(buffer)[start + 4 : start + size], prev_crc)
    struct.pack_into("<I", buffer, start, crc)
    return crc


class FrameFailure(Exception):
    """Raised by `iter_frames` at the first frame that is not valid. Internal to the store."""

    def __init__(
        self, kind: FailureKind, offset: int, expected_seq: int, prev_crc: int, detail: str
    ) -> None:
        self.kind: FailureKind = kind
        self.offset = offset
        self.expected_seq = expected_seq
        self.prev_crc = prev_crc
        self.detail = detail
        super().__init__(detail)


Frame = tuple[int, int, int, int, int, int]
"""(offset, seq, payload_start, payload_end, frame_end, crc) of one valid frame."""


def iter_frames(
    data: bytes | memoryview, start: int, expected_seq: int, chain_crc: int
) -> Iterator[Frame]:
    """Walk valid frames from `start`, checking length bounds, the CRC chain and seq continuity.

    Stops at the end of the data; raises `FrameFailure` at the first invalid frame (the caller
    classifies it with `classify_failure`). This is the one hot loop of replay.
    """
    view = memoryview(data)
    end = len(view)
    offset = start
    unpack = FRAME_HEAD.unpack_from
    while offset < end:
        if end - offset < FRAME_HEAD_BYTES:
            raise FrameFailure(
                "incomplete_header",
                offset,
                expected_seq,
                chain_crc,
                f"frame head incomplete ({end - offset} of {FRAME_HEAD_BYTES} bytes)",
            )
        stored_crc, length, seq = unpack(view, offset)
        if length == 0 or length > MAX_PAYLOAD_BYTES:
            raise FrameFailure(
                "bad_length",
                offset,
                expected_seq,
                chain_crc,
                f"frame length {length} outside 1..{MAX_PAYLOAD_BYTES}",
            )
        size = FRAME_HEAD_BYTES + ((length + 7) & ~7)
        if offset + size > end:
            raise FrameFailure(
                "past_eof",
                offset,
                expected_seq,
                chain_crc,
                f"frame of {size} bytes runs past the end of the segment "
                f"({end - offset} bytes left)",
            )
        crc = crc32c(view[offset + 4 : offset + size], chain_crc)
        if crc != stored_crc:
            raise FrameFailure(
                "crc_mismatch",
                offset,
                expected_seq,
                chain_crc,
                f"CRC mismatch (stored {stored_crc:08x}, computed {crc:08x})",
            )
        if seq != expected_seq:
            what = "gap" if seq > expected_seq else "repeat"
            raise FrameFailure(
                "seq_mismatch",
                offset,
                expected_seq,
                chain_crc,
                f"sequence {what}: frame holds seq {seq}, expected {expected_seq}",
            )
        next_offset = offset + size
        yield (
            offset,
            seq,
            offset + FRAME_HEAD_BYTES,
            offset + FRAME_HEAD_BYTES + length,
            next_offset,
            crc,
        )
        chain_crc = crc
        expected_seq += 1
        offset = next_offset


class Classification(msgspec.Struct, frozen=True):
    """The verdict on a `FrameFailure`: a torn tail (truncate) or corruption (refuse)."""

    torn: bool
    reason: str


def classify_failure(
    data: bytes | memoryview, failure: FrameFailure, *, last_segment: bool, base: int = 0
) -> Classification:
    """Apply the torn-tail rules of the module docstring to the first invalid frame.

    `data` holds the segment's bytes from file offset `base` to its end (readers that work in
    chunks pass the rest of the file from the failing frame on); offsets in `failure` and in
    the reasons are file offsets.
    """
    if not last_segment:
        return Classification(False, f"{failure.detail} in a segment that is not the last one")
    view = memoryview(data)
    end = base + len(view)
    offset = failure.offset
    if failure.kind == "incomplete_header":
        return Classification(True, failure.detail)
    if failure.kind == "seq_mismatch":
        return Classification(False, failure.detail + " (a valid CRC never comes from a crash)")
    stored_crc, length, seq = FRAME_HEAD.unpack_from(view, offset - base)
    if failure.kind == "past_eof":
        if seq != failure.expected_seq:
            return Classification(
                False,
                f"{failure.detail}, and its head holds seq {seq} instead of "
                f"{failure.expected_seq}: not a torn write",
            )
        follower = _find_chained_follower(view, offset - base, stored_crc, failure.expected_seq + 1)
        if follower is not None:
            return Classification(
                False,
                f"{failure.detail}, but a valid frame (seq {failure.expected_seq + 1}) follows "
                f"at offset {base + follower}: the length field is damaged",
            )
        return Classification(True, failure.detail)
    # crc_mismatch or bad_length: torn only if the file ends in zeros that start no later than
    # the end of this frame (nothing but zeros after it; some of its own bytes never landed).
    frame_end = offset + (padded_size(length) if failure.kind == "crc_mismatch" else 16)
    zeros_from = base + trailing_zeros_start(view)
    if zeros_from < end and zeros_from <= frame_end:
        return Classification(True, f"{failure.detail}; only zeros from offset {zeros_from} to EOF")
    return Classification(False, f"{failure.detail}, with non-zero data after it")


def trailing_zeros_start(data: bytes | memoryview) -> int:
    """Offset where the final run of zero bytes begins (len(data) if the last byte is not 0)."""
    raw = bytes(data)
    return len(raw.rstrip(b"\x00"))


def _find_chained_follower(
    view: memoryview, offset: int, seed_crc: int, next_seq: int
) -> int | None:
    """An 8-aligned valid frame after `offset` with `next_seq`, chained from `seed_crc`."""
    end = len(view)
    position = offset + FRAME_HEAD_BYTES
    while position + FRAME_HEAD_BYTES <= end:
        stored_crc, length, seq = FRAME_HEAD.unpack_from(view, position)
        if seq == next_seq and 0 < length <= MAX_PAYLOAD_BYTES:
            size = padded_size(length)
            if (
                position + size <= end
                and crc32c(view[position + 4 : position + size], seed_crc) == stored_crc
            ):
                return position
        position += FRAME_ALIGN
    return None
