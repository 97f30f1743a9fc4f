"""`replay._grouped` (the one-pass grouping `memstate replay` uses on a state directory) against
the two passes it replaces: `_transactions` over `_whole` (hold back an incomplete tail, then
group), on every shape of record sequence: the same transactions, the same error message at the
same point, the same chain CRCs noted."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.events import SCHEMA_VERSION, Envelope, PodRemoved
from memstate.history.replay import (
    Grouped,
    LogStructureError,
    Record,
    _grouped,
    _transactions,
    _whole,
)
from tests.store.test_transactions import RECORD, envelopes_of

Outcome = tuple[list[tuple[int, tuple[int, ...] | None]], str | None]


def _seqs(grouped: Iterator[Grouped]) -> Outcome:
    out: list[tuple[int, tuple[int, ...] | None]] = []
    try:
        for head, decisions in grouped:
            out.append((head.seq, None if decisions is None else tuple(d.seq for d in decisions)))
    except LogStructureError as exc:
        return out, str(exc)
    return out, None


def _frames(records: list[Envelope]) -> list[Record]:
    return [(e, 1000 + e.seq) for e in records]


def _raw(
    frames: list[Record],
) -> list[tuple[str, list[tuple[int, int, Envelope, int, int | None]]]]:
    """`segment_frames`' shape (two segments, the first starting before the wanted seq), the
    envelope standing in for its payload."""
    rows = [(8 * e.seq, e.seq, e, 8 * e.seq + 8, crc) for e, crc in frames]
    half = len(rows) // 2
    return [("seg-a", [(0, 0, _BEFORE, 8, 1), *rows[:half]]), ("seg-b", rows[half:])]


# A decision before the wanted seq: grouped, it would be an orphan; it must be skipped.
_BEFORE = Envelope(
    seq=0, ts_ns=0, schema_v=SCHEMA_VERSION, event=PodRemoved(uid="u", reason="requested")
)


def _decode(payload: Envelope, seq: int, segment: str, offset: int) -> Envelope:
    assert payload.seq == seq and payload.seq >= 1
    return payload


def _identity(payload: Envelope) -> Envelope:
    return payload


def _grouped_test(
    frames: list[Record], wanted: set[int], crcs: dict[int, int]
) -> Iterator[Grouped]:
    return _grouped(
        _raw(frames),
        1,
        fast=_identity,
        fast_failed=ValueError,
        decode=_decode,
        wanted=wanted,
        crcs=crcs,
    )


@settings(max_examples=600, deadline=None)
@given(st.lists(RECORD, max_size=14), st.sets(st.integers(min_value=1, max_value=15)))
def test_one_pass_groups_as_two(shapes: list[tuple[str, int | None]], wanted: set[int]) -> None:
    frames = _frames(envelopes_of(shapes))
    crcs: dict[int, int] = {}
    expected = _seqs(_transactions(e for e, _ in _whole(frames)))
    assert _seqs(_grouped_test(frames, wanted, crcs)) == expected
    # Every wanted seq read before the walk ended has its CRC (the tail held back included).
    assert all(crcs[seq] == 1000 + seq for seq in crcs)
    assert set(crcs) <= wanted


def test_a_complete_log_notes_every_wanted_crc() -> None:
    shapes = [("input", 2), ("decision", None), ("decision", None), ("note", None), ("input", 0)]
    frames = _frames(envelopes_of(shapes))
    crcs: dict[int, int] = {}
    assert _seqs(_grouped_test(frames, {3, 5}, crcs)) == (
        [(1, (2, 3)), (4, None), (5, ())],
        None,
    )
    assert crcs == {3: 1003, 5: 1005}


def test_the_fast_decode_is_decode_at() -> None:
    """`replay._grouped`'s inline fast path (the typed decoder called directly) gives what
    `decode_at` alone gives, on current records, on a schema-v1 log (upcast), and raises
    `decode_at`'s error on a record whose envelope disagrees with its frame's seq and on bytes
    that do not decode."""
    from pathlib import Path

    import msgspec
    import pytest

    from memstate.core.codec import encode_envelope, typed_decode
    from memstate.core.errors import MemstateError
    from memstate.store.reader import LogReader, decode_at

    def never(payload: bytes | memoryview) -> Envelope:
        raise msgspec.DecodeError("the slow path only")

    def both(
        segments: list[tuple[str, list[tuple[int, int, bytes, int, int | None]]]],
    ) -> tuple[list[Grouped], list[Grouped]]:
        crcs: dict[int, int] = {}
        fast = list(
            _grouped(
                segments,
                1,
                fast=typed_decode(),
                fast_failed=msgspec.MsgspecError,
                decode=decode_at,
                wanted=set(),
                crcs=crcs,
            )
        )
        slow = list(
            _grouped(
                segments,
                1,
                fast=never,
                fast_failed=msgspec.MsgspecError,
                decode=decode_at,
                wanted=set(),
                crcs=crcs,
            )
        )
        return fast, slow

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "v1-log"
    old = [
        (name, [(o, s, bytes(p), e, c) for o, s, p, e, c in frames])
        for name, frames in LogReader(fixture).segment_frames()
    ]
    fast, slow = both(old)
    assert slow and fast == slow
    assert any(head.schema_v != 1 for head, _ in fast)  # upcast
    current = [
        (8 * e.seq, e.seq, encode_envelope(e), 8 * e.seq + 8, None)
        for e in envelopes_of([("input", 1), ("decision", None), ("note", None)])
    ]
    fast, slow = both([("seg", current)])
    assert len(fast) == 2 and fast == slow
    offset, seq, payload, end, crc = current[0]
    for bad in ((offset, seq + 1, payload, end, crc), (offset, seq, b"\x93\x01", end, crc)):
        with pytest.raises(MemstateError) as expected:
            decode_at(bad[2], bad[1], "seg", offset)
        for decoder in (typed_decode(), never):
            grouped = _grouped(
                [("seg", [bad])],
                1,
                fast=decoder,
                fast_failed=msgspec.MsgspecError,
                decode=decode_at,
                wanted=set(),
                crcs={},
            )
            with pytest.raises(type(expected.value), match=str(expected.value)):
                list(grouped)
