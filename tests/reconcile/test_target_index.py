"""The reconciler's carried target index (memstate.core.plan.index.TargetIndex) answers as one
computed from scratch, and the planner's checks and plans are the same with it.

Method: a hypothesis property over sequences of targets drawn from a pool of `CgroupTarget`
objects (kept, replaced by an equal copy or by a changed one: other controllers, another level,
a path listed twice, a child listed before its parent, a pod cgroup missing), each index updated
from the previous one: every query equals the fresh index's, and `check_target_tree` (scoped to a
random set of paths) and `undesired_pod_cgroups` give the same verdict and answer with the
index as without. Plans with and without the index are compared in
tests/reconcile/test_child_sums.py (converged, mutated trees, both ownerships).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from memstate.core.errors import InvariantViolation
from memstate.core.plan import ObservedCgroup, ObservedTree, naming_config
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.profile import STANDALONE, ProfileFilter, WriteProfile, profile_targets
from memstate.core.plan.scope import UndesiredNames, check_target_tree, undesired_pod_cgroups
from memstate.core.targets import NodeTargets
from tests.reconcile.helpers import mixed_pod, node_config, targets_of_pods, uid_for
from tests.reconcile.test_properties import PROPERTY_SETTINGS

POOL = 6
BESIDE = WriteProfile(ownership="beside-kubelet")


def base_targets() -> NodeTargets:
    config = node_config("TieredReservation", static=False)
    return targets_of_pods([mixed_pod(uid_for(i), i) for i in range(POOL)], config)


BASE = base_targets()
EDITS = st.sampled_from(["keep", "copy", "controllers", "level", "twice", "drop", "swap"])


def verdict(function: Callable[..., object], *args: object) -> object:
    """What `function(*args)` returns, or the message of the InvariantViolation it raises."""
    try:
        return function(*args)
    except InvariantViolation as exc:
        return f"InvariantViolation: {exc}"


def assert_same(carried: TargetIndex, fresh: TargetIndex, probe: list[str]) -> None:
    assert carried.targets is fresh.targets
    assert dict(carried.by_path) == dict(fresh.by_path)
    assert carried.unique == fresh.unique
    paths = sorted({*fresh.by_path, *(p.rpartition("/")[0] for p in fresh.by_path), *probe})
    for path in paths:
        assert carried.children(path) == fresh.children(path), path
        # The names, against the desired paths themselves (what `undesired_pod_cgroups` uses).
        names = {p.rpartition("/")[2] for p in fresh.by_path if p and p.rpartition("/")[0] == path}
        assert carried.child_names(path) == fresh.child_names(path) == names, path
        assert carried.children(path) == len(names), path
    for level in ("root", "node", "qos"):
        assert carried.holders(level) == fresh.holders(level), level
    assert carried.controlled() == fresh.controlled()
    if fresh.unique:
        order = [t.path for t in fresh.targets.cgroups]
        assert carried.ordered(probe) == [p for p in order if p in set(probe)]
        # A desired path stands after an index as its place in the targets says (asked before
        # its position is known, then after).
        for path in [p for p in probe if p in fresh.by_path]:
            for at in range(len(order) + 1):
                assert carried.after(path, at) == (order.index(path) > at), (path, at)
        for path in probe:
            assert carried.position(path) == fresh.position(path)


@PROPERTY_SETTINGS
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, len(BASE.cgroups) - 1), EDITS), max_size=4),
            st.sets(st.integers(0, len(BASE.cgroups) - 1)),  # the targets of this step
            st.lists(st.integers(0, len(BASE.cgroups) + 1), max_size=5),  # paths probed
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_carried_index_answers_as_a_fresh_one(
    steps: list[tuple[list[tuple[int, str]], set[int], list[int]]],
) -> None:
    pool = list(BASE.cgroups)
    config = naming_config(BASE)
    index = TargetIndex.of(BASE)
    complete = index
    carried = UndesiredNames()  # followed by the index's changes from step to step
    for edits, chosen, probes in steps:
        cgroups = [pool[i] for i in sorted(chosen | {0, 1, 2, 3})]
        for at, edit in edits:
            target = pool[at]
            if edit == "copy":
                pool[at] = msgspec.structs.replace(target)
            elif edit == "controllers":
                controllers = () if target.controllers else ("memory",)
                pool[at] = msgspec.structs.replace(target, controllers=controllers)
            elif edit == "level":
                level = "qos" if target.level == "pod" else "pod"
                pool[at] = msgspec.structs.replace(target, level=level)
            elif edit == "twice":
                cgroups.append(msgspec.structs.replace(target))
            elif edit == "drop" and target in cgroups:
                cgroups.remove(target)
            elif edit == "swap" and len(cgroups) > 1:
                cgroups[0], cgroups[-1] = cgroups[-1], cgroups[0]
        cgroups = [pool[BASE.cgroups.index(t)] if t in BASE.cgroups else t for t in cgroups]
        targets = msgspec.structs.replace(BASE, cgroups=tuple(cgroups))
        index = index.updated(targets)
        fresh = TargetIndex.of(targets)
        paths = [t.path for t in BASE.cgroups] + ["kubepods/nowhere", "elsewhere"]
        probe = [paths[i] for i in probes]
        assert_same(index, fresh, probe)
        # The reconciler's index of the targets with container cgroups under their pods.
        containers = tuple(
            msgspec.structs.replace(t, path=f"{t.path}/app", level="container", files={})
            for at, t in enumerate(cgroups)
            if t.level == "pod" and at % 2 == 0
        )
        complete_targets = msgspec.structs.replace(targets, cgroups=(*targets.cgroups, *containers))
        complete = complete.updated(complete_targets)
        assert_same(
            complete, TargetIndex.of(complete_targets), [*probe, *(c.path for c in containers)]
        )
        scoped = verdict(check_target_tree, targets, probe, index)
        assert scoped == verdict(check_target_tree, targets, probe)
        if fresh.unique and "" in fresh.by_path:
            # Against the targets' order itself: a probed desired path listed before (or
            # without) its parent is refused.
            order = [t.path for t in targets.cgroups]
            misplaced = [
                p
                for p in probe
                if p in fresh.by_path
                and p
                and (
                    (parent := p.rpartition("/")[0]) not in fresh.by_path
                    or order.index(parent) > order.index(p)
                )
            ]
            if misplaced:
                assert isinstance(scoped, str), misplaced  # refused (by this or an earlier check)
            else:
                assert not (isinstance(scoped, str) and "before its parent" in scoped), scoped
        listed = tuple(sorted({p.rpartition("/")[2] for p in paths if p.count("/") >= 1}))
        tree = ObservedTree(cgroups={p: ObservedCgroup(children=listed) for p in paths})
        retired = frozenset(probe)
        assert verdict(undesired_pod_cgroups, targets, tree, config, retired, index) == verdict(
            undesired_pod_cgroups, targets, tree, config, retired
        )
        assert undesired_pod_cgroups(
            targets, tree, config, retired, index, carried=carried
        ) == undesired_pod_cgroups(targets, tree, config, retired)


@PROPERTY_SETTINGS
@given(
    profile=st.sampled_from([STANDALONE, BESIDE, WriteProfile(mode="qos")]),
    steps=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, len(BASE.cgroups) - 1), EDITS), max_size=4),
            st.sets(st.integers(0, len(BASE.cgroups) - 1)),
            st.sets(st.integers(0, len(BASE.pods) - 1)),
            st.sets(st.integers(0, len(BASE.pods) - 1)),  # pods rebuilt (new objects)
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_the_profile_filter_and_the_index_follow_the_profile(
    profile: WriteProfile, steps: list[tuple[list[tuple[int, str]], set[int], set[int], set[int]]]
) -> None:
    """`ProfileFilter` carried gives `profile_targets`'s answer; the index carried with a
    profile says whether filtering changes a cgroup as a fresh look does."""
    pool = list(BASE.cgroups)
    pods = list(BASE.pods)
    carried = ProfileFilter(profile)
    index = TargetIndex.of(BASE, profile)
    for edits, chosen, pods_chosen, rebuilt in steps:
        for at, edit in edits:
            target = pool[at]
            if edit == "copy":
                pool[at] = msgspec.structs.replace(target)
            elif edit == "controllers":
                pool[at] = msgspec.structs.replace(
                    target, files={**target.files, "cpuset.mems": "0"}
                )
            elif edit == "level":
                files = {f: v for f, v in target.files.items() if f.startswith("memory.m")}
                pool[at] = msgspec.structs.replace(target, files=files)
        for at in rebuilt:
            pods[at] = msgspec.structs.replace(pods[at])
        targets = msgspec.structs.replace(
            BASE,
            cgroups=tuple(pool[i] for i in sorted(chosen | {0, 1, 2, 3})),
            pods=tuple(pods[i] for i in sorted(pods_chosen)),
        )
        carried = carried.updated(targets)
        assert carried.result == profile_targets(targets, profile)
        index = index.updated(targets)
        fresh = profile_targets(targets, profile)
        assert index.unfiltered_under(profile) == (fresh.cgroups == targets.cgroups)
        assert not index.unfiltered_under(WriteProfile(mode="shadow"))


def test_an_index_for_other_targets_is_refused() -> None:
    other = msgspec.structs.replace(BASE, cgroups=BASE.cgroups[:-1])
    try:
        check_target_tree(BASE, [""], TargetIndex.of(other))
    except InvariantViolation as exc:
        assert "other targets" in str(exc)
    else:
        raise AssertionError("an index of other targets was accepted")


def test_an_updated_index_hands_its_tables_on() -> None:
    """`updated` edits the tables in place: the index it was called on is spent, refused by
    every check (so the planner never answers from it), and updating it again starts afresh
    instead of editing tables another index holds. Its successor names it (`derived_from`);
    an index for the same targets is itself."""
    config = node_config("TieredReservation", static=False)
    one = targets_of_pods([mixed_pod(uid_for(0), 0)], config)
    two = targets_of_pods([mixed_pod(uid_for(i), i) for i in range(2)], config)
    index = TargetIndex.of(one)
    assert index.updated(one) is index and not index.spent
    later = index.updated(two)
    assert index.spent and not later.spent and later.derived_from is index.token
    assert dict(later.by_path) == dict(TargetIndex.of(two).by_path)
    try:
        check_target_tree(one, [""], index)
    except InvariantViolation as exc:
        assert "spent" in str(exc)
    else:
        raise AssertionError("a spent index was accepted")
    again = index.updated(one)
    assert again.derived_from is None and dict(again.by_path) == dict(TargetIndex.of(one).by_path)
    assert dict(later.by_path) == dict(TargetIndex.of(two).by_path)  # left alone


def test_the_names_are_edited_in_place_and_followed_by_token() -> None:
    """A parent's set of names is the index's own, edited in place by `updated` (no copy of
    kubepods' set per admission); what changed is told by the `token` of the index an answer
    was made from: nothing for this index, the names that changed for the one it was derived
    from, None (compare) for any other."""
    config = node_config("TieredReservation", static=False)
    steps = [targets_of_pods([mixed_pod(uid_for(i), i) for i in range(n)], config) for n in (3, 4)]
    (new,) = {t.path for t in steps[1].cgroups} - {t.path for t in steps[0].cgroups}
    holder, _, added = new.rpartition("/")
    first = TargetIndex.of(steps[0])
    names = first.child_names(holder)
    assert names  # the holder has children before the update
    token = first.token
    second = first.updated(steps[1])
    assert second.child_names(holder) is names  # the same set, one name more
    assert names == TargetIndex.of(steps[1]).child_names(holder)
    assert second.child_names_changed(holder, token) == {added}
    assert second.child_names_changed(holder, second.token) == frozenset()
    assert second.child_names_changed("elsewhere", token) == frozenset()
    third = second.updated(steps[0])
    assert third.child_names_changed(holder, token) is None  # two updates back: not told
    assert third.child_names_changed(holder, second.token) == {added}  # taken out again
    assert third.child_names(holder) == TargetIndex.of(steps[0]).child_names(holder)


def test_the_holders_verdict_is_carried_while_the_holders_are_unchanged() -> None:
    """A scoped check renders the node and QoS paths once along a line of updates: the
    verdict on the holders is carried by an update that changes no holder (a pod admitted)
    and dropped by one that changes a holder, whose naming is then checked again (a QoS
    cgroup moved is refused)."""
    config = node_config("TieredReservation", static=False)
    steps = [targets_of_pods([mixed_pod(uid_for(i), i) for i in range(n)], config) for n in (3, 4)]
    naming = (steps[0].cgroup_driver, steps[0].cgroup_root)
    first = TargetIndex.of(steps[0])
    assert not first.holders_passed(naming)
    check_target_tree(steps[0], [""], first)
    assert first.holders_passed(naming) and not first.holders_passed(("systemd", ()))
    second = first.updated(steps[1])  # a pod admitted: no holder changed
    assert second.holders_passed(naming)
    qos = next(t for t in steps[1].cgroups if t.level == "qos")
    moved = msgspec.structs.replace(qos, path=f"{qos.path}-moved")
    cgroups = tuple(moved if t is qos else t for t in steps[1].cgroups)
    third_targets = msgspec.structs.replace(steps[1], cgroups=cgroups)
    third = second.updated(third_targets)
    assert not third.holders_passed(naming)
    try:
        check_target_tree(third_targets, [""], third)
    except InvariantViolation as exc:
        assert "QoS cgroups" in str(exc)
    else:
        raise AssertionError("a moved QoS cgroup was accepted by the carried index")


def test_the_holders_of_several_levels_come_in_one_ordering() -> None:
    """`holders(*levels)` answers the holders of every level given, in the targets' order, as
    the holders of each level ordered together would."""
    index = TargetIndex.of(BASE)
    order = [t.path for t in BASE.cgroups]
    both = index.holders("node", "qos")
    assert both == index.ordered([*index.holders("node"), *index.holders("qos")])
    assert both == [p for p in order if p in {*index.holders("node"), *index.holders("qos")}]
    assert len(both) == 3 and index.holders("root") == [""]
    try:
        index.holders("node", "pod")
    except InvariantViolation as exc:
        assert "not a holder level" in str(exc)
    else:
        raise AssertionError("a pod level was taken for a holder level")
