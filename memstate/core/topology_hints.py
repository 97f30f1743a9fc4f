"""Topology Manager: merging NUMA hints from hint providers and the admission rule per policy.

A *hint* is a NUMA mask plus a `preferred` flag. Each hint provider answers with a map
resource → list of hints; memstate's own provider is the Memory Manager (`numa_policy`), and a
`pod_admission_requested` event may carry the answers of other providers (a CPU manager, a device
plugin) so that scenarios involving them replay exactly.

Rules, as in the kubelet (v1.26–v1.32, `topologymanager/policy.go`):

1. Normalise: a provider with no map → one `{nil, preferred}` hint ("no preference"); a resource
   with a nil list → `{nil, preferred}`; an empty list → `{nil, not preferred}`.
2. Merge every permutation (one hint per resource list): mask = AND of all masks (nil = all
   nodes); preferred iff every hint is preferred and all non-nil masks are equal. Empty masks are
   discarded.
3. Keep the best: preferred beats non-preferred; among preferred the narrower mask (fewer nodes,
   then the numerically smaller mask) or, with `prefer-closest-numa-nodes`, the smaller average
   distance; among non-preferred, the one whose size is closest to, and not above, `maxOfMin`.
   Nothing left → all nodes, not preferred.
4. Admit: `none` and `best-effort` always; `restricted` iff preferred; `single-numa-node` keeps
   only nil/one-node preferred hints, reports an all-node result as nil, admits iff preferred.

Masks are handled as Python ints (bit i = NUMA node i) inside this module and as ascending
tuples of node ids everywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from memstate.core.config import TopologyManagerPolicy

Mask = tuple[int, ...]


class TopologyHint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`numa_affinity` None means "any node" (the kubelet's nil mask)."""

    numa_affinity: Mask | None
    preferred: bool


NO_PREFERENCE = TopologyHint(numa_affinity=None, preferred=True)
EMPTY_HINT = TopologyHint(numa_affinity=None, preferred=False)

# One provider's answer: resource → hints (None: no preference for that resource). A provider
# that returns None or an empty mapping has no preference at all.
ProviderAnswer = Mapping[str, Sequence[TopologyHint] | None] | None


def to_bits(mask: Mask) -> int:
    bits = 0
    for node_id in mask:
        bits |= 1 << node_id
    return bits


def from_bits(bits: int) -> Mask:
    return tuple(i for i in range(bits.bit_length()) if bits >> i & 1)


def popcount(bits: int) -> int:
    return bits.bit_count()


def is_narrower(a: int, b: int) -> bool:
    """The kubelet's `IsNarrowerThan`: fewer nodes, or as many and a smaller mask value."""
    if popcount(a) == popcount(b):
        return a < b
    return popcount(a) < popcount(b)


class _Hint:
    """Internal hint with an int mask (None stands for the kubelet's nil mask)."""

    __slots__ = ("bits", "preferred")

    def __init__(self, bits: int | None, preferred: bool) -> None:
        self.bits = bits
        self.preferred = preferred


def _normalise(providers: Sequence[ProviderAnswer]) -> list[list[_Hint]]:
    lists: list[list[_Hint]] = []
    for answer in providers:
        if not answer:
            lists.append([_Hint(None, True)])
            continue
        for resource in sorted(answer):
            hints = answer[resource]
            if hints is None:
                lists.append([_Hint(None, True)])
            elif not hints:
                lists.append([_Hint(None, False)])
            else:
                lists.append(
                    [
                        _Hint(
                            None if h.numa_affinity is None else to_bits(h.numa_affinity),
                            h.preferred,
                        )
                        for h in hints
                    ]
                )
    return lists


def _max_of_min(lists: list[list[_Hint]]) -> int:
    """`bestNonPreferredAffinityCount`: over all lists, the largest size of a list's narrowest
    non-nil hint."""
    best = 0
    for hints in lists:
        sized = [h.bits for h in hints if h.bits is not None]
        if sized:
            narrowest = min(sized, key=lambda b: (popcount(b), b))
            best = max(best, popcount(narrowest))
    return best


def _merged_candidates(lists: list[list[_Hint]], default_bits: int) -> set[tuple[int, bool]]:
    """The distinct (mask, preferred) results of merging every permutation.

    The kubelet walks the full cartesian product, which is 255^3 permutations for memory plus two
    hugepage sizes on 8 nodes. A permutation's result only depends on the running AND, the first
    non-nil mask and whether it is still preferred, so folding the lists one at a time over that
    small state space gives the same set of results.
    """
    lost = -1  # the first mask stops mattering once the permutation is not preferred
    states: set[tuple[int, int | None, bool]] = {(default_bits, None, True)}
    for hints in lists:
        following: set[tuple[int, int | None, bool]] = set()
        for acc, first, preferred in states:
            for hint in hints:
                if hint.bits is None:
                    state = (acc, first, preferred and hint.preferred)
                elif first is None:
                    state = (acc & hint.bits, hint.bits, preferred and hint.preferred)
                else:
                    still = preferred and hint.preferred and hint.bits == first
                    state = (acc & hint.bits, first, still)
                if not state[2]:
                    state = (state[0], lost, False)
                following.add(state)
        states = following
    return {(acc, preferred) for acc, _, preferred in states if acc != 0}


def _candidates(lists: list[list[_Hint]], default_bits: int) -> set[tuple[int, bool]]:
    """`_merged_candidates`, without merging a list with copies of itself when that cannot matter.

    The Memory Manager answers with the same list for every resource it is asked about (memory
    and each hugepage size), which on 8 nodes is 255 x 255 permutations for one hugepage pod.
    Merging copies of one list only adds non-preferred candidates: a permutation stays preferred
    only if every hint is preferred and every mask equals the first, and such a permutation gives
    exactly what that hint gives alone. Preferred candidates beat non-preferred ones in `_best`,
    so when the list alone yields a preferred candidate the copies cannot change the result.
    """
    if len(lists) > 1:
        first = [(h.bits, h.preferred) for h in lists[0]]
        if all([(h.bits, h.preferred) for h in other] == first for other in lists[1:]):
            alone = _merged_candidates(lists[:1], default_bits)
            if any(preferred for _, preferred in alone):
                return alone
    return _merged_candidates(lists, default_bits)


def _best(
    candidates: set[tuple[int, bool]],
    target: int,
    distances: Mapping[int, Sequence[int]] | None,
) -> tuple[int, bool] | None:
    """The kubelet's `HintMerger.compare` fold, as the minimum of a total order.

    Preferred beats non-preferred. Among preferred: fewer nodes, then (with distances) the
    smaller average distance, then the smaller mask value. Among non-preferred: a size equal to
    `target` first, then sizes below it (larger first), then sizes above it (smaller first), each
    tie broken as for preferred hints. The fold visits candidates in permutation order, but with
    this order its result does not depend on the visiting order, so a set is enough.
    """

    def fitter_key(bits: int) -> tuple[int, ...]:
        count = popcount(bits)
        if distances is None:
            return (count, bits)
        nodes = from_bits(bits)
        distance = sum(distances[a][b] for a in nodes for b in nodes)
        return (count, distance, bits)

    def key(candidate: tuple[int, bool]) -> tuple[object, ...]:
        bits, preferred = candidate
        if preferred:
            return (0, 0, fitter_key(bits))
        count = popcount(bits)
        if count == target:
            return (1, 0, fitter_key(bits))
        if count < target:
            return (1, 1, -count, fitter_key(bits))
        return (1, 2, fitter_key(bits))

    if not candidates:
        return None
    return min(candidates, key=key)


def merge_hints(
    policy: TopologyManagerPolicy,
    node_ids: Sequence[int],
    providers: Sequence[ProviderAnswer],
    *,
    distances: Mapping[int, Sequence[int]] | None = None,
) -> tuple[TopologyHint, bool]:
    """Merge provider answers under `policy`; returns (best hint, admit).

    `distances` (node id → distance row indexed by node id) switches on
    `prefer-closest-numa-nodes`; it is ignored by `single-numa-node`, as upstream.
    """
    if policy == "none":
        return EMPTY_HINT, True
    default_bits = to_bits(tuple(node_ids))
    lists = _normalise(providers)
    if policy == "single-numa-node":
        lists = [
            [h for h in hints if h.preferred and (h.bits is None or popcount(h.bits) == 1)]
            for hints in lists
        ]
        distances = None
    best = _best(_candidates(lists, default_bits), _max_of_min(lists), distances)
    bits, preferred = best if best is not None else (default_bits, False)
    hint = TopologyHint(numa_affinity=from_bits(bits), preferred=preferred)
    if policy == "single-numa-node":
        if bits == default_bits:
            hint = TopologyHint(numa_affinity=None, preferred=preferred)
        return hint, preferred
    if policy == "restricted":
        return hint, preferred
    return hint, True
