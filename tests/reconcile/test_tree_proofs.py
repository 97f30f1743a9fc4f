"""The proofs carried with an observed tree (memstate.core.plan.model) change no derived tree.

Goal: `merge_observations` and `apply_operations` skip two passes over every cgroup when the
tree carries a proof by its type: a listing known sorted and unique (`SortedNames`, edited by
bisection) and a table known closed under parents (`ClosedCgroups`: a path it does not hold has
no descendants in it). Method: a hypothesis property over small trees made by hand (listings
unsorted or with duplicates, paths whose parents are missing, cgroups held as absent with
descendants) and random chains of merges and applied operations: each step on the tree with
its proofs gives the tree (and the touched paths) the same step gives on the tree stripped of
them (plain dicts and tuples, descendants found by a pass over every path), and every proof a
result carries holds when checked from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations, pairwise
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.core.cgroup_paths import ancestor_paths
from memstate.core.plan import (
    ObservedCgroup,
    ObservedTree,
    Operation,
    TreeChange,
    apply_operations,
    closed_cgroups,
    merge_observations,
    model,
    recorded_edit,
)
from memstate.core.plan.model import ClosedCgroups, SortedNames, one_edit

NAMES = ("a", "b", "c")
PATHS = ("", *NAMES, *(f"{x}/{y}" for x in NAMES for y in NAMES), "a/b/c", "b/a/a")
# Cheap examples: enough of them that each way of breaking a proof is found every run.
SETTINGS = settings(
    derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def plain(tree: ObservedTree) -> ObservedTree:
    """`tree` without its proofs: a plain dict of plain listings."""
    return ObservedTree(
        cgroups={
            path: found
            if found.children is None
            else ObservedCgroup(
                exists=found.exists,
                files=found.files,
                unreadable=found.unreadable,
                children=tuple(found.children),
                populated=found.populated,
                controllers=found.controllers,
                subtree_control=found.subtree_control,
            )
            for path, found in tree.cgroups.items()
        }
    )


def every_descendant(
    cgroups: Mapping[str, ObservedCgroup], path: str, *, closed: bool
) -> list[str]:
    """The descendants of `path` found by a pass over every path (what the proofs replace)."""
    return [other for other in cgroups if other.startswith(f"{path}/")]


def assert_proofs_hold(tree: ObservedTree) -> None:
    """Every proof `tree` carries is true."""
    if type(tree.cgroups) is ClosedCgroups:
        for path in tree.cgroups:
            if path:
                assert path.rpartition("/")[0] in tree.cgroups, path
    for found in tree.cgroups.values():
        if type(found.children) is SortedNames:
            assert all(x < y for x, y in pairwise(found.children)), found.children


@st.composite
def cgroups(draw: st.DrawFn) -> ObservedCgroup:
    listing = draw(st.none() | st.lists(st.sampled_from(NAMES), max_size=4))
    children = None if listing is None else tuple(listing)
    if children is not None and draw(st.booleans()):
        children = tuple(sorted(set(children)))
        if draw(st.booleans()):
            children = SortedNames(children)  # as an earlier edit leaves it
    return ObservedCgroup(exists=draw(st.booleans()), children=children)


@st.composite
def trees(draw: st.DrawFn) -> ObservedTree:
    paths = draw(st.lists(st.sampled_from(PATHS), unique=True, max_size=10))
    if draw(st.booleans()):
        # Every ancestor held too: closed, as the daemon's trees are.
        paths = sorted({*paths, *(a for path in paths for a in ancestor_paths(path))})
    table = {path: draw(cgroups()) for path in paths}
    return ObservedTree(cgroups=closed_cgroups(table) if draw(st.booleans()) else table)


@st.composite
def operations(draw: st.DrawFn, held: list[str]) -> list[Operation]:
    paths = st.sampled_from(PATHS) | st.sampled_from(held) if held else st.sampled_from(PATHS)
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(["mkdir", "rmdir", "write", "enable", "kill"]), paths),
            max_size=5,
        )
    )
    result: list[Operation] = []
    for index, (kind, path) in enumerate(steps):
        if kind in ("mkdir", "enable"):
            phase, file, value = "create", "cgroup.subtree_control", "+memory"
        elif kind in ("rmdir", "kill"):
            phase, file, value = "remove", "cgroup.kill", "1"
        else:
            phase, file, value = "raise", "memory.min", "4096"
        if kind in ("mkdir", "rmdir"):
            file, value = "", ""
        result.append(
            Operation(index=index, phase=phase, kind=kind, path=path, file=file, value=value)  # type: ignore[arg-type]
        )
    return result


@SETTINGS
@given(tree=trees(), data=st.data())
def test_derived_trees_with_proofs_equal_those_without(
    tree: ObservedTree, data: st.DataObject
) -> None:
    assert_proofs_hold(tree)
    bare = plain(tree)
    for _ in range(data.draw(st.integers(1, 5))):
        touched: set[str] = set()
        bare_touched: set[str] = set()
        held = sorted(tree.cgroups)
        if data.draw(st.booleans()):
            paths = (
                st.sampled_from(PATHS) | st.sampled_from(held) if held else st.sampled_from(PATHS)
            )
            fresh = data.draw(st.dictionaries(paths, cgroups(), max_size=4))
            # Taken over (edited in place) or copied: the same tree, the same proofs.
            tree = merge_observations(tree, fresh, touched, take=data.draw(st.booleans()))
            with patch.object(model, "_descendants", every_descendant):
                bare = merge_observations(bare, fresh, bare_touched)
        else:
            steps = data.draw(operations(held))
            before = tree
            edits: dict[str, model.ListingEdit] = {}
            tree = apply_operations(tree, steps, touched, edits)
            with patch.object(model, "_descendants", every_descendant):
                bare = apply_operations(bare, steps, bare_touched)
            assert_edits_hold(edits, before, tree, touched)
        assert tree == bare
        assert list(tree.cgroups) == list(bare.cgroups)
        assert touched == bare_touched
        assert_proofs_hold(tree)


def assert_edits_hold(
    edits: Mapping[str, model.ListingEdit],
    before: ObservedTree,
    tree: ObservedTree,
    touched: set[str],
) -> None:
    """Each recorded listing edit is what `one_edit` finds between its two listings, and
    `recorded_edit` answers it for a listing the derivation started from and ended with."""
    change = TreeChange(previous=before, tree=tree, paths=frozenset(touched), edits=dict(edits))
    for parent, (old, new, name, put) in edits.items():
        assert parent in touched
        assert one_edit(old, new) == (name, put)
        assert recorded_edit([change], parent, old, new) == (name, put)
        # Only for those very listings: an equal copy of either is not proven edited so (the
        # empty tuple has no copy).
        assert recorded_edit([change], parent, old, (*new,)) is None
        if old:
            assert recorded_edit([change], parent, (*old,), new) is None
    for parent in touched:
        was, now = before.get(parent), tree.get(parent)
        if was is None or now is None or was.children is None or now.children is None:
            continue
        found = recorded_edit([change], parent, was.children, now.children)
        if found is not None:
            assert found == one_edit(was.children, now.children)


@SETTINGS
@given(table=st.dictionaries(st.sampled_from(PATHS), cgroups(), max_size=8))
def test_a_table_is_proven_closed_exactly_when_it_is(table: dict[str, ObservedCgroup]) -> None:
    closed = all(path.rpartition("/")[0] in table for path in table if path)
    made = closed_cgroups(table)
    assert made == table
    assert (type(made) is ClosedCgroups) == closed


def test_a_new_pod_observed_absent_keeps_the_proofs() -> None:
    """What the daemon's rounds rely on: a closed tree stays closed through an admission's
    merge (the new pod observed absent) and its mkdir, and kubepods' listing, once edited, is
    a `SortedNames` (so the proofs are not vacuous in the property above)."""
    table = {
        "": ObservedCgroup(children=("kubepods",)),
        "kubepods": ObservedCgroup(children=("pod1", "pod2")),
        "kubepods/pod1": ObservedCgroup(children=()),
        "kubepods/pod2": ObservedCgroup(children=()),
    }
    tree = ObservedTree(cgroups=closed_cgroups(table))
    tree = merge_observations(tree, {"kubepods/pod3": ObservedCgroup(exists=False)})
    assert type(tree.cgroups) is ClosedCgroups
    mkdir = Operation(index=0, phase="create", kind="mkdir", path="kubepods/pod3")
    tree = apply_operations(tree, [mkdir])
    assert type(tree.cgroups) is ClosedCgroups
    assert tree.cgroups["kubepods"].children == ("pod1", "pod2", "pod3")
    assert type(tree.cgroups["kubepods"].children) is SortedNames
    orphan = apply_operations(tree, [Operation(index=0, phase="create", kind="mkdir", path="x/y")])
    assert type(orphan.cgroups) is dict  # "x" is not held: no longer closed


def test_a_sorted_listing_is_edited_as_a_plain_one_would_be() -> None:
    """Every listing of up to four names, every name put in or taken out: the `SortedNames`
    listing (edited by bisection) becomes what the plain tuple becomes."""
    names = ("a", "b", "c", "d")
    for size in range(len(names) + 1):
        for listing in combinations(names, size):
            for name in ("a", "bb", "c", "e"):
                for present in (True, False):
                    fresh = {f"p/{name}": ObservedCgroup(exists=present, children=())}
                    edited = [
                        merge_observations(
                            ObservedTree(cgroups={"p": ObservedCgroup(children=kind(listing))}),
                            fresh,
                        ).cgroups["p"]
                        for kind in (SortedNames, tuple)
                    ]
                    assert edited[0] == edited[1], (listing, name, present)
                    assert type(edited[0].children) is SortedNames
