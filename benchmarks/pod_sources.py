"""Pod source latency: a kubelet `/pods` poll and an API-server watch event, to decision durable.

    python -m benchmarks.pod_sources [--resident 500] [--samples 60] [--dir DIR]

Two runs of `memstate run` as a subprocess (8 NUMA nodes of 64 GiB, best-effort, a simulated
cgroup tree on the disk measured), each with `--resident` Guaranteed pods already admitted:

- **kubelet**: the kubelet stand-in (HTTPS + token, tests/sources/standins.py) serves a PodList of
  the resident pods; per sample one new pod is added to it, and the clock runs from the end of the
  first `/pods` answer that contains it (a full list of resident + 1 pods, polled every 0.5 s) until
  the daemon's journal line for its `pod_admitted` (written after the fsync returns; followed
  through inotify, so the waiting costs the daemon no CPU);
- **apiserver**: the API-server stand-in serves the resident pods as the list; per sample one pod
  is added, and the clock runs from the moment its `ADDED` event is handed to the watch stream
  until that journal line.

The baseline is a 200-byte append + `fdatasync` in the same directory, three probes after every
sample (interleaved with the samples, so both see the same disk and load). Prints p50/p90/p99 of
each, and each source's p50 and p99 against the baseline's p50 and p99 (issue 15's measure).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.daemon_admission import JournalTail, fdatasync_probe, report
from memstate.store.reader import LogReader
from tests.daemon.harness import Node
from tests.sources.standins import ApiServerStandIn, Certificates, KubeletStandIn, kube_pod

TOKEN = "bench-token"


def uid_of(index: int) -> str:
    return f"0000bench-0000-4000-8000-{index:012d}"


class Durable:
    """Follows the log and tells when the resident pods' admissions are durable."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.seq = 0
        self.admitted: set[str] = set()

    def wait(self, uids: set[str], timeout: float = 600.0) -> float:
        deadline = time.monotonic() + timeout
        while not uids <= self.admitted:
            for record in LogReader(self.node.state_dir).read(self.seq + 1):
                self.seq = record.seq
                if record.event.kind == "pod_admitted":
                    self.admitted.add(getattr(record.event, "uid", ""))
            if not uids <= self.admitted:
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {len(uids - self.admitted)} pods")
                time.sleep(0.0005)
        return time.perf_counter()


def make_node(directory: Path, settings: dict[str, Any]) -> Node:
    return Node(
        directory,
        nodes_memory=tuple(["64Gi"] * 8),
        topology_policy="best-effort",
        extra_settings={
            "rescanSeconds": 30,
            "resyncSeconds": 300,
            "checkpointEvery": 100000,
            "nodeName": "node-a",
            **settings,
        },
    )


PROBES_PER_SAMPLE = 3


def run_kubelet(
    root: Path, certificates: Certificates, resident: int, samples: int, baseline: list[float]
) -> list[float]:
    ca = root / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(ca))
    (root / "token").write_text(TOKEN)
    standin = KubeletStandIn(certificates, TOKEN)
    pods = [kube_pod(f"r{i}", uid_of(i), memory="64Mi") for i in range(resident)]
    standin.set_pods(pods)
    standin.start()
    node = make_node(
        root / "kubelet-node",
        {
            "podSources": ["kubelet"],
            "kubelet": {
                "url": standin.url,
                "tokenFile": str(root / "token"),
                "caFile": str(ca),
                "pollSeconds": 0.5,
            },
        },
    )
    latencies = []
    try:
        node.start()
        durable = Durable(node)
        durable.wait({uid_of(i) for i in range(resident)})
        journal = JournalTail(node.stderr_path)
        for sample in range(samples):
            index = resident + sample
            pods.append(kube_pod(f"n{index}", uid_of(index), memory="64Mi"))
            added = time.perf_counter()
            standin.set_pods(pods)
            journal.wait_admitted(uid_of(index))
            done = time.perf_counter()
            served = min(t for t in list(standin.served_at) if t > added)
            latencies.append(done - served)
            baseline.extend(fdatasync_probe(root / "fdatasync-probe", PROBES_PER_SAMPLE))
    finally:
        node.terminate(timeout=120.0)
        standin.stop()
    return latencies


def run_apiserver(
    root: Path, certificates: Certificates, resident: int, samples: int, baseline: list[float]
) -> list[float]:
    import base64

    import yaml

    standin = ApiServerStandIn(certificates, TOKEN)
    standin.page_size_cap = 500
    for i in range(resident):
        standin.add(kube_pod(f"r{i}", uid_of(i), memory="64Mi"))
    standin.start()
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "bench",
                "contexts": [{"name": "bench", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": standin.url,
                            "certificate-authority-data": base64.b64encode(
                                certificates.ca.cert_pem.bytes()
                            ).decode(),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": TOKEN}}],
            }
        )
    )
    node = make_node(
        root / "apiserver-node",
        {"podSources": ["apiserver"], "apiServer": {"kubeconfig": str(kubeconfig)}},
    )
    latencies = []
    try:
        node.start()
        durable = Durable(node)
        durable.wait({uid_of(i) for i in range(resident)})
        journal = JournalTail(node.stderr_path)
        for sample in range(samples):
            index = resident + sample
            started = time.perf_counter()
            standin.add(kube_pod(f"n{index}", uid_of(index), memory="64Mi"))
            journal.wait_admitted(uid_of(index))
            latencies.append(time.perf_counter() - started)
            baseline.extend(fdatasync_probe(root / "fdatasync-probe", PROBES_PER_SAMPLE))
    finally:
        node.terminate(timeout=120.0)
        standin.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resident", type=int, default=500)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/memstate-bench-src"))
    args = parser.parse_args()
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    certificates = Certificates()
    baseline: list[float] = []
    kubelet = run_kubelet(args.dir, certificates, args.resident, args.samples, baseline)
    apiserver = run_apiserver(args.dir, certificates, args.resident, args.samples, baseline)
    print(f"disk: {args.dir}; {args.resident} resident pods, {args.samples} samples per source")
    fsync_p50, fsync_p99 = report("raw append + fdatasync", baseline)
    for name, values in (
        (f"kubelet poll ({args.resident + 1} pods) -> durable", kubelet),
        ("apiserver watch event -> durable", apiserver),
    ):
        p50, p99 = report(name, values)
        print(
            f"{'':<32} p50 - fdatasync p50 {p50 - fsync_p50:+8.2f} ms, "
            f"p99 - fdatasync p99 {p99 - fsync_p99:+8.2f} ms"
        )


if __name__ == "__main__":
    main()
