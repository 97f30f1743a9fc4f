"""Admission latency of the running daemon, beside the raw fsync latency of the same disk.

    python -m benchmarks.daemon_admission [--pods 500] [--dir /var/tmp/memstate-bench] [--src DIR]

Starts `memstate run` as a subprocess on a node laid out in `--dir` (on the disk being measured),
then admits `--pods` Guaranteed pods one at a time: each manifest is renamed into the manifest
directory and the clock runs until (1) the decision is durable (the `pod_admitted` record is in the
log, read by the lock-free reader) and (2) the cgroup is converged (the pod's memory.min in the
simulated tree reads the target). Before that, in the same run and directory, it measures a
200-byte append + fsync, the floor of "decision durable". Finally it reports the daemon's resident
memory with all pods admitted. Prints p50/p90/p99 and the ratio to the fsync baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from memstate.store.log import LogReader
from tests.daemon.harness import Node, pod_manifest


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def fsync_baseline(directory: Path, count: int = 300) -> list[float]:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fsync(fd)
            latencies.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return latencies


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def report(name: str, values: list[float], baseline: float | None = None) -> None:
    p50, p90, p99 = (percentile(values, q) * 1000 for q in (50, 90, 99))
    ratio = f"  ({p50 / (baseline * 1000):.1f}x fsync p50)" if baseline else ""
    print(f"{name:<28} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms  p99 {p99:8.2f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/memstate-bench"))
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="run the daemon from this directory's memstate package (another version)",
    )
    args = parser.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    # Enough NUMA memory for every pod: 8 nodes of 64Gi, pods of 64Mi.
    node = Node(
        args.dir,
        nodes_memory=tuple(["64Gi"] * 8),
        topology_policy="best-effort",
        extra_settings={"rescanSeconds": 30, "resyncSeconds": 300, "checkpointEvery": 100000},
    )
    baseline = fsync_baseline(args.dir)
    node.start(env={"PYTHONPATH": str(args.src.resolve())} if args.src is not None else None)
    durable: list[float] = []
    converged: list[float] = []
    seq = 0
    try:
        for index in range(args.pods):
            uid = f"bench-{index:04d}"
            started = time.perf_counter()
            node.drop(f"{uid}.yaml", pod_manifest(uid, "64Mi"))
            found = False
            while not found:
                for record in LogReader(node.state_dir).read(seq + 1):
                    seq = record.seq
                    event = record.event
                    if event.kind == "pod_admitted" and getattr(event, "uid", "") == uid:
                        found = True
                if not found:
                    time.sleep(0.0005)
            durable.append(time.perf_counter() - started)
            target = str(64 * 2**20)
            while node.cgroup_file(f"kubepods/pod{uid}", "memory.min") != target:
                time.sleep(0.0005)
            converged.append(time.perf_counter() - started)
        assert node.process is not None
        rss = rss_bytes(node.process.pid)
        rounds = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in node.metrics().splitlines()
            if line.startswith("memstate_reconcile_duration_seconds_")
            and ("_count" in line or "_sum" in line)
        }
    finally:
        node.terminate()
    fsync_p50 = statistics.median(baseline)
    print(f"disk: {args.dir} ({len(baseline)} fsyncs, {args.pods} admissions)")
    report("raw append + fsync", baseline)
    report("manifest -> decision durable", durable, fsync_p50)
    report("manifest -> cgroup converged", converged, fsync_p50)
    print(f"daemon RSS with {args.pods} pods: {rss / 2**20:.1f} MiB")
    for scope in ("scoped", "full"):
        count = rounds.get(f'memstate_reconcile_duration_seconds_count{{scope="{scope}"}}', 0)
        total = rounds.get(f'memstate_reconcile_duration_seconds_sum{{scope="{scope}"}}', 0)
        if count:
            print(f"reconcile rounds ({scope}): {count:.0f}, mean {total / count * 1000:.1f} ms")


if __name__ == "__main__":
    main()
