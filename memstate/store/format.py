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
FORMAT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sHHIQII")
SEGMENT_HEADER_BYTES = SEGMENT_HEADER.size  # 32
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

if SEGMENT_HEADER_BYTES != 32 or FRAME_HEAD_BYTES != 16:  # pragma: no cover - layout guard
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


class SegmentHeader(msgspec.Struct, frozen=True):
    """The decoded, checked header of a segment."""

    format_version: int
    base_seq: int
    prev_chain_crc: int


def encode_segment_header(base_seq: int, prev_chain_crc: int) -> bytes:
    """The 32 header bytes of a new segment."""
    if base_seq < 1:
        raise ValueError(f"base_seq must be >= 1, got {base_seq}")
    head = SEGMENT_HEADER.pack(LOG_MAGIC, FORMAT_VERSION, 0, prev_chain_crc, base_seq, 0, 0)
    crc = crc32c(head[:28])
    return head[:28] + struct.pack("<I", crc)


class HeaderProblem(msgspec.Struct, frozen=True):
    """Why a segment header is unusable. `newer_format` is not damage but still a refusal."""

    message: str
    offset: int
    newer_format: bool = False


def decode_segment_header(data: bytes | memoryview) -> SegmentHeader | HeaderProblem:
    """Check magic, then version, then the header CRC; return the header or the problem."""
    if len(data) < SEGMENT_HEADER_BYTES:
        return HeaderProblem(
            f"segment header incomplete ({len(data)} of {SEGMENT_HEADER_BYTES} bytes); headers "
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
    return SegmentHeader(format_version=version, base_seq=base_seq, prev_chain_crc=prev_crc)


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
    data: bytes | memoryview, failure: FrameFailure, *, last_segment: bool
) -> Classification:
    """Apply the torn-tail rules of the module docstring to the first invalid frame."""
    if not last_segment:
        return Classification(False, f"{failure.detail} in a segment that is not the last one")
    view = memoryview(data)
    end = len(view)
    offset = failure.offset
    if failure.kind == "incomplete_header":
        return Classification(True, failure.detail)
    if failure.kind == "seq_mismatch":
        return Classification(False, failure.detail + " (a valid CRC never comes from a crash)")
    stored_crc, length, seq = FRAME_HEAD.unpack_from(view, offset)
    if failure.kind == "past_eof":
        if seq != failure.expected_seq:
            return Classification(
                False,
                f"{failure.detail}, and its head holds seq {seq} instead of "
                f"{failure.expected_seq}: not a torn write",
            )
        follower = _find_chained_follower(view, offset, stored_crc, failure.expected_seq + 1)
        if follower is not None:
            return Classification(
                False,
                f"{failure.detail}, but a valid frame (seq {failure.expected_seq + 1}) follows "
                f"at offset {follower}: the length field is damaged",
            )
        return Classification(True, failure.detail)
    # crc_mismatch or bad_length: torn only if the file ends in zeros that start no later than
    # the end of this frame (nothing but zeros after it; some of its own bytes never landed).
    frame_end = offset + (padded_size(length) if failure.kind == "crc_mismatch" else 16)
    zeros_from = trailing_zeros_start(view)
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
