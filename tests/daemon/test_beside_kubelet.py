"""`memstate run` beside the kubelet: the test plays the kubelet and the runtime.

Goal: with `ownership: beside-kubelet` (mode numa) the real daemon, fed by the kubelet's `/pods`
(container ids included), creates and removes no cgroup — not even kubepods — waits for the pod
cgroups the kubelet makes (both drivers, the driver taken from the kubelet's config file), then
writes memory.min/memory.low/memory.high on kubepods, the pod and the container cgroups and the
pinned pod's cpuset.mems, and leaves the kubelet's files (memory.max, hugetlb.*) alone; when the
kubelet deletes a pod and removes its cgroup, memstate releases it without touching the
directory. A kubelet config that would fight makes `memstate run` exit 78 naming the fields.

Method: the daemon is a real subprocess on a directory-backed simulated tree; the test opens the
same tree (DirCgroupFS) as the kubelet and the runtime would use the real one: it makes the
kubepods, QoS and pod cgroups, enables the controllers, writes the kubelet's values, makes the
container cgroups (runtime naming per driver) with a fake process in each. `KubeletStandIn`
serves the pods over HTTPS with a token. What the daemon did is read from the tree's journal:
every change records the process that made it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from memstate.core.cgroup_paths import node_path, pod_path, qos_path
from memstate.core.config import config_from_object
from memstate.core.events import PodAdmitted, PodRemoved
from memstate.host.sim.cgroupdir import DirCgroupFS, read_journal
from tests.daemon.harness import Gi, Mi, Node
from tests.sources.standins import Certificates, KubeletStandIn, kube_pod

pytestmark = pytest.mark.slow

TOKEN = "s3cr3t-token"
G_UID = "5c7d1e2f-3333-4a4b-9c5d-0000000000a1"
B_UID = "5c7d1e2f-3333-4a4b-9c5d-0000000000b1"
G_ID = "a1" * 32
B_ID = "b1" * 32
SANDBOX_ID = "5a" * 32
KUBELET_POD_MAX = str(3 * Gi)
MEMSTATE_FILES = {"memory.min", "memory.low", "memory.high", "cpuset.mems"}


@pytest.fixture(scope="module")
def certificates() -> Certificates:
    return Certificates()


@pytest.fixture
def kubelet(certificates: Certificates) -> Iterator[KubeletStandIn]:
    standin = KubeletStandIn(certificates, TOKEN)
    standin.start()
    yield standin
    standin.stop()


def pods(*, with_b: bool = True) -> list[dict[str, Any]]:
    listed = [kube_pod("g", G_UID, memory="1Gi", container_id=f"containerd://{G_ID}")]
    if with_b:
        listed.append(
            kube_pod(
                "b",
                B_UID,
                memory="256Mi",
                limit_memory="512Mi",
                container_id=f"containerd://{B_ID}",
            )
        )
    return listed


def beside_node(
    make_node: Callable[..., Node],
    tmp_path: Path,
    certificates: Certificates,
    kubelet: KubeletStandIn,
    kubelet_config: dict[str, Any],
) -> Node:
    ca_file = tmp_path / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(ca_file))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    kubelet_file = tmp_path / "kubelet-config.yaml"
    kubelet_file.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "staticPodPath": "/etc/kubernetes/manifests",
                "authentication": {"webhook": {"enabled": True}},
                **kubelet_config,
            }
        )
    )
    return make_node(
        extra_settings={
            "ownership": "beside-kubelet",
            "mode": "numa",
            "kubeletConfigFile": str(kubelet_file),
            "nodeName": "node-a",
            "podSources": ["kubelet"],
            "kubelet": {
                "url": kubelet.url,
                "tokenFile": str(token_file),
                "caFile": str(ca_file),
                "pollSeconds": 0.2,
            },
        }
    )


def daemon_changes(node: Node, pid: int) -> list[tuple[str, str, str]]:
    """(op, path, file) of every change the daemon's process made to the tree."""
    return [
        (entry.op, entry.path or "", entry.file or "")
        for entry in read_journal(node.cgroup_dir)
        if getattr(entry, "writer", None) == pid
    ]


def wait_value(node: Node, path: str, file: str, expected: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while node.cgroup_file(path, file) != expected:
        assert node.alive(), node.stderr()[-3000:]
        assert time.monotonic() < deadline, (
            f"{path}/{file} is {node.cgroup_file(path, file)!r}, not {expected!r}:\n"
            + node.stderr()[-3000:]
        )
        time.sleep(0.1)


def held(node: Node) -> set[str]:
    uids: set[str] = set()
    for record in node.records():
        if isinstance(record.event, PodAdmitted):
            uids.add(record.event.uid)
        elif isinstance(record.event, PodRemoved):
            uids.discard(record.event.uid)
    return uids


def wait_held(node: Node, wanted: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while held(node) != wanted:
        assert node.alive(), node.stderr()[-3000:]
        assert time.monotonic() < deadline, (held(node), node.stderr()[-3000:])
        time.sleep(0.1)


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_beside_the_kubelet_memstate_writes_values_and_makes_nothing(
    make_node: Callable[..., Node],
    tmp_path: Path,
    certificates: Certificates,
    kubelet: KubeletStandIn,
    driver: str,
) -> None:
    # memstate's own config sets no cgroupDriver: the kubelet's is taken.
    naming = config_from_object({"cgroupDriver": driver})
    kubepods = node_path(naming)
    g_pod = pod_path(naming, G_UID, "Guaranteed")
    b_pod = pod_path(naming, B_UID, "Burstable")
    container_dir = (
        (lambda i: i) if driver == "cgroupfs" else (lambda i: f"cri-containerd-{i}.scope")
    )
    g_container = f"{g_pod}/{container_dir(G_ID)}"
    b_container = f"{b_pod}/{container_dir(B_ID)}"
    sandbox = f"{b_pod}/{container_dir(SANDBOX_ID)}"

    kubelet.set_pods(pods())
    node = beside_node(
        make_node,
        tmp_path,
        certificates,
        kubelet,
        {
            "cgroupDriver": driver,
            "memoryManagerPolicy": "None",
            "featureGates": {"MemoryQoS": False},
        },
    )
    node.start()
    assert node.process is not None
    daemon = node.process.pid
    wait_held(node, {G_UID, B_UID})  # decided from the kubelet's pods before any cgroup exists
    time.sleep(1.0)  # a few reconcile rounds (resyncSeconds 2 in the harness): still nothing made
    with DirCgroupFS(node.cgroup_dir, watch=False) as fs:
        assert fs.list_children("") == [], "memstate made cgroups beside the kubelet"

        # The kubelet: kubepods and the QoS cgroups with every controller, then the pods.
        fs.write("", "cgroup.subtree_control", "+memory +cpuset +hugetlb")
        for path in (kubepods, qos_path(naming, "Burstable"), qos_path(naming, "BestEffort")):
            fs.mkdir(path)
            fs.write(path, "cgroup.subtree_control", "+memory +cpuset +hugetlb")
        for pod in (g_pod, b_pod):
            fs.mkdir(pod)
            fs.write(pod, "memory.max", KUBELET_POD_MAX)
            fs.write(pod, "hugetlb.2MB.max", "0")
            # The runtime: the sandbox and the app container, each with a process.
            fs.write(pod, "cgroup.subtree_control", "+memory")
        for path in (g_container, b_container, sandbox):
            fs.mkdir(path)
            fs.spawn(path)

    # memstate's values: TieredReservation, G pinned (Static in memstate's config).
    wait_value(node, g_pod, "memory.min", str(1 * Gi))
    wait_value(node, b_pod, "memory.low", str(256 * Mi))
    wait_value(node, kubepods, "memory.min", str(1 * Gi + 256 * Mi))
    wait_value(node, g_pod, "cpuset.mems", "0")
    wait_value(node, g_container, "memory.min", str(1 * Gi))
    wait_value(node, b_container, "memory.low", str(256 * Mi))
    # floor((256Mi + 0.9 × (512Mi − 256Mi)) / 4096) × 4096 (memory-qos.md §4.1)
    wait_value(node, b_container, "memory.high", "510025728")
    # The kubelet's and the runtime's files are as they left them.
    for pod in (g_pod, b_pod):
        assert node.cgroup_file(pod, "memory.max") == KUBELET_POD_MAX
        assert node.cgroup_file(pod, "hugetlb.2MB.max") == "0"
    assert node.cgroup_file(kubepods, "memory.max") == "max"
    assert node.cgroup_file(b_container, "memory.max") == "max"
    assert node.cgroup_file(sandbox, "memory.low") == "0"  # an id no pod reports: left alone

    # The kubelet deletes pod b: its containers stop, it removes the cgroups, drops it from /pods.
    kubelet.set_pods(pods(with_b=False))
    time.sleep(1.0)
    assert B_UID in held(node)  # its cgroup still holds a process: not released yet
    with DirCgroupFS(node.cgroup_dir, watch=False) as fs:
        for path in (b_container, sandbox):
            for pid in [int(p) for p in fs.read(path, "cgroup.procs").split()]:
                fs.exit(pid)
            fs.rmdir(path)
        fs.rmdir(b_pod)
    wait_held(node, {G_UID})
    wait_value(node, kubepods, "memory.min", str(1 * Gi))

    status = node.cli("status", "--config", str(node.config_file), "-o", "table")
    assert "ownership beside-kubelet, mode numa" in status.stdout, status.stderr

    changes = daemon_changes(node, daemon)
    assert changes, "the daemon changed nothing"
    assert {op for op, _, _ in changes} == {"write"}, changes
    assert {file for _, _, file in changes} <= MEMSTATE_FILES, changes
    assert node.terminate() == 0


def test_a_kubelet_config_that_would_fight_stops_memstate_with_exit_78(
    make_node: Callable[..., Node],
    tmp_path: Path,
    certificates: Certificates,
    kubelet: KubeletStandIn,
) -> None:
    node = beside_node(
        make_node,
        tmp_path,
        certificates,
        kubelet,
        {
            "cgroupDriver": "systemd",
            "memoryManagerPolicy": "Static",
            "featureGates": {"MemoryQoS": True},
        },
    )
    node.start(wait_ready=False)
    assert node.process is not None
    code = node.process.wait(timeout=60)
    stderr = node.stderr()
    assert code == 78, stderr
    assert str(tmp_path / "kubelet-config.yaml") in stderr
    assert "$.featureGates.MemoryQoS, $.memoryManagerPolicy" in stderr
    assert "Traceback" not in stderr
    assert not (node.cgroup_dir / "kubepods.slice").exists()
