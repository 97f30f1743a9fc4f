"""Idle CPU of the running daemon beside a kubelet (its pods from the kubelet's `/pods`) or an
API server (its pods from a list + watch).

    python -m benchmarks.idle_cpu_kubelet [--seconds 30] [--rounds 3] [--pods 500]
                                          [--source kubelet|apiserver]
                                          [--baseline-src DIR] [--dir DIR]

`benchmarks.idle_cpu` with the pods served by a stand-in (HTTPS + token,
tests/sources/standins.py) instead of the manifest directory, at the production rescan/resync
periods (30 s). Admits `--pods` pods, waits until the daemon is quiet
(`idle_cpu.wait_until_quiet`), then reads the process's CPU time over a `--seconds` window in
which the source serves the same pods.

- `kubelet` (the default): `podSources: [kubelet]` at the production poll period
  (`kubelet.pollSeconds` 5). The window holds the `/pods` polls (each one a full list fetched
  and compared) and what the sources loop does between them.
- `apiserver`: `podSources: [apiserver]` through a kubeconfig with a token file (as in a pod:
  the token is read again for each request), one page of up to 500 pods, then the watch. The
  stand-in sends a bookmark every `BOOKMARK_SECONDS`, as the API server does on an idle watch;
  the watch delivers nothing else.

With `--baseline-src DIR`, both versions alternate round by round.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import yaml

from benchmarks import idle_cpu
from benchmarks.idle_cpu import idle_share
from tests.daemon.harness import Node
from tests.sources.standins import ApiServerStandIn, Certificates, KubeletStandIn, kube_pod

TOKEN = "bench-token"
BOOKMARK_SECONDS = 60.0  # about how often the API server sends one on an idle watch


def measure(
    directory: Path, *, src: Path | None, pods: int, seconds: float, source: str = "kubelet"
) -> float:
    """Share of one core the idle daemon used over `seconds` (0.01 = 1 %)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    certificates = Certificates()
    ca = directory / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(ca))
    token_file = directory / "token"
    token_file.write_text(TOKEN)
    listed = [
        kube_pod(f"idle-{i:04d}", f"0000idle-0000-4000-8000-{i:012d}", memory="64Mi")
        for i in range(pods)
    ]
    settings: dict[str, Any] = {"rescanSeconds": 30, "resyncSeconds": 30, "nodeName": "node-a"}
    standin: KubeletStandIn | ApiServerStandIn
    stop_bookmarks = threading.Event()
    if source == "kubelet":
        standin = KubeletStandIn(certificates, TOKEN)
        standin.set_pods(listed)
        settings |= {
            "podSources": ["kubelet"],
            "kubelet": {"url": standin.url, "tokenFile": str(token_file), "caFile": str(ca)},
        }
    else:
        standin = ApiServerStandIn(certificates, TOKEN)
        standin.page_size_cap = 500  # the source's page size: one page, as a real server
        for pod in listed:
            standin.add(pod)
        kubeconfig = directory / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(_kubeconfig(standin.url, ca, token_file)))
        settings |= {"podSources": ["apiserver"], "apiServer": {"kubeconfig": str(kubeconfig)}}
        bookmarks = threading.Thread(target=_bookmarks, args=(standin, stop_bookmarks), daemon=True)
        bookmarks.start()
    standin.start()
    node = Node(
        directory / "node",
        extra_settings=settings,
        nodes_memory=("64Gi", "64Gi"),
        topology_policy="best-effort",
    )
    node.start(env={"PYTHONPATH": str(src)} if src is not None else None)
    try:
        return idle_share(node, seconds, admitted=pods)
    finally:
        node.terminate()
        stop_bookmarks.set()
        standin.stop()


def _bookmarks(standin: ApiServerStandIn, stop: threading.Event) -> None:
    while not stop.wait(BOOKMARK_SECONDS):
        standin.bookmark()


def _kubeconfig(server: str, ca: Path, token_file: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "bench",
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
        "clusters": [
            {"name": "bench", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "bench", "user": {"tokenFile": str(token_file)}}],
    }


def main() -> None:
    idle_cpu.main(
        measure,
        default_pods=500,
        default_dir=Path("/var/tmp/memstate-idle-kubelet"),
        doc=__doc__,
        options={"--source": {"choices": ["kubelet", "apiserver"], "default": "kubelet"}},
    )


if __name__ == "__main__":
    main()
