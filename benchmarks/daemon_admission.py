"""Admission latency and CPU of the running daemon, beside fdatasync measured in the same run.

    python -m benchmarks.daemon_admission [--pods 500] [--samples 100] [--probes 3]
                                          [--dir /var/tmp/memstate-bench] [--src DIR]
                                          [--cgroup-dir /dev/shm/memstate-bench-cgroup]
                                          [--gap 0]

Starts `memstate run` as a subprocess on a node laid out in `--dir` (on the disk being measured:
the manifests, the state directory and its log; 8 NUMA nodes of 64 GiB, best-effort,
TieredReservation), fills it with `--pods` resident Guaranteed pods (dropped together, then
waited for until the tree converged and the daemon is quiet), then takes `--samples` admissions
of one more pod each, back to back or `--gap` seconds apart. Per sample, interleaved so a change
in the machine's load hits both:
`--probes` raw 200-byte appends + `os.fdatasync` in the state directory (what the log's group
commit does), then one manifest renamed into the manifest directory, timed from the rename
until (1) the daemon's journal line for its `pod_admitted` appears on the daemon's stderr
(written after the record's fsync returned and the new state was published: the decision is
durable and acted on) and (2) the pod's memory.min in the simulated tree reads the target
(converged). The daemon's CPU time (utime + stime of all its threads, /proc/<pid>/stat) is read
before and after the samples: CPU per admission is the difference over `--samples`, everything
the daemon did for them (decide, append, publish, the scoped reconcile round, the watch hints
it caused), the simulated tree's work included.

What is the stand-in: the host has no cgroup v2 memory controller, so the daemon runs on the
directory-backed simulated tree (memstate.host.sim.cgroupdir), in its own process: every new
pod cgroup is a directory of ~40 interface files written through staging files and renames,
plus the tree's journal, where the kernel's cgroupfs makes one in-memory kernfs directory per
mkdir. By default that tree lives on tmpfs (`--cgroup-dir`, under /dev/shm: in memory, like
kernfs), so the converged time is not the ext4 journal's cost of ~40 file creations per pod;
`--cgroup-dir` on the measured disk shows that cost. The manifest is rendered (YAML) and
written to a hidden file before the clock starts: only the rename is timed. Waiting costs the
benchmark no polling of the log: it sleeps in inotify on the daemon's stderr (its journal
lines) and polls one small file of the tree for "converged".

Prints p50/p90/p99 of each, admission p99 minus fdatasync p99, CPU per admission, the
daemon's resident memory at the end, and (from its metrics, scraped before and after the samples,
outside the CPU window) reconcile rounds by scope and successful cgroup writes by file per
admission: counts that do not depend on the machine's load. `--src DIR` runs the daemon from
another version's source.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import time
from pathlib import Path

import yaml

from benchmarks.idle_cpu import cpu_seconds, wait_until_quiet
from memstate.host.inotify import IN_MODIFY, Inotify
from memstate.store.reader import LogReader
from tests.daemon.harness import ROOT, Node, pod_manifest

POD_MEMORY = "64Mi"
POLL_SECONDS = 0.0005


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def fdatasync_probe(path: Path, count: int) -> list[float]:
    """`count` 200-byte appends, each followed by fdatasync: seconds each."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return latencies


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def report(name: str, values: list[float]) -> tuple[float, float]:
    p50, p90, p99 = (percentile(values, q) * 1000 for q in (50, 90, 99))
    print(f"{name:<32} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms  p99 {p99:8.2f} ms")
    return p50, p99


def wait_admitted(node: Node, uids: set[str], seq: int) -> int:
    """Poll the log until every UID in `uids` has its `pod_admitted`; the last seq read."""
    while uids:
        for record in LogReader(node.state_dir).read(seq + 1):
            seq = record.seq
            event = record.event
            if event.kind == "pod_admitted":
                uids.discard(getattr(event, "uid", ""))
        if uids:
            time.sleep(POLL_SECONDS)
    return seq


class JournalTail:
    """The daemon's stderr, followed: `wait_admitted(uid)` sleeps in inotify until the journal
    line of `uid`'s admission is there (no polling: the waiting costs the daemon no CPU)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size
        self.inotify = Inotify(IN_MODIFY)
        self.inotify.add_watch(str(path))
        self.text = ""

    def wait_admitted(self, uid: str, timeout: float = 60.0) -> None:
        pattern = re.compile(rf"pod_admitted .*uid={re.escape(uid)} ")
        deadline = time.monotonic() + timeout
        while True:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
            if data:
                complete = data.rfind(b"\n") + 1  # whole lines only
                self.offset += complete
                self.text += data[:complete].decode("utf-8", "replace")
                if pattern.search(self.text):
                    self.text = ""
                    return
                self.text = self.text[-4096:]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no pod_admitted for {uid} in the daemon's journal")
            select.select([self.inotify.fd], [], [], remaining)
            self.inotify.read_events()

    def close(self) -> None:
        self.inotify.close()


def round_counts(node: Node) -> dict[str, float]:
    """Reconcile rounds so far by scope ("scoped", "full") and cgroup writes by file (the
    ``memstate_cgroup_writes_total{file=...,result="ok"}`` series), from the daemon's metrics."""
    counts: dict[str, float] = {}
    for line in node.metrics().splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("memstate_reconcile_duration_seconds_count{"):
            scope = name.split('scope="', 1)[1].split('"', 1)[0]
            counts[f"rounds {scope}"] = float(value)
        elif name.startswith("memstate_cgroup_writes_total{") and 'result="ok"' in name:
            file = name.split('file="', 1)[1].split('"', 1)[0]
            counts[f"writes {file}"] = float(value)
    return counts


def wait_converged(node: Node, uid: str) -> None:
    target = str(64 * 2**20)
    while node.cgroup_file(f"kubepods/pod{uid}", "memory.min") != target:
        time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500, help="resident pods before sampling")
    parser.add_argument("--samples", type=int, default=100, help="admissions measured")
    parser.add_argument("--probes", type=int, default=3, help="fdatasync probes per sample")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds between one sample converged and the next (untimed; > the cgroup watch's "
        "0.2 s settle: admissions as far apart as on a real node)",
    )
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/memstate-bench"))
    parser.add_argument(
        "--cgroup-dir",
        type=Path,
        default=Path("/dev/shm/memstate-bench-cgroup"),
        help="where the simulated cgroup tree lives (tmpfs by default: in memory, like kernfs)",
    )
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
    if args.cgroup_dir.exists():
        shutil.rmtree(args.cgroup_dir)
    # Enough NUMA memory for every pod: 8 nodes of 64Gi, pods of 64Mi.
    node = Node(
        args.dir,
        nodes_memory=tuple(["64Gi"] * 8),
        topology_policy="best-effort",
        extra_settings={"rescanSeconds": 30, "resyncSeconds": 300, "checkpointEvery": 100000},
    )
    node.cgroup_dir = args.cgroup_dir
    node.config["memstate"]["cgroupSim"] = str(args.cgroup_dir)
    node.write_config()
    source = str(args.src.resolve()) if args.src is not None else str(ROOT)
    extra = os.environ.get("MEMSTATE_BENCH_PYTHONPATH")  # e.g. a sampling sitecustomize
    node.start(env={"PYTHONPATH": f"{source}:{extra}" if extra else source})
    assert node.process is not None
    pid = node.process.pid
    probe = node.state_dir / "fdatasync-probe"
    fdatasync: list[float] = []
    durable: list[float] = []
    converged: list[float] = []
    try:
        residents = {f"resident-{index:04d}" for index in range(args.pods)}
        for uid in sorted(residents):
            node.drop(f"{uid}.yaml", pod_manifest(uid, POD_MEMORY))
        wait_admitted(node, set(residents), 0)
        wait_until_quiet(node)
        # Rendered before the clock starts: the writer's YAML is not the daemon's time.
        texts = [
            yaml.safe_dump(pod_manifest(f"bench-{index:04d}", POD_MEMORY))
            for index in range(args.samples)
        ]
        journal = JournalTail(node.stderr_path)
        counts_before = round_counts(node)  # scraped outside the CPU window
        if extra:
            os.kill(pid, signal.SIGUSR1)  # a profiler in `extra` starts afresh here
        cpu_before = cpu_seconds(pid)
        for index in range(args.samples):
            fdatasync.extend(fdatasync_probe(probe, args.probes))
            uid = f"bench-{index:04d}"
            temporary = node.manifest_dir / f".{uid}.yaml.tmp"
            temporary.write_text(texts[index])
            started = time.perf_counter()
            temporary.replace(node.manifest_dir / f"{uid}.yaml")
            journal.wait_admitted(uid)
            durable.append(time.perf_counter() - started)
            wait_converged(node, uid)
            converged.append(time.perf_counter() - started)
            if args.gap:
                time.sleep(args.gap)
        # The last sample's round may still be finishing its report: count that too (an idle
        # daemon costs nothing over this wait; scraping metrics to see it would).
        time.sleep(0.5)
        cpu_used = cpu_seconds(pid) - cpu_before
        rss = rss_bytes(pid)
        counts_after = round_counts(node)
        journal.close()
    finally:
        node.terminate(timeout=120)
        shutil.rmtree(args.cgroup_dir, ignore_errors=True)
    print(
        f"disk: {args.dir}; {args.pods} resident pods; {args.samples} admissions; "
        f"{len(fdatasync)} fdatasync probes interleaved"
    )
    _, sync_p99 = report("raw append + fdatasync", fdatasync)
    _, durable_p99 = report("manifest -> decision durable", durable)
    _, converged_p99 = report("manifest -> cgroup converged", converged)
    print(f"durable p99 - fdatasync p99:   {durable_p99 - sync_p99:+8.2f} ms")
    print(f"converged p99 - fdatasync p99: {converged_p99 - sync_p99:+8.2f} ms")
    print(f"daemon CPU per admission: {cpu_used / args.samples * 1000:.2f} ms")
    print(f"daemon RSS with {args.pods + args.samples} pods: {rss / 2**20:.1f} MiB")
    # Load-independent: how many rounds (and writes) each admission cost the daemon.
    for key in sorted(counts_after):
        done = counts_after[key] - counts_before.get(key, 0.0)
        if done:
            print(f"{key} per admission: {done / args.samples:.3f}")


if __name__ == "__main__":
    main()
