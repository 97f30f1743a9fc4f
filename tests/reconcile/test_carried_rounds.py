"""A reconciler that carries its derived structures between rounds acts as one that derives
them afresh every round.

The reconciler keeps, from one round to the next, the targets' index (`TargetIndex`), the
container targets (`ContainerIndex`), the children's sums (`ChildSums`) and what it last set
or saw (the base of drift: values, presence, enabled controllers), each updated for what
changed. Method: a hypothesis property over random sequences of rounds on two identical
simulated trees — pods admitted and removed through the real reducer and the targets tracker
(so unchanged pods keep their objects), rounds scoped to the changed pods or full, container
cgroups appearing and vanishing, another writer's drift, injected write failures, both
ownership profiles. One reconciler carries everything; the other is made to start every
structure afresh before each round. Every report, the trees, and what each remembers must be
equal after every round.
"""

from __future__ import annotations

import contextlib
from itertools import filterfalse, pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstate.core.errors import HostError, InvariantViolation
from memstate.core.events import (
    CgroupDriftCorrected,
    ConfigLoaded,
    PodAdmissionRequested,
    PodRemovalRequested,
    TopologyObserved,
)
from memstate.core.plan import Plan
from memstate.core.plan.children import ChildSums
from memstate.core.plan.containers import ContainerIndex, with_container_targets
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.profile import STANDALONE, ProfileFilter, WriteProfile
from memstate.core.plan.scope import UndesiredNames
from memstate.core.plan.settled import NOTHING_SETTLED
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.state_targets import TargetsTracker
from memstate.host import CgroupFS
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import _NO_TARGETS, Reconciler
from tests.reconcile.helpers import (
    PAGE,
    CheckingCgroupFS,
    mixed_pod,
    new_sim,
    node_config,
    node_topology,
    retired,
    targets_of_pods,
    uid_for,
)
from tests.reconcile.test_child_sums import assert_same_sums
from tests.reconcile.test_properties import PROPERTY_SETTINGS, pool_pod

POOL = 7
BESIDE = WriteProfile(ownership="beside-kubelet")
BURSTABLE = "kubepods/burstable"


def failing_fs(inner: CgroupFS) -> CheckingCgroupFS:
    """`inner` behind a wrapper whose `failing` writes fail with EIO (no invariant checks)."""
    return CheckingCgroupFS(inner, checking=False)


def afresh(reconciler: Reconciler) -> None:
    """Make every carried structure start from scratch in the next round."""
    reconciler._profile_filter = ProfileFilter(reconciler.profile)
    reconciler._index = TargetIndex.of(_NO_TARGETS, reconciler.profile)
    reconciler._complete_index = reconciler._index
    reconciler._containers = ContainerIndex()
    reconciler._index_before = object()  # no index: what it remembers is compared whole
    reconciler._child_sums = None
    reconciler._undesired = UndesiredNames()
    reconciler._tree_changes = []
    reconciler._last_full_plan = None
    reconciler._remembered = None
    reconciler._settled = NOTHING_SETTLED


def memory(reconciler: Reconciler) -> Any:
    return (
        reconciler._expected,
        reconciler._expected_present,
        reconciler._expected_controllers,
        reconciler._tree,
    )


def everything(fs: SimCgroupFS) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    stack = [""]
    while stack:
        path = stack.pop()
        files = {}
        for file in ("memory.min", "memory.low", "memory.high", "cgroup.subtree_control"):
            with contextlib.suppress(HostError):
                files[file] = fs.read(path, file)
        found[path] = files
        stack.extend(f"{path}/{name}" if path else name for name in fs.list_children(path))
    return found


ACTIONS = st.sampled_from(
    [
        "admit",
        "admit",
        "remove",
        "container",
        "uncontainer",
        "drift",
        "disable",
        "fail",
        "heal",
        "full",
    ]
)


@PROPERTY_SETTINGS
@given(
    profile=st.sampled_from([STANDALONE, BESIDE]),
    steps=st.lists(
        st.lists(st.tuples(ACTIONS, st.integers(0, POOL - 1)), min_size=1, max_size=4),
        min_size=1,
        max_size=7,
    ),
)
def test_carried_rounds_act_as_fresh_ones(
    profile: WriteProfile, steps: list[list[tuple[str, int]]]
) -> None:
    config = node_config("TieredReservation", static=True)
    trees = (new_sim(), new_sim())
    flaky = (failing_fs(trees[0]), failing_fs(trees[1]))
    # One clock for both, moving a minute a round: back-off expires, then the next round retries.
    clock = [0.0]
    carried = Reconciler(flaky[0], page_size_bytes=PAGE, profile=profile, clock=lambda: clock[0])
    fresh = Reconciler(flaky[1], page_size_bytes=PAGE, profile=profile, clock=lambda: clock[0])
    tracker = TargetsTracker()
    state = State()
    for event in (TopologyObserved(topology=node_topology()), ConfigLoaded(config=config)):
        state = step(state, event).state
    gone: set[str] = set()
    first = True
    for actions in steps:
        scope: set[str] = set()
        full = first
        targets_before = tracker.update(state)
        for action, which in actions:
            uid = pool_pod(which).uid
            if action == "admit" and uid not in state.pods:
                state = step(state, PodAdmissionRequested(pod=pool_pod(which))).state
                gone.difference_update(retired(uid, config=config))
            elif action == "remove" and uid in state.pods:
                state = step(state, PodRemovalRequested(uid=uid)).state
                gone.update(retired(uid, config=config))
            elif action == "disable":
                # Another writer takes the memory controller from a QoS cgroup's children.
                for fs in trees:
                    with contextlib.suppress(HostError):
                        fs.write(BURSTABLE, "cgroup.subtree_control", "-memory")
                scope.add(BURSTABLE)
            elif action in ("container", "uncontainer", "drift", "fail", "heal"):
                pods = targets_before.pods if targets_before is not None else ()
                if not pods:
                    continue
                pod = pods[which % len(pods)]
                for fs, flaky_fs in zip(trees, flaky, strict=True):
                    if not fs.exists(pod.cgroup):
                        continue
                    app = f"{pod.cgroup}/app"
                    if action == "container" and not fs.exists(app):
                        fs.write(pod.cgroup, "cgroup.subtree_control", "+memory")
                        fs.mkdir(app)
                    elif action == "uncontainer" and fs.exists(app):
                        fs.rmdir(app)
                    elif action == "drift":
                        fs.write(pod.cgroup, "memory.low", str(PAGE * (which + 1)))
                    elif action == "fail":
                        flaky_fs.failing.update(
                            {
                                (pod.cgroup, "memory.min"),
                                ("kubepods", "memory.min"),
                                (BURSTABLE, "cgroup.subtree_control"),
                                (pod.cgroup, "cgroup.subtree_control"),
                            }
                        )
                    elif action == "heal":
                        flaky_fs.failing.clear()
                scope.add(pod.cgroup)
            elif action == "full":
                full = True
        first = False
        targets = tracker.update(state)
        assert targets is not None
        if profile != STANDALONE:
            # The kubelet makes the pod cgroups.
            for fs in trees:
                for pod in targets.pods:
                    parent = pod.cgroup.rpartition("/")[0]
                    if fs.exists(parent) and not fs.exists(pod.cgroup):
                        fs.mkdir(pod.cgroup)
        before = {p.uid: p.cgroup for p in (targets_before.pods if targets_before else ())}
        now = {p.uid: p.cgroup for p in targets.pods}
        scope.update(path for uid, path in now.items() if before.get(uid) != path)
        scope.update(path for uid, path in before.items() if uid not in now)
        paths = None if full else sorted(scope)
        clock[0] += 60.0
        afresh(fresh)
        reports = [
            r.reconcile(targets, retired_paths=sorted(gone), scope=paths) for r in (carried, fresh)
        ]
        assert reports[0] == reports[1]
        assert memory(carried) == memory(fresh)
        assert everything(trees[0]) == everything(trees[1])
        assert_carried_as_whole(carried, fresh)


def assert_carried_as_whole(carried: Reconciler, fresh: Reconciler) -> None:
    """What the carrying reconciler holds equals the whole computation: its sums answer as
    sums of its last planned tree computed afresh (they may be right by luck in a plan, where
    a parent's target covers its children), its container index (and the fresh reconciler's,
    carried within a round) as `with_container_targets` on the index's targets and tree, each
    holder's undesired names as its listing filtered against its desired names afresh (a plan
    only shows them when a name is also a pod cgroup name), and each record of how one tree was
    derived from another names every path whose observation it replaced."""
    sums = carried._child_sums
    if sums is not None:
        assert_same_sums(sums, ChildSums.of(sums.tree, PAGE), sums.tree)
    index = carried._complete_index
    for holder, (listing, asked, names) in carried._undesired.held().items():
        if asked is index.token:  # the memo of the last plan, over this index's names
            desired = index.child_names(holder)
            assert names == tuple(sorted(filterfalse(desired.__contains__, listing))), holder
            assert desired == TargetIndex.of(index.targets).child_names(holder), holder
    for reconciler in (carried, fresh):
        index = reconciler._containers
        if index.targets is not None:
            assert index.complete == with_container_targets(
                index.targets, index.tree, reconciler.container_ids
            )
            assert index.listed() == sorted(
                (
                    t
                    for t in with_container_targets(
                        index.targets, index.tree, reconciler.container_ids, listed_is_enough=True
                    ).cgroups
                    if t.level == "container"
                ),
                key=lambda t: t.path,
            )
    for record in carried._tree_changes:
        before, after = record.previous.cgroups, record.tree.cgroups
        moved = {p for p in before.keys() | after.keys() if before.get(p) is not after.get(p)}
        assert moved <= record.paths


def test_a_controller_enabled_by_another_writer_after_a_failed_enable_is_remembered() -> None:
    """An enable that failed leaves the expected controllers behind the target; once another
    writer enabled them, the next round remembers the target's (no enable to run, the target
    unchanged: only the record of the failure brings it back), so their later removal is drift."""
    config = node_config("TieredReservation", static=True)
    pods = [pool_pod(i) for i in range(3)]
    state = State()
    for event in (TopologyObserved(topology=node_topology()), ConfigLoaded(config=config)):
        state = step(state, event).state
    for pod in pods:
        state = step(state, PodAdmissionRequested(pod=pod)).state
    targets = TargetsTracker().update(state)
    assert targets is not None
    at = [t.path for t in targets.cgroups].index(BURSTABLE)
    wanted = targets.cgroups[at]
    assert "cpuset" in wanted.controllers
    fewer = msgspec.structs.replace(
        wanted, controllers=tuple(c for c in wanted.controllers if c != "cpuset")
    )
    before = msgspec.structs.replace(
        targets, cgroups=(*targets.cgroups[:at], fewer, *targets.cgroups[at + 1 :])
    )
    fs = new_sim()
    flaky = failing_fs(fs)
    reconciler = Reconciler(flaky, page_size_bytes=PAGE, clock=lambda: 0.0)
    reconciler.reconcile(before)
    flaky.failing.add((BURSTABLE, "cgroup.subtree_control"))
    failed = reconciler.reconcile(targets, scope=[BURSTABLE])
    assert [r.operation.kind for r in failed.results if r.outcome == "failed"] == ["enable"]
    flaky.failing.clear()
    fs.write(BURSTABLE, "cgroup.subtree_control", "+cpuset")  # someone else enables it
    reconciler.clock = lambda: 3600.0
    quiet = reconciler.reconcile(targets, scope=[BURSTABLE])
    assert not [r for r in quiet.results if r.operation.kind == "enable"]
    fs.write(BURSTABLE, "cgroup.subtree_control", "-cpuset")  # and someone takes it away
    report = reconciler.reconcile(targets, scope=[BURSTABLE])
    drift = [n for n in report.notes if isinstance(n, CgroupDriftCorrected)]
    assert [(n.path, n.file) for n in drift] == [(BURSTABLE, "cgroup.subtree_control")]


def test_pods_removed_after_their_holders_were_listed_are_removed_as_by_a_fresh_round() -> None:
    """A removed pod's name leaves its holder's desired names while the holder's listing still
    holds it (the same listing in a scoped round, an equal one in a full round): the carried
    undesired names must follow the desired names' change, as a fresh filter does. Another
    writer's pod cgroup appearing in a listing (an orphan) is followed by the listing's edit."""
    config = node_config("TieredReservation", static=True)
    trees = (new_sim(), new_sim())
    carried, fresh = (Reconciler(tree, page_size_bytes=PAGE) for tree in trees)
    tracker = TargetsTracker()
    state = State()
    for event in (TopologyObserved(topology=node_topology()), ConfigLoaded(config=config)):
        state = step(state, event).state
    for which in range(4):
        state = step(state, PodAdmissionRequested(pod=pool_pod(which))).state
    gone: set[str] = set()

    def round_of(scope: list[str] | None) -> None:
        targets = tracker.update(state)
        assert targets is not None
        afresh(fresh)
        reports = [
            r.reconcile(targets, retired_paths=sorted(gone), scope=scope, changes=tracker.recent)
            for r in (carried, fresh)
        ]
        assert reports[0] == reports[1]
        assert everything(trees[0]) == everything(trees[1])
        assert_carried_as_whole(carried, fresh)

    def cgroup_of(uid: str) -> str:
        targets = tracker.update(state)
        assert targets is not None
        return next(p.cgroup for p in targets.pods if p.uid == uid)

    round_of(None)  # creates the holders
    state = step(state, PodAdmissionRequested(pod=pool_pod(4))).state
    round_of([cgroup_of(pool_pod(4).uid)])  # lists them: carried from here on
    for which, scoped in ((1, True), (2, False), (3, True)):
        uid = pool_pod(which).uid
        path = cgroup_of(uid)
        state = step(state, PodRemovalRequested(uid=uid)).state
        gone.update(retired(uid, config=config))
        round_of([path] if scoped else None)
        assert not trees[0].exists(path)
    orphan = pool_pod(5)
    for tree in trees:  # another writer's pod cgroup, not desired: seen by the next full round
        tree.mkdir(f"{BURSTABLE}/pod{orphan.uid}")
    round_of(None)
    state = step(state, PodAdmissionRequested(pod=pool_pod(6))).state
    round_of([cgroup_of(pool_pod(6).uid)])


def test_a_round_completed_after_its_index_was_spent_is_refused() -> None:
    """The target index hands its tables on: a round that completed (remembered what it set)
    after a later round had updated its index would remember the later targets. Refused."""
    config = node_config("TieredReservation", static=False)
    targets = targets_of_pods([mixed_pod(uid_for(0), 0)], config)
    reconciler = Reconciler(new_sim(), page_size_bytes=PAGE)
    reconciler.reconcile(targets)
    index = reconciler._complete_index
    plan = Plan(operations=())
    index.updated(targets_of_pods([mixed_pod(uid_for(i), i) for i in range(2)], config))
    with pytest.raises(InvariantViolation, match="spent"):
        reconciler._remember(index, plan, {}, full=False)


def test_a_scoped_round_takes_the_picture_over_and_no_record_names_it() -> None:
    """The picture a round leaves (`apply_operations`' tree, read by nothing but the next
    scoped observation) has its table taken over by that observation instead of copied; the
    spent picture is named by no record (the record that made it is composed with the
    observation's), and a picture something else may read (the planned tree, after a round
    that failed before its completion) is copied, not taken."""
    config = node_config("TieredReservation", static=False)
    pods = [mixed_pod(uid_for(i), i) for i in range(4)]
    reconciler = Reconciler(new_sim(), page_size_bytes=PAGE)
    reconciler.reconcile(targets_of_pods(pods[:2], config))
    for count in (3, 4):
        targets = targets_of_pods(pods[:count], config)
        picture = reconciler._tree
        assert picture is not None
        table = picture.cgroups
        prepared = reconciler.prepare(targets, scope=[targets.pods[-1].cgroup])
        assert prepared.tree.cgroups is table  # taken over, not copied
        for record in reconciler._tree_changes:
            assert record.previous is not picture and record.tree is not picture
        before = prepared.tree
        reconciler.complete(prepared)
        chain = reconciler._tree_changes
        assert chain[-1].tree is reconciler._tree and chain[-1].previous is before
        assert all(a.tree is b.previous for a, b in pairwise(chain))
    # Prepared but not completed: the picture is the planned tree, which the carried sums hold.
    targets = targets_of_pods(pods, config)
    held = reconciler.prepare(targets, scope=[targets.pods[0].cgroup]).tree
    assert reconciler._tree is held
    again = reconciler.prepare(targets, scope=[targets.pods[0].cgroup])
    assert again.tree.cgroups is not held.cgroups
