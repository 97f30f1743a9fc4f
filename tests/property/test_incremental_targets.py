"""The daemon's incremental targets publication equals the whole recomputation.

Goal: `TargetsTracker.update` told only which pods each commit's events name
(`pods_changed_by`, as the daemon's writer does) publishes exactly the `NodeTargets` a
computation from scratch gives for the same state, over random histories of admissions (every
QoS class, init containers), re-admissions under an old UID with a new spec, removals, finished
init containers, rejections, config changes (reconfiguring every pod), restarts with their
readmission window, and notes, committed in batches of one to three events as the writer groups
them. Its per-pod look-up and its count of throttled containers agree too, and a commit that
changes no pod's targets publishes the very same object (what the daemon's generation check
relies on).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    Event,
    PodAdmissionRequested,
    PodCgroupRemoved,
    PodInitCompleted,
    PodRemovalRequested,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.qos import node_targets
from memstate.core.reducer import apply, step
from memstate.core.state import State
from memstate.core.state_targets import TargetsTracker, pods_changed_by
from memstate.core.targets import NodeTargets
from tests.factories import container, pod_of
from tests.property.strategies import pods, static_configs, topologies


def from_scratch(state: State) -> NodeTargets | None:
    if state.topology is None or state.config is None:
        return None
    pairs = [(record.pod, record.allocation) for record in state.sorted_pods()]
    return node_targets(pairs, state.config, state.topology)


def commit(state: State, inputs: list[Event]) -> tuple[State, list[Event], list[Event]]:
    """What `memstate.node.writer.Writer._commit` does: (state, decisions, every event)."""
    decisions: list[Event] = []
    applied: list[Event] = []
    for event in inputs:
        if event.role == "input":
            transition = step(state, event)
            state = transition.state
            decisions.extend(transition.decisions)
            applied.extend([event, *transition.decisions])
        else:
            state = apply(state, event)
            applied.append(event)
    return state, decisions, applied


@st.composite
def histories(draw: st.DrawFn) -> list[list[Event]]:
    topology = draw(topologies(max_nodes=4))
    first = [
        TopologyObserved(topology=topology),
        ConfigLoaded(config=draw(static_configs(topology))),
    ]
    batches: list[list[Event]] = [first]
    uids: list[str] = []
    for index in range(draw(st.integers(1, 30))):
        batch: list[Event] = []
        for _ in range(draw(st.integers(1, 3))):
            action = draw(
                st.sampled_from(
                    ["admit"] * 5
                    + ["readmit", "remove", "remove", "init", "config", "restart"]
                    + ["note"]
                )
            )
            if action == "big-init":
                # An init container wider than one NUMA node: finishing it shrinks the
                # allocation to the app's node, and the pod's cpuset.mems with it.
                uid = f"u{index:02d}-{len(uids)}"
                uids.append(uid)
                size = draw(st.sampled_from(["3Gi", "5Gi", "7Gi"]))
                batch.append(
                    PodAdmissionRequested(
                        pod=pod_of(uid, [container("app", "256Mi")], init=[container("init", size)])
                    )
                )
            elif action == "admit" or not uids:
                uid = f"u{index:02d}-{len(uids)}"
                uids.append(uid)
                batch.append(PodAdmissionRequested(pod=draw(pods(uid, hugepages=False))))
            elif action == "readmit":  # a new spec under a known UID
                uid = draw(st.sampled_from(uids))
                batch.append(PodAdmissionRequested(pod=draw(pods(uid, hugepages=False))))
            elif action == "remove":
                batch.append(PodRemovalRequested(uid=draw(st.sampled_from(uids))))
            elif action == "init":
                batch.append(PodInitCompleted(uid=draw(st.sampled_from(uids))))
            elif action == "config":
                batch.append(ConfigLoaded(config=draw(static_configs(topology))))
            elif action == "restart":
                batch.append(DaemonRestarted())
                # Some pods come back within the window, the rest are removed when it closes.
                for uid in draw(st.lists(st.sampled_from(uids), max_size=3, unique=True)):
                    batch.append(PodAdmissionRequested(pod=draw(pods(uid, hugepages=False))))
                batch.append(ReadmissionCompleted())
            else:
                uid = draw(st.sampled_from(uids))
                batch.append(PodCgroupRemoved(path=f"kubepods/pod{uid}", uid=uid))
        batches.append(batch)
    return batches


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_incremental_publication_equals_the_whole_recomputation(
    batches: list[list[Event]],
) -> None:
    tracker = TargetsTracker()
    state = State()
    published: NodeTargets | None = None
    for batch in batches:
        before, context = published, (state.config, state.topology)
        state, decisions, applied = commit(state, batch)
        changed = pods_changed_by(applied)
        published = tracker.update(state, decisions, changed=changed)
        expected = from_scratch(state)
        assert published == expected, [event.kind for event in applied]
        if changed == set() and context == (state.config, state.topology):
            assert published is before  # no pod named, same config: the same object
        for uid in state.pods:
            assert tracker.pod(uid) == (expected.pod(uid) if expected is not None else None)
        # The count behind the old-kernel memory.high warning (the daemon's, per commit).
        assert tracker.throttled == sum(
            1
            for target in (expected.pods if expected is not None else ())
            for c in target.containers
            if c.files.get("memory.high", "max") != "max"
        )
        assert tracker.pod("no-such-pod") is None


def test_a_commit_that_changes_no_pod_publishes_the_same_object() -> None:
    """A note (a removed cgroup) changes no pod: the same `NodeTargets`, no rescan of the pods."""
    from tests.factories import pod, static_config, topology

    tracker = TargetsTracker()
    state, decisions, applied = commit(
        State(),
        [
            TopologyObserved(topology=topology("8Gi", "8Gi")),
            ConfigLoaded(config=static_config(["1Gi", "1Gi"])),
            PodAdmissionRequested(pod=pod("a", "1Gi")),
        ],
    )
    first = tracker.update(state, decisions, changed=pods_changed_by(applied))
    compared = tracker.compared_all
    state, decisions, applied = commit(state, [PodCgroupRemoved(path="gone", uid="old")])
    assert tracker.update(state, decisions, changed=pods_changed_by(applied)) is first
    state, decisions, applied = commit(state, [PodAdmissionRequested(pod=pod("b", "1Gi"))])
    second = tracker.update(state, decisions, changed=pods_changed_by(applied))
    assert second is not first and second == from_scratch(state)
    assert tracker.compared_all == compared  # named pods only, no pass over every record
