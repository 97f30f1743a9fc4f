"""One owner for the node's cgroup targets: `memstate.core.state_targets`.

Goal: the tracker that reuses each pod's targets (recorded in its `pod_admitted`, or computed
for an earlier state) always gives what a computation from scratch gives, whatever happened in
between (spec change, init containers done, config change, removal); an admission is computed
once end to end (by `decide`, a count of `pod_targets` calls shows it); and `NodeTargets`
carries its naming, so nothing parses it back from the paths.
"""

from __future__ import annotations

import pytest

import memstate.core.qos
import memstate.core.reducer
import memstate.core.state_targets
from memstate.core.events import (
    ConfigLoaded,
    Event,
    PodAdmissionRequested,
    PodInitCompleted,
    PodRemovalRequested,
    TopologyObserved,
)
from memstate.core.plan import naming_config
from memstate.core.qos import node_targets
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.state_targets import TargetsTracker, state_targets
from memstate.core.targets import NodeTargets
from tests.factories import container, pod, pod_of, static_config, topology


def from_scratch(state: State) -> NodeTargets | None:
    if state.topology is None or state.config is None:
        return None
    pods = [(record.pod, record.allocation) for record in state.sorted_pods()]
    return node_targets(pods, state.config, state.topology)


def history() -> list[Event]:
    topo = topology("8Gi", "8Gi")
    return [
        TopologyObserved(topology=topo),
        ConfigLoaded(config=static_config(["1Gi", "1Gi"], memoryReservationPolicy="None")),
        PodAdmissionRequested(pod=pod("a", "1Gi")),
        PodAdmissionRequested(
            pod=pod_of(
                "b",
                [container("c", "1Gi", limit_memory="2Gi")],
                init=[container("i", "2Gi")],
            )
        ),
        PodInitCompleted(uid="b"),  # the allocation shrinks: new targets for b
        PodAdmissionRequested(pod=pod("a", "2Gi")),  # changed spec: new targets for a
        ConfigLoaded(
            config=static_config(
                ["1Gi", "1Gi"], memoryReservationPolicy="TieredReservation", cgroupDriver="systemd"
            )
        ),
        PodRemovalRequested(uid="b"),
        PodAdmissionRequested(pod=pod("c", "512Mi")),
    ]


def test_the_tracker_always_equals_a_computation_from_scratch() -> None:
    tracker = TargetsTracker()
    state = State()
    for event in history():
        transition = step(state, event)
        state = transition.state
        assert tracker.update(state, transition.decisions) == from_scratch(state), event.kind
        assert state_targets(state) == from_scratch(state), event.kind


def test_an_admission_computes_its_targets_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = memstate.core.qos.pod_targets

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("pod_targets")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(memstate.core.reducer, "pod_targets", counting)
    monkeypatch.setattr(memstate.core.state_targets, "pod_targets", counting)
    tracker = TargetsTracker()
    state = State()
    for event in history()[:2]:
        transition = step(state, event)
        state = transition.state
        tracker.update(state, transition.decisions)
    assert calls == []
    transition = step(state, PodAdmissionRequested(pod=pod("new", "1Gi")))
    targets = tracker.update(transition.state, transition.decisions)
    assert targets is not None
    assert calls == ["pod_targets"]  # in decide, recorded in pod_admitted; reused after
    assert tracker.computed == 0
    assert targets.pod("new") == from_scratch(transition.state).pod("new")  # type: ignore[union-attr]


def test_node_targets_carry_their_naming() -> None:
    state = State()
    for event in history():
        state = step(state, event).state
    targets = state_targets(state)
    assert targets is not None
    assert (targets.cgroup_driver, targets.cgroup_root) == ("systemd", ())
    assert naming_config(targets).cgroup_driver == "systemd"
    assert any(c.path.endswith(".slice") for c in targets.cgroups)


def test_the_incremental_tracker_equals_a_computation_from_scratch_through_churn() -> None:
    """Every QoS class (so the sums and the order of pod cgroups under kubepods, burstable and
    besteffort all move), admissions and removals in a seeded random order, memory.high set on
    an old kernel (the throttled-container warning): equal to from-scratch after every step."""
    import random

    rng = random.Random(15)
    topo = topology("64Gi", "64Gi", kernel_release="5.4.0")
    events: list[Event] = [
        TopologyObserved(topology=topo),
        ConfigLoaded(
            config=static_config(["1Gi", "1Gi"], memoryReservationPolicy="TieredReservation")
        ),
    ]
    live: list[str] = []
    for index in range(120):
        if live and rng.random() < 0.35:
            events.append(PodRemovalRequested(uid=live.pop(rng.randrange(len(live)))))
            continue
        uid = f"p{rng.randrange(10**6):06d}-{index}"
        kind = rng.choice(["guaranteed", "burstable", "besteffort"])
        if kind == "guaranteed":
            new = pod(uid, f"{rng.randint(1, 8) * 64}Mi")
        elif kind == "burstable":
            new = pod_of(uid, [container("c", "64Mi", limit_memory="1Gi", guaranteed=False)])
        else:
            new = pod_of(uid, [container("c", None, None)])
        events.append(PodAdmissionRequested(pod=new))
        live.append(uid)
    tracker = TargetsTracker()
    state = State()
    ever: set[str] = set()
    for event in events:
        transition = step(state, event)
        state = transition.state
        expected = from_scratch(state)
        assert tracker.update(state, transition.decisions) == expected, event.kind
        # `holds` answers for exactly the cgroups of those targets (removed pods' ones too).
        paths = {target.path for target in expected.cgroups} if expected else set()
        ever |= paths
        assert {path for path in ever if tracker.holds(path)} == paths, event.kind
        assert not any(tracker.holds(path + "x") for path in paths)
    assert len(state.pods) > 20
    final = from_scratch(state)
    assert final is not None and any("older than 5.9" in w for w in final.warnings)
