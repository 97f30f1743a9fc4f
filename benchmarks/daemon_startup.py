"""Whole-process start-up of `memstate run` on a 1M-record log against an empty log.

    .venv/bin/python -m benchmarks.daemon_startup [--records 1000000] [--rounds 5] [--dir /var/tmp]
                                                  [--pods 2]

What is timed: from spawning `python -m memstate run` (interpreter start, imports, log recovery,
`recover_state`, readmission, first reconcile) to the READY=1 datagram on a real sd_notify
socket — the e2e harness of tests/daemon (`tests.daemon.harness.Node`), the simulated cgroup
tree, two pods in the manifest directory (`--pods N`: N, the others Guaranteed pods of 64 MiB on
two NUMA nodes of 64 GiB). Then SIGTERM (exit 0 checked).

- empty: a fresh state directory every round (no log yet);
- long: a log of `--records` records: a real daemon's history (start, two admissions, stop with
  its final checkpoint), then filler notes written by the byte-identical bulk writer of
  tests/store/bulk.py (sealed 16 MiB segments, as the writer leaves them), then a checkpoint at
  the end (the notes do not change the state) — a daemon that checkpoints regularly restarts
  this way. Built once, not timed.

The two are interleaved (empty, long, empty, long, ...) for `--rounds` rounds; the page cache
is warm for both. Also printed: the daemon's RSS (VmRSS) right after READY and `--settle`
seconds later (after the background check of sealed segments), and the ratio long/empty of
each round's start-up time: median and min..max.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from memstate.store.checkpoint import list_checkpoints, load_checkpoint, write_checkpoint
from memstate.store.reader import LogReader
from tests.daemon.harness import Node, pod_manifest
from tests.store.bulk import write_filler_log

SEGMENT_BYTES = 16 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def new_node(root: Path, pods: int) -> Node:
    """The harness's node with the two pods, plus `pods - 2` Guaranteed pods of 64 MiB (on two
    NUMA nodes of 64 GiB then, so that they all fit)."""
    if pods <= 2:
        node = Node(root)
    else:
        node = Node(root, nodes_memory=("64Gi", "64Gi"), topology_policy="best-effort")
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi"))
    node.drop("b.yaml", pod_manifest("pod-b", "1Gi", guaranteed=False))
    for index in range(pods - 2):
        node.drop(f"r{index:04d}.yaml", pod_manifest(f"resident-{index:04d}", "64Mi"))
    return node


def build_long(root: Path, records: int, pods: int) -> Node:
    """A node whose log holds `records` records and ends with a checkpoint."""
    node = new_node(root, pods)
    node.start()
    deadline = time.monotonic() + 60 + pods
    while (
        time.monotonic() < deadline
        and sum(1 for r in node.records() if r.event.kind == "pod_admitted") < pods
    ):
        time.sleep(0.2)
    if node.terminate() != 0:
        raise SystemExit(f"the daemon did not stop cleanly: {node.stderr()}")
    reader = LogReader(node.state_dir)
    last = list(reader.read_raw())[-1]
    crc = reader.chain_crc_at(last.seq)
    assert crc is not None
    _, newest = list_checkpoints(node.state_dir)[-1]
    state = load_checkpoint(newest).state
    filler = records - last.seq
    end_seq, end_crc = write_filler_log(
        node.state_dir / "log",
        first_seq=last.seq + 1,
        prev_chain_crc=crc,
        count=filler,
        ts_ns=time.time_ns(),
        segment_bytes=SEGMENT_BYTES,
    )
    write_checkpoint(node.state_dir, state, seq=end_seq, chain_crc=end_crc)
    return node


def start_once(node: Node, settle: float) -> tuple[float, int, int]:
    """(seconds to READY, RSS KiB at READY, RSS KiB `settle` s later); stops the daemon."""
    started = time.perf_counter()
    node.start(wait_ready=False)
    node.wait_ready(timeout=600)  # a fresh node builds every pod's cgroup before READY
    ready = time.perf_counter() - started
    assert node.process is not None
    pid = node.process.pid
    at_ready = rss_kib(pid)
    time.sleep(settle)
    later = rss_kib(pid)
    code = node.terminate()
    if code != 0:
        raise SystemExit(f"daemon exited {code}: {node.stderr()}")
    return ready, at_ready, later


def summary(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    scaled = [v * scale for v in values]
    return f"{statistics.median(scaled):.3f} {unit} ({min(scaled):.3f}..{max(scaled):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--pods", type=int, default=2, help="pods on the node (at least 2)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="memstate-startup-", dir=args.dir))
    try:
        long_node = build_long(root / "long", args.records, args.pods)
        size = sum(p.stat().st_size for p in (long_node.state_dir / "log").glob("*.evlog"))
        segments = len(list((long_node.state_dir / "log").glob("*.evlog")))
        print(f"long log: {args.records} records, {segments} segments, {size / 2**20:.0f} MiB")
        results: dict[str, list[tuple[float, int, int]]] = {"empty": [], "long": []}
        for index in range(args.rounds):
            empty_node = new_node(root / f"empty{index}", args.pods)
            results["empty"].append(start_once(empty_node, args.settle))
            results["long"].append(start_once(long_node, args.settle))
            shutil.rmtree(root / f"empty{index}")
        for label, rows in results.items():
            print(
                f"{label:<6} start-up {summary([r[0] for r in rows])}  RSS at READY "
                f"{summary([r[1] for r in rows], 'MiB', 1 / 1024)}  after {args.settle:.0f} s "
                f"{summary([r[2] for r in rows], 'MiB', 1 / 1024)}"
            )
        ratios = [
            long[0] / empty[0]
            for long, empty in zip(results["long"], results["empty"], strict=True)
        ]
        print(
            f"start-up long/empty: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}) over {args.rounds} interleaved rounds"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
