"""Memory Manager Static policy through the Topology Manager.

Goal: every rule of memory-manager.md §2–§5 and the GA scenarios of §7 give the documented
results. Method: pure `admit`/`release` calls on hand-built machines, asserting allocations, the
node map tables and error reasons/messages exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from memstate.core.config import NodeConfig
from memstate.core.machine import Machine, Take, default_machine
from memstate.core.numa_policy import (
    MSG_GROUP_VIOLATION,
    MSG_NO_DEFAULT,
    MSG_NO_EXTENSION,
    TOPOLOGY_AFFINITY_ERROR,
    UNEXPECTED_ADMISSION_ERROR,
    Admission,
    ProviderHints,
    admit,
    release,
    release_init_containers,
    reserve,
)
from memstate.core.pod import Pod
from memstate.core.topology import Topology
from memstate.core.topology_hints import TopologyHint
from tests.factories import Gi, Mi, container, pod, pod_of, static_config, topology


class Node:
    """A machine being driven through admissions and releases in a test."""

    def __init__(self, topo: Topology, config: NodeConfig) -> None:
        self.topology = topo
        self.config = config
        self.machine: Machine = default_machine(topo, config)
        self.allocations: dict[str, Any] = {}

    def admit(self, p: Pod, hints: tuple[ProviderHints, ...] = ()) -> Admission:
        result = admit(self.machine, self.topology, self.config, p, hints)
        if result.rejection is None and result.allocation is not None:
            self.machine = reserve(self.machine, result.allocation)
            self.allocations[p.uid] = result.allocation
        return result

    def remove(self, uid: str) -> None:
        self.machine = release(self.machine, self.allocations.pop(uid))

    def table(self, node_id: int, resource: str = "memory") -> tuple[int, int]:
        t = self.machine.node(node_id).memory_map[resource]
        return t.reserved, t.free

    def cells(self, node_id: int) -> tuple[int, ...]:
        return self.machine.node(node_id).cells

    def assignments(self, node_id: int) -> int:
        return self.machine.node(node_id).number_of_assignments


def cpu_hints(*masks: tuple[tuple[int, ...], bool]) -> tuple[ProviderHints, ...]:
    return (
        ProviderHints(
            provider="cpu",
            hints={"cpu": tuple(TopologyHint(numa_affinity=m, preferred=p) for m, p in masks)},
        ),
    )


# --- §2.5: container scope vs pod scope -----------------------------------------------------------


def two_by_one_gi(policy: str, scope: str) -> Node:
    return Node(
        topology("2Gi", "2Gi"), static_config(["1Gi", "1Gi"], topology_policy=policy, scope=scope)
    )


def test_container_scope_keeps_single_numa_containers_apart() -> None:
    node = two_by_one_gi("restricted", "container")
    p = pod_of("p", [container("a", "600Mi"), container("b", "600Mi")])
    result = node.admit(p)
    assert result.rejection is None and result.allocation is not None
    blocks = {c.name: c.blocks for c in result.allocation.containers}
    assert blocks["a"][0].numa_affinity == (0,)
    # b cannot use node 0 (424Mi free) and cannot join {0,1} because node 0 is single-NUMA.
    assert blocks["b"][0].numa_affinity == (1,)
    assert node.table(0) == (600 * Mi, 424 * Mi)
    assert node.table(1) == (600 * Mi, 424 * Mi)


def test_pod_scope_places_the_whole_pod_on_a_group() -> None:
    node = two_by_one_gi("restricted", "pod")
    p = pod_of("p", [container("a", "600Mi"), container("b", "600Mi")])
    result = node.admit(p)
    assert result.rejection is None and result.allocation is not None
    assert [c.blocks[0].numa_affinity for c in result.allocation.containers] == [(0, 1), (0, 1)]
    assert node.table(0) == (Gi, 0)
    assert node.table(1) == (176 * Mi, 848 * Mi)
    assert node.assignments(0) == node.assignments(1) == 2
    assert node.cells(0) == node.cells(1) == (0, 1)
    assert result.pinning_requests == 2


# --- §4: init containers and reusable memory ------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "reserved_gi", "final_blocks_gi"),
    [
        ((1, 2, 3, 4), 7, (0, 0, 3, 4)),
        ((4, 3, 2, 1), 4, (0, 1, 2, 1)),
        ((7, 4, 4, 3), 7, (0, 0, 4, 3)),
    ],
)
def test_init_container_memory_is_reused(
    sizes: tuple[int, int, int, int], reserved_gi: int, final_blocks_gi: tuple[int, ...]
) -> None:
    topo = topology("64Gi", hugepages={"1Gi": 16})
    node = Node(topo, static_config(["1Gi"]))
    i1, i2, a1, a2 = sizes
    hp = "hugepages-1Gi"
    p = pod_of(
        "p",
        [
            container("app1", f"{a1}Gi", hugepages={hp: f"{a1}Gi"}),
            container("app2", f"{a2}Gi", hugepages={hp: f"{a2}Gi"}),
        ],
        init=[
            container("init1", f"{i1}Gi", hugepages={hp: f"{i1}Gi"}),
            container("init2", f"{i2}Gi", hugepages={hp: f"{i2}Gi"}),
        ],
    )
    result = node.admit(p)
    assert result.rejection is None and result.allocation is not None
    assert node.table(0)[0] == reserved_gi * Gi
    assert node.table(0, hp)[0] == reserved_gi * Gi
    for resource in ("memory", hp):
        sizes_by_container = tuple(
            b.size // Gi
            for c in result.allocation.containers
            for b in c.blocks
            if b.type == resource
        )
        assert sizes_by_container == final_blocks_gi
    assert node.assignments(0) == 8  # 4 containers x 2 resources


def test_sidecar_memory_is_never_reused() -> None:
    node = Node(topology("64Gi"), static_config(["1Gi"]))
    p = pod_of(
        "p",
        [container("app", "2Gi")],
        init=[container("proxy", "1Gi", restart_policy="Always"), container("setup", "4Gi")],
    )
    result = node.admit(p)
    assert result.rejection is None and result.allocation is not None
    # proxy 1Gi (kept), setup 4Gi (reusable), app reuses 2Gi of setup's: 1 + 4 = 5Gi held.
    assert node.table(0)[0] == 5 * Gi
    blocks = {c.name: c.blocks[0].size for c in result.allocation.containers}
    assert blocks == {"proxy": Gi, "setup": 2 * Gi, "app": 2 * Gi}


def test_init_containers_completing_release_their_memory() -> None:
    node = Node(topology("64Gi"), static_config(["1Gi"]))
    p = pod_of("p", [container("app", "2Gi")], init=[container("setup", "4Gi")])
    result = node.admit(p)
    assert result.allocation is not None
    assert node.table(0)[0] == 4 * Gi
    machine, allocation = release_init_containers(node.machine, p, result.allocation)
    assert machine.node(0).memory_map["memory"].reserved == 2 * Gi
    assert machine.node(0).number_of_assignments == 1
    assert allocation.takes == (Take(numa_node=0, resource="memory", size_bytes=2 * Gi),)
    assert [len(c.blocks) for c in allocation.containers] == [0, 1]


# --- §5 and §7.1: release gives bytes back where they came from -----------------------------------


def test_cross_numa_group_release_is_exact() -> None:
    g = 10**9
    topo = topology(str(221 * g), str(221 * g))
    node = Node(topo, static_config([str(g), str(g)], topology_policy="best-effort"))
    assert node.table(0) == (0, 220 * g)
    assert node.admit(pod("pod1", str(240 * g))).rejection is None
    assert node.table(0) == (220 * g, 0) and node.table(1) == (20 * g, 200 * g)
    assert node.admit(pod("pod2", str(20 * g))).rejection is None
    assert node.table(1) == (40 * g, 180 * g)
    node.remove("pod2")
    # Upstream drains node 0 first (200/20 and 40/180); memstate returns the bytes to node 1.
    assert node.table(0) == (220 * g, 0) and node.table(1) == (20 * g, 200 * g)
    assert node.admit(pod("pod3", str(10 * g))).rejection is None
    assert node.table(0) == (220 * g, 0) and node.table(1) == (30 * g, 190 * g)
    assert node.cells(0) == node.cells(1) == (0, 1)
    node.remove("pod1")
    node.remove("pod3")
    assert node.machine == default_machine(topo, node.config)


# --- §7.2: never mix single- and cross-NUMA use ---------------------------------------------------


def fix2_node(policy: str) -> Node:
    return Node(
        topology("1536Mi", "1536Mi"), static_config(["512Mi", "512Mi"], topology_policy=policy)
    )


@pytest.mark.parametrize("policy", ["none", "best-effort", "restricted", "single-numa-node"])
def test_fix2_order_a_pod1_lands_on_node0(policy: str) -> None:
    node = fix2_node(policy)
    result = node.admit(pod("pod1", "512Mi"))
    assert result.allocation is not None
    assert result.allocation.numa_nodes == (0,)
    assert node.cells(0) == (0,)


@pytest.mark.parametrize(
    ("policy", "hints", "message"),
    [
        ("best-effort", (), MSG_GROUP_VIOLATION),
        ("restricted", (), MSG_GROUP_VIOLATION),
        ("single-numa-node", (), MSG_NO_DEFAULT),
        ("none", (), MSG_NO_DEFAULT),
        ("best-effort", cpu_hints(((1,), True), ((0, 1), False)), MSG_NO_EXTENSION),
        ("restricted", cpu_hints(((1,), True), ((0, 1), False)), MSG_NO_EXTENSION),
        ("single-numa-node", cpu_hints(((1,), True), ((0, 1), False)), MSG_NO_EXTENSION),
    ],
)
def test_fix2_order_a_pod2_is_rejected_without_touching_the_machine(
    policy: str, hints: tuple[ProviderHints, ...], message: str
) -> None:
    node = fix2_node(policy)
    node.admit(pod("pod1", "512Mi"))
    before = node.machine
    result = node.admit(pod("pod2", "1280Mi"), hints)
    assert result.rejection is not None
    assert result.rejection.reason == UNEXPECTED_ADMISSION_ERROR
    assert result.rejection.message.startswith("Allocate failed due to [memorymanager] " + message)
    assert result.rejection.message.endswith(", which is unexpected")
    assert "pod default/pod-pod2" in result.rejection.message
    assert (result.pinning_requests, result.pinning_errors) == (1, 1)
    assert node.machine == before


@pytest.mark.parametrize("policy", ["best-effort", "restricted"])
def test_fix2_order_b_pod2_first_takes_the_group(policy: str) -> None:
    node = fix2_node(policy)
    assert node.admit(pod("pod2", "1280Mi")).rejection is None
    assert node.table(0) == (Gi, 0) and node.table(1) == (256 * Mi, 768 * Mi)
    assert node.cells(0) == node.cells(1) == (0, 1)
    result = node.admit(pod("pod1", "512Mi"))
    if policy == "best-effort":
        assert result.rejection is None
        assert node.table(1) == (768 * Mi, 256 * Mi)
        assert node.assignments(0) == node.assignments(1) == 2
    else:
        assert result.rejection is not None
        assert result.rejection.reason == TOPOLOGY_AFFINITY_ERROR
        assert result.rejection.message.startswith(
            "Resources cannot be allocated with Topology locality"
        )
        assert result.pinning_requests == 0


def test_fix2_order_b_single_numa_node_rejects_pod2_before_allocate() -> None:
    node = fix2_node("single-numa-node")
    result = node.admit(pod("pod2", "1280Mi"))
    assert result.rejection is not None and result.rejection.reason == TOPOLOGY_AFFINITY_ERROR
    assert (result.pinning_requests, result.pinning_errors) == (0, 0)
    result = node.admit(pod("pod1", "512Mi"))
    assert result.allocation is not None and result.allocation.numa_nodes == (0,)


def test_kk128708_cpu_hint_subset_cannot_be_extended() -> None:
    node = Node(topology("9Gi", "9Gi"), static_config(["1Gi", "1Gi"], topology_policy="restricted"))
    node.admit(pod("small", "256Mi"))
    result = node.admit(pod("big", "9Gi"), cpu_hints(((0,), True)))
    assert result.rejection is not None
    assert result.rejection.reason == UNEXPECTED_ADMISSION_ERROR
    assert MSG_NO_EXTENSION in result.rejection.message


def test_single_node_hint_on_a_group_member_is_refused() -> None:
    # memstate extension of the v1.32 check: only reachable through another provider's hint.
    node = fix2_node("best-effort")
    node.admit(pod("pod2", "1280Mi"))  # group {0,1}, node 1 has 768Mi free
    result = node.admit(pod("pod1", "256Mi"), cpu_hints(((1,), True)))
    assert result.rejection is not None
    assert MSG_GROUP_VIOLATION in result.rejection.message


# --- metrics and non-pinned pods ---------------------------------------------------------------


def test_pinning_counters_match_the_upstream_e2e() -> None:
    node = Node(topology("8Gi"), static_config(["1Gi"]))
    huge = node.admit(pod("huge", "1000Gi", cpu="100m"))
    assert (huge.pinning_requests, huge.pinning_errors) == (1, 1)
    small = node.admit(pod("small", "64Mi", cpu="100m"))
    assert (small.pinning_requests, small.pinning_errors) == (1, 0)


def test_burstable_pods_and_policy_none_pin_nothing() -> None:
    node = Node(topology("8Gi"), static_config(["1Gi"]))
    burstable = pod_of("b", [container("a", "1Gi", limit_memory="2Gi")])
    result = node.admit(burstable)
    assert result == Admission(None, None, 0, 0)
    none_node = Node(topology("8Gi"), NodeConfig())
    assert none_node.admit(pod("g", "1Gi")) == Admission(None, None, 0, 0)


# --- hugepages ------------------------------------------------------------------------------------


def test_hugepages_are_packed_on_the_first_node_and_can_run_out() -> None:
    topo = topology("8Gi", "8Gi", hugepages={"2Mi": 512})  # 1Gi of 2Mi pages per node
    node = Node(topo, static_config(["1Gi", "1Gi"], topology_policy="single-numa-node"))
    hp = {"hugepages-2Mi": "768Mi"}
    first = node.admit(pod_of("a", [container("app", "1Gi", hugepages=hp)]))
    assert first.allocation is not None and first.allocation.numa_nodes == (0,)
    assert node.table(1, "hugepages-2Mi") == (0, Gi)
    second = node.admit(pod_of("b", [container("app", "1Gi", hugepages=hp)]))
    assert second.allocation is not None and second.allocation.numa_nodes == (1,)
    third = node.admit(pod_of("c", [container("app", "1Gi", hugepages=hp)]))
    assert third.rejection is not None
    # No mask fits, so the Memory Manager returns an empty hint map, which the Topology Manager
    # reads as "no preference": the failure surfaces from Allocate (upstream quirk, kept).
    assert third.rejection.reason == UNEXPECTED_ADMISSION_ERROR
    assert MSG_NO_DEFAULT in third.rejection.message
    assert "hugepages-2Mi 768Mi" in third.rejection.message


def test_hugepage_size_the_machine_lacks_cannot_be_pinned() -> None:
    node = Node(topology("8Gi"), static_config(["1Gi"]))
    result = node.admit(pod_of("a", [container("app", "1Gi", hugepages={"hugepages-1Gi": "1Gi"})]))
    assert result.rejection is not None
    assert MSG_NO_DEFAULT in result.rejection.message


def test_numa_requests_by_container_are_shared_by_shape_and_right() -> None:
    """`admit`'s per-container requests memo: pods that differ only in identity share one
    answer; a pod whose containers differ gets its own, and every answer is `numa_requests` of
    each container in order."""
    from memstate.core.numa_policy import _numa_requests_by_container
    from memstate.core.pod import numa_requests

    def two_containers(uid: str, memory: int) -> Pod:
        return pod_of(
            uid,
            [container("app", memory), container("side", Gi, hugepages={"hugepages-2Mi": "4Mi"})],
        )

    first, twin, other = (
        two_containers("a", Gi),
        two_containers("b", Gi),
        two_containers("c", 2 * Gi),
    )
    assert _numa_requests_by_container(first) is _numa_requests_by_container(twin)
    for each in (first, twin, other):
        assert _numa_requests_by_container(each) == tuple(numa_requests(c) for c in each.containers)
    assert _numa_requests_by_container(other) != _numa_requests_by_container(first)


def test_the_block_totals_are_checked_after_init_memory_was_reused() -> None:
    """`_PodAllocator.result` skips its blocks-against-takes check only for a pod without a
    regular init container (each block's takes then add up to its size, checked as they are
    filled). With one, blocks were shrunk and memory reused, and a take that no block lists
    is still caught."""
    from memstate.core.errors import InvariantViolation
    from memstate.core.machine import MachineBuilder
    from memstate.core.numa_policy import _PodAllocator

    topo = topology("64Gi")
    config = static_config(["1Gi"])
    p = pod_of("p", [container("app", "2Gi")], init=[container("setup", "4Gi")])
    allocator = _PodAllocator(MachineBuilder(default_machine(topo, config)), p)
    for c in p.containers:
        allocator.allocate(c, TopologyHint(numa_affinity=(0,), preferred=True))
    assert {b.size for bs in allocator.blocks.values() for b in bs} == {2 * Gi}
    allocator.result()  # consistent: setup's 4Gi block shrunk to 2Gi, app reuses the rest
    allocator.takes.append(Take(numa_node=0, resource="memory", size_bytes=Gi))
    with pytest.raises(InvariantViolation, match="blocks list"):
        allocator.result()
