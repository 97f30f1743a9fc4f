"""Writes (and reads) per admission and per removal, as the node grows.

    .venv/bin/python -m benchmarks.reconcile_admission [--sizes 50,500,2000] [--repeat 5]

For each node size N the tree of N mixed pods is converged on SimCgroupFS, then one pod is
admitted (Guaranteed, Burstable or BestEffort) or one is retired, and the next round is run
scoped to it (what the daemon does after a decision) and, separately, as a full resync. Writes
and reads are counted by the reconciler (`ReconcileReport.writes` / `.reads`); the time is the
best of --repeat rounds, each on a fresh copy of the converged tree. The baseline is a writer
without comparison rewriting every managed file (N-proportional writes).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

from benchmarks.reconcile_common import PAGE_SIZE_BYTES, mixed_pod, new_sim, node_targets
from memstate.core.pod import Pod
from memstate.core.targets import NodeTargets
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import Reconciler, ReconcileReport


def converged(pods: list[Pod]) -> tuple[SimCgroupFS, Reconciler]:
    fs = new_sim()
    reconciler = Reconciler(fs, page_size_bytes=PAGE_SIZE_BYTES)
    reconciler.reconcile(node_targets(pods))
    return fs, reconciler


def measure(
    repeat: int, base: tuple[SimCgroupFS, Reconciler], run: Callable[[Reconciler], ReconcileReport]
) -> tuple[float, ReconcileReport]:
    """Best time of `run` on fresh copies of the converged tree and reconciler."""
    times = []
    for _ in range(repeat):
        fs, reconciler = copy.deepcopy(base)
        assert isinstance(fs, SimCgroupFS)
        start = time.perf_counter()
        report = run(reconciler)
        times.append(time.perf_counter() - start)
        if not report.converged:
            raise SystemExit(f"round did not converge: {report}")
    return min(times), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500,2000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    newcomers = {"Guaranteed": 0, "Burstable": 1, "BestEffort": 2}
    print(
        f"{'pods':>5} {'event':<22} {'scope':<7} {'writes':>6} {'reads':>6} {'ms':>8} "
        f"{'baseline writes':>16}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        pods = [mixed_pod(i) for i in range(size)]
        base = converged(pods)
        before = node_targets(pods)
        baseline = sum(len(t.files) for t in before.cgroups)
        cases: list[tuple[str, NodeTargets, list[str], list[str]]] = []
        for label, shape in newcomers.items():
            newcomer = mixed_pod(shape, prefix="new")
            after = node_targets([*pods, newcomer])
            cases.append((f"admit {label}", after, [after.pod(newcomer.uid).cgroup], []))
        gone = pods[1]  # Burstable
        after = node_targets(pods[:1] + pods[2:])
        cases.append(("retire Burstable", after, [], [before.pod(gone.uid).cgroup]))
        for label, targets, scope, retired in cases:
            for mode in ("scoped", "full"):
                chosen = scope if mode == "scoped" else None

                def run(
                    reconciler: Reconciler,
                    targets: NodeTargets = targets,
                    chosen: list[str] | None = chosen,
                    retired: list[str] = retired,
                ) -> ReconcileReport:
                    return reconciler.reconcile(targets, retired_paths=retired, scope=chosen)

                seconds, report = measure(args.repeat, base, run)
                print(
                    f"{size:>5} {label:<22} {mode:<7} {report.writes:>6} {report.reads:>6} "
                    f"{seconds * 1e3:>8.2f} {baseline:>16}"
                )


if __name__ == "__main__":
    main()
