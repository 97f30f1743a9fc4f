"""Quantities in pod manifests: `memstate.core.pod` remembers parsed quantities.

Goal: the remembered result is what the parser gives, for every input type, in any order (so an
input seen before, or one equal to it under another type — 1, 1.0, True — never answers for
another), and an error names the field exactly as the parser does. Method: hypothesis-drawn
sequences of quantities, each parsed through the memo and directly.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core import pod
from memstate.core.errors import InputError
from memstate.core.quantity import parse_bytes, parse_millis

QUANTITIES = st.one_of(
    st.sampled_from(["1", "64Mi", "1Gi", "500m", "0.5", "1e3", "1.5G", "x", "", "-1", "1Ki"]),
    st.sampled_from([1, 1.0, True, False, 0, 0.0, None, [1], {"a": 1}, 2**70, 1.5]),
    st.integers(-5, 5000),
    st.floats(allow_nan=True),
    st.text(alphabet="0123456789.eEmkKMGiT-+", max_size=6),
)


def direct(parse: Any, value: Any, path: str) -> tuple[str, Any]:
    try:
        return ("ok", parse(value, path=path))
    except InputError as exc:
        return ("error", str(exc))


def remembered(parse: Any, value: Any, path: str) -> tuple[str, Any]:
    try:
        return ("ok", pod._quantity(parse, value, path))
    except InputError as exc:
        return ("error", str(exc))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([parse_bytes, parse_millis]), QUANTITIES), max_size=30))
def test_remembered_quantities_are_the_parsers(sequence: list[tuple[Any, Any]]) -> None:
    for index, (parse, value) in enumerate(sequence):
        path = f"$.spec.containers[{index}].resources.limits.memory"
        assert remembered(parse, value, path) == direct(parse, value, path)
