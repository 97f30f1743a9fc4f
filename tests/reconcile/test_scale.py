"""With 500 pods on the node, one admission or removal costs O(1) writes (and O(1) reads).

Method: 500 mixed pods (Guaranteed with NUMA pinning and hugepages, Burstable, BestEffort)
converged on a SimCgroupFS wrapped in FaultInjectingCgroupFS, which counts every call. Then one
pod is admitted (or retired) and the round's mutating calls are counted and compared with what
the targets say must change — the new pod's non-default files plus the QoS-level sums that moved
— computed from the old and new targets, not from the planner. The same round at 50 pods must
cost exactly as many reads when scoped: the cost does not grow with the node. (A removal that
lowers a parent's protection also reads that parent's children first: see
test_scoped_lowering.py.)
"""

from __future__ import annotations

import pytest

from memstate.core.plan import ValueModel
from memstate.core.pod import Pod
from memstate.core.targets import NodeTargets
from memstate.host.sim import FaultInjectingCgroupFS
from memstate.reconcile.reconciler import Reconciler
from tests.factories import container, pod, pod_of, static_config, topology
from tests.reconcile.helpers import (
    PAGE,
    FakeClock,
    assert_tree_matches,
    default_normalised,
    mixed_pod,
    new_sim,
    retired,
    targets_of_pods,
    uid_for,
)

MUTATING = ("write", "mkdir", "rmdir")
READS = ("exists", "list_children", "read")
TOPOLOGY = topology("256Gi", "256Gi", hugepages={"2Mi": 1024})
CONFIG = static_config(["1Gi", "1Gi"], memoryReservationPolicy="TieredReservation")
NEWCOMERS = {
    "guaranteed": pod("new0-aaaa", "300Mi", cpu="100m"),
    "burstable": pod_of(
        "new1-aaaa", [container("app", "300Mi", limit_memory="1Gi", guaranteed=False)]
    ),
    "besteffort": pod_of("new2-aaaa", [container("app", None, None)]),
}


def node_of(count: int) -> list[Pod]:
    return [mixed_pod(uid_for(i), i) for i in range(count)]


def targets(pods: list[Pod]) -> NodeTargets:
    result = targets_of_pods(pods, CONFIG, TOPOLOGY)
    assert len(result.pods) == len(pods), "every pod must be admitted for the count to hold"
    return result


def expected_writes(before: NodeTargets, after: NodeTargets) -> int:
    """mkdir/rmdir of the pods that came or went, their non-default files, and every file of a
    cgroup present in both whose target changed."""
    values = ValueModel(PAGE)
    old = {t.path: t for t in before.cgroups}
    new = {t.path: t for t in after.cgroups}
    count = len(old.keys() ^ new.keys())
    for path in new.keys() - old.keys():
        count += sum(
            values.normalise(f, v) != default_normalised(f) for f, v in new[path].files.items()
        )
    for path in new.keys() & old.keys():
        for file, value in new[path].files.items():
            count += values.normalise(file, value) != values.normalise(file, old[path].files[file])
    return count


def converged(pods: list[Pod]) -> tuple[FaultInjectingCgroupFS, Reconciler]:
    fs = FaultInjectingCgroupFS(new_sim())
    reconciler = Reconciler(fs, page_size_bytes=PAGE, clock=FakeClock())
    assert reconciler.reconcile(targets(pods)).converged
    return fs, reconciler


def round_cost(fs: FaultInjectingCgroupFS, run: object) -> tuple[int, int]:
    before = dict(fs.counts)
    assert callable(run)
    report = run()
    assert report.converged, report
    writes = sum(fs.counts[op] - before[op] for op in MUTATING)
    reads = sum(fs.counts[op] - before[op] for op in READS)
    assert writes == report.writes and reads == report.reads
    return writes, reads


@pytest.mark.parametrize("qos", sorted(NEWCOMERS))
def test_one_admission_among_500_pods_costs_constant_writes_and_reads(qos: str) -> None:
    pods = node_of(500)
    before = targets(pods)
    after = targets([*pods, NEWCOMERS[qos]])
    new_path = after.pod(NEWCOMERS[qos].uid).cgroup
    expected = expected_writes(before, after)
    assert 1 < expected <= 8  # the pod's mkdir and files, and at most three QoS-level sums

    fs, reconciler = converged(pods)
    scoped = round_cost(fs, lambda: reconciler.reconcile(after, scope=[new_path]))
    assert scoped[0] == expected
    assert_tree_matches(fs, after)

    # A full resync after the same admission writes exactly as much (it only reads more).
    fs, reconciler = converged(pods)
    full = round_cost(fs, lambda: reconciler.reconcile(after))
    assert full[0] == expected
    assert full[1] > 10 * scoped[1]

    # At 50 pods the scoped round reads exactly as much: reads do not grow with the node.
    small = node_of(50)
    fs, reconciler = converged(small)
    small_after = targets([*small, NEWCOMERS[qos]])
    assert (
        round_cost(fs, lambda: reconciler.reconcile(small_after, scope=[new_path]))[1]
        == (scoped[1])
    )


def test_one_removal_among_500_pods_costs_constant_writes() -> None:
    pods = node_of(501)
    gone = pods[7]  # a BestEffort pod: no protection is lowered, so no sibling is read
    before = targets(pods)
    after = targets([p for p in pods if p.uid != gone.uid])
    fs, reconciler = converged(pods)
    writes, reads = round_cost(
        fs, lambda: reconciler.reconcile(after, retired_paths=retired(gone.uid), scope=[])
    )
    # The rmdir, plus the sums that drop; the removed pod's own files are not written.
    assert writes == expected_writes(before, after) <= 4
    assert reads < 60
    assert not fs.exists(before.pod(gone.uid).cgroup)


def test_an_interrupted_round_stops_between_operations_and_the_next_daemon_finishes() -> None:
    """SIGTERM during a long round: the reconciler stops before its next operation (the rest
    reported skipped), and a fresh reconciler (the next daemon) converges the tree."""
    pods = node_of(20)
    fs = FaultInjectingCgroupFS(new_sim())
    reconciler = Reconciler(fs, page_size_bytes=PAGE, clock=FakeClock())
    mkdir = fs.mkdir
    made: list[str] = []

    def mkdir_then_interrupt(path: str) -> None:
        mkdir(path)
        made.append(path)
        if len(made) == 3:
            reconciler.interrupt()

    fs.mkdir = mkdir_then_interrupt  # type: ignore[method-assign]
    report = reconciler.reconcile(targets(pods))
    assert not report.converged
    assert len(made) == 3
    skipped = [r for r in report.results if r.outcome == "skipped"]
    assert skipped and all(r.message == "interrupted" for r in skipped)
    assert report.results[-1].outcome == "skipped"
    fs.mkdir = mkdir  # type: ignore[method-assign]
    after = Reconciler(fs, page_size_bytes=PAGE, clock=FakeClock())
    assert after.reconcile(targets(pods)).converged
    assert_tree_matches(fs, targets(pods))
