"""The reconciler's carried container index (memstate.core.plan.containers.ContainerIndex)
answers as `with_container_targets` computed from scratch.

Method: a hypothesis property over sequences of rounds in which pods come and go, a pod's
targets are rebuilt (a new object), its cgroup's listing changes (directories named after a
container, runtime-id directories, foreign names) or stays the same object, container cgroups
appear, vanish or are held as not existing, observations are replaced by equal copies (what a
full round does), and runtime ids are learnt, replaced or forgotten: after every round the
updated index's complete targets and listed candidates (all, and under a random set of pod
cgroups) equal a fresh computation on the same inputs. The index is updated both in one step
and through an intermediate tree (the reconciler's two updates per round), with or without the
targets' change record (the tracker's: the pods' table is then edited by the record, in place).
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstate.core.errors import InvariantViolation
from memstate.core.plan import ObservedCgroup, ObservedTree
from memstate.core.plan.containers import ContainerIndex, with_container_targets
from memstate.core.targets import NodeTargets, PodTargets, TargetsChange
from tests.reconcile.helpers import mixed_pod, node_config, targets_of_pods, uid_for
from tests.reconcile.test_properties import PROPERTY_SETTINGS

RUNTIME_ID = "a" * 64
NAMES = ("app", "side", "main", RUNTIME_ID, f"cri-containerd-{RUNTIME_ID}.scope", "other")
# Directories that become container cgroups of most pods (every pod has "app"), drawn more often.
DIRECTORIES = ("app", "app", RUNTIME_ID, RUNTIME_ID, "side", f"crio-{RUNTIME_ID}", "other")
POOL = 6

change = st.tuples(
    st.integers(0, POOL - 1),  # which pod
    st.sampled_from(["admit", "remove", "rebuild", "listing", "container", "ids", "ids", "copy"]),
    st.sets(st.sampled_from(NAMES), min_size=1),  # a listing
    st.sampled_from(DIRECTORIES),  # a container directory
    st.sampled_from(["exists", "absent", "missing"]),  # its observation
    st.sampled_from([None, "app", "app", "main", "side"]),  # the runtime id's container
)


def record(before: NodeTargets | None, after: NodeTargets, extra: bool) -> TargetsChange | None:
    """The tracker's change record from `before` to `after` (the pods that are not the same
    object, the UIDs gone; `extra`: every pod listed, a superset is correct too)."""
    if before is None:
        return None
    held = {pod.uid: pod for pod in before.pods}
    return TargetsChange(
        previous=before,
        pods=after.pods if extra else tuple(p for p in after.pods if held.get(p.uid) is not p),
        dropped_uids=frozenset(held.keys() - {pod.uid for pod in after.pods}),
    )


def assert_record_covers(change: TargetsChange, before: NodeTargets, after: NodeTargets) -> None:
    """`change` lists every cgroup of `after` that is not the same object in `before`, and
    every path `before` held that `after` does not."""
    held = {t.path: t for t in before.cgroups}
    now = {t.path: t for t in after.cgroups}
    listed = {t.path for t in change.cgroups}
    assert {path for path, t in now.items() if held.get(path) is not t} <= listed
    assert held.keys() - now.keys() <= change.dropped_paths


def fresh_listed(
    targets: NodeTargets, tree: ObservedTree, ids: dict[str, dict[str, str]], pods: list[str]
) -> list[str]:
    listed = with_container_targets(targets, tree, ids, listed_is_enough=True)
    paths = [t.path for t in listed.cgroups if t.level == "container"]
    return sorted(p for p in paths if p.rpartition("/")[0] in pods)


@PROPERTY_SETTINGS
@given(
    rounds=st.lists(st.lists(change, min_size=1, max_size=10), min_size=2, max_size=8),
    scopes=st.lists(st.sets(st.integers(0, POOL - 1)), min_size=8, max_size=8),
    twice=st.lists(st.booleans(), min_size=8, max_size=8),
    records=st.lists(st.sampled_from([None, "exact", "superset"]), min_size=8, max_size=8),
)
def test_the_index_answers_as_a_fresh_computation(
    rounds: list[list[tuple[int, str, set[str], str, str, str | None]]],
    scopes: list[set[int]],
    twice: list[bool],
    records: list[str | None],
) -> None:
    config = node_config("TieredReservation", static=False)

    def build(index: int) -> PodTargets:
        return targets_of_pods([mixed_pod(uid_for(index), index)], config).pods[0]

    base = targets_of_pods([mixed_pod(uid_for(0), 0)], config)
    made = {i: build(i) for i in range(POOL)}
    admitted: set[int] = {0, 1, 2}
    cgroups: dict[str, ObservedCgroup] = {}
    ids: dict[str, dict[str, str]] = {}
    index = ContainerIndex()
    for number, changes in enumerate(rounds):
        for which, kind, names, directory, state, owner in changes:
            pod = made[which]
            if kind == "admit":
                admitted.add(which)
            elif kind == "remove":
                admitted.discard(which)
            elif kind == "rebuild":
                made[which] = build(which)
            elif kind == "listing":
                cgroups[pod.cgroup] = ObservedCgroup(children=tuple(sorted(names | {directory})))
            elif kind == "container":
                path = f"{pod.cgroup}/{directory}"
                if state == "missing":
                    cgroups.pop(path, None)
                else:
                    cgroups[path] = ObservedCgroup(exists=state == "exists")
            elif kind == "ids":
                if owner is None:
                    ids.pop(pod.uid, None)
                else:
                    ids[pod.uid] = {RUNTIME_ID: owner}  # replaced, never mutated
            else:  # an equal copy of every observation (a full round's fresh reads)
                cgroups = {p: msgspec.structs.replace(found) for p, found in cgroups.items()}
        targets = msgspec.structs.replace(
            base, pods=tuple(made[i] for i in sorted(admitted)), cgroups=base.cgroups
        )
        tree = ObservedTree(cgroups=dict(cgroups))
        kind = records[number]
        given = None if kind is None else record(index.targets, targets, kind == "superset")
        if twice[number]:
            # Through an intermediate tree, as the reconciler's first update (before it reads
            # the containers) and second.
            half = ObservedTree(cgroups={p: f for p, f in cgroups.items() if "/app" not in p})
            index = index.updated(targets, half, ids, given)
            given = None
        before = index.complete if index.targets is not None else None
        index = index.updated(targets, tree, ids, given)
        assert index.complete == with_container_targets(targets, tree, ids)
        # The tables it edits in place hold the current pods only (a removed pod's cgroup
        # left behind would name it again for a scope holding that path).
        assert index._pods == {pod.uid: pod for pod in targets.pods}
        assert index._cgroup_of == {pod.cgroup: pod.uid for pod in targets.pods}
        if before is not None and index.recent and index.recent[-1].previous is before:
            assert_record_covers(index.recent[-1], before, index.complete)
        everything = [p.cgroup for p in targets.pods]
        assert [t.path for t in index.listed()] == fresh_listed(targets, tree, ids, everything)
        scoped = [made[i].cgroup for i in sorted(scopes[number])]
        assert [t.path for t in index.listed(scoped)] == fresh_listed(targets, tree, ids, scoped)


def test_a_runtime_id_learnt_later_makes_its_directory_a_container() -> None:
    """The one change the index cannot see in the tree or the targets: ids replaced."""
    config = node_config("TieredReservation", static=False)
    targets = targets_of_pods([mixed_pod(uid_for(0), 0)], config)
    pod = targets.pods[0]
    tree = ObservedTree(
        cgroups={
            pod.cgroup: ObservedCgroup(children=(RUNTIME_ID,)),
            f"{pod.cgroup}/{RUNTIME_ID}": ObservedCgroup(),
        }
    )
    index = ContainerIndex().updated(targets, tree, {})
    assert index.complete is targets
    ids = {pod.uid: {RUNTIME_ID: "app"}}
    index = index.updated(targets, tree, ids)
    assert index.complete == with_container_targets(targets, tree, ids) != targets
    index = index.updated(targets, tree, {pod.uid: {RUNTIME_ID: "side"}})
    assert index.complete is targets


@PROPERTY_SETTINGS
@given(
    steps=st.lists(st.sampled_from(["shuffle", "put", "take", "same"]), min_size=2), data=st.data()
)
def test_the_container_cgroups_follow_the_pods_order(steps: list[str], data: st.DataObject) -> None:
    """The index keeps the container cgroups it added when the pods are the same, or one pod
    without any came or went: pods reordered, or one with container cgroups put in or taken
    out at any place, give the order of a fresh computation (the pods' order)."""
    config = node_config("TieredReservation", static=False)
    base = targets_of_pods([mixed_pod(uid_for(0), 0)], config)
    made = [targets_of_pods([mixed_pod(uid_for(i), i)], config).pods[0] for i in range(POOL)]
    cgroups: dict[str, ObservedCgroup] = {}
    for pod in made:
        if data.draw(st.booleans()):
            cgroups[pod.cgroup] = ObservedCgroup(children=("app",))
            cgroups[f"{pod.cgroup}/app"] = ObservedCgroup()
        else:
            cgroups[pod.cgroup] = ObservedCgroup(children=())
    tree = ObservedTree(cgroups=cgroups)
    index = ContainerIndex()
    pods: list[int] = data.draw(st.permutations(range(POOL)))[: data.draw(st.integers(1, POOL))]
    recorded = data.draw(st.booleans())
    for step in steps:
        if step == "shuffle":
            pods = data.draw(st.permutations(pods))
        elif step == "put" and len(pods) < POOL:
            missing = [i for i in range(POOL) if i not in pods]
            at = data.draw(st.integers(0, len(pods)))
            pods = [*pods[:at], data.draw(st.sampled_from(missing)), *pods[at:]]
        elif step == "take" and pods:
            at = data.draw(st.integers(0, len(pods) - 1))
            pods = [*pods[:at], *pods[at + 1 :]]
        targets = msgspec.structs.replace(base, pods=tuple(made[i] for i in pods))
        given = record(index.targets, targets, extra=False) if recorded else None
        index = index.updated(targets, tree, {}, given)
        assert index.complete == with_container_targets(targets, tree, {})


def test_a_pod_listed_twice_adds_its_container_cgroups_twice() -> None:
    """A pod put in a second time (the same UID: a malformed targets object) is no pod without
    container cgroups: the index does not keep the container cgroups it added before."""
    config = node_config("TieredReservation", static=False)
    targets = targets_of_pods([mixed_pod(uid_for(i), i) for i in range(2)], config)
    first = targets.pods[0]
    tree = ObservedTree(
        cgroups={
            first.cgroup: ObservedCgroup(children=("app",)),
            f"{first.cgroup}/app": ObservedCgroup(),
            targets.pods[1].cgroup: ObservedCgroup(children=()),
        }
    )
    for recorded in (False, True):
        index = ContainerIndex().updated(targets, tree, {})
        twice = msgspec.structs.replace(
            targets, pods=(msgspec.structs.replace(first), *targets.pods)
        )
        index = index.updated(twice, tree, {}, record(targets, twice, False) if recorded else None)
        assert index.complete == with_container_targets(twice, tree, {})
        # Given a record that lists the UID twice, the index compares every pod against the
        # table as it was before the record's edits: the next update (back to the targets,
        # the pod's first object gone) answers as a fresh computation too.
        index = index.updated(targets, tree, {}, record(twice, targets, False))
        assert index.complete == with_container_targets(targets, tree, {})


def test_a_pod_listed_twice_in_a_record_leaves_the_table_as_it_was() -> None:
    """A change record that makes the pods' table disagree with the targets (a UID listed
    twice) is not followed: the table is put back before every pod is compared, so a pod the
    record replaced is found affected and its container cgroups derived again."""
    config = node_config("TieredReservation", static=False)
    targets = targets_of_pods([mixed_pod(uid_for(i), i) for i in range(2)], config)
    first, second = targets.pods
    tree = ObservedTree(
        cgroups={
            first.cgroup: ObservedCgroup(children=("app",)),
            f"{first.cgroup}/app": ObservedCgroup(),
            second.cgroup: ObservedCgroup(children=("app",)),
            f"{second.cgroup}/app": ObservedCgroup(),
        }
    )
    index = ContainerIndex().updated(targets, tree, {})
    moved = msgspec.structs.replace(second, cgroup=first.cgroup)  # now under the first's cgroup
    twice = msgspec.structs.replace(targets, pods=(first, moved, moved))
    index = index.updated(twice, tree, {}, TargetsChange(previous=targets, pods=(moved, moved)))
    assert index.complete == with_container_targets(twice, tree, {})


def test_an_updated_index_hands_its_tables_on_and_refuses_every_later_use() -> None:
    """`updated` edits the tables in place: the index it was called on answers nothing more."""
    config = node_config("TieredReservation", static=False)
    targets = targets_of_pods([mixed_pod(uid_for(0), 0)], config)
    pod = targets.pods[0]
    tree = ObservedTree(cgroups={pod.cgroup: ObservedCgroup(children=("app",))})
    index = ContainerIndex().updated(targets, tree, {})
    later = index.updated(targets, tree, {})
    assert later.complete is targets and index.spent and not later.spent
    for use in (
        lambda: index.complete,
        index.listed,
        lambda: index.updated(targets, tree),
    ):
        with pytest.raises(InvariantViolation):
            use()


def test_the_record_of_the_complete_targets_drops_a_vanished_container_cgroup() -> None:
    """The complete targets' change record is made from the affected pods' entries as they
    were before the update edited them in place: a container cgroup gone is a dropped path."""
    config = node_config("TieredReservation", static=False)
    targets = targets_of_pods([mixed_pod(uid_for(i), i) for i in range(2)], config)
    pod = targets.pods[0]
    tree = ObservedTree(
        cgroups={
            pod.cgroup: ObservedCgroup(children=("app",)),
            f"{pod.cgroup}/app": ObservedCgroup(),
        }
    )
    index = ContainerIndex().updated(targets, tree, {})
    before = index.complete
    assert f"{pod.cgroup}/app" in {t.path for t in before.cgroups}
    again = msgspec.structs.replace(targets, pods=targets.pods)
    gone = ObservedTree(cgroups={pod.cgroup: ObservedCgroup(children=())})
    index = index.updated(again, gone, {}, record(targets, again, extra=False))
    assert index.recent[-1].previous is before
    assert_record_covers(index.recent[-1], before, index.complete)
    assert f"{pod.cgroup}/app" in index.recent[-1].dropped_paths
