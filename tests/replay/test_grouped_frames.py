"""`replay._grouped` (the one-pass grouping `memstate replay` uses on a state directory) against
the two passes it replaces: `_transactions` over `_whole` (hold back an incomplete tail, then
group), on every shape of record sequence: the same transactions, the same error message at the
same point, the same chain CRCs noted."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.events import Envelope
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


def _raw(frames: list[Record]) -> list[tuple[Envelope, int, int, str, int | None]]:
    """`read_frames`' shape, the envelope standing in for its payload."""
    return [(e, e.seq, 0, "seg", crc) for e, crc in frames]


def _decode(payload: Envelope, seq: int, segment: str, offset: int) -> Envelope:
    assert payload.seq == seq
    return payload


@settings(max_examples=600, deadline=None)
@given(st.lists(RECORD, max_size=14), st.sets(st.integers(min_value=1, max_value=15)))
def test_one_pass_groups_as_two(shapes: list[tuple[str, int | None]], wanted: set[int]) -> None:
    frames = _frames(envelopes_of(shapes))
    crcs: dict[int, int] = {}
    expected = _seqs(_transactions(e for e, _ in _whole(frames)))
    assert _seqs(_grouped(_raw(frames), _decode, wanted, crcs)) == expected
    # Every wanted seq read before the walk ended has its CRC (the tail held back included).
    assert all(crcs[seq] == 1000 + seq for seq in crcs)
    assert set(crcs) <= wanted


def test_a_complete_log_notes_every_wanted_crc() -> None:
    shapes = [("input", 2), ("decision", None), ("decision", None), ("note", None), ("input", 0)]
    frames = _frames(envelopes_of(shapes))
    crcs: dict[int, int] = {}
    assert _seqs(_grouped(_raw(frames), _decode, {3, 5}, crcs)) == (
        [(1, (2, 3)), (4, None), (5, ())],
        None,
    )
    assert crcs == {3: 1003, 5: 1005}


def test_the_fast_decode_is_decode_at() -> None:
    """`replay._decode_current` (the typed decoder called directly) gives `decode_at`'s answer
    on current records, on a schema-v1 record (upcast), and `decode_at`'s error on a record
    whose envelope disagrees with its frame's seq and on bytes that do not decode."""
    from pathlib import Path

    import pytest

    from memstate.core.codec import encode_envelope
    from memstate.core.errors import MemstateError
    from memstate.history.replay import _decode_current
    from memstate.store.reader import LogReader, decode_at

    decode = _decode_current()
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "v1-log"
    old = [(bytes(p), s, seg, o) for p, s, o, seg, _ in LogReader(fixture).read_frames()]
    assert old and any(decode_at(*frame).schema_v != 1 for frame in old)
    current = [
        (encode_envelope(e), e.seq, "seg", 8 * e.seq)
        for e in envelopes_of([("input", 1), ("decision", None), ("note", None)])
    ]
    for frame in old + current:
        assert decode(*frame) == decode_at(*frame)
    payload, seq, segment, offset = current[0]
    for bad in ((payload, seq + 1, segment, offset), (b"\x93\x01", seq, segment, offset)):
        with pytest.raises(MemstateError) as expected:
            decode_at(*bad)
        with pytest.raises(type(expected.value), match=str(expected.value)):
            decode(*bad)
