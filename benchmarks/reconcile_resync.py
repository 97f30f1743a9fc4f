"""A full resync of a node with 500 pods: on SimCgroupFS and on a real directory tree.

    .venv/bin/python -m benchmarks.reconcile_resync [--pods 500] [--repeat 5] [--dir /var/tmp]

Rows (best of --repeat, each on a fresh copy of the same tree):

- *build*: the first reconcile of an empty root: every cgroup created, every non-default value
  written.
- *converged resync*: a full resync of the converged tree — observe everything, plan, write
  nothing — and its two halves, observation (the CgroupFS reads) and planning (pure CPU).
- *real directory*: the same converged resync through RealCgroupFS over plain files copied from
  the simulator (the syscall path used on /sys/fs/cgroup: a component-by-component openat walk
  and one read per file; a page-cache filesystem, not kernfs, so the absolute time is only
  indicative).
- *baseline*: a writer without comparison that rewrites every managed file each period (what
  the resync replaces), on the same simulator. Ratios are against it.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchmarks.reconcile_common import (
    PAGE_SIZE_BYTES,
    blind_write,
    materialise,
    mixed_pod,
    new_sim,
    node_targets,
)
from memstate.core.plan import plan_operations
from memstate.core.targets import NodeTargets
from memstate.host import CgroupFS, RealCgroupFS
from memstate.reconcile.reconciler import Reconciler, ReconcileReport, observe_tree

T = TypeVar("T")


def best(repeat: int, run: Callable[[], T]) -> tuple[float, T]:
    """Fastest of `repeat` runs, and the last run's result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def resync(fs: CgroupFS, targets: NodeTargets) -> ReconcileReport:
    """One full resync with a fresh reconciler (no cached picture, no drift memory)."""
    return Reconciler(fs, page_size_bytes=PAGE_SIZE_BYTES).reconcile(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    targets = node_targets([mixed_pod(i) for i in range(args.pods)])
    managed = sum(len(t.files) for t in targets.cgroups)
    print(f"{args.pods} pods, {len(targets.cgroups)} cgroups, {managed} managed files")
    converged = new_sim()
    resync(converged, targets)
    tree, _errors, reads = observe_tree(converged, targets)
    rows: list[tuple[str, float, int, int]] = []

    seconds, report = best(args.repeat, lambda: resync(new_sim(), targets))
    rows.append(("build from an empty root (sim)", seconds, report.writes, report.reads))
    seconds, report = best(args.repeat, lambda: resync(copy.deepcopy(converged), targets))
    rows.append(("converged full resync (sim)", seconds, report.writes, report.reads))
    seconds, _ = best(args.repeat, lambda: observe_tree(converged, targets))
    rows.append(("  observation only", seconds, 0, reads))
    seconds, plan = best(
        args.repeat, lambda: plan_operations(targets, tree, page_size_bytes=PAGE_SIZE_BYTES)
    )
    rows.append(("  planning only", seconds, len(plan.operations), 0))
    directory = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
    try:
        materialise(converged, directory)
        real = RealCgroupFS(directory)
        seconds, report = best(args.repeat, lambda: resync(real, targets))
        rows.append(
            ("converged full resync (real directory)", seconds, report.writes, report.reads)
        )
    finally:
        shutil.rmtree(directory)
    blind = copy.deepcopy(converged)
    seconds, writes = best(args.repeat, lambda: blind_write(blind, targets))
    rows.append(("baseline: rewrite every managed file (sim)", seconds, writes, 0))
    baseline = seconds
    print(f"{'what':<44} {'ms':>9} {'writes':>7} {'reads':>7} {'vs baseline':>12}")
    for what, seconds, writes, reads in rows:
        ratio = seconds / baseline
        print(f"{what:<44} {seconds * 1e3:>9.1f} {writes:>7} {reads:>7} {ratio:>11.2f}×")


if __name__ == "__main__":
    main()
