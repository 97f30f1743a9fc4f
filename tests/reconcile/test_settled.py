"""An earlier full plan's settled cgroups (memstate.core.plan.settled) change nothing in a plan.

Goal: a full plan takes, for every cgroup whose inputs are still those of a cgroup an earlier
full plan found settled, that plan's results instead of planning it again; the plan must be the
one computed without them. Method: a hypothesis property over two trees a reconciler converged
and then someone else mutated (values set, cgroups deleted or added, controllers disabled),
observed with holes and odd listings, two sets of desired pods sharing the target objects of the
pods both desire (as the targets tracker does), random retired pods, both ownership profiles:
the settled cgroups of a full plan of the first tree are given to the full plan of the second,
and that plan equals the plan without them (with the carried child sums and without), and the
settled cgroups it hands on are the ones a plan without them finds. Plus a direct check that
an admission's first full plan does reuse (the property would pass with nothing reused).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstate.core.errors import InvariantViolation
from memstate.core.plan import ObservedTree, plan_operations, plan_settled
from memstate.core.plan.children import ChildSums
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.profile import STANDALONE, WriteProfile, profile_targets
from memstate.core.plan.settled import NOTHING_SETTLED, SettledCgroups
from memstate.core.targets import NodeTargets
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import Reconciler
from tests.reconcile.helpers import PAGE, targets_of_pods, uid_for
from tests.reconcile.test_child_sums import with_oddities
from tests.reconcile.test_diff_equivalence import observe, retired_paths_of, with_holes
from tests.reconcile.test_properties import (
    PROPERTY_SETTINGS,
    apply_mutation,
    configs,
    mutations,
    pool_pod,
)

POOL = 8
BESIDE = WriteProfile(ownership="beside-kubelet")


def sharing(targets: NodeTargets, earlier: NodeTargets) -> NodeTargets:
    """`targets` with `earlier`'s target object for every cgroup equal in both (the tracker
    keeps an unchanged cgroup's object, and a settled cgroup is matched by its target's)."""
    by_path = {target.path: target for target in earlier.cgroups}
    cgroups = tuple(by_path[t.path] if by_path.get(t.path) == t else t for t in targets.cgroups)
    return msgspec.structs.replace(targets, cgroups=cgroups)


def mutated_tree(fs: SimCgroupFS, targets: NodeTargets, data: st.DataObject) -> ObservedTree:
    """`fs` after someone else's changes, observed with holes and odd listings."""
    for change in data.draw(mutations(targets)):
        apply_mutation(fs, change)
    return with_oddities(with_holes(observe(fs, targets), data), data)


def settled_paths(settled: SettledCgroups) -> dict[str, Any]:
    """What a settled cgroup holds, comparable by value."""
    return {
        path: (
            cgroup.target,
            cgroup.found,
            cgroup.available,
            cgroup.sums,
            cgroup.managed,
            cgroup.enabled_after,
            cgroup.protections,
            cgroup.visits,
            cgroup.final,
        )
        for path, cgroup in settled.by_path.items()
    }


@PROPERTY_SETTINGS
@given(
    config=configs(),
    earlier_pods=st.sets(st.integers(0, POOL - 1), min_size=1),
    desired_pods=st.sets(st.integers(0, POOL - 1)),
    data=st.data(),
)
def test_plans_with_settled_cgroups_equal_plans_without(
    config: Any, earlier_pods: set[int], desired_pods: set[int], data: st.DataObject
) -> None:
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    profile = data.draw(st.sampled_from([STANDALONE, BESIDE]))
    earlier_profile = profile if data.draw(st.booleans()) else STANDALONE
    # Filtered by the profile once, as the reconciler does (each filtering makes new objects
    # of the cgroups it filters; a settled cgroup is matched by its target object).
    earlier_targets = profile_targets(
        targets_of_pods([pool_pod(i) for i in sorted(earlier_pods)], config), earlier_profile
    )
    Reconciler(fs, page_size_bytes=PAGE).reconcile(earlier_targets)
    # The earlier tree: converged, or someone else changed it before that plan too.
    if data.draw(st.booleans()):
        earlier = observe(fs, earlier_targets)
    else:
        earlier = mutated_tree(fs, earlier_targets, data)
    earlier_retired = retired_paths_of(
        earlier_targets, data.draw(st.sets(st.sampled_from([uid_for(i) for i in range(POOL)])))
    )
    try:
        _, settled = plan_settled(
            earlier_targets,
            earlier,
            page_size_bytes=PAGE,
            retired_paths=earlier_retired,
            profile=earlier_profile,
            child_sums=ChildSums.of(earlier, PAGE) if data.draw(st.booleans()) else None,
        )
    except InvariantViolation:
        settled = NOTHING_SETTLED
    targets = sharing(
        profile_targets(
            targets_of_pods([pool_pod(i) for i in sorted(desired_pods)], config), profile
        ),
        earlier_targets,
    )
    tree = mutated_tree(fs, targets, data) if data.draw(st.booleans()) else observe(fs, targets)
    retired = retired_paths_of(
        targets, data.draw(st.sets(st.sampled_from([uid_for(i) for i in range(POOL)])))
    )
    pod_removal = data.draw(st.sampled_from(["wait", "kill"]))
    remove_orphans = data.draw(st.booleans())

    def plan(
        given: SettledCgroups | None, sums: ChildSums | None, index: TargetIndex | None = None
    ) -> Any:
        try:
            return plan_settled(
                targets,
                tree,
                page_size_bytes=PAGE,
                retired_paths=retired,
                pod_removal=pod_removal,
                remove_orphans=remove_orphans,
                profile=profile,
                child_sums=sums,
                index=index,
                settled=given,
            )
        except InvariantViolation as exc:
            return str(exc), None

    reference, found = plan(None, None)
    if found is None:
        return  # the targets are refused, with and without
    assert reference == plan_operations(
        targets,
        tree,
        page_size_bytes=PAGE,
        retired_paths=retired,
        pod_removal=pod_removal,
        remove_orphans=remove_orphans,
        profile=profile,
    )
    for sums in (None, ChildSums.of(tree, PAGE)):
        # With an index that follows the profile, the planner does not filter them again.
        for index in (None, TargetIndex.of(targets, profile)):
            reused, handed_on = plan(settled, sums, index)
            assert reused == reference
            # What it hands on is what a plan without them finds settled (the sums included:
            # the same with the carried sums as without).
            assert settled_paths(handed_on) == settled_paths(found)


def test_the_first_full_plan_after_an_admission_takes_the_settled_cgroups() -> None:
    """Every cgroup but the new pod and its ancestors is taken from the earlier full plan, and
    the plan is the one planned from scratch."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    earlier_targets = targets_of_pods([pool_pod(i) for i in range(6)])
    reconciler = Reconciler(fs, page_size_bytes=PAGE)
    assert reconciler.reconcile(earlier_targets).converged
    _, settled = plan_settled(earlier_targets, observe(fs, earlier_targets), page_size_bytes=PAGE)
    assert len(settled.by_path) == len(earlier_targets.cgroups) - 1  # all but the root
    targets = sharing(targets_of_pods([pool_pod(i) for i in range(7)]), earlier_targets)
    assert reconciler.reconcile(targets).converged
    tree = observe(fs, targets)
    plan, handed_on = plan_settled(targets, tree, page_size_bytes=PAGE, settled=settled)
    assert plan == plan_operations(targets, tree, page_size_bytes=PAGE)
    assert not plan.operations
    new_pod = targets.pods[-1].cgroup if targets.pods[-1].uid == uid_for(6) else None
    reused = [
        path for path, cgroup in handed_on.by_path.items() if settled.by_path.get(path) is cgroup
    ]
    # Reused: every pod cgroup that was there (its QoS cgroup's sums moved with the new pod).
    assert new_pod is not None and new_pod not in reused
    earlier_pods = [p.cgroup for p in earlier_targets.pods]
    assert set(earlier_pods) <= set(reused)


def test_a_held_raise_is_not_settled() -> None:
    """A pod whose raise was held (its parent's protection unknown) has no operation, yet its
    protection is not at its final value: the next plan, with the parent known, raises it."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    targets = targets_of_pods([pool_pod(i) for i in range(3)])
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged
    pod = next(t for t in targets.cgroups if t.level == "pod" and t.files["memory.min"] != "0")
    parent = pod.path.rpartition("/")[0]
    fs.write(pod.path, "memory.min", "0")  # someone else lowered it
    tree = observe(fs, targets)
    above = tree.cgroups[parent]
    files = {f: v for f, v in above.files.items() if f != "memory.min"}
    holed = ObservedTree(
        cgroups={
            **tree.cgroups,
            parent: msgspec.structs.replace(
                above, files=files, unreadable=(*above.unreadable, "memory.min")
            ),
        }
    )
    held, settled = plan_settled(targets, holed, page_size_bytes=PAGE)
    assert f"{pod.path}/memory.min" in held.unknown  # held, not written
    assert not [o for o in held.operations if o.path == pod.path]
    assert pod.path not in settled.by_path
    plan, _ = plan_settled(targets, tree, page_size_bytes=PAGE, settled=settled)
    assert plan == plan_operations(targets, tree, page_size_bytes=PAGE)
    assert [o.path for o in plan.operations if o.file == "memory.min"].count(pod.path) == 1


@pytest.mark.parametrize("earlier_enabled", [True, False])
def test_a_file_blocked_by_the_parents_controllers_is_not_settled(earlier_enabled: bool) -> None:
    """Beside the kubelet only what the parent enables counts: a QoS cgroup observed without
    memory in its cgroup.subtree_control blocks its pods' memory files (whose reads are taken
    as they were), whether the earlier plan saw memory enabled there (the pods' controllers
    moved, not their targets or observations) or not (they were blocked then too)."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    targets = profile_targets(targets_of_pods([pool_pod(i) for i in range(3)]), BESIDE)
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged
    tree = observe(fs, targets)
    pod = next(t for t in targets.cgroups if t.level == "pod")
    parent = pod.path.rpartition("/")[0]
    above = tree.cgroups[parent]
    disabled = ObservedTree(
        cgroups={
            **tree.cgroups,
            parent: msgspec.structs.replace(
                above,
                subtree_control=tuple(c for c in above.subtree_control or () if c != "memory"),
            ),
        }
    )
    index = TargetIndex.of(targets, BESIDE)  # follows the profile: no filtering again
    earlier = tree if earlier_enabled else disabled
    _, settled = plan_settled(targets, earlier, page_size_bytes=PAGE, profile=BESIDE, index=index)
    assert (pod.path in settled.by_path) == earlier_enabled
    plan, _ = plan_settled(
        targets, disabled, page_size_bytes=PAGE, profile=BESIDE, index=index, settled=settled
    )
    assert plan == plan_operations(targets, disabled, page_size_bytes=PAGE, profile=BESIDE)
    assert f"{pod.path}/memory.min" in plan.blocked


def test_a_changed_target_at_a_settled_path_is_checked_again() -> None:
    """The per-cgroup checks of a full plan skip only the target objects a settled cgroup held:
    another target at the same path (here a value that is not one line) is refused as before."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    targets = targets_of_pods([pool_pod(i) for i in range(3)])
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged
    tree = observe(fs, targets)
    _, settled = plan_settled(targets, tree, page_size_bytes=PAGE)
    pod = next(t for t in targets.cgroups if t.level == "pod")
    assert pod.path in settled.by_path
    broken = msgspec.structs.replace(pod, files={**pod.files, "memory.min": "1\n2"})
    refused = msgspec.structs.replace(
        targets, cgroups=tuple(broken if t is pod else t for t in targets.cgroups)
    )
    with pytest.raises(InvariantViolation, match="is not one line"):
        plan_settled(refused, tree, page_size_bytes=PAGE, settled=settled)
