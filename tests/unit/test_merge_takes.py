"""`merge_takes`, the canonical form of a pod's takes, against its definition.

`machine.merge_takes` keeps takes that are already canonical (strictly ascending (node,
resource), none zero) as they are instead of summing and building them again. Method: random
lists of takes, and the same lists put into canonical order first, so that both branches run;
each result is compared with the sum-drop-sort it is defined as.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.machine import Take, merge_takes

RESOURCES = ("hugepages-1Gi", "hugepages-2Mi", "memory")


def _by_definition(takes: list[Take]) -> tuple[Take, ...]:
    totals: dict[tuple[int, str], int] = {}
    for take in takes:
        key = (take.numa_node, take.resource)
        totals[key] = totals.get(key, 0) + take.size_bytes
    return tuple(
        Take(numa_node=n, resource=r, size_bytes=size)
        for (n, r), size in sorted(totals.items())
        if size != 0
    )


takes_lists = st.lists(
    st.builds(
        Take,
        numa_node=st.integers(0, 3),
        resource=st.sampled_from(RESOURCES),
        size_bytes=st.sampled_from([0, 2**20, 2**21, 2**30, 3 * 2**30]),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(takes_lists, st.booleans())
def test_merge_takes_is_sum_drop_sort(takes: list[Take], ordered: bool) -> None:
    if ordered:
        # Canonical order, keys possibly repeated and sizes possibly zero: the kept-as-is
        # branch must still notice both.
        takes = sorted(takes, key=lambda t: (t.numa_node, t.resource))
    assert merge_takes(takes) == _by_definition(takes)
    assert merge_takes(iter(takes)) == _by_definition(takes)


def test_canonical_takes_are_kept_and_others_merged() -> None:
    one = Take(numa_node=0, resource="hugepages-2Mi", size_bytes=2**21)
    two = Take(numa_node=0, resource="memory", size_bytes=2**30)
    kept = merge_takes([one, two])
    assert kept == (one, two) and kept[0] is one
    assert merge_takes([two, one]) == (one, two)
    assert merge_takes([two, two]) == (Take(numa_node=0, resource="memory", size_bytes=2**31),)
    assert merge_takes([one, Take(numa_node=1, resource="memory", size_bytes=0)]) == (one,)
