"""The kubelet's admission predicate (`OutOfmemory`, `OutOfhugepages-<size>`).

Goal: a pod whose memory or hugepage requests exceed node allocatable minus the requests of the
pods already admitted is rejected as the kubelet rejects it — reason and message word for word —
for every QoS class and memory manager policy; node allocatable is the node status figure.
Method: the pure predicate on hand-computed figures, then the reducer (`step`) on small histories,
including the issue's `1Ei` Burstable pod on a 16 GiB node.
"""

from __future__ import annotations

from typing import Any

from memstate.core.config import NodeConfig, config_from_object
from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    Event,
    PodAdmissionRequested,
    PodAdmitted,
    PodRejected,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.pod import Pod, qos_class, spec_hash
from memstate.core.predicate import InsufficientResource, insufficient_resource, node_allocatable
from memstate.core.qos import node_targets
from memstate.core.reducer import step
from memstate.core.state import PodRecord, State
from memstate.core.topology import Topology
from tests.factories import Gi, Mi, container, pod, pod_of, static_config, topology

Ei = 2**60


def none_config(**extra: Any) -> NodeConfig:
    return config_from_object(
        {
            "memoryManagerPolicy": "None",
            "systemReserved": {"memory": "1Gi"},
            "evictionHard": {"memory.available": "0"},
            **extra,
        }
    )


def records(*pods: Pod) -> list[PodRecord]:
    return [PodRecord(pod=p, spec_hash=spec_hash(p), qos_class=qos_class(p)) for p in pods]


def run(events: list[Event]) -> tuple[State, list[Event]]:
    state = State()
    decisions: list[Event] = []
    for event in events:
        transition = step(state, event)
        state = transition.state
        decisions.extend(transition.decisions)
    return state, decisions


def start(topo: Topology, config: NodeConfig) -> list[Event]:
    return [TopologyObserved(topology=topo), ConfigLoaded(config=config)]


def burstable(uid: str, request: str, limit: str | None = None, **hugepages: str) -> Any:
    resources: dict[str, Any] = {"requests": {"memory": request}}
    limits: dict[str, Any] = {"memory": limit} if limit else {}
    limits.update({name.replace("_", "-"): size for name, size in hugepages.items()})
    if limits:
        resources["limits"] = limits
    return pod_of(uid, [{"name": "app", "resources": resources}])


def test_message_and_reason_are_the_kubelets_word_for_word() -> None:
    short = InsufficientResource(resource="memory", requested=3, used=2, capacity=4)
    assert short.reason == "OutOfmemory"
    assert short.message == (
        "Node didn't have enough resource: memory, requested: 3, used: 2, capacity: 4"
    )
    pages = InsufficientResource(resource="hugepages-2Mi", requested=1, used=0, capacity=0)
    assert pages.reason == "OutOfhugepages-2Mi"


def test_node_allocatable_is_the_node_status_figure() -> None:
    # 2 × 8Gi with 2 × 256 pages of 2Mi: capacity 16Gi; kube 512Mi + system 1Gi + eviction
    # 10% of 16Gi (1717986918 bytes, truncated) for memory; hugepages-2Mi reserved 128Mi.
    topo = topology("8Gi", "8Gi", hugepages={"2Mi": 256})
    config = config_from_object(
        {
            "memoryManagerPolicy": "None",
            "kubeReserved": {"memory": "512Mi"},
            "systemReserved": {"memory": "1Gi", "hugepages-2Mi": "128Mi"},
            "evictionHard": {"memory.available": "10%"},
        }
    )
    eviction = 16 * Gi * 10 // 100
    assert node_allocatable(config, topo) == {
        "memory": 16 * Gi - 512 * Mi - Gi - eviction - Gi,
        "hugepages-2Mi": Gi - 128 * Mi,
    }


def test_the_1ei_burstable_pod_on_a_16gi_node_is_out_of_memory() -> None:
    topo = topology("16Gi")
    config = none_config(memoryReservationPolicy="TieredReservation")
    state, decisions = run(
        [
            *start(topo, config),
            PodAdmissionRequested(pod=burstable("web", "2Gi", "4Gi")),
            PodAdmissionRequested(pod=burstable("huge", "1Ei")),
        ]
    )
    rejected = decisions[-1]
    assert isinstance(rejected, PodRejected)
    assert (rejected.uid, rejected.reason) == ("huge", "OutOfmemory")
    assert rejected.message == (
        f"Node didn't have enough resource: memory, requested: {Ei}, used: {2 * Gi}, "
        f"capacity: {15 * Gi}"
    )
    assert set(state.pods) == {"web"}
    assert state.rejections["huge"].reason == "OutOfmemory"
    # kubepods memory.min holds the admitted pods only, never 1Ei.
    targets = node_targets([(r.pod, r.allocation) for r in state.sorted_pods()], config, topo)
    assert targets.cgroup("kubepods").files["memory.min"] == str(2 * Gi)


def test_every_qos_class_is_checked_under_both_policies() -> None:
    for config, topo in (
        (none_config(), topology("8Gi")),
        (static_config(["1Gi"]), topology("8Gi")),
    ):
        # 7Gi allocatable; a Burstable pod requests 5Gi.
        guaranteed = pod("g", "3Gi")
        besteffort_pages = pod_of("be", [container("app", None, None)])
        _, decisions = run(
            [
                *start(topo, config),
                PodAdmissionRequested(pod=burstable("b", "5Gi")),
                PodAdmissionRequested(pod=guaranteed),
                PodAdmissionRequested(pod=besteffort_pages),
            ]
        )
        rejected = decisions[-2]
        assert isinstance(rejected, PodRejected), config.memory_manager_policy
        assert rejected.reason == "OutOfmemory"
        assert rejected.message.endswith(f"requested: {3 * Gi}, used: {5 * Gi}, capacity: {7 * Gi}")
        # BestEffort requests nothing: nothing to check, admitted.
        assert isinstance(decisions[-1], PodAdmitted)


def test_the_memory_manager_decides_first_and_counts_its_pinning() -> None:
    # Static, one 8Gi node, 1Gi reserved: the Memory Manager sees 7Gi free for Guaranteed pods,
    # but a Burstable pod already requests 5Gi of the node's 7Gi.
    topo = topology("8Gi")
    state, decisions = run(
        [
            *start(topo, static_config(["1Gi"])),
            PodAdmissionRequested(pod=burstable("b", "5Gi")),
            PodAdmissionRequested(pod=pod("g", "3Gi")),
            PodAdmissionRequested(pod=pod("too-big", "9Gi")),
        ]
    )
    fitted, too_big = decisions[-2], decisions[-1]
    assert isinstance(fitted, PodRejected) and fitted.reason == "OutOfmemory"
    assert (fitted.pinning_requests, fitted.pinning_errors) == (1, 0)
    # No NUMA mask holds 9Gi: the Memory Manager's own rejection, as in the kubelet, whose
    # allocating admit handler runs before the predicate.
    assert isinstance(too_big, PodRejected) and too_big.reason == "UnexpectedAdmissionError"
    assert state.counters.pinning_requests == 2 and state.counters.pinning_errors == 1
    assert state.machine.node(0).memory_map["memory"].reserved == 0


def test_hugepages_are_checked_per_size() -> None:
    topo = topology("8Gi", hugepages={"2Mi": 512})  # 1Gi of 2Mi pages, no 1Gi pages
    config = none_config()
    state, decisions = run(
        [
            *start(topo, config),
            PodAdmissionRequested(pod=burstable("a", "1Gi", "2Gi", hugepages_2Mi="768Mi")),
            PodAdmissionRequested(pod=burstable("b", "1Gi", "2Gi", hugepages_2Mi="512Mi")),
            PodAdmissionRequested(pod=burstable("c", "1Gi", "2Gi", hugepages_1Gi="1Gi")),
            PodAdmissionRequested(pod=burstable("d", "1Gi", "2Gi", hugepages_2Mi="256Mi")),
        ]
    )
    b, c, d = decisions[-3:]
    assert isinstance(b, PodRejected) and b.reason == "OutOfhugepages-2Mi"
    assert b.message == (
        f"Node didn't have enough resource: hugepages-2Mi, requested: {512 * Mi}, "
        f"used: {768 * Mi}, capacity: {Gi}"
    )
    assert isinstance(c, PodRejected) and c.reason == "OutOfhugepages-1Gi"
    assert c.message.endswith(f"requested: {Gi}, used: 0, capacity: 0")
    assert isinstance(d, PodAdmitted)  # exactly what is left
    assert set(state.pods) == {"a", "d"}


def test_memory_is_reported_before_hugepages() -> None:
    topo = topology("8Gi", hugepages={"2Mi": 512})
    short = insufficient_resource(
        burstable("x", "9Gi", "10Gi", hugepages_2Mi="2Gi"), [], none_config(), topo
    )
    assert short is not None and short.resource == "memory"


def test_overhead_and_init_containers_count_like_pod_requests() -> None:
    # Effective request: max(app 2Gi + sidecar 1Gi, init 4Gi + 0) + overhead 1Gi = 5Gi.
    candidate = pod_of(
        "p",
        [container("app", "2Gi", guaranteed=False)],
        init=[
            container("init", "4Gi", guaranteed=False),
            container("side", "1Gi", guaranteed=False, restart_policy="Always"),
        ],
        overhead={"memory": "1Gi"},
    )
    topo = topology("8Gi")  # 7Gi allocatable
    assert (
        insufficient_resource(candidate, records(burstable("o", "2Gi")), none_config(), topo)
        is None
    )
    short = insufficient_resource(candidate, records(burstable("o", "3Gi")), none_config(), topo)
    assert short is not None
    assert (short.requested, short.used, short.capacity) == (5 * Gi, 3 * Gi, 7 * Gi)


def test_a_changed_spec_does_not_count_the_pod_it_replaces() -> None:
    topo = topology("8Gi")
    state, decisions = run(
        [
            *start(topo, none_config()),
            PodAdmissionRequested(pod=burstable("p", "4Gi")),
            PodAdmissionRequested(pod=burstable("p", "6Gi")),
        ]
    )
    assert isinstance(decisions[-1], PodAdmitted)
    assert state.pods["p"].pod.containers[0].requests["memory"] == 6 * Gi


def test_readmission_restores_without_judging_and_deferred_pods_hold_nothing() -> None:
    topo = topology("8Gi")
    config = none_config()
    events: list[Event] = [
        *start(topo, config),
        PodAdmissionRequested(pod=burstable("a", "4Gi")),
        PodAdmissionRequested(pod=burstable("b", "3Gi")),
        DaemonRestarted(),
        # a comes back with a new spec (deferred: decided at the end, in UID order); b is
        # restored as it was, without being judged again.
        PodAdmissionRequested(pod=burstable("a", "5Gi")),
        PodAdmissionRequested(pod=burstable("b", "3Gi")),
        ReadmissionCompleted(),
    ]
    state, decisions = run(events)
    restored = [d for d in decisions if isinstance(d, PodAdmitted) and d.restored]
    assert [d.uid for d in restored] == ["b"]
    final = decisions[-1]
    # 7Gi − b's 3Gi leaves 4Gi for a's new 5Gi.
    assert isinstance(final, PodRejected) and final.reason == "OutOfmemory"
    assert final.message.endswith(f"requested: {5 * Gi}, used: {3 * Gi}, capacity: {7 * Gi}")
    assert set(state.pods) == {"b"}


def test_requests_remembered_by_shape_are_each_pods_own() -> None:
    # Pods that differ only in identity share their remembered requests; any difference in
    # containers, init containers or overhead gives a pod its own figures.
    from memstate.core.pod import pod_request
    from memstate.core.predicate import _requests

    def fresh(p: Pod) -> dict[str, int]:
        return {r: v for r in ("memory", "hugepages-2Mi") if (v := pod_request(p, r)) > 0}

    app = [container("app", "1Gi", hugepages={"hugepages-2Mi": "4Mi"})]
    variants = [
        pod_of("a", app),
        pod_of("b", app, name="other", namespace="ns"),
        pod_of("c", app, overhead={"memory": "64Mi"}),
        pod_of("d", app, init=[container("init", "3Gi")]),
        pod_of("e", [container("app", "2Gi", hugepages={"hugepages-2Mi": "4Mi"})]),
        pod_of("f", [container("app", "1Gi", hugepages={"hugepages-2Mi": "8Mi"})]),
    ]
    for p in variants:
        assert _requests(p) == fresh(p), p.uid
    assert _requests(variants[0]) is _requests(variants[1])
