"""How long a reconcile of a big node takes on the directory-backed simulated tree (DirCgroupFS).

    .venv/bin/python -m benchmarks.cgroupdir_reconcile [--dir /var/tmp] [--pods 500]

The workload is what the reconciler does on a fresh node: enable memory, cpuset and hugetlb at
the root and in kubepods and the QoS cgroups, then per pod (a third Guaranteed directly under
kubepods, the rest under burstable/besteffort) mkdir and read-then-write eight files:
memory.min/low/high/max, cpuset.cpus/mems and both hugetlb limits. A second, converged pass only
reads the eight files per pod. Then a second process-like instance opens the tree (journal
replay plus a comparison of every file), a file is edited by hand and the first instance reads
it (the inotify path), and finally all pods are removed.

For comparison the same first pass runs on an in-memory SimCgroupFS: the difference is the cost
of journaling, locking, change detection and rendering files.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from memstate.host.cgroupfs import CgroupFS
from memstate.host.sim.cgroupdir import DirCgroupFS
from memstate.host.sim.cgroupsim import SimCgroupFS

CONTROLLERS = "+cpuset +memory +hugetlb"
POD_FILES = {
    "memory.min": "268435456",
    "memory.low": "268435456",
    "memory.high": "max",
    "memory.max": "536870912",
    "cpuset.cpus": "0-1",
    "cpuset.mems": "0",
    "hugetlb.2MB.max": "0",
    "hugetlb.1GB.max": "0",
}


def pod_paths(pods: int) -> list[str]:
    parents = ("kubepods", "kubepods/burstable", "kubepods/besteffort")
    return [f"{parents[index % 3]}/pod{index:05d}" for index in range(pods)]


def first_pass(fs: CgroupFS, pods: list[str]) -> int:
    """Build the tree; returns the number of CgroupFS calls."""
    calls = 0
    fs.write("", "cgroup.subtree_control", CONTROLLERS)
    for parent in ("kubepods", "kubepods/burstable", "kubepods/besteffort"):
        fs.mkdir(parent)
        fs.write(parent, "cgroup.subtree_control", CONTROLLERS)
        calls += 2
    for pod in pods:
        fs.mkdir(pod)
        calls += 1
        for file, value in POD_FILES.items():
            if fs.read(pod, file).strip() != value:
                fs.write(pod, file, value)
                calls += 1
            calls += 1
    return calls + 1


def converged_pass(fs: CgroupFS, pods: list[str]) -> int:
    for pod in pods:
        for file in POD_FILES:
            fs.read(pod, file)
    return len(pods) * len(POD_FILES)


def removal(fs: CgroupFS, pods: list[str]) -> int:
    for pod in pods:
        fs.rmdir(pod)
    return len(pods)


def timed(label: str, action: Callable[[], int]) -> None:
    start = time.perf_counter()
    calls = action()
    elapsed = time.perf_counter() - start
    per_call = elapsed / calls * 1e6 if calls else 0.0
    print(f"| {label} | {calls:,} | {elapsed:.3f} | {per_call:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--pods", type=int, default=500)
    args = parser.parse_args()
    pods = pod_paths(args.pods)
    print("| step | calls | seconds | µs/call |")
    print("|---|---:|---:|---:|")
    sim = SimCgroupFS(online_nodes="0")
    timed("SimCgroupFS, first pass (reference)", lambda: first_pass(sim, pods))
    base = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
    try:
        root = base / "cgroup"
        fs = DirCgroupFS(root, online_nodes="0")
        timed("DirCgroupFS, first pass", lambda: first_pass(fs, pods))
        timed("DirCgroupFS, converged pass", lambda: converged_pass(fs, pods))

        def reopen() -> int:
            DirCgroupFS(root).close()
            return 1

        timed("open by a second instance", reopen)

        def edit_by_hand() -> int:
            (root / pods[-1] / "memory.max").write_text("1G\n")
            assert fs.read(pods[-1], "memory.max") == "1073741824\n"
            return 1

        timed("hand edit seen by the next read", edit_by_hand)
        timed("DirCgroupFS, remove every pod", lambda: removal(fs, pods))
        fs.close()
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
