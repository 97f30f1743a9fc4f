"""The targets' change records let the reconciler's carried indexes follow a publication, and
what they build equals a computation from scratch, whichever publications the reader missed.

Goal: `TargetsTracker` publishes with each new `NodeTargets` a `TargetsChange` against the one
published before it (`recent` keeps the last few); a reader holding an older targets object
composes them (`change_since`) or, when it holds none of them, compares everything. Method: a
hypothesis property over the random commit histories of tests/property/test_incremental_targets
(admissions, re-admissions, removals, init containers, config changes, restarts, notes), where
the reader (as the reconciler: `ProfileFilter`, then `TargetIndex` and `ContainerIndex` fed the
filter's change) sees a random subset of the publications (rounds coalesce) and sometimes
restarts from nothing: each change record it gets lists every cgroup and pod that is not the
same object (and only objects of the new targets), and after every round it sees, the filter's
result, the index's answers and what the index reports changed, the container index's complete
targets (updated once, or twice through an intermediate tree as the reconciler does) and the
index of those (following the container index's records) equal those built from scratch.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.core.events import Event
from memstate.core.plan import ObservedCgroup, ObservedTree
from memstate.core.plan.containers import ContainerIndex, with_container_targets
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.profile import STANDALONE, ProfileFilter, WriteProfile, profile_targets
from memstate.core.state import State
from memstate.core.state_targets import TargetsTracker, pods_changed_by
from memstate.core.targets import NodeTargets, PodTargets, TargetsChange, change_since
from tests.property.test_incremental_targets import commit, histories
from tests.reconcile.test_target_index import assert_same

PROFILES = [STANDALONE, WriteProfile(ownership="beside-kubelet"), WriteProfile(mode="qos")]


def assert_describes(change: TargetsChange, before: NodeTargets, after: NodeTargets) -> None:
    """`change` lists every cgroup and pod of `after` that is not the same object in `before`,
    every one `before` has and `after` has not, and nothing that is not in `after`."""
    old = {t.path: t for t in before.cgroups}
    new = {t.path: t for t in after.cgroups}
    listed = {t.path: t for t in change.cgroups}
    for path, target in listed.items():
        assert new.get(path) is target, path
    assert not change.dropped_paths & new.keys()
    for path, target in new.items():
        assert old.get(path) is target or path in listed, path
    assert old.keys() - new.keys() <= change.dropped_paths
    old_pods = {p.uid: p for p in before.pods}
    new_pods = {p.uid: p for p in after.pods}
    listed_pods = {p.uid: p for p in change.pods}
    for uid, pod in listed_pods.items():
        assert new_pods.get(uid) is pod, uid
    assert not change.dropped_uids & new_pods.keys()
    for uid, pod in new_pods.items():
        assert old_pods.get(uid) is pod or uid in listed_pods, uid
    assert old_pods.keys() - new_pods.keys() <= change.dropped_uids


class Trees:
    """An observed tree for given targets: every pod cgroup lists its containers, which exist;
    a pod's observations are the same objects while its targets are (as a scoped round's)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[PodTargets, dict[str, ObservedCgroup]]] = {}

    def of(self, targets: NodeTargets) -> ObservedTree:
        cgroups: dict[str, ObservedCgroup] = {}
        for pod in targets.pods:
            held = self._seen.get(pod.uid)
            if held is None or held[0] is not pod:
                names = tuple(sorted(c.name for c in pod.containers))
                found = {pod.cgroup: ObservedCgroup(children=names)}
                found.update({f"{pod.cgroup}/{name}": ObservedCgroup() for name in names})
                held = self._seen[pod.uid] = (pod, found)
            cgroups.update(held[1])
        return ObservedTree(cgroups=cgroups)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=histories(),
    seen=st.lists(st.sampled_from(["seen", "seen", "skipped", "skipped", "restart"]), min_size=31),
    twice=st.lists(st.booleans(), min_size=31),
    profile=st.sampled_from(PROFILES),
)
def test_indexes_following_the_change_records_equal_fresh_ones(
    batches: list[list[Event]], seen: list[str], twice: list[bool], profile: WriteProfile
) -> None:
    tracker = TargetsTracker()
    state = State()
    trees = Trees()
    held: NodeTargets | None = None  # the last publication the reader saw
    carried = ProfileFilter(profile)
    index = TargetIndex.of(
        NodeTargets(cgroups=(), pods=(), node_memory_min_bytes=0, node_memory_low_bytes=0), profile
    )
    containers = ContainerIndex()
    complete_index = index
    for batch, reader, two in zip(batches, seen, twice, strict=False):
        state, decisions, applied = commit(state, batch)
        published = tracker.update(state, decisions, changed=pods_changed_by(applied))
        if tracker.change is not None:
            assert tracker.recent[-1] is tracker.change
        if published is None or reader == "skipped":
            continue
        if reader == "restart":  # a new reconciler: holds nothing, compares everything
            carried, containers = ProfileFilter(profile), ContainerIndex()
        change = change_since(tracker.recent, carried.targets)
        if change is not None:
            assert held is not None and change.previous is held
            assert_describes(change, held, published)
        before = carried.result
        carried = carried.updated(published, change)
        filtered = carried.result
        assert filtered is not None and filtered == profile_targets(published, profile)
        if carried.change is not None:
            assert before is not None and carried.change.previous is before
            assert_describes(carried.change, before, filtered)
        # A copy: the index hands its table on to the next, edited in place.
        base, token = dict(index.by_path), index.token
        index = index.updated(filtered, carried.change)
        fresh = TargetIndex.of(filtered, profile)
        assert_same(index, fresh, [t.path for t in filtered.cgroups[:6]] + ["kubepods/nowhere"])
        assert index.unfiltered_under(profile) == fresh.unfiltered_under(profile)
        if index.derived_from is token and fresh.unique:
            # What the reconciler reads to look at the changed cgroups only.
            new = dict(fresh.by_path)
            assert set(index.changed) == {p for p, t in new.items() if base.get(p) is not t}
            assert index.dropped == base.keys() - new.keys()
        tree = trees.of(filtered)
        held_complete = complete_index.targets
        if two:  # first without the containers' own observations, as the reconciler
            half = ObservedTree(cgroups={p: f for p, f in tree.cgroups.items() if p.count("/") < 3})
            containers = containers.updated(filtered, half, {}, carried.change)
        containers = containers.updated(filtered, tree, {}, carried.change)
        complete = containers.complete
        assert complete == with_container_targets(filtered, tree, {})
        record = change_since(containers.recent, held_complete)
        if record is not None:
            assert_describes(record, held_complete, complete)
        complete_index = complete_index.updated(complete, record)
        assert_same(complete_index, TargetIndex.of(complete, profile), [])
        held = published


def test_a_reader_that_missed_publications_composes_their_records() -> None:
    """Three admissions published one by one; a reader that saw the first only gets one record
    for the last two, and its index follows that record (it trusts it: a record that leaves a
    replaced cgroup out shows in the index), not a comparison of every cgroup."""
    from memstate.core.events import ConfigLoaded, PodAdmissionRequested, TopologyObserved
    from tests.factories import pod, static_config, topology

    tracker = TargetsTracker()
    state, decisions, applied = commit(
        State(),
        [
            TopologyObserved(topology=topology("8Gi", "8Gi")),
            ConfigLoaded(
                config=static_config(["1Gi", "1Gi"], memoryReservationPolicy="TieredReservation")
            ),
            PodAdmissionRequested(pod=pod("a", "1Gi")),
        ],
    )
    first = tracker.update(state, decisions, changed=pods_changed_by(applied))
    assert first is not None and tracker.change is None and tracker.recent == ()
    index = TargetIndex.of(first)
    for uid in ("b", "c"):
        state, decisions, applied = commit(state, [PodAdmissionRequested(pod=pod(uid, "1Gi"))])
        last = tracker.update(state, decisions, changed=pods_changed_by(applied))
    assert last is not None and len(tracker.recent) == 2
    change = change_since(tracker.recent, first)
    assert change is not None and change.previous is first
    assert {p.uid for p in change.pods} == {"b", "c"}
    assert_describes(change, first, last)
    assert change_since(tracker.recent, last) is None  # not a previous of any record
    assert_same(index.updated(last, change), TargetIndex.of(last), [])
    assert index.spent  # its tables handed on: the index of `first` again for each use below
    # Leave the node cgroup (its memory.min grew: the config is tiered) out of the record: the
    # index follows the record, not a comparison of the targets.
    (node,) = (t for t in last.cgroups if t.level == "node")
    assert node.files["memory.min"] == str(3 * 2**30)
    partial = msgspec.structs.replace(
        change, cgroups=tuple(t for t in change.cgroups if t.level != "node")
    )
    followed = TargetIndex.of(first).updated(last, partial)
    assert followed.by_path[node.path] is next(t for t in first.cgroups if t.path == node.path)
    assert followed.by_path[node.path] is not node
    # The BestEffort QoS cgroup follows no sum: the very object published first, in no record.
    (best_effort,) = (t for t in last.cgroups if t.path.endswith("besteffort"))
    assert best_effort in first.cgroups and best_effort.path not in {t.path for t in change.cgroups}
    assert next(t for t in first.cgroups if t.path == best_effort.path) is best_effort
