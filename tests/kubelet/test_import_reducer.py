"""The reducer's side of `memstate import kubelet-state` (memstate.core.kubelet_import): the
stand-in decisions, and what happens when the real pod comes back after a restart."""

from __future__ import annotations

from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    KubeletStateImported,
    PodAdmissionRequested,
    PodAdmitted,
    PodRemoved,
    ReadmissionCompleted,
    ReadmissionDeferred,
    TopologyObserved,
)
from memstate.core.kubelet_checkpoint import CheckpointBlock, CheckpointContainer, CheckpointPod
from memstate.core.kubelet_import import IMPORTED_SPEC_HASH, import_problems
from memstate.core.machine import MachineBuilder
from memstate.core.reducer import step
from memstate.core.state import State
from tests.factories import Gi, pod, static_config, topology


def node() -> State:
    state = State()
    for event in (
        TopologyObserved(topology=topology("5Gi", "5Gi")),
        ConfigLoaded(config=static_config(["1Gi", "1Gi"])),
    ):
        state = step(state, event).state
    return state


def imported(uid: str, numa: int, size: int) -> CheckpointPod:
    block = CheckpointBlock(numa_affinity=(numa,), type="memory", size=size)
    return CheckpointPod(uid=uid, containers=(CheckpointContainer(name="app", blocks=(block,)),))


def import_event(*pods: CheckpointPod) -> KubeletStateImported:
    return KubeletStateImported(
        source="mm", policy_name="Static", layout="v1", checksum=1, pods=pods
    )


def test_stand_ins_hold_exactly_the_checkpoints_blocks() -> None:
    transition = step(node(), import_event(imported("a", 1, 2 * Gi), imported("b", 0, Gi)))
    decisions = [d for d in transition.decisions if isinstance(d, PodAdmitted)]
    assert [(d.uid, d.spec_hash, d.qos_class) for d in decisions] == [
        ("a", IMPORTED_SPEC_HASH, "Guaranteed"),
        ("b", IMPORTED_SPEC_HASH, "Guaranteed"),
    ]
    a = transition.state.pods["a"]
    assert a.allocation is not None and a.allocation.numa_nodes == (1,)
    assert a.allocation.reserved_bytes("memory") == 2 * Gi
    assert transition.state.machine.node(1).memory_map["memory"].reserved == 2 * Gi


def restarted_with_import() -> State:
    state = step(node(), import_event(imported("a", 1, 2 * Gi))).state
    return step(state, DaemonRestarted()).state


def test_the_real_pod_takes_over_its_blocks_when_its_requests_match() -> None:
    transition = step(restarted_with_import(), PodAdmissionRequested(pod=pod("a", "2Gi")))
    (admitted,) = transition.decisions
    assert isinstance(admitted, PodAdmitted)
    assert admitted.pod.namespace == "default" and admitted.spec_hash != IMPORTED_SPEC_HASH
    assert admitted.allocation is not None and admitted.allocation.numa_nodes == (1,)
    # The machine holds the blocks once, not twice.
    assert transition.state.machine.node(1).memory_map["memory"].reserved == 2 * Gi


def test_a_pod_that_asks_for_other_sizes_is_decided_at_the_end_of_readmission() -> None:
    transition = step(restarted_with_import(), PodAdmissionRequested(pod=pod("a", "1Gi")))
    assert [type(d) for d in transition.decisions] == [PodRemoved, ReadmissionDeferred]
    final = step(transition.state, ReadmissionCompleted())
    (admitted,) = [d for d in final.decisions if isinstance(d, PodAdmitted)]
    assert admitted.allocation is not None and admitted.allocation.numa_nodes == (0,)


def test_an_imported_pod_that_does_not_come_back_is_removed() -> None:
    transition = step(restarted_with_import(), ReadmissionCompleted())
    assert [(type(d), getattr(d, "reason", "")) for d in transition.decisions] == [
        (PodRemoved, "not_readmitted")
    ]
    assert transition.state.machine.node(1).memory_map["memory"].reserved == 0


def test_problems_name_each_pod_that_does_not_fit() -> None:
    state = node()
    assert state.config is not None
    problems = import_problems(
        [imported("a", 3, Gi), imported("b", 0, 5 * Gi), imported("c", 1, Gi)],
        known_uids=["c"],
        builder=MachineBuilder(state.machine),
        config=state.config,
        policy_name="Static",
    )
    assert len(problems) == 3
    assert "pod a" in problems[0] and "lacks" in problems[0]
    assert "pod b" in problems[1] and "exceeds" in problems[1]
    assert "pod c is already known" in problems[2]
