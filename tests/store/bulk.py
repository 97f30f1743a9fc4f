"""A fast path that writes log segments byte-identical to `EventLog.append`, for huge test logs.

Building a 1,000,000-record log through `EventLog.append` costs several seconds of envelope
construction and encoding. This builder produces the *same bytes* faster, two ways:

- payloads of one repeated note differ only in `seq` (and `ts_ns`), so they are rendered from a
  template around the msgpack encoding of the seq; `payload_for` is checked against
  `memstate.core.codec.encode_envelope` in tests/store/test_startup_1m.py;
- frames are assembled with `struct` in one loop (the same layout as `append_frame`), headers
  with the store's `encode_segment_header`, and segments rotate by the writer's rule for
  one-record batches (a new segment before a record that would overflow a non-empty one).

`test_bulk_builder_matches_the_writer` proves byte equality with the real writer on a sample.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
from crc32c import crc32c

from memstate.core.codec import encode_envelope
from memstate.core.events import SCHEMA_VERSION, CgroupOrphanFound, Envelope
from memstate.store.format import (
    MARK_SLOT_BYTES,
    SEGMENT_HEADER_BYTES,
    Mark,
    encode_mark,
    encode_segment_header,
    mark_slot_offset,
    padded_size,
    segment_name,
)

FILLER = CgroupOrphanFound(path="/o")
_MARK = 0x7FFF_FFFF_FFFF_FFF0  # a seq value whose msgpack form is unique in the payload


def _template(ts_ns: int) -> tuple[bytes, bytes]:
    marked = encode_envelope(Envelope(_MARK, ts_ns, SCHEMA_VERSION, FILLER))
    mark = msgspec.msgpack.encode(_MARK)
    assert marked.count(mark) == 1
    prefix, suffix = marked.split(mark)
    return prefix, suffix


class FillerPayloads:
    """`payload_for(seq)` == `encode_envelope(Envelope(seq, ts_ns, SCHEMA_VERSION, FILLER))`."""

    def __init__(self, ts_ns: int) -> None:
        self.prefix, self.suffix = _template(ts_ns)
        self.ts_ns = ts_ns

    def payload_for(self, seq: int) -> bytes:
        return self.prefix + msgspec.msgpack.encode(seq) + self.suffix


def write_filler_log(
    log_dir: Path,
    *,
    first_seq: int,
    prev_chain_crc: int,
    count: int,
    ts_ns: int,
    segment_bytes: int,
) -> tuple[int, int]:
    """Write `count` filler records as one-record batches in new segments from `first_seq`.

    Returns (last_seq, chain_crc). The first new segment starts at `first_seq` (a boundary the
    writer would put there only if its segment were full; any batch boundary is a valid one).
    """
    payloads = FillerPayloads(ts_ns)
    encode_seq = msgspec.msgpack.encode
    pack_length_seq = struct.Struct("<IQ").pack
    pack_crc = struct.Struct("<I").pack
    zeros = [bytes(n) for n in range(8)]
    seq, crc = first_seq, prev_chain_crc
    end = first_seq + count
    while seq < end:
        name = segment_name(seq)
        base, previous_crc, before_last_crc = seq, crc, crc
        parts = [encode_segment_header(seq, crc)]
        size = before_last_size = SEGMENT_HEADER_BYTES
        body_crc = before_last_body = 0
        while seq < end:
            payload = payloads.prefix + encode_seq(seq) + payloads.suffix
            length = len(payload)
            frame_bytes = padded_size(length)
            if size > SEGMENT_HEADER_BYTES and size + frame_bytes > segment_bytes:
                break
            # Same bytes as `append_frame`: crc | length | seq | payload | zero padding, the CRC
            # chained over everything after the CRC field.
            body = pack_length_seq(length, seq) + payload + zeros[frame_bytes - 16 - length]
            before_last_crc, before_last_size, before_last_body = crc, size, body_crc
            crc = crc32c(body, crc)
            parts.append(pack_crc(crc))
            parts.append(body)
            body_crc = crc32c(body, crc32c(parts[-2], body_crc))
            size += frame_bytes
            seq += 1
        data = bytearray(b"".join(parts))
        # The marks the writer leaves: one per one-record commit (generations 2, 3, ...), and
        # a seal when it rotates to a next segment.
        records = seq - base
        marks = [Mark(seq - 1, crc, records + 1, body_end=size, body_crc=body_crc)]
        if records > 1:
            marks.append(
                Mark(seq - 2, before_last_crc, records, False, before_last_size, before_last_body)
            )
        else:
            marks.append(Mark(base - 1, previous_crc, 1, body_end=SEGMENT_HEADER_BYTES))
        if seq < end:
            seal = Mark(seq - 1, crc, records + 2, sealed=True, body_end=size, body_crc=body_crc)
            marks = [seal, marks[0]]
        for mark in marks:
            offset = mark_slot_offset(mark.generation)
            data[offset : offset + MARK_SLOT_BYTES] = encode_mark(mark)
        (log_dir / name).write_bytes(bytes(data))
    return end - 1, crc
