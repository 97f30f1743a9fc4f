"""`diff_tree` computed directly equals the diff that used to be derived from a whole plan.

Goal: `diff_tree` stopped running the planner (it took only the plan's blocked files and
removals from it) without changing a single row. Method: the old way is kept here as the
reference (`diff_via_planner`: plan, then build the rows from the plan's `blocked` and
`removals`; the commit that split core/plan ran it as a full copy of the old function), and
both are compared on the plan tests' fixtures and on a hypothesis property over trees a
reconciler converged, then someone else mutated (values, deleted and foreign cgroups,
controllers disabled), observed with random holes (unreadable files, unlisted children,
unknown populated flags and root controllers), with random retired pods (all paths of a UID)
and a root that may not offer every controller. So the planner and the diff agree on what is
blocked and what is an orphan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from memstate.core.cgroup_paths import pod_paths_of_uid
from memstate.core.errors import InvariantViolation
from memstate.core.plan import (
    FileDiff,
    ObservedTree,
    ValueModel,
    diff_tree,
    plan_operations,
)
from memstate.core.plan.diff import diff_rows
from memstate.core.plan.scope import UndesiredPod, naming_config
from memstate.core.targets import NodeTargets
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import Reconciler, observe_tree
from tests.reconcile.helpers import PAGE, Gi, mixed_pod, new_sim, targets_of_pods, uid_for
from tests.reconcile.test_properties import apply_mutation, configs, mutations, pool_pod

POOL = 9


def diff_via_planner(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    page_size_bytes: int,
    retired_paths: Iterable[str] = (),
) -> tuple[FileDiff, ...]:
    """The diff as memstate computed it before the split of core/plan: a whole plan, of which
    only `blocked` and `removals` were used to build the rows. (Until the direct diff was proved
    equal, this was a full copy of the old function; the rows are now built by the one
    `diff_rows`, so what is compared is what changed: where blocked and removals come from.)"""
    plan = plan_operations(
        targets, observed, page_size_bytes=page_size_bytes, retired_paths=retired_paths
    )
    return diff_rows(
        targets,
        observed,
        values=ValueModel(page_size_bytes),
        blocked=plan.blocked,
        undesired=[
            UndesiredPod(path=r.path, uid=r.uid, kind=r.kind, populated=r.populated)
            for r in plan.removals
        ],
    )


def observe(fs: SimCgroupFS, targets: NodeTargets) -> ObservedTree:
    tree, errors, _reads = observe_tree(fs, targets)
    assert not errors
    return tree


def retired_paths_of(targets: NodeTargets, uids: Iterable[str]) -> list[str]:
    """Every cgroup path the pods `uids` can have (retirement is by path)."""
    config = naming_config(targets)
    return sorted(path for uid in uids for path in pod_paths_of_uid(config, uid))


def assert_same_diff(
    targets: NodeTargets, tree: ObservedTree, retired: Iterable[str] = ()
) -> tuple[FileDiff, ...]:
    paths = retired_paths_of(targets, retired)
    direct = diff_tree(targets, tree, page_size_bytes=PAGE, retired_paths=paths)
    reference = diff_via_planner(targets, tree, page_size_bytes=PAGE, retired_paths=paths)
    assert direct == reference
    return direct


def converged(targets: NodeTargets, fs: SimCgroupFS | None = None) -> SimCgroupFS:
    fs = fs or new_sim()
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged
    return fs


# --- the plan tests' fixtures ---------------------------------------------------------------------


def pods(count: int, *, start: int = 0) -> list[Any]:
    return [mixed_pod(uid_for(i), i) for i in range(start, start + count)]


def test_an_empty_root_is_all_missing_in_both() -> None:
    targets = targets_of_pods(pods(5))
    rows = assert_same_diff(targets, observe(new_sim(), targets))
    assert {r.status for r in rows if r.path} == {"missing"}


def test_a_converged_tree_with_orphans_and_retirees_agrees() -> None:
    everyone = pods(6)
    fs = converged(targets_of_pods(everyone))
    targets = targets_of_pods(everyone[:3])
    fs.write("kubepods", "memory.max", str(2 * Gi))
    tree = observe(fs, targets)
    rows = assert_same_diff(targets, tree, retired=[uid_for(4)])
    statuses = {r.status for r in rows}
    assert {"orphan", "retired", "differs", "equal"} <= statuses, statuses


def test_a_root_without_cpuset_and_hugetlb_blocks_the_same_files() -> None:
    targets = targets_of_pods(pods(4))
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1", controllers=("memory",))
    Reconciler(fs, page_size_bytes=PAGE).reconcile(targets)
    rows = assert_same_diff(targets, observe(fs, targets))
    assert any(r.status == "blocked" for r in rows)


# --- the property ---------------------------------------------------------------------------------


def with_holes(tree: ObservedTree, data: st.DataObject) -> ObservedTree:
    """The observation with what a failed read leaves: unreadable files, unlisted children,
    unknown populated flags, unknown root controllers."""
    cgroups = dict(tree.cgroups)
    for path in sorted(cgroups):
        found = cgroups[path]
        if not found.exists or data.draw(st.integers(0, 4)) != 0:
            continue
        hole = data.draw(st.sampled_from(["unreadable", "children", "populated", "controllers"]))
        if hole == "unreadable" and found.files:
            file = data.draw(st.sampled_from(sorted(found.files)))
            files = {name: text for name, text in found.files.items() if name != file}
            found = msgspec.structs.replace(
                found, files=files, unreadable=(*found.unreadable, file)
            )
        elif hole == "children":
            found = msgspec.structs.replace(found, children=None)
        elif hole == "populated":
            found = msgspec.structs.replace(found, populated=None)
        elif hole == "controllers" and path == "":
            found = msgspec.structs.replace(found, controllers=None)
        cgroups[path] = found
    return ObservedTree(cgroups=cgroups)


@settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    config=configs(),
    converged_pods=st.sets(st.integers(0, POOL - 1), min_size=1),
    desired_pods=st.sets(st.integers(0, POOL - 1)),
    root_controllers=st.sampled_from(
        [("cpuset", "memory", "hugetlb"), ("memory",), ("memory", "hugetlb"), ("cpuset", "memory")]
    ),
    data=st.data(),
)
def test_the_direct_diff_equals_the_planner_derived_diff(
    config: Any,
    converged_pods: set[int],
    desired_pods: set[int],
    root_controllers: tuple[str, ...],
    data: st.DataObject,
) -> None:
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1", controllers=root_controllers)
    before = targets_of_pods([pool_pod(i) for i in sorted(converged_pods)], config)
    Reconciler(fs, page_size_bytes=PAGE).reconcile(before)
    for change in data.draw(mutations(before)):
        apply_mutation(fs, change)
    targets = targets_of_pods([pool_pod(i) for i in sorted(desired_pods)], config)
    tree = with_holes(observe(fs, targets), data)
    retired = data.draw(st.sets(st.sampled_from([uid_for(i) for i in range(POOL)])))
    rows = assert_same_diff(targets, tree, sorted(retired))
    for status in sorted({r.status for r in rows}):
        event(f"a row is {status}")


def test_the_comparison_can_fail_and_both_refuse_a_missing_root() -> None:
    """Different inputs give different rows (the equality above is not vacuous), and both
    refuse an observation without the managed root with the same error."""
    everyone = pods(4)
    fs = converged(targets_of_pods(everyone))
    targets = targets_of_pods(everyone[:2])
    tree = observe(fs, targets)
    direct = diff_tree(targets, tree, page_size_bytes=PAGE)
    retired = diff_via_planner(
        targets,
        tree,
        page_size_bytes=PAGE,
        retired_paths=retired_paths_of(targets, [uid_for(3)]),
    )
    assert direct != retired
    for compute in (diff_tree, diff_via_planner):
        with pytest.raises(InvariantViolation, match="the managed root does not exist"):
            compute(targets, ObservedTree(cgroups={}), page_size_bytes=PAGE)
