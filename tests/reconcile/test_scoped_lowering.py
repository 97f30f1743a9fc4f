"""A scoped round that lowers a parent's protection, or finds it drifted, reads its children.

A scoped round (after an admission or a removal) takes the cgroups outside its scope from the
picture earlier rounds left. Another writer may have raised one of them since — the kubelet
writing a QoS cgroup's memory.min beside memstate, say — and the picture does not know. Lowering
kubepods to the sum it *remembers* would then leave kubepods below its children (found by the
simulation, seed 1893). So before writing, the round lists every parent it lowers and reads the
lowered files of the children it did not observe this round; the lowering then never goes below
what the children hold now. The same holds from the other side (seed 3390): a parent whose
protection another writer changed has children the picture cannot vouch for either, so their
values are read before a child under it is raised. A round that lowers nothing under a parent
no one else wrote reads no sibling.
"""

from __future__ import annotations

import errno

from memstate.host.sim import FaultInjectingCgroupFS
from memstate.reconcile.reconciler import Reconciler
from tests.factories import pod
from tests.reconcile.helpers import (
    PAGE,
    CheckingCgroupFS,
    FakeClock,
    Mi,
    assert_tree_matches,
    mixed_pod,
    new_sim,
    targets_of_pods,
    uid_for,
)

READS = ("exists", "list_children", "read")


def converged_node(
    count: int,
) -> tuple[CheckingCgroupFS, FaultInjectingCgroupFS, Reconciler, list]:  # type: ignore[type-arg]
    pods = [mixed_pod(uid_for(i), i) for i in range(count)]
    checker = CheckingCgroupFS(new_sim())
    fs = FaultInjectingCgroupFS(checker)
    reconciler = Reconciler(fs, page_size_bytes=PAGE, clock=FakeClock())
    assert reconciler.reconcile(targets_of_pods(pods)).converged
    return checker, fs, reconciler, pods


def protection(fs: CheckingCgroupFS, path: str, file: str = "memory.min") -> int:
    return int(fs.read(path, file))


def slack(fs: CheckingCgroupFS, parent: str = "kubepods") -> int:
    """How far `parent`'s memory.min is above its children's sum now."""
    children = sum(protection(fs, f"{parent}/{n}") for n in fs.list_children(parent))
    return protection(fs, parent) - children


def test_a_scoped_removal_does_not_lower_kubepods_below_a_sibling_raised_by_another_writer() -> (
    None
):
    checker, _fs, reconciler, pods = converged_node(5)
    # A Burstable pod: its request is in kubepods' memory.min (Tiered) but not in any child's
    # memory.min, so kubepods holds slack that its removal takes away.
    gone = pods[1]
    room = slack(checker)
    assert room > 0
    # Another writer raises besteffort's memory.min into that slack (no parent below its
    # children yet); memstate has not seen it: no full resync since.
    checker.inner.write("kubepods/besteffort", "memory.min", str(room))
    checker.rebaseline()
    assert checker.baseline == {}

    after = targets_of_pods([p for p in pods if p.uid != gone.uid])
    # The daemon retires the one path the pod had (its QoS class's), not every path its UID
    # could have: besteffort is not an ancestor of anything in this round.
    path = targets_of_pods(pods).pod(gone.uid).cgroup
    report = reconciler.reconcile(after, retired_paths=[path], scope=[])

    assert checker.violations == []
    assert slack(checker) >= 0
    assert not checker.exists(path)
    # kubepods stays above its target while the sibling holds more (and says so).
    assert any("kubepods memory.min kept at" in w for w in report.warnings), report.warnings

    # The next full resync takes the stray value back, child first, and converges.
    full = reconciler.reconcile(after, retired_paths=[path])
    assert full.converged, full
    assert checker.violations == []
    assert_tree_matches(checker, after)


def test_a_cgroup_created_by_another_writer_under_a_lowered_parent_is_seen() -> None:
    checker, _fs, reconciler, pods = converged_node(5)
    gone = pods[1]
    before = protection(checker, "kubepods")
    # Not in the cached listing: created since the last full resync.
    checker.inner.mkdir("kubepods/foreign")
    checker.inner.write("kubepods/foreign", "memory.min", str(slack(checker)))
    checker.rebaseline()
    assert checker.baseline == {}

    after = targets_of_pods([p for p in pods if p.uid != gone.uid])
    reconciler.reconcile(
        after, retired_paths=[targets_of_pods(pods).pod(gone.uid).cgroup], scope=[]
    )

    assert checker.violations == []
    assert slack(checker) >= 0
    assert protection(checker, "kubepods") == before  # nothing to lower: the foreign child holds it


def test_a_lowered_parent_whose_children_cannot_be_listed_is_not_lowered() -> None:
    """Without the listing, the children's sum is unknown: the parent keeps its value this
    round (reported, not converged), nothing below it is broken, the next round lowers it."""
    checker, fs, reconciler, pods = converged_node(5)
    gone = pods[1]
    path = targets_of_pods(pods).pod(gone.uid).cgroup
    before = protection(checker, "kubepods")
    checker.rebaseline()
    fs.inject(errno.EIO, op="list_children", path="kubepods")

    after = targets_of_pods([p for p in pods if p.uid != gone.uid])
    report = reconciler.reconcile(after, retired_paths=[path], scope=[])

    assert checker.violations == []
    assert not report.converged
    assert any("list_children kubepods" in e for e in report.read_errors), report.read_errors
    assert protection(checker, "kubepods") == before
    assert not checker.exists(path)  # the rest of the round went ahead

    report = reconciler.reconcile(after, retired_paths=[path], scope=[])
    assert report.converged, report
    assert checker.violations == []
    assert protection(checker, "kubepods") < before
    assert_tree_matches(checker, after)


def test_a_scoped_admission_does_not_leave_kubepods_below_a_sibling_raised_by_another_writer() -> (
    None
):
    checker, _fs, reconciler, pods = converged_node(5)
    # Another writer raises kubepods by 1 GiB, then besteffort into that room: no parent below
    # its children yet, and memstate has seen neither.
    checker.inner.write("kubepods", "memory.min", str(protection(checker, "kubepods") + 1024 * Mi))
    checker.inner.write("kubepods/besteffort", "memory.min", str(slack(checker)))
    checker.rebaseline()
    assert checker.baseline == {}

    newcomer = pod(uid_for(99), "1Gi", cpu="100m")  # Guaranteed, directly under kubepods
    admitted = targets_of_pods([*pods, newcomer])
    reconciler.reconcile(admitted, scope=[admitted.pod(newcomer.uid).cgroup])

    assert checker.violations == []


def test_a_drifted_parent_costs_one_read_per_child_and_only_then() -> None:
    """The admission's reads grow by kubepods' listing and one read per child not in scope
    when (and only when) another writer changed kubepods."""
    clean = admission_reads(30)
    checker, fs, reconciler, pods = converged_node(30)
    checker.inner.write("kubepods", "memory.min", str(protection(checker, "kubepods") + 1024 * Mi))
    newcomer = mixed_pod(uid_for(999), 0)
    admitted = targets_of_pods([*pods, newcomer])
    before = dict(fs.counts)
    report = reconciler.reconcile(admitted, scope=[admitted.pod(newcomer.uid).cgroup])
    assert report.converged, report
    reads = sum(fs.counts[op] - before[op] for op in READS)
    children = len(checker.list_children("kubepods"))
    assert checker.violations == []
    # One listing, then memory.min of each child but the newcomer (observed already).
    assert reads == clean + 1 + (children - 1)


def test_a_sibling_raised_into_existing_slack_is_covered_without_any_read() -> None:
    """Another writer raises besteffort into kubepods' slack without touching kubepods: no
    drift, no extra read, and still no parent below its children — kubepods' raise is at least
    its old value plus the newcomer's share, and the children held at most its old value."""
    checker, _fs, reconciler, pods = converged_node(5)
    room = slack(checker)
    assert room > 0
    checker.inner.write("kubepods/besteffort", "memory.min", str(room))
    checker.rebaseline()

    newcomer = pod(uid_for(99), "1Gi", cpu="100m")
    admitted = targets_of_pods([*pods, newcomer])
    reconciler.reconcile(admitted, scope=[admitted.pod(newcomer.uid).cgroup])

    assert checker.violations == []
    assert slack(checker) >= 0


def removal_reads(count: int) -> tuple[int, int]:
    """(reads of a scoped round removing a Guaranteed pod from a node of `count` pods, the
    number of kubepods' children left)."""
    _checker, fs, reconciler, pods = converged_node(count)
    gone = pods[0]  # Guaranteed, directly under kubepods: only kubepods is lowered
    after = targets_of_pods([p for p in pods if p.uid != gone.uid])
    path = targets_of_pods(pods).pod(gone.uid).cgroup
    before = dict(fs.counts)
    report = reconciler.reconcile(after, retired_paths=[path], scope=[])
    assert report.converged, report
    lowered = {
        r.operation.path
        for r in report.results
        if r.operation.phase == "lower" and r.operation.file in ("memory.min", "memory.low")
    }
    assert lowered == {"kubepods"}
    reads = sum(fs.counts[op] - before[op] for op in READS)
    assert reads == report.reads
    return reads, sum(1 for t in after.cgroups if t.path.count("/") == 1)


def admission_reads(count: int) -> int:
    _checker, fs, reconciler, pods = converged_node(count)
    newcomer = mixed_pod(uid_for(999), 0)  # Guaranteed: raises kubepods, lowers nothing
    admitted = targets_of_pods([*pods, newcomer])
    before = dict(fs.counts)
    report = reconciler.reconcile(admitted, scope=[admitted.pod(newcomer.uid).cgroup])
    assert report.converged, report
    assert not [
        r
        for r in report.results
        if r.operation.phase == "lower" and r.operation.file in ("memory.min", "memory.low")
    ]
    reads = sum(fs.counts[op] - before[op] for op in READS)
    assert_tree_matches(fs, admitted)
    return reads


def test_only_the_children_of_lowered_parents_are_read() -> None:
    """A removal under kubepods reads one file of each of kubepods' children (it lowers
    kubepods' memory.min), and nothing under the QoS cgroups it does not lower; an admission,
    which lowers nothing, reads no sibling at all."""
    small, small_children = removal_reads(30)
    large, large_children = removal_reads(60)
    assert large_children > small_children
    # Twice the pods (Burstable and BestEffort ones included): the reads grow by exactly the
    # extra children of kubepods, one read each.
    assert large - small == large_children - small_children

    assert admission_reads(30) == admission_reads(60)
