"""Topology Manager hint merging.

Goal: `merge_hints` gives the kubelet's answer for every policy. Method: table-driven cases from
memory-manager.md §2.3, plus a differential property test against `reference_merge`, a literal
port of the kubelet's permutation walk and `HintMerger.compare` fold (which memstate replaces by a
set-based minimum for speed).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.topology_hints import (
    EMPTY_HINT,
    ProviderAnswer,
    TopologyHint,
    from_bits,
    is_narrower,
    merge_hints,
    to_bits,
)


def H(*nodes: int, preferred: bool = True) -> TopologyHint:
    return TopologyHint(numa_affinity=tuple(nodes) if nodes else None, preferred=preferred)


# --- a literal port of the upstream algorithm, for differential testing ---------------------------


def _ref_fitter(
    current: tuple[int, bool],
    candidate: tuple[int, bool],
    distances: Mapping[int, Sequence[int]] | None,
) -> tuple[int, bool]:
    if candidate[0] == current[0]:
        return current
    m1, m2 = current[0], candidate[0]
    if distances is not None:
        if m1.bit_count() != m2.bit_count():
            best = m1 if is_narrower(m1, m2) else m2
        else:

            def avg(bits: int) -> float:
                nodes = from_bits(bits)
                return sum(distances[a][b] for a in nodes for b in nodes) / (len(nodes) ** 2)

            d1, d2 = avg(m1), avg(m2)
            if d1 == d2:
                best = m1 if m1 < m2 else m2
            else:
                best = m1 if d1 < d2 else m2
    else:
        best = m1 if is_narrower(m1, m2) else m2
    return current if best == current[0] else candidate


def reference_merge(
    policy: str,
    node_ids: Sequence[int],
    providers: Sequence[ProviderAnswer],
    distances: Mapping[int, Sequence[int]] | None = None,
) -> tuple[TopologyHint, bool]:
    if policy == "none":
        return EMPTY_HINT, True
    default = to_bits(tuple(node_ids))
    lists: list[list[tuple[int | None, bool]]] = []
    for answer in providers:
        if not answer:
            lists.append([(None, True)])
            continue
        for resource in sorted(answer):
            hints = answer[resource]
            if hints is None:
                lists.append([(None, True)])
            elif len(hints) == 0:
                lists.append([(None, False)])
            else:
                lists.append(
                    [
                        (None if h.numa_affinity is None else to_bits(h.numa_affinity), h.preferred)
                        for h in hints
                    ]
                )
    if policy == "single-numa-node":
        lists = [
            [h for h in hl if h[1] and (h[0] is None or h[0].bit_count() == 1)] for hl in lists
        ]
        distances = None
    target = 0
    for hl in lists:
        narrowest = None
        for bits, _ in hl:
            if bits is None:
                continue
            if narrowest is None or is_narrower(bits, narrowest):
                narrowest = bits
        if narrowest is not None:
            target = max(target, narrowest.bit_count())

    best: tuple[int, bool] | None = None
    for permutation in itertools.product(*lists):
        preferred = True
        masks = []
        for bits, pref in permutation:
            if bits is not None:
                masks.append(bits)
                if bits != masks[0]:
                    preferred = False
            if not pref:
                preferred = False
        merged = default
        for m in masks:
            merged &= m
        candidate = (merged, preferred)
        if merged == 0:
            continue
        if best is None:
            best = candidate
            continue
        cur = best
        if not cur[1] and candidate[1]:
            best = candidate
        elif cur[1] and not candidate[1]:
            pass
        elif cur[1] and candidate[1]:
            best = _ref_fitter(cur, candidate, distances)
        else:
            cc, kc = cur[0].bit_count(), candidate[0].bit_count()
            if cc > target:
                best = _ref_fitter(cur, candidate, distances)
            elif cc == target:
                if kc == target:
                    best = _ref_fitter(cur, candidate, distances)
            elif kc > target:
                pass
            elif kc == target or kc > cc:
                best = candidate
            elif kc < cc:
                pass
            else:
                best = _ref_fitter(cur, candidate, distances)
    bits, preferred = best if best is not None else (default, False)
    hint = TopologyHint(numa_affinity=from_bits(bits), preferred=preferred)
    if policy == "single-numa-node":
        if bits == default:
            hint = TopologyHint(numa_affinity=None, preferred=preferred)
        return hint, preferred
    if policy == "restricted":
        return hint, preferred
    return hint, True


# --- table-driven cases ---------------------------------------------------------------------------


def test_policy_none_admits_with_an_empty_hint() -> None:
    assert merge_hints("none", [0, 1], [{"memory": [H(0)]}]) == (EMPTY_HINT, True)


def test_no_preference_from_an_empty_map_admits_everything() -> None:
    # The Memory Manager's "nothing fits" empty map reads as "no preference, preferred".
    for policy in ("best-effort", "restricted"):
        hint, admit = merge_hints(policy, [0, 1], [{}])
        assert hint == H(0, 1) and admit
    hint, admit = merge_hints("single-numa-node", [0, 1], [{}])
    assert hint == TopologyHint(numa_affinity=None, preferred=True) and admit


def test_empty_hint_list_means_no_possible_affinity() -> None:
    hint, admit = merge_hints("restricted", [0, 1], [{"memory": []}])
    assert hint == H(0, 1, preferred=False) and not admit
    hint, admit = merge_hints("best-effort", [0, 1], [{"memory": []}])
    assert not hint.preferred and admit


def test_narrowest_preferred_hint_wins() -> None:
    memory = [H(0), H(1), H(0, 1, preferred=False)]
    assert merge_hints("restricted", [0, 1], [{"memory": memory}]) == (H(0), True)


def test_cpu_and_memory_disagreeing_gives_a_non_preferred_and() -> None:
    # memory offers {0,1} preferred (needs both nodes), cpu offers {0} or {1} preferred.
    providers: list[ProviderAnswer] = [
        {"memory": [H(0, 1)]},
        {"cpu": [H(0), H(1), H(0, 1, preferred=False)]},
    ]
    hint, admit = merge_hints("restricted", [0, 1], providers)
    assert hint == H(0, 1, preferred=False) and not admit
    hint, admit = merge_hints("best-effort", [0, 1], providers)
    assert admit and hint.numa_affinity == (0, 1)


def test_integer_cpu_preference_narrows_the_memory_hint() -> None:
    # memory-manager.md §7.2 order A with integer CPUs: MM has no hints (empty map), CPU offers
    # {1} preferred and {0,1} non-preferred -> TM picks {1}.
    providers: list[ProviderAnswer] = [{}, {"cpu": [H(1), H(0, 1, preferred=False)]}]
    for policy in ("best-effort", "restricted", "single-numa-node"):
        hint, admit = merge_hints(policy, [0, 1], providers)
        assert hint == H(1) and admit, policy


def test_single_numa_node_drops_multi_node_hints() -> None:
    hint, admit = merge_hints("single-numa-node", [0, 1], [{"memory": [H(0, 1)]}])
    assert hint == TopologyHint(numa_affinity=None, preferred=False) and not admit


def test_single_numa_node_on_a_one_node_machine_reports_nil() -> None:
    hint, admit = merge_hints("single-numa-node", [0], [{"memory": [H(0)]}])
    assert hint == TopologyHint(numa_affinity=None, preferred=True) and admit


def test_non_preferred_picks_closest_to_max_of_min() -> None:
    # maxOfMin = 2 (memory's narrowest is two nodes); among non-preferred candidates the one
    # with two nodes wins over a three-node one.
    providers: list[ProviderAnswer] = [
        {"memory": [H(0, 1, preferred=False), H(0, 1, 2, preferred=False)]},
    ]
    hint, _ = merge_hints("best-effort", [0, 1, 2], providers)
    assert hint == H(0, 1, preferred=False)


def test_non_preferred_below_max_of_min_prefers_the_larger() -> None:
    # maxOfMin = 3 (memory can only use three nodes); the cpu hints AND down to {0} and {0,1},
    # both below 3: the kubelet creeps back up towards 3 and keeps {0,1}.
    providers: list[ProviderAnswer] = [
        {"memory": [H(0, 1, 2, preferred=False)]},
        {"cpu": [H(0, preferred=False), H(0, 1, preferred=False)]},
    ]
    hint, admit = merge_hints("best-effort", [0, 1, 2], providers)
    assert hint == H(0, 1, preferred=False) and admit
    assert reference_merge("best-effort", [0, 1, 2], providers) == (hint, admit)


def test_non_preferred_above_max_of_min_prefers_the_narrower() -> None:
    providers: list[ProviderAnswer] = [
        {"memory": [H(0, 1, 2, 3, preferred=False), H(0, 1, 2, preferred=False)]},
        {"cpu": [H(0, preferred=False)]},
    ]
    # maxOfMin = 3; candidates {0} only (AND with {0}) -> {0}
    hint, _ = merge_hints("best-effort", [0, 1, 2, 3], providers)
    assert hint == H(0, preferred=False)


def test_prefer_closest_numa_nodes_uses_distances() -> None:
    distances = {0: (10, 21, 11, 21), 1: (21, 10, 21, 11), 2: (11, 21, 10, 21), 3: (21, 11, 21, 10)}
    memory = [H(0, 1), H(0, 2), H(1, 3)]
    hint, _ = merge_hints("best-effort", [0, 1, 2, 3], [{"memory": memory}], distances=distances)
    assert hint == H(0, 2)
    hint, _ = merge_hints("best-effort", [0, 1, 2, 3], [{"memory": memory}])
    assert hint == H(0, 1)


# --- differential property test -------------------------------------------------------------------

_NODES = [0, 1, 2, 3]


def _hints() -> st.SearchStrategy[TopologyHint]:
    return st.builds(
        TopologyHint,
        numa_affinity=st.one_of(
            st.none(), st.sets(st.sampled_from(_NODES), min_size=1).map(lambda s: tuple(sorted(s)))
        ),
        preferred=st.booleans(),
    )


_answer = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["memory", "cpu", "hugepages-2Mi"]),
        st.one_of(st.none(), st.lists(_hints(), max_size=4)),
        max_size=3,
    ),
)


@settings(max_examples=1500, deadline=None)
@given(
    policy=st.sampled_from(["none", "best-effort", "restricted", "single-numa-node"]),
    providers=st.lists(_answer, min_size=1, max_size=3),
    with_distances=st.booleans(),
)
def test_merge_matches_the_upstream_fold(
    policy: str, providers: list[ProviderAnswer], with_distances: bool
) -> None:
    distances = (
        {0: (10, 12, 20, 22), 1: (12, 10, 22, 20), 2: (20, 22, 10, 12), 3: (22, 20, 12, 10)}
        if with_distances
        else None
    )
    expected = reference_merge(policy, _NODES, providers, distances)
    assert merge_hints(policy, _NODES, providers, distances=distances) == expected  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(
    policy=st.sampled_from(["best-effort", "restricted", "single-numa-node"]),
    hints=st.lists(_hints(), min_size=1, max_size=6),
    resources=st.sets(st.sampled_from(["memory", "hugepages-2Mi", "hugepages-1Gi"]), min_size=2),
    other=st.one_of(st.none(), _answer),
)
def test_merge_of_one_list_per_resource_matches_the_upstream_fold(
    policy: str, hints: list[TopologyHint], resources: set[str], other: ProviderAnswer
) -> None:
    """The Memory Manager's answer repeats one list per resource: merge_hints skips the copies
    when they cannot matter (topology_hints._candidates); the full fold must agree."""
    providers: list[ProviderAnswer] = [{r: list(hints) for r in resources}]
    if other is not None:
        providers.append(other)
    expected = reference_merge(policy, _NODES, providers, None)
    assert merge_hints(policy, _NODES, providers) == expected  # type: ignore[arg-type]


def test_copies_of_a_list_without_preferred_hints_still_merge() -> None:
    """Without a preferred hint the copies matter: {0,1,2} & {0,1,3} = {0,1} has the target size
    and beats {2,3}, which wins for the list alone."""
    hints = [H(2, 3, preferred=False), H(0, 1, 2, preferred=False), H(0, 1, 3, preferred=False)]
    alone = merge_hints("best-effort", _NODES, [{"memory": hints}])
    repeated = merge_hints("best-effort", _NODES, [{"memory": hints, "hugepages-2Mi": hints}])
    assert alone == (H(2, 3, preferred=False), True)
    assert repeated == reference_merge(
        "best-effort", _NODES, [{"memory": hints, "hugepages-2Mi": hints}], None
    )
    assert repeated == (H(0, 1, preferred=False), True)
