"""Idle CPU of the running daemon beside a kubelet: its pods come from the kubelet's `/pods`.

    python -m benchmarks.idle_cpu_kubelet [--seconds 30] [--rounds 3] [--pods 500]
                                          [--baseline-src DIR] [--dir DIR]

`benchmarks.idle_cpu` with the pods served by the kubelet stand-in (HTTPS + token,
tests/sources/standins.py) instead of the manifest directory: `podSources: [kubelet]` at the
production poll period (`kubelet.pollSeconds` 5) and the production rescan/resync periods (30 s).
Admits `--pods` pods, waits until the daemon is quiet (`idle_cpu.wait_until_quiet`), then reads
the process's CPU time over a `--seconds` window in which the kubelet serves the same pods. The
window holds the sources loop's once-a-second recheck and the `/pods` polls (each one a full list
fetched, decoded and compared). With `--baseline-src DIR`, both versions alternate round by round.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks import idle_cpu
from benchmarks.idle_cpu import idle_share
from tests.daemon.harness import Node
from tests.sources.standins import Certificates, KubeletStandIn, kube_pod

TOKEN = "bench-token"


def measure(directory: Path, *, src: Path | None, pods: int, seconds: float) -> float:
    """Share of one core the idle daemon used over `seconds` (0.01 = 1 %)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    certificates = Certificates()
    ca = directory / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(ca))
    (directory / "token").write_text(TOKEN)
    standin = KubeletStandIn(certificates, TOKEN)
    standin.set_pods(
        [
            kube_pod(f"idle-{i:04d}", f"0000idle-0000-4000-8000-{i:012d}", memory="64Mi")
            for i in range(pods)
        ]
    )
    standin.start()
    node = Node(
        directory / "node",
        extra_settings={
            "rescanSeconds": 30,
            "resyncSeconds": 30,
            "nodeName": "node-a",
            "podSources": ["kubelet"],
            "kubelet": {
                "url": standin.url,
                "tokenFile": str(directory / "token"),
                "caFile": str(ca),
            },
        },
        nodes_memory=("64Gi", "64Gi"),
        topology_policy="best-effort",
    )
    node.start(env={"PYTHONPATH": str(src)} if src is not None else None)
    try:
        return idle_share(node, seconds, admitted=pods)
    finally:
        node.terminate()
        standin.stop()


def main() -> None:
    idle_cpu.main(
        measure,
        default_pods=500,
        default_dir=Path("/var/tmp/memstate-idle-kubelet"),
        doc=__doc__,
    )


if __name__ == "__main__":
    main()
