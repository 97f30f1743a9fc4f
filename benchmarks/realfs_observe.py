"""CPU of one full observation of a 500-pod tree through `RealCgroupFS`, in process.

    python -m benchmarks.realfs_observe [--pods 500] [--containers 0] [--samples 9] [--rounds 3]
                                        [--dir /var/tmp] [--root /sys/fs/cgroup/bench]
                                        [--baseline-src DIR]

The node is benchmarks/reconcile_common's (two NUMA nodes, every QoS class, every managed file).
Its tree is made by memstate itself: by default a `Reconciler` converges a directory-backed
simulated tree (`DirCgroupFS`) in a temporary directory under `--dir`, and `RealCgroupFS` then
observes that directory's plain files (the files the simulator renders: the syscalls of
/sys/fs/cgroup on a page-cache filesystem). With `--root` (an empty cgroup v2 directory whose
parent offers memory, cpuset and hugetlb, e.g. inside the VM of tests/vm) the `Reconciler` builds
the tree there through `RealCgroupFS` instead (the real kernel), and removes it at the end.
`--containers N` then gives every pod cgroup N container cgroups, as a runtime would (the pod's
controllers enabled for them first, as runc does): the observation lists them under their pod and
reads their memory.min and memory.low.

Each sample is the CPU time (`time.process_time`) of one `observe_tree` of the whole tree (the
full observation the 30 s resync makes). `--baseline-src DIR` (a directory holding another
version's `memstate` and `tests`, e.g. a `git archive` of main) imports that version under another
package name (benchmarks.reconcile_round's `import_baseline`) and alternates a sample of each
side, the side going first alternating too, so both see the same load. Prints per round the
median and spread of each side and the median of the per-sample ratios (this / baseline).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.reconcile_common import PAGE_SIZE_BYTES, mixed_pod, node_targets
from benchmarks.reconcile_round import BASELINE_PACKAGE, import_baseline
from memstate.core.targets import NodeTargets
from memstate.host import CgroupFS, RealCgroupFS, walk
from memstate.host.sim.cgroupdir import DirCgroupFS
from memstate.reconcile.reconciler import Reconciler


def observer(package: str, root: Path, targets: NodeTargets) -> Callable[[], float]:
    """A function that observes the tree at `root` with `package`'s RealCgroupFS and
    observe_tree, and returns the CPU seconds it took."""
    cgroupfs: Any = importlib.import_module(f"{package}.host.cgroupfs")
    observe: Any = importlib.import_module(f"{package}.reconcile.observe")
    fs = cgroupfs.RealCgroupFS(root)
    # The targets are this package's structs; the baseline's observe_tree only reads their
    # attributes, and both versions name them alike.
    _tree, errors, _reads = observe.observe_tree(fs, targets)
    if errors:
        raise SystemExit(f"{package}: the observation failed: {errors[:3]}")

    def sample() -> float:
        started = time.process_time()
        observe.observe_tree(fs, targets)
        return time.process_time() - started

    return sample


def render(directory: Path, targets: NodeTargets, containers: int) -> Path:
    """Converge `targets` on a directory-backed simulated tree; its directory of plain files."""
    root = directory / "cgroup"
    with DirCgroupFS(
        root, page_size_bytes=PAGE_SIZE_BYTES, online_nodes="0-1", hugepage_sizes_bytes=(2 << 20,)
    ) as fs:
        reconciler = Reconciler(fs, page_size_bytes=PAGE_SIZE_BYTES)
        reconciler.reconcile(targets)
        if not reconciler.reconcile(targets).converged:
            raise SystemExit("the simulated tree did not converge")
        add_containers(fs, targets, containers)
    return root


def build_real(root: Path, targets: NodeTargets, containers: int) -> None:
    """Converge `targets` on a real cgroup v2 directory through RealCgroupFS."""
    fs = RealCgroupFS(root)
    reconciler = Reconciler(fs, page_size_bytes=PAGE_SIZE_BYTES)
    first = reconciler.reconcile(targets)
    second = reconciler.reconcile(targets)
    if not second.converged or second.writes:
        raise SystemExit(f"the real tree did not converge: {first}, {second}")
    add_containers(fs, targets, containers)


def add_containers(fs: CgroupFS, targets: NodeTargets, containers: int) -> None:
    """`containers` container cgroups under every pod cgroup, its controllers enabled first."""
    if not containers:
        return
    for target in targets.cgroups:
        if target.level != "pod":
            continue
        fs.write(target.path, "cgroup.subtree_control", "+memory")
        for number in range(containers):
            fs.mkdir(f"{target.path}/{number:064x}")


def remove_real(root: Path) -> None:
    """Remove every cgroup memstate made under `root`, leaf first."""
    fs = RealCgroupFS(root)
    for path in walk(fs, "", topdown=False):
        if path:
            fs.rmdir(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--containers", type=int, default=0)
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    targets = node_targets([mixed_pod(index) for index in range(args.pods)])
    scratch = Path(tempfile.mkdtemp(prefix="memstate-realfs-", dir=args.dir))
    try:
        if args.root is not None:
            root = args.root.resolve()
            started = time.perf_counter()
            build_real(root, targets, args.containers)
            print(f"built the tree in {root} in {time.perf_counter() - started:.1f} s")
        else:
            root = render(scratch, targets, args.containers)
        try:
            mine = observer("memstate", root, targets)
            theirs = None
            if args.baseline_src is not None:
                import_baseline(args.baseline_src.resolve(), scratch / "baseline")
                theirs = observer(BASELINE_PACKAGE, root, targets)
            print(
                f"{args.pods} pods, {args.containers} container cgroups each, "
                f"{len(targets.cgroups)} managed cgroups, root {root}; "
                f"load {os.getloadavg()[0]:.1f}"
            )
            for number in range(1, args.rounds + 1):
                report(number, mine, theirs, args.samples)
        finally:
            if args.root is not None:
                remove_real(root)
    finally:
        shutil.rmtree(scratch)


def report(
    number: int, mine: Callable[[], float], theirs: Callable[[], float] | None, samples: int
) -> None:
    """One round: `samples` of each side, alternating; prints medians, spreads and the ratio."""
    this: list[float] = []
    base: list[float] = []
    for index in range(samples):
        if theirs is None:
            this.append(mine())
        elif index % 2:
            this.append(mine())
            base.append(theirs())
        else:
            base.append(theirs())
            this.append(mine())
    line = f"round {number}: this {summary(this)}"
    if base:
        ratios = [a / b for a, b in zip(this, base, strict=True)]
        line += f"; baseline {summary(base)}; this/baseline {statistics.median(ratios):.3f}"
    print(f"{line}; load {os.getloadavg()[0]:.1f}", flush=True)


def summary(seconds: list[float]) -> str:
    """Median (min..max) in ms."""
    ms = [s * 1e3 for s in seconds]
    return f"{statistics.median(ms):.1f} ms ({min(ms):.1f}..{max(ms):.1f})"


if __name__ == "__main__":
    main()
