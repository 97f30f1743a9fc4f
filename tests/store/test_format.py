"""Segment header and frame layout: round trips, fixed offsets, and that every byte is checked.

Method: encode with the same functions the writer uses, then parse with `iter_frames` /
`decode_segment_header`; damage single bits with hypothesis and require detection.
"""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.store.format import (
    BASE_HEADER_BYTES,
    CHAIN_SEED,
    FORMAT_VERSION,
    FRAME_HEAD_BYTES,
    LOG_MAGIC,
    MARK_SLOT_BYTES,
    MAX_PAYLOAD_BYTES,
    SEGMENT_HEADER_BYTES,
    FrameFailure,
    HeaderProblem,
    Mark,
    SegmentHeader,
    append_frame,
    decode_segment_header,
    encode_frame,
    encode_mark,
    encode_segment_header,
    frames_start,
    iter_frames,
    mark_slot_offset,
    padded_size,
    parse_segment_name,
    segment_name,
)

payloads = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=12)


def build(base_seq: int, prev_crc: int, items: list[bytes]) -> tuple[bytes, int]:
    buffer = bytearray(encode_segment_header(base_seq, prev_crc))
    crc = prev_crc
    for index, payload in enumerate(items):
        crc = append_frame(buffer, base_seq + index, payload, crc)
    return bytes(buffer), crc


def test_segment_names_sort_by_sequence_and_ignore_other_files() -> None:
    assert segment_name(1) == "00000000000000000001.evlog"
    assert parse_segment_name(segment_name(123456789)) == 123456789
    for other in ("00000000000000000001.evlog.tmp", "00000000000000000001.evlog.broken-x", "LOCK"):
        assert parse_segment_name(other) is None
    assert sorted(segment_name(n) for n in (10, 9, 100)) == [segment_name(n) for n in (9, 10, 100)]


def test_header_layout_keeps_magic_and_version_first() -> None:
    header = encode_segment_header(42, 0xDEADBEEF)
    assert len(header) == SEGMENT_HEADER_BYTES == 112
    assert header[:8] == LOG_MAGIC
    assert struct.unpack_from("<H", header, 8)[0] == FORMAT_VERSION == 2
    assert struct.unpack_from("<I", header, 12)[0] == 0xDEADBEEF
    assert struct.unpack_from("<Q", header, 16)[0] == 42
    assert struct.unpack_from("<I", header, 28)[0] == crc32c(header[:28])
    decoded = decode_segment_header(header)
    assert isinstance(decoded, SegmentHeader)
    assert (decoded.format_version, decoded.base_seq, decoded.prev_chain_crc) == (2, 42, 0xDEADBEEF)
    # A new segment's mark: nothing acknowledged yet, not sealed, both slots intact.
    assert decoded.mark == Mark(41, 0xDEADBEEF, generation=1, body_end=SEGMENT_HEADER_BYTES)
    assert decoded.damaged_slots == 0 and decoded.frames_start == 112


def test_format_1_header_still_decodes() -> None:
    header = encode_segment_header(42, 7, format_version=1)
    assert len(header) == BASE_HEADER_BYTES == 32
    assert decode_segment_header(header) == SegmentHeader(1, 42, 7)
    assert frames_start(1) == 32


@given(st.integers(min_value=0, max_value=BASE_HEADER_BYTES * 8 - 1))
def test_any_flipped_header_bit_is_refused(bit: int) -> None:
    header = bytearray(encode_segment_header(7, 99))
    header[bit // 8] ^= 1 << (bit % 8)
    assert isinstance(decode_segment_header(bytes(header)), HeaderProblem)


@given(st.integers(min_value=BASE_HEADER_BYTES * 8, max_value=SEGMENT_HEADER_BYTES * 8 - 1))
def test_a_flipped_bit_in_one_mark_slot_falls_back_to_the_other(bit: int) -> None:
    # One slot is written at a time, so one bad slot may be a torn mark write: tolerated.
    header = bytearray(encode_segment_header(7, 99))
    header[bit // 8] ^= 1 << (bit % 8)
    decoded = decode_segment_header(bytes(header))
    assert isinstance(decoded, SegmentHeader)
    assert decoded.damaged_slots == 1
    assert decoded.mark is not None and decoded.mark.acked_seq == 6


def test_both_mark_slots_damaged_is_refused() -> None:
    header = bytearray(encode_segment_header(7, 99))
    header[BASE_HEADER_BYTES] ^= 1
    header[BASE_HEADER_BYTES + MARK_SLOT_BYTES] ^= 1
    problem = decode_segment_header(bytes(header))
    assert isinstance(problem, HeaderProblem) and "both mark slots" in problem.message


def test_the_newer_valid_slot_wins() -> None:
    header = bytearray(encode_segment_header(7, 99))
    newer = Mark(acked_seq=20, chain_crc=5, generation=2)
    header[mark_slot_offset(2) : mark_slot_offset(2) + MARK_SLOT_BYTES] = encode_mark(newer)
    decoded = decode_segment_header(bytes(header))
    assert isinstance(decoded, SegmentHeader) and decoded.mark == newer


def test_newer_format_version_is_reported_as_such() -> None:
    header = bytearray(encode_segment_header(1, 0))
    struct.pack_into("<H", header, 8, FORMAT_VERSION + 1)
    problem = decode_segment_header(bytes(header))
    assert isinstance(problem, HeaderProblem)
    assert problem.newer_format
    assert "newer" in problem.message


def test_short_header_is_damage() -> None:
    problem = decode_segment_header(encode_segment_header(1, 0)[:31])
    assert isinstance(problem, HeaderProblem)
    assert not problem.newer_format


@given(payloads, st.integers(min_value=1, max_value=2**40), st.integers(0, 2**32 - 1))
def test_frames_round_trip_with_chained_crc(items: list[bytes], base: int, seed: int) -> None:
    data, final_crc = build(base, seed, items)
    frames = list(iter_frames(data, SEGMENT_HEADER_BYTES, base, seed))
    assert [data[f[2] : f[3]] for f in frames] == items
    assert [f[1] for f in frames] == list(range(base, base + len(items)))
    assert frames[-1][5] == final_crc
    for index, (offset, _, start, stop, end, _) in enumerate(frames):
        assert offset % 8 == 0
        assert start == offset + FRAME_HEAD_BYTES
        assert end == offset + padded_size(stop - start)
        assert end == (frames[index + 1][0] if index + 1 < len(frames) else len(data))
    # The chain: each CRC is seeded with the previous one, so the same frames under another
    # seed do not verify.
    with pytest.raises(FrameFailure) as failure:
        list(iter_frames(data, SEGMENT_HEADER_BYTES, base, seed ^ 1))
    assert failure.value.kind == "crc_mismatch"
    assert failure.value.offset == SEGMENT_HEADER_BYTES


def test_encode_frame_matches_append_frame_and_pads_to_eight() -> None:
    for length in range(1, 20):
        payload = bytes(range(1, length + 1))
        frame, crc = encode_frame(5, payload, CHAIN_SEED)
        buffer = bytearray()
        assert append_frame(buffer, 5, payload, CHAIN_SEED) == crc
        assert bytes(buffer) == frame
        assert len(frame) == padded_size(length) and len(frame) % 8 == 0
        assert frame[FRAME_HEAD_BYTES + length :] == bytes(len(frame) - FRAME_HEAD_BYTES - length)


def test_payload_bounds_are_enforced_on_write() -> None:
    with pytest.raises(ValueError):
        encode_frame(1, b"", 0)
    with pytest.raises(ValueError):
        encode_frame(1, bytes(MAX_PAYLOAD_BYTES + 1), 0)


@settings(max_examples=200)
@given(payloads, st.data())
def test_every_bit_of_every_frame_is_covered(items: list[bytes], data: st.DataObject) -> None:
    """A single flipped bit anywhere in the frames is never accepted as a valid frame."""
    raw, _ = build(1, CHAIN_SEED, items)
    bit = data.draw(st.integers(SEGMENT_HEADER_BYTES * 8, len(raw) * 8 - 1))
    damaged = bytearray(raw)
    damaged[bit // 8] ^= 1 << (bit % 8)
    byte = bit // 8
    frames = list(iter_frames(raw, SEGMENT_HEADER_BYTES, 1, CHAIN_SEED))
    damaged_index = next(i for i, f in enumerate(frames) if f[0] <= byte < f[4])
    # Exactly the frames before the damaged one survive; the damaged one never verifies.
    assert _valid_prefix(bytes(damaged)) == frames[:damaged_index]


def _valid_prefix(data: bytes) -> list[tuple[int, int, int, int, int, int]]:
    found = []
    try:
        for frame in iter_frames(data, SEGMENT_HEADER_BYTES, 1, CHAIN_SEED):
            found.append(frame)
    except FrameFailure:
        pass
    return found


def test_sequence_gap_with_valid_crc_is_a_seq_mismatch() -> None:
    buffer = bytearray(encode_segment_header(1, CHAIN_SEED))
    crc = append_frame(buffer, 1, b"a", CHAIN_SEED)
    append_frame(buffer, 3, b"b", crc)  # skips seq 2, CRC computed honestly
    with pytest.raises(FrameFailure) as failure:
        list(iter_frames(bytes(buffer), SEGMENT_HEADER_BYTES, 1, CHAIN_SEED))
    assert failure.value.kind == "seq_mismatch"
    assert "gap" in failure.value.detail
