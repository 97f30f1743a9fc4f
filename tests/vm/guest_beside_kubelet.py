"""Guest-side suite: `memstate run` beside a kubelet on a real cgroup v2 tree, both drivers.

Theory of operation: this program runs inside the cgvm VM (tests/vm/suites.py adds it to the
session boot, 2 NUMA nodes). It plays the kubelet and the container runtime; memstate runs with
`ownership: beside-kubelet`, `mode: numa`. Like the other guest suites it only *observes*: one
JSON object per observation, the expectations are on the host (tests/vm/test_beside_kubelet_vm.py).

For each driver (cgroupfs with containerd's container naming, then systemd naming — plain
cgroupfs directories named as systemd names them — with CRI-O's):

1. A node on the guest's tmpfs: memstate's config (Static policy, TieredReservation, sized from
   sysfs as in guest_daemon.py, no `cgroupDriver`: it comes from the kubelet's config file), the
   kubelet's config file (MemoryQoS off, Memory Manager None, the driver), and the kubelet's
   `/pods` served over plain HTTP (the read-only port's form) by a thread of this program: a
   Guaranteed pod G (32 MiB) and a Burstable pod B (16 MiB request, 48 MiB limit), each with its
   app container's runtime id in `containerStatuses`.
2. The directories under the cgroup2 mount are listed; `memstate run` is forked from this
   program (no interpreter start, see guest_daemon.py) and READY=1 awaited; once both pods are
   decided the directories are listed again (memstate must have made none, not even kubepods).
3. The kubelet: kubepods and the QoS cgroups with memory, cpuset and hugetlb enabled, the pod
   cgroups with the kubelet's own memory.max and hugetlb.2MB.max, kubepods' memory.max. The
   runtime: the controllers enabled in each pod (as runc does), the app container's cgroup
   (runtime naming) and the sandbox's, a real `sleep` in each.
4. Wait until memstate's values read back in the real files (bounded, no timing assertion),
   then record every relevant file, the directories, and where the processes may allocate.
5. The kubelet deletes B: it leaves `/pods`, its processes are killed, its cgroups removed;
   memstate must release it (in its log) and lower kubepods' protection. Directories again.
6. SIGTERM (exit status recorded), then everything the test made is removed.

Stdlib plus memstate only. By hand:
``scripts/cgvm run --numa 2 --hugepages 8 -- python -m tests.vm.guest_beside_kubelet``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from memstate.core.cgroup_paths import node_path, pod_path, qos_path
from memstate.core.config import NodeConfig
from memstate.core.events import PodAdmitted, PodRemoved
from tests.vm.guest_daemon import (
    POLL_SECONDS,
    WAIT_SECONDS,
    Node,
    emit,
    guest_main,
    node_config,
    node_memory,
    now,
    preimport,
    process_facts,
    read_text,
)

ARTIFACTS = "beside-kubelet-node"
KUBELET_POD_MAX = str(64 << 20)  # what "the kubelet" writes on both pods: memstate leaves it
KUBELET_KUBEPODS_MAX = str(900 << 20)
CONTROLLERS = "+memory +cpuset +hugetlb"
FILES = (
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "hugetlb.2MB.max",
    "cpuset.mems",
    "cpuset.mems.effective",
)
# driver -> (runtime id prefix, container directory for an id, G uid, B uid)
RUNS: dict[str, tuple[str, str, str, str]] = {
    "cgroupfs": (
        "containerd://",
        "{id}",
        "6a1e0c44-1111-4b5c-8d6e-0000000000a1",
        "6a1e0c44-1111-4b5c-8d6e-0000000000b1",
    ),
    "systemd": (
        "cri-o://",
        "crio-{id}.scope",
        "6a1e0c44-1111-4b5c-8d6e-0000000000a2",
        "6a1e0c44-1111-4b5c-8d6e-0000000000b2",
    ),
}
G_MIB, B_REQUEST_MIB, B_LIMIT_MIB = 32, 16, 48
RESYNC_SECONDS = 2


def runtime_id(uid: str, what: str) -> str:
    """A 64-hex runtime id, distinct per pod and container."""
    return (uid.replace("-", "") + what.encode().hex()).ljust(64, "0")[:64]


def kube_pod(uid: str, request_mib: int, limit_mib: int, container_id: str) -> dict[str, Any]:
    """The pod as the kubelet's /pods lists it, its app container running."""
    resources = {
        "requests": {"cpu": "100m", "memory": f"{request_mib}Mi"},
        "limits": {"cpu": "100m", "memory": f"{limit_mib}Mi"},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": uid[-2:], "namespace": "default", "uid": uid},
        "spec": {"nodeName": "vm", "containers": [{"name": "app", "resources": resources}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "app", "state": {"running": {}}, "containerID": container_id}
            ],
        },
    }


class PodsEndpoint:
    """The kubelet's `/pods` (plain HTTP, as on the read-only port), served by a thread."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(
                    {"kind": "PodList", "apiVersion": "v1", "items": list(endpoint.pods)}
                ).encode()
                self.send_response(200 if self.path == "/pods" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> bool:
    """Bring `lo` up (the VM's init does not; the kubelet source talks HTTP to 127.0.0.1).
    Returns whether it was down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        if flags & _IFF_UP:
            return False
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | _IFF_UP))
        return True


def directories(mount: Path) -> set[str]:
    """Every cgroup directory under the mount, relative to it."""
    found = set()
    for directory, _, _ in os.walk(mount):
        relative = os.path.relpath(directory, mount)
        if relative != ".":
            found.add(relative)
    return found


def read_files(path: Path) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in FILES:
        text = read_text(path / name)
        found[name] = None if text is None else text.strip()
    return found


def wait_until(what: str, condition: Callable[[], bool], node: Node) -> None:
    deadline = now() + WAIT_SECONDS
    while not condition():
        if not node.alive():
            raise RuntimeError(f"daemon died waiting for {what}: {node.stderr()}")
        if now() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {node.stderr()}")
        time.sleep(POLL_SECONDS)


def wait_values(mount: Path, expected: dict[str, dict[str, str]], node: Node) -> None:
    def matches() -> bool:
        return all(
            read_files(mount / path).get(file) == value
            for path, files in expected.items()
            for file, value in files.items()
        )

    wait_until(f"values {expected}", matches, node)


def held(node: Node) -> set[str]:
    uids: set[str] = set()
    for record in node.records():
        if isinstance(record.event, PodAdmitted):
            uids.add(record.event.uid)
        elif isinstance(record.event, PodRemoved):
            uids.discard(record.event.uid)
    return uids


def start_process(cgroup: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["sleep", "3600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (cgroup / "cgroup.procs").write_text(str(process.pid))
    return process


def remove_tree(mount: Path, paths: list[str]) -> list[str]:
    """rmdir `paths` (made by the test), deepest first; what could not be removed."""
    left = []
    for relative in sorted(paths, key=lambda p: -p.count("/")):
        path = mount / relative
        deadline = now() + 30
        while path.exists():
            try:
                path.rmdir()
            except OSError:
                if now() > deadline:
                    left.append(relative)
                    break
                time.sleep(POLL_SECONDS)
    return left


def one_driver(mount: Path, job: Path, driver: str, nodes: dict[int, dict[str, int]]) -> None:
    prefix, naming, g_uid, b_uid = RUNS[driver]
    tag = f"{driver}/"
    names = NodeConfig(cgroup_driver=driver)  # type: ignore[arg-type]
    kubepods = node_path(names)
    qos = [qos_path(names, "Burstable"), qos_path(names, "BestEffort")]
    pods = {g_uid: pod_path(names, g_uid, "Guaranteed"), b_uid: pod_path(names, b_uid, "Burstable")}
    ids = {uid: runtime_id(uid, "app") for uid in pods}
    containers = {uid: f"{pods[uid]}/{naming.format(id=ids[uid])}" for uid in pods}
    sandboxes = {uid: f"{pods[uid]}/{naming.format(id=runtime_id(uid, 'pause'))}" for uid in pods}
    endpoint = PodsEndpoint()
    endpoint.pods = [
        kube_pod(g_uid, G_MIB, G_MIB, prefix + ids[g_uid]),
        kube_pod(b_uid, B_REQUEST_MIB, B_LIMIT_MIB, prefix + ids[b_uid]),
    ]
    root = Path(tempfile.mkdtemp(prefix=f"memstate-beside-{driver}-"))
    kubelet_file = root / "kubelet-config.yaml"
    kubelet_file.write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "cgroupDriver": driver,
                "memoryManagerPolicy": "None",
                "featureGates": {"MemoryQoS": False},
                "staticPodPath": "/etc/kubernetes/manifests",
            }
        )
    )
    config = node_config(root, nodes)
    del config["cgroupDriver"]  # the kubelet's is taken
    config["memstate"].update(
        {
            "ownership": "beside-kubelet",
            "mode": "numa",
            "kubeletConfigFile": str(kubelet_file),
            "podSources": ["kubelet"],
            "nodeName": "vm",
            "kubelet": {"url": endpoint.url, "tokenFile": None, "pollSeconds": 0.5},
            "resyncSeconds": RESYNC_SECONDS,
        }
    )
    node = Node(root, config)
    made: list[str] = []
    sleeps: dict[str, subprocess.Popen[bytes]] = {}
    try:
        before_start = directories(mount)
        node.start(forked=True)
        node.wait_ready()
        wait_until("both pods decided", lambda: held(node) == set(pods), node)
        records = node.records()
        decisions = {
            r.event.uid: {
                "numa_nodes": list(r.event.allocation.numa_nodes) if r.event.allocation else [],
                "cgroup": r.event.targets.cgroup if r.event.targets else None,
            }
            for r in records
            if isinstance(r.event, PodAdmitted)
        }
        # Periodic full resyncs ran meanwhile (a wait, not an assertion): still nothing made.
        time.sleep(2 * RESYNC_SECONDS + 1)
        emit(
            {
                "id": tag + "before_kubelet",
                "decisions": decisions,
                "made_by_memstate": sorted(directories(mount) - before_start),
                "removed_by_memstate": sorted(before_start - directories(mount)),
            }
        )

        # The kubelet, then the runtime.
        for path in (kubepods, *qos, *pods.values()):
            (mount / path).mkdir()
            made.append(path)
        for path in (kubepods, *qos):
            (mount / path / "cgroup.subtree_control").write_text(CONTROLLERS)
        (mount / kubepods / "memory.max").write_text(KUBELET_KUBEPODS_MAX)
        for pod in pods.values():
            (mount / pod / "memory.max").write_text(KUBELET_POD_MAX)
            (mount / pod / "hugetlb.2MB.max").write_text("0")
            (mount / pod / "cgroup.subtree_control").write_text(CONTROLLERS)  # as runc does
        for uid in pods:
            for path in (containers[uid], sandboxes[uid]):
                (mount / path).mkdir()
                made.append(path)
                sleeps[path] = start_process(mount / path)
        after_kubelet = directories(mount)

        g_node = ",".join(str(n) for n in decisions[g_uid]["numa_nodes"])
        mib = 1 << 20
        wait_values(
            mount,
            {
                kubepods: {"memory.min": str((G_MIB + B_REQUEST_MIB) * mib)},
                pods[g_uid]: {"memory.min": str(G_MIB * mib), "cpuset.mems": g_node},
                pods[b_uid]: {"memory.low": str(B_REQUEST_MIB * mib)},
                containers[g_uid]: {"memory.min": str(G_MIB * mib)},
                containers[b_uid]: {"memory.low": str(B_REQUEST_MIB * mib)},
            },
            node,
        )
        emit(
            {
                "id": tag + "converged",
                "paths": {
                    "kubepods": kubepods,
                    "burstable": qos[0],
                    "g": pods[g_uid],
                    "b": pods[b_uid],
                    "g_container": containers[g_uid],
                    "b_container": containers[b_uid],
                    "b_sandbox": sandboxes[b_uid],
                },
                "files": {
                    path: read_files(mount / path)
                    for path in (
                        kubepods,
                        qos[0],
                        *pods.values(),
                        *containers.values(),
                        sandboxes[b_uid],
                    )
                },
                "g_process": process_facts(
                    mount, {"pid": sleeps[containers[g_uid]].pid, "path": containers[g_uid]}
                ),
                "made_by_memstate": sorted(directories(mount) - after_kubelet),
                "removed_by_memstate": sorted(after_kubelet - directories(mount)),
            }
        )

        # The kubelet deletes B: off /pods, its processes gone, its cgroups removed.
        endpoint.pods = [p for p in endpoint.pods if p["metadata"]["uid"] != b_uid]
        b_paths = [containers[b_uid], sandboxes[b_uid], pods[b_uid]]
        for path in b_paths[:2]:
            process = sleeps.pop(path)
            process.kill()
            process.wait(timeout=WAIT_SECONDS)
        left = remove_tree(mount, b_paths)
        made = [p for p in made if p not in b_paths]
        expected_after = after_kubelet - set(b_paths)
        wait_until("B released", lambda: held(node) == {g_uid}, node)
        wait_values(mount, {kubepods: {"memory.min": str(G_MIB * mib)}}, node)
        emit(
            {
                "id": tag + "after_removal",
                "kubelet_could_not_remove": left,
                "kubepods": read_files(mount / kubepods),
                "burstable": read_files(mount / qos[0]),
                "made_by_memstate": sorted(directories(mount) - expected_after),
                "removed_by_memstate": sorted(expected_after - directories(mount)),
                # Whole, so that a failure says which operation on which file met what.
                "notes": [
                    repr(r.event)
                    for r in node.records()
                    if r.event.kind in ("cgroup_write_failed", "cgroup_orphan_found")
                ],
            }
        )
        emit({"id": tag + "stop", "returncode": node.stop(signal.SIGTERM)})
    finally:
        if node.process is not None:
            with contextlib.suppress(Exception):
                node.stop(signal.SIGKILL)
        for process in sleeps.values():
            process.kill()
            process.wait(timeout=WAIT_SECONDS)
        leftover = remove_tree(mount, made)
        endpoint.close()
        with contextlib.suppress(FileNotFoundError):
            node.notify_path.unlink()
        shutil.copytree(root, job / ARTIFACTS / driver, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        emit({"id": tag + "cleanup", "leftover": leftover})


def run(mount: Path, job: Path) -> None:
    emit({"id": "loopback", "was_down": loopback_up()})
    nodes = node_memory()
    emit({"id": "preimport", "seconds": round(preimport(), 2)})
    for driver in RUNS:
        one_driver(mount, job, driver, nodes)


def main(argv: list[str]) -> int:
    return guest_main(argv, run, name="beside")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
