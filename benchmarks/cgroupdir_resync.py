"""CPU of the idle daemon's periodic work on the directory-backed simulated tree: a converged
full resync of 500 pods through the Reconciler, on a DirCgroupFS, in process.

    python -m benchmarks.cgroupdir_resync [--pods 500] [--repeat 7] [--dir /var/tmp]

The node is benchmarks/reconcile_common's (two NUMA nodes, every QoS class, every managed file).
The tree is built by a first round, then each row is the median (and spread) of `--repeat`
measurements of CPU time (`time.process_time`, this process only): the observation alone
(`observe_tree`), the planning alone (`plan_operations`, pure), and a whole round
(`Reconciler.reconcile`, the same reconciler each time, as in the daemon). At the daemon's
`resyncSeconds` (30 s by default) a round's CPU divided by 30 s is what the idle daemon spends on
it (docs/performance.md, "Idle CPU").

A/B: `python -m benchmarks.X` imports the `memstate` of the current directory, so run it from
a directory holding the other version (`git archive <rev> memstate | tar -x -C DIR`, and copy
`benchmarks/` there), alternating with a run from this one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.reconcile_common import PAGE_SIZE_BYTES, mixed_pod, node_targets
from memstate.core.plan import plan_operations
from memstate.host.sim.cgroupdir import DirCgroupFS
from memstate.reconcile.reconciler import Reconciler, observe_tree


def cpu_ms(repeat: int, action: Callable[[], object]) -> list[float]:
    """CPU milliseconds of each of `repeat` runs of `action`."""
    spent = []
    for _ in range(repeat):
        started = time.process_time()
        action()
        spent.append((time.process_time() - started) * 1e3)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    targets = node_targets([mixed_pod(index) for index in range(args.pods)])
    directory = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
    try:
        with DirCgroupFS(
            directory / "cgroup",
            page_size_bytes=PAGE_SIZE_BYTES,
            online_nodes="0-1",
            hugepage_sizes_bytes=(2 << 20,),
        ) as fs:
            reconciler = Reconciler(fs, page_size_bytes=PAGE_SIZE_BYTES)
            built = reconciler.reconcile(targets)
            converged = reconciler.reconcile(targets)
            if not converged.converged or converged.writes:
                raise SystemExit("the second round did not find the tree converged")
            tree, _errors, reads = observe_tree(fs, targets)
            rows = [
                (
                    "observation (observe_tree)",
                    cpu_ms(args.repeat, lambda: observe_tree(fs, targets)),
                ),
                (
                    "planning (plan_operations)",
                    cpu_ms(
                        args.repeat,
                        lambda: plan_operations(targets, tree, page_size_bytes=PAGE_SIZE_BYTES),
                    ),
                ),
                (
                    "whole round (Reconciler.reconcile)",
                    cpu_ms(args.repeat, lambda: reconciler.reconcile(targets)),
                ),
            ]
    finally:
        shutil.rmtree(directory)
    print(
        f"{args.pods} pods, {len(targets.cgroups)} cgroups; building wrote {built.writes}, "
        f"a converged round reads {reads} times; load {os.getloadavg()[0]:.1f}"
    )
    for label, spent in rows:
        print(
            f"{label:<36} median {statistics.median(spent):7.1f} ms CPU "
            f"(spread {min(spent):.1f}..{max(spent):.1f}, {len(spent)} runs)"
        )


if __name__ == "__main__":
    main()
