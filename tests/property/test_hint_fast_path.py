"""The Memory Manager's hint fast path against the straightforward computation.

`numa_policy.preferred_default_hint` claims to give what ``merge_hints(policy, node_ids,
[calculate_hints(...)])`` gives for best-effort and restricted without other providers, whenever
that merge ends on a preferred hint of the Memory Manager, and to decline (None) exactly when it
does not. Method: random machines (1–8 NUMA nodes, with and without hugepages, through the real
parsers), part of each node's memory taken, nodes joined into cross-NUMA groups or used alone
through real blocks, random memory and hugepage requests and reusable init-container memory;
both ways are computed on the same `MachineBuilder` and compared.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.errors import AdmissionError
from memstate.core.machine import Block, MachineBuilder, Take, default_machine
from memstate.core.numa_policy import (
    _PodAllocator,
    best_superset_hint,
    calculate_hints,
    find_best_hint,
    preferred_default_hint,
)
from memstate.core.pod import ContainerSpec, Pod
from memstate.core.topology import MEMORY
from memstate.core.topology_hints import TopologyHint, merge_hints
from tests.property.strategies import static_configs, topologies

HUGEPAGES = "hugepages-2Mi"
Mi = 2**20


@st.composite
def scenes(
    draw: st.DrawFn,
) -> tuple[MachineBuilder, dict[str, int], dict[tuple[tuple[int, ...], str], int]]:
    topology = draw(topologies())
    config = draw(static_configs(topology))
    builder = MachineBuilder(default_machine(topology, config))
    ids = list(builder.node_ids)
    resources = [r for r in (MEMORY, HUGEPAGES) if builder.has(ids[0], r)]
    # Take a random share of every table, so some masks are full and some are not.
    for node_id in ids:
        for resource in resources:
            free = builder.free(node_id, resource)
            share = draw(st.sampled_from([0, 0, 1, 2, 3, 4])) / 4
            taken = int(free * share) // Mi * Mi
            if taken:
                builder.reserve([Take(numa_node=node_id, resource=resource, size_bytes=taken)])
    # Use nodes alone or in groups, so the group rule has something to refuse.
    rest = list(ids)
    while rest and draw(st.booleans()):
        size = draw(st.integers(1, min(3, len(rest))))
        group = tuple(sorted(draw(st.permutations(rest))[:size]))
        rest = [n for n in rest if n not in group]
        builder.assign([Block(numa_affinity=group, type=MEMORY, size=Mi)])
    requests: dict[str, int] = {}
    if draw(st.integers(0, 9)):
        requests[MEMORY] = draw(st.sampled_from([64, 512, 1024, 2048, 3072, 5120, 9000])) * Mi
    if HUGEPAGES in resources and draw(st.booleans()):
        requests[HUGEPAGES] = draw(st.sampled_from([2, 64, 128, 300])) * Mi
    reusable: dict[tuple[tuple[int, ...], str], int] = {}
    if requests and draw(st.booleans()):
        mask = tuple(sorted(draw(st.permutations(ids))[: draw(st.integers(1, len(ids)))]))
        resource = draw(st.sampled_from(sorted(requests)))
        reusable[(mask, resource)] = draw(st.sampled_from([64, 1024, 4096])) * Mi
    return builder, requests, reusable


@settings(max_examples=400, deadline=None)
@given(scenes(), st.sampled_from(["best-effort", "restricted"]))
def test_fast_hint_is_the_merged_hint(
    scene: tuple[MachineBuilder, dict[str, int], dict[tuple[tuple[int, ...], str], int]],
    policy: str,
) -> None:
    builder, requests, reusable = scene
    answer = calculate_hints(builder, requests, reusable)
    merged, admitted = merge_hints(policy, builder.node_ids, [answer])  # type: ignore[arg-type]
    fast = preferred_default_hint(builder, requests, reusable)
    has_preferred = any(h.preferred for hints in answer.values() for h in hints)
    if fast is None:
        # Declines exactly when the merge does not end on one of the answer's preferred hints.
        assert not answer or not has_preferred
    else:
        assert has_preferred
        assert (fast, True) == (merged, admitted)


def test_the_fast_path_is_taken_and_declined() -> None:
    """Both branches of the comparison above are reachable with the kind of machine it draws:
    one node free and one full, a request that fits one node, then one that fits none alone."""
    from memstate.core.config import config_from_object
    from memstate.core.topology import topology_from_object

    topology = topology_from_object(
        {"nodes": [{"id": 0, "memory": "4Gi"}, {"id": 1, "memory": "4Gi"}]}
    )
    config = config_from_object(
        {
            "memoryManagerPolicy": "Static",
            "topologyManagerPolicy": "best-effort",
            "systemReserved": {"memory": "512Mi"},
            "evictionHard": {"memory.available": "0"},
            "reservedMemory": [{"numaNode": n, "limits": {"memory": "256Mi"}} for n in (0, 1)],
        }
    )
    builder = MachineBuilder(default_machine(topology, config))
    builder.reserve([Take(numa_node=0, resource=MEMORY, size_bytes=3 * 1024 * Mi)])
    fits_one = {MEMORY: 1024 * Mi}
    hint = preferred_default_hint(builder, fits_one, {})
    assert hint is not None and hint.numa_affinity == (1,) and hint.preferred
    assert merge_hints("best-effort", (0, 1), [calculate_hints(builder, fits_one, {})]) == (
        hint,
        True,
    )
    # 4.6 GiB fits the two nodes' allocatable (7.5 GiB) but not their free memory (4.5 GiB): no
    # hint at all, so no preferred one.
    too_big = {MEMORY: 4700 * Mi}
    assert preferred_default_hint(builder, too_big, {}) is None


def _allocated(
    builder: MachineBuilder,
    requests: dict[str, int],
    reusable: dict[tuple[tuple[int, ...], str], int],
    hint: TopologyHint,
    *,
    vetted: bool,
) -> tuple[object, ...]:
    """What one container's `allocate` leaves behind (or the error it raises), on a scratch
    copy of `builder`: the blocks, takes, reusable memory and the machine's values."""
    machine = builder.scratch()
    container = ContainerSpec(name="app", kind="app", requests={}, limits={})
    pod = Pod(uid="pod-a", name="a", namespace="default", containers=(container,))
    allocator = _PodAllocator(machine, pod)
    allocator.reusable = dict(reusable)
    try:
        allocator.allocate(container, hint, requests, vetted=vetted)
    except AdmissionError as exc:
        return ("refused", exc.reason, exc.message)
    frozen = machine.freeze()
    return (allocator.blocks, allocator.takes, allocator.reusable, allocator.hints, frozen)


@settings(max_examples=400, deadline=None)
@given(scenes())
def test_a_vetted_hint_allocates_as_an_unvetted_one(
    scene: tuple[MachineBuilder, dict[str, int], dict[tuple[tuple[int, ...], str], int]],
) -> None:
    """`allocate(vetted=True)` skips the free-memory check and the group rule for
    `preferred_default_hint`'s answer when nothing is reusable: it must allocate exactly as the
    full checks do, and with reusable memory refuse where they refuse (a hugepages-only request
    whose mask only reusable memory made feasible: upstream's extension reads memory hints)."""
    builder, requests, reusable = scene
    hint = preferred_default_hint(builder, requests, reusable)
    if hint is None:
        return
    assert _allocated(builder, requests, reusable, hint, vetted=True) == _allocated(
        builder, requests, reusable, hint, vetted=False
    )


def test_a_vetted_hint_with_reusable_memory_is_still_checked() -> None:
    """The case that keeps the checks for a vetted hint with reusable memory: hugepages only,
    free on the node short of the request, reusable init memory making up for it. The fast hint
    is the node, and upstream's extension, which reads the memory hints only, refuses."""
    from memstate.core.config import config_from_object
    from memstate.core.topology import topology_from_object

    topology = topology_from_object(
        {"nodes": [{"id": 0, "memory": "4Gi", "hugepages": {"2Mi": 256}}]}
    )
    config = config_from_object(
        {
            "memoryManagerPolicy": "Static",
            "topologyManagerPolicy": "best-effort",
            "systemReserved": {"memory": "512Mi"},
            "evictionHard": {"memory.available": "0"},
            "reservedMemory": [{"numaNode": 0, "limits": {"memory": "512Mi"}}],
        }
    )
    builder = MachineBuilder(default_machine(topology, config))
    builder.reserve([Take(numa_node=0, resource=HUGEPAGES, size_bytes=256 * Mi)])
    requests = {HUGEPAGES: 300 * Mi}
    reusable = {((0,), HUGEPAGES): 64 * Mi}
    hint = preferred_default_hint(builder, requests, reusable)
    assert hint is not None and hint.numa_affinity == (0,)
    vetted = _allocated(builder, requests, reusable, hint, vetted=True)
    assert vetted[0] == "refused"
    assert vetted == _allocated(builder, requests, reusable, hint, vetted=False)


def _extension_by_listing(
    builder: MachineBuilder,
    requests: dict[str, int],
    reusable: dict[tuple[tuple[int, ...], str], int],
    within: tuple[int, ...],
) -> TopologyHint | None:
    """`_PodAllocator._extend`'s choice as it was computed before `best_superset_hint`: every
    memory hint of `calculate_hints`, the supersets of `within`, `find_best_hint` of those."""
    hints = calculate_hints(builder, requests, reusable)
    supersets = [
        h
        for h in hints.get(MEMORY, [])
        if h.numa_affinity is not None and set(within) <= set(h.numa_affinity)
    ]
    return find_best_hint(supersets) if supersets else None


@settings(max_examples=600, deadline=None)
@given(scenes(), st.data())
def test_the_best_superset_is_the_listed_one(
    scene: tuple[MachineBuilder, dict[str, int], dict[tuple[tuple[int, ...], str], int]],
    data: st.DataObject,
) -> None:
    """`best_superset_hint` (the extension of a hint whose mask lacks the free memory) gives
    what `find_best_hint` picks among `calculate_hints`' memory hints that hold the mask, and
    None exactly when there is none, on every machine, request and mask drawn."""
    builder, requests, reusable = scene
    ids = list(builder.node_ids)
    within = tuple(data.draw(st.permutations(ids))[: data.draw(st.integers(1, len(ids)))])
    if data.draw(st.booleans()):
        within = (*within, within[0])  # a mask in any order, a node repeated: the same nodes
    assert best_superset_hint(builder, requests, reusable, within) == _extension_by_listing(
        builder, requests, reusable, within
    )


def _eight_nodes() -> MachineBuilder:
    """An empty machine of 8 NUMA nodes of 4 GiB (64 MiB reserved on each)."""
    from memstate.core.config import config_from_object
    from memstate.core.topology import topology_from_object

    topology = topology_from_object({"nodes": [{"id": n, "memory": "4Gi"} for n in range(8)]})
    config = config_from_object(
        {
            "memoryManagerPolicy": "Static",
            "topologyManagerPolicy": "best-effort",
            "systemReserved": {"memory": "512Mi"},
            "evictionHard": {"memory.available": "0"},
            "reservedMemory": [{"numaNode": n, "limits": {"memory": "64Mi"}} for n in range(8)],
        }
    )
    return MachineBuilder(default_machine(topology, config))


def test_the_best_superset_on_eight_nodes() -> None:
    """Both outcomes, by hand, on 8 nodes: node 0 nearly full, node 1 partly taken. 1 GiB fits
    one node, so the extension of (0,) is a pair and not preferred: (0, 1), the smallest mask
    value; 3.5 GiB does not fit (0, 1)'s free memory, so (0, 2). No memory requested (upstream
    reads the memory hints only), or nothing feasible: None."""
    builder = _eight_nodes()
    builder.reserve([Take(numa_node=0, resource=MEMORY, size_bytes=3 * 1024 * Mi)])
    builder.reserve([Take(numa_node=1, resource=MEMORY, size_bytes=2048 * Mi)])
    for request, pair in (({MEMORY: 1024 * Mi}, (0, 1)), ({MEMORY: 3584 * Mi}, (0, 2))):
        extended = best_superset_hint(builder, request, {}, (0,))
        assert extended == TopologyHint(numa_affinity=pair, preferred=False)
        assert extended == _extension_by_listing(builder, request, {}, (0,))
    for request in ({HUGEPAGES: 2 * Mi}, {MEMORY: 64 * 1024 * Mi}):
        assert best_superset_hint(builder, request, {}, (0,)) is None
        assert _extension_by_listing(builder, request, {}, (0,)) is None


def test_the_best_superset_is_the_smallest_mask_value() -> None:
    """Among feasible supersets of one size the smallest mask value wins, which is not the
    first one listed: on 8 nodes with (0, 1, k) too full for k < 7, both (0, 1, 7) and
    (1, 2, 3) can extend (1,), and (1, 2, 3) is the smaller value. Reusable init memory on
    (0, 1, 2) makes that one feasible, and then it wins."""
    builder = _eight_nodes()
    allocatable = builder.allocatable(0, MEMORY)
    builder.reserve([Take(numa_node=0, resource=MEMORY, size_bytes=allocatable - 1100 * Mi)])
    for n in range(2, 7):
        builder.reserve([Take(numa_node=n, resource=MEMORY, size_bytes=allocatable - 3000 * Mi)])
    # Three nodes are needed; (0, 1, 2) holds 1100 + A + 3000 MiB, (1, 2, 3) A + 6000 MiB.
    request = {MEMORY: allocatable + 5000 * Mi}
    for reusable, best in (({}, (1, 2, 3)), ({((0, 1, 2), MEMORY): 1000 * Mi}, (0, 1, 2))):
        extended = best_superset_hint(builder, request, reusable, (1,))
        assert extended == TopologyHint(numa_affinity=best, preferred=True)
        assert extended == _extension_by_listing(builder, request, reusable, (1,))
