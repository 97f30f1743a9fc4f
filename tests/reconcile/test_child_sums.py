"""Carried child sums (memstate.core.plan.children) change nothing in a plan.

Goal: the reconciler carries the children's protections summed from one tree to the next so a
scoped round does not sum every pod; the plan must be the one computed without them, and the
sums carried from an earlier tree must be the sums computed afresh. Method: a hypothesis property
over trees a reconciler converged, then someone else mutated, observed with holes (unreadable
files, unlisted children, unknown populated flags), with names memstate cannot handle in a
listing, children the tree holds but their parent does not list, children held as not existing,
random retired pods and a random scope (or a full round): the plan with the sums equals the plan
without, under every profile's ownership, and the sums carried from the unmutated tree (which
shares its unchanged cgroups with the new one) answer every query as the fresh ones do; the
plan with the targets' index (fresh, or carried from the converged targets') is the same too.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstate.core.errors import InvariantViolation
from memstate.core.plan import (
    ObservedCgroup,
    ObservedTree,
    TreeChange,
    apply_operations,
    merge_observations,
    plan_operations,
    touched_since,
)
from memstate.core.plan.children import ChildSums
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.profile import STANDALONE, WriteProfile, profile_targets
from memstate.core.plan.values import PROTECTION_FILES
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import Reconciler
from tests.reconcile.helpers import PAGE, targets_of_pods, uid_for
from tests.reconcile.test_diff_equivalence import observe, retired_paths_of, with_holes
from tests.reconcile.test_properties import (
    PROPERTY_SETTINGS,
    apply_mutation,
    configs,
    mutations,
    pool_pod,
)

POOL = 9
BESIDE = WriteProfile(ownership="beside-kubelet")


def with_oddities(tree: ObservedTree, data: st.DataObject) -> ObservedTree:
    """Listings with a name memstate cannot handle, children held but not listed, children
    held as not existing: what makes the carried sums fall back or skip."""
    cgroups = dict(tree.cgroups)
    for path in sorted(cgroups):
        found = cgroups[path]
        if not found.exists or found.children is None or data.draw(st.integers(0, 5)) != 0:
            continue
        odd = data.draw(st.sampled_from(["invalid", "unlisted", "gone", "unlisted-gone"]))
        prefix = f"{path}/" if path else ""
        if odd == "invalid":
            found = msgspec.structs.replace(found, children=(*found.children, "bad name\n"))
        elif odd in ("unlisted", "unlisted-gone") and found.children:
            name = data.draw(st.sampled_from(sorted(found.children)))
            found = msgspec.structs.replace(
                found, children=tuple(n for n in found.children if n != name)
            )
            if odd == "unlisted-gone":
                cgroups[prefix + name] = ObservedCgroup(exists=False)
        elif odd == "gone" and found.children:
            name = data.draw(st.sampled_from(sorted(found.children)))
            cgroups[prefix + name] = ObservedCgroup(exists=False)
        cgroups[path] = found
    return ObservedTree(cgroups=cgroups)


def assert_same_sums(carried: ChildSums, fresh: ChildSums, tree: ObservedTree) -> None:
    """Every query of the planner answers the same."""
    for path in sorted(tree.cgroups):
        assert carried.usable(path) == fresh.usable(path), path
        assert carried.invalid_names(path) == fresh.invalid_names(path), path
        assert carried.existing_children(path) == fresh.existing_children(path), path
        for index in range(len(PROTECTION_FILES)):
            assert carried.total(path, index) == fresh.total(path, index), path
            assert sorted(carried.unreadable_children(path, index)) == sorted(
                fresh.unreadable_children(path, index)
            ), path


@PROPERTY_SETTINGS
@given(
    config=configs(),
    converged_pods=st.sets(st.integers(0, POOL - 1), min_size=1),
    desired_pods=st.sets(st.integers(0, POOL - 1)),
    data=st.data(),
)
def test_plans_with_carried_sums_equal_plans_without(
    config: Any, converged_pods: set[int], desired_pods: set[int], data: st.DataObject
) -> None:
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    before = targets_of_pods([pool_pod(i) for i in sorted(converged_pods)], config)
    Reconciler(fs, page_size_bytes=PAGE).reconcile(before)
    earlier = observe(fs, before)
    for change in data.draw(mutations(before)):
        apply_mutation(fs, change)
    targets = targets_of_pods([pool_pod(i) for i in sorted(desired_pods)], config)
    # The new tree shares the earlier tree's unchanged cgroups, as the reconciler's do.
    fresh_reads = observe(fs, targets).cgroups
    shared = {
        path: earlier.cgroups[path] if earlier.cgroups.get(path) == found else found
        for path, found in fresh_reads.items()
    }
    tree = with_oddities(with_holes(ObservedTree(cgroups=shared), data), data)
    fresh = ChildSums.of(tree, PAGE)
    carried = ChildSums.of(earlier, PAGE).updated(tree)
    assert_same_sums(carried, fresh, tree)
    retired = retired_paths_of(
        targets, data.draw(st.sets(st.sampled_from([uid_for(i) for i in range(POOL)])))
    )
    desired = [t.path for t in targets.cgroups]
    focus = (
        None
        if not desired or data.draw(st.booleans())
        else data.draw(st.sets(st.sampled_from(desired), min_size=1))
    )
    profile = data.draw(st.sampled_from([STANDALONE, BESIDE]))
    pod_removal = data.draw(st.sampled_from(["wait", "kill"]))

    def plan(
        child_sums: ChildSums | None, index: TargetIndex | None = None, given: Any = targets
    ) -> Any:
        try:
            return plan_operations(
                given,
                tree,
                page_size_bytes=PAGE,
                retired_paths=retired,
                pod_removal=pod_removal,
                focus=focus,
                profile=profile,
                child_sums=child_sums,
                index=index,
            )
        except InvariantViolation as exc:
            return str(exc)

    reference = plan(None)
    assert plan(fresh) == reference
    assert plan(carried) == reference
    # With the targets' index (memstate.core.plan.index), fresh and carried from the
    # converged targets' (which share no object with these: every cgroup is compared).
    assert plan(carried, TargetIndex.of(targets)) == reference
    assert plan(carried, TargetIndex.of(before).updated(targets)) == reference
    # The reconciler's way: targets already filtered by the profile, with an index that
    # follows the profile's filter (so the planner does not filter them again).
    profiled = profile_targets(targets, profile)
    following = TargetIndex.of(profile_targets(before, profile), profile).updated(profiled)
    assert following.unfiltered_under(profile)
    assert plan(carried, following, profiled) == reference


@PROPERTY_SETTINGS
@given(
    config=configs(),
    converged_pods=st.sets(st.integers(0, POOL - 1), min_size=1),
    data=st.data(),
)
def test_touched_paths_cover_every_replaced_observation(
    config: Any, converged_pods: set[int], data: st.DataObject
) -> None:
    """`merge_observations` and `apply_operations` report every path whose observation they
    replaced or dropped, so the sums carried by those paths only (`touched_since` over the
    records of a chain of derivations, as the reconciler keeps them) are the sums computed
    afresh. Steps: scoped merges of what another writer changed (cgroups gone, unlisted, new
    names) and the operations of plans for other targets (creations, removals, writes)."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    before = targets_of_pods([pool_pod(i) for i in sorted(converged_pods)], config)
    Reconciler(fs, page_size_bytes=PAGE).reconcile(before)
    start = tree = observe(fs, before)
    for change in data.draw(mutations(before)):
        apply_mutation(fs, change)
    later = observe(fs, before).cgroups
    candidates = sorted({*tree.cgroups, *later, "kubepods/new", "kubepods/burstable/x"})
    records: list[TreeChange] = []
    for _ in range(data.draw(st.integers(1, 4))):
        touched: set[str] = set()
        if data.draw(st.booleans()):
            paths = data.draw(st.sets(st.sampled_from(candidates), max_size=5))
            fresh = {}
            for path in sorted(paths):
                found = later.get(path, ObservedCgroup(exists=False))
                if found.exists and data.draw(st.booleans()):
                    found = msgspec.structs.replace(found, children=None)  # not listed
                fresh[path] = found
            new = merge_observations(tree, fresh, touched)
        else:
            kept = data.draw(st.sets(st.sampled_from(sorted(converged_pods))))
            targets = targets_of_pods([pool_pod(i) for i in sorted(kept)], config)
            gone = [uid_for(i) for i in sorted(converged_pods - kept)]
            try:
                plan = plan_operations(
                    targets,
                    tree,
                    page_size_bytes=PAGE,
                    retired_paths=retired_paths_of(targets, gone),
                    pod_removal=data.draw(st.sampled_from(["wait", "kill"])),
                )
            except InvariantViolation:
                continue
            operations = plan.operations
            if operations and data.draw(st.booleans()):
                operations = tuple(data.draw(st.lists(st.sampled_from(operations))))
            new = apply_operations(tree, operations, touched)
        every = tree.cgroups.keys() | new.cgroups.keys()
        moved = {p for p in every if tree.cgroups.get(p) is not new.cgroups.get(p)}
        assert moved <= touched
        records.append(TreeChange(previous=tree, tree=new, paths=frozenset(touched)))
        tree = new
    paths = touched_since(records, start, tree)
    assert paths is not None
    carried = ChildSums.of(start, PAGE).updated(tree, paths)
    assert_same_sums(carried, ChildSums.of(tree, PAGE), tree)
    # A chain that does not lead from the held tree to this one tells nothing.
    assert touched_since(records, tree, start) in (None, frozenset())
    assert touched_since(records[1:], start, tree) in (None, frozenset())


def test_touched_since_composes_one_chain_only() -> None:
    a, b, c = (ObservedTree(cgroups={"": ObservedCgroup(children=(n,))}) for n in "abc")
    first = TreeChange(previous=a, tree=b, paths=frozenset({"x"}))
    second = TreeChange(previous=b, tree=c, paths=frozenset({"y"}))
    assert touched_since([first, second], a, c) == {"x", "y"}
    assert touched_since([first, second], b, c) == {"y"}
    assert touched_since([first, second], a, a) == frozenset()
    assert touched_since([second], a, c) is None  # no record starts at a
    assert touched_since([first, TreeChange(previous=a, tree=c, paths=frozenset())], a, c) == set()
    assert touched_since([first], a, c) is None  # the chain stops before c


def test_sums_follow_a_changed_value_and_a_new_child() -> None:
    """The carried total moves with a child's value and a child added to the listing (the
    comparison above is not vacuous)."""
    parent = ObservedCgroup(children=("a",), files={})
    child = ObservedCgroup(files={"memory.min": "8192\n"}, children=())
    tree = ObservedTree(cgroups={"": parent, "a": child})
    sums = ChildSums.of(tree, PAGE)
    assert sums.usable("") and sums.total("", 0) == 8192
    raised = ObservedTree(
        cgroups={
            "": ObservedCgroup(children=("a", "b"), files={}),
            "a": ObservedCgroup(files={"memory.min": "16384\n"}, children=()),
            "b": ObservedCgroup(files={"memory.min": "4096\n"}, children=()),
        }
    )
    assert sums.updated(raised).total("", 0) == 20480
    unlisted = ObservedTree(cgroups={**tree.cgroups, "b": child})
    assert not ChildSums.of(tree, PAGE).updated(unlisted).usable("")


def test_updated_sums_hand_their_tables_on_and_refuse_every_later_use() -> None:
    """`updated` edits the tables in place: the value it was called on is refused by its
    `check` (so no plan is made with it: its answers would be the new tree's) and by a second
    update, and a value for its own tree is itself."""
    parent = ObservedCgroup(children=("a",), files={})
    child = ObservedCgroup(files={"memory.min": "8192\n"}, children=())
    tree = ObservedTree(cgroups={"": parent, "a": child})
    sums = ChildSums.of(tree, PAGE)
    assert sums.updated(tree) is sums and not sums.spent
    same = ObservedTree(cgroups=dict(tree.cgroups))  # another tree, nothing changed
    kept = sums.updated(same, [])
    assert kept.total("", 0) == 8192 and sums.spent
    for use in (
        lambda: sums.check(tree, PAGE),
        lambda: sums.updated(same),
        lambda: plan_operations(targets_of_pods([]), tree, page_size_bytes=PAGE, child_sums=sums),
    ):
        with pytest.raises(InvariantViolation, match="spent"):
            use()


@given(
    listing=st.lists(st.sampled_from(["a", "b", "c"]), max_size=5),
    at=st.integers(0, 5),
    name=st.sampled_from(["a", "b", "d"]),
    put=st.booleans(),
)
def test_sums_follow_one_name_put_in_or_taken_out_of_any_listing(
    listing: list[str], at: int, name: str, put: bool
) -> None:
    """A listing that gains or loses one name at one place (what `merge_observations` and
    `apply_operations` do; here also unsorted or with duplicates) gives the sums computed
    afresh: the carried ones follow that name only."""
    children = {n: ObservedCgroup(files={"memory.min": "4096\n"}, children=()) for n in "abcd"}
    before = ObservedTree(cgroups={"": ObservedCgroup(children=tuple(listing)), **children})
    edited = list(listing)
    if put:
        edited.insert(min(at, len(edited)), name)
    elif edited:
        del edited[min(at, len(edited) - 1)]
    after = ObservedTree(cgroups={**before.cgroups, "": ObservedCgroup(children=tuple(edited))})
    carried = ChildSums.of(before, PAGE).updated(after, [""])
    assert_same_sums(carried, ChildSums.of(after, PAGE), after)


def test_sums_for_another_tree_are_refused() -> None:
    tree = ObservedTree(cgroups={"": ObservedCgroup(children=())})
    other = ObservedTree(cgroups={"": ObservedCgroup(children=())})
    targets = targets_of_pods([])
    with pytest.raises(InvariantViolation, match="another observed tree"):
        plan_operations(targets, tree, page_size_bytes=PAGE, child_sums=ChildSums.of(other, PAGE))


@given(
    listing=st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=6),
    name=st.sampled_from(["a", "c", "f"]),
    present=st.booleans(),
)
def test_a_listing_follows_existence_sorted_and_without_duplicates(
    listing: list[str], name: str, present: bool
) -> None:
    """`merge_observations` (and `apply_operations`) put a name into a parent's listing or take
    it out as the sorted set of names, also from a listing made unsorted or with duplicates; a
    listing that already lists the name as it should keeps the parent's observation itself
    (what lets the carried sums skip it; observed listings are sorted and unique)."""
    parent = ObservedCgroup(children=tuple(listing))
    base = ObservedTree(cgroups={"": ObservedCgroup(children=("p",)), "p": parent})
    touched: set[str] = set()
    merged = merge_observations(
        base, {f"p/{name}": ObservedCgroup(exists=present, children=())}, touched
    )
    names = set(listing)
    if present:
        names.add(name)
    else:
        names.discard(name)
    if (name in listing) == present:
        assert merged.cgroups["p"] is parent
        assert "p" not in touched
    else:
        assert merged.cgroups["p"].children == tuple(sorted(names))
        assert "p" in touched


@pytest.mark.parametrize("file", PROTECTION_FILES)
def test_a_leaf_targets_unknown_child_is_unknown_with_carried_sums(file: str) -> None:
    """A pod cgroup (a leaf of the targets, so none of its children is planned) lists a child
    the targets do not name (a container) whose protection could not be read: the pod's sum is
    unknown, with the carried sums as without them (the carried sums' short cut for a cgroup
    without planned or removed children must still ask for its unreadable ones)."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")
    targets = targets_of_pods([pool_pod(i) for i in range(3)])
    Reconciler(fs, page_size_bytes=PAGE).reconcile(targets)
    tree = observe(fs, targets)
    pod = targets.pods[0].cgroup
    cgroups = dict(tree.cgroups)
    cgroups[pod] = msgspec.structs.replace(
        cgroups[pod], children=("c",), subtree_control=("memory",)
    )
    cgroups[f"{pod}/c"] = ObservedCgroup(unreadable=(file,), children=())
    tree = ObservedTree(cgroups=cgroups)

    def plan(child_sums: ChildSums | None) -> Any:
        return plan_operations(targets, tree, page_size_bytes=PAGE, child_sums=child_sums)

    reference = plan(None)
    assert f"{pod}/{file}" in reference.unknown
    assert plan(ChildSums.of(tree, PAGE)) == reference
