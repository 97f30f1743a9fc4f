"""How long `memstate run` takes to stop on SIGTERM after a busy run.

    python -m benchmarks.daemon_shutdown [--pods 1000] [--resident 110] [--interval 0.05]
                                         [--dir /var/tmp/memstate-shutdown] [--src DIR]

Starts the daemon (the e2e harness's node: two NUMA nodes of 64 GiB, a directory-backed simulated
cgroup tree), then drops `--pods` manifests `--interval` seconds apart, deleting the oldest so
that `--resident` stay (admissions and removals, ~4 records per pod). The simulated tree falls
behind such a stream, so reconcile rounds with a backlog of cgroup operations are running when,
5 s after the last manifest, SIGTERM arrives. Prints the time from SIGTERM to the process's exit
(exit 0 checked) and the log's last seq; the daemon's grace under systemd is 10 s
(`SHUTDOWN_GRACE_SECONDS`). `--src DIR` runs another version's daemon.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from tests.daemon.harness import ROOT, Node, pod_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--resident", type=int, default=110)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/memstate-shutdown"))
    parser.add_argument("--src", type=Path, default=None)
    args = parser.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    node = Node(
        args.dir,
        nodes_memory=("64Gi", "64Gi"),
        topology_policy="best-effort",
        extra_settings={"rescanSeconds": 30, "resyncSeconds": 30},
    )
    source = str(args.src.resolve()) if args.src is not None else str(ROOT)
    node.start(env={"PYTHONPATH": source})
    for index in range(args.pods):
        node.drop(f"p{index:05d}.yaml", pod_manifest(f"p{index:05d}", "64Mi"))
        if index >= args.resident:
            (node.manifest_dir / f"p{index - args.resident:05d}.yaml").unlink()
        time.sleep(args.interval)
    time.sleep(5)
    started = time.perf_counter()
    code = node.terminate(timeout=300)
    stopped = time.perf_counter() - started
    records = node.records()
    print(
        f"{args.pods} pods dropped ({args.resident} resident), log ends at seq "
        f"{records[-1].seq if records else 0}: SIGTERM to exit {stopped:.2f} s (exit code {code})"
    )


if __name__ == "__main__":
    main()
