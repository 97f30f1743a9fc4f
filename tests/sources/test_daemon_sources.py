"""`memstate run` with the kubelet `/pods` source and the manifest directory together.

Goal: the real daemon (a subprocess on a simulated cgroup tree) admits the kubelet's pods and writes
their cgroups; a static pod in the manifest directory without a uid is replaced by the kubelet's
own UID for it; an outage of the kubelet changes nothing and shows in the metrics and `status`;
after recovery removals follow; after a restart readmission waits for the kubelet and every pod
gets its allocation back. Method: `KubeletStandIn` over HTTPS with a token, the daemon harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memstate.core.events import (
    PodAdmissionRequested,
    PodAdmitted,
    PodRemovalRequested,
    PodRemoved,
    ReadmissionCompleted,
)
from tests.daemon.harness import Gi, Node
from tests.sources.standins import ApiServerStandIn, Certificates, KubeletStandIn, kube_pod

pytestmark = pytest.mark.slow

POD_A = "5c7d1e2f-3333-4a4b-9c5d-00000000000a"
POD_B = "5c7d1e2f-3333-4a4b-9c5d-00000000000b"
ETCD_KUBELET_UID = "f0e1d2c3b4a5968778695a4b3c2d1e0f"

STATIC_ETCD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "etcd", "namespace": "kube-system"},
    "spec": {
        "containers": [{"name": "etcd", "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}]
    },
}


def etcd_as_kubelet_lists_it() -> dict[str, Any]:
    pod = kube_pod(
        "etcd-node-a",
        ETCD_KUBELET_UID,
        namespace="kube-system",
        annotations={
            "kubernetes.io/config.hash": ETCD_KUBELET_UID,
            "kubernetes.io/config.source": "file",
        },
    )
    return pod


@pytest.fixture
def make_node(tmp_path: Path) -> Any:
    nodes: list[Node] = []

    def make(**kwargs: Any) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.alive():
            node.kill()


def admitted_uids(records: list[Any]) -> set[str]:
    held: set[str] = set()
    for record in records:
        if isinstance(record.event, PodAdmitted):
            held.add(record.event.uid)
        elif isinstance(record.event, PodRemoved):
            held.discard(record.event.uid)
    return held


def test_daemon_with_kubelet_source(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(ca_file))
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token")
    standin = KubeletStandIn(certificates, "s3cr3t-token")
    standin.set_pods([kube_pod("a", POD_A, memory="2Gi"), etcd_as_kubelet_lists_it()])
    standin.start()
    try:
        node = make_node(
            extra_settings={
                "nodeName": "node-a",
                "podSources": ["manifests", "kubelet"],
                "kubelet": {
                    "url": standin.url,
                    "tokenFile": str(token_file),
                    "caFile": str(ca_file),
                    "pollSeconds": 0.2,
                },
            }
        )
        node.drop("etcd.yaml", STATIC_ETCD)
        node.start()
        records = node.wait_for(lambda rs: {POD_A, ETCD_KUBELET_UID} <= admitted_uids(rs))
        requests = [r.event for r in records if isinstance(r.event, PodAdmissionRequested)]
        by_uid = {e.pod.uid: e for e in requests}
        assert by_uid[POD_A].pod_source == "kubelet"
        derived = [e for e in requests if e.pod_source == "manifests"]
        if derived:  # admitted from the directory before the kubelet's first poll: replaced
            assert any(
                isinstance(r.event, PodRemovalRequested) and r.event.uid == derived[0].pod.uid
                for r in records
            )
        assert admitted_uids(records) == {POD_A, ETCD_KUBELET_UID}
        assert any(isinstance(r.event, ReadmissionCompleted) for r in records) is False
        wait_file(node, f"kubepods/pod{POD_A}", "memory.max", str(2 * Gi))

        # Outage: the kubelet answers 503 and would list nothing; nothing changes.
        standin.failure = 503
        standin.set_pods([etcd_as_kubelet_lists_it()])
        deadline = time.monotonic() + 60
        while node.metric('memstate_pod_source_in_sync{source="kubelet"}') != 0.0:
            assert time.monotonic() < deadline, "outage not visible in the metrics"
            time.sleep(0.1)
        failures_seen = standin.polls()
        while standin.polls() < failures_seen + 5:
            time.sleep(0.1)
        assert admitted_uids(node.records()) == {POD_A, ETCD_KUBELET_UID}
        status = node.status()
        health = status["daemon"]["pod_source_health"]
        assert health[0]["name"] == "kubelet" and health[0]["in_sync"] is False
        assert "HTTP 503" in health[0]["last_error"]
        text = node.cli("status", "--config", str(node.config_file), "-o", "table").stdout
        assert "Pod sources:" in text and "HTTP 503" in text

        # Back: pod a is gone on the kubelet (and its cgroup is empty): it is removed.
        standin.failure = None
        node.wait_for(lambda rs: admitted_uids(rs) == {ETCD_KUBELET_UID})

        # Restart with pod b new on the kubelet: readmission waits for the kubelet's list.
        assert node.terminate() == 0
        standin.set_pods([etcd_as_kubelet_lists_it(), kube_pod("b", POD_B)])
        node.start()
        records = node.wait_for(
            lambda rs: any(isinstance(r.event, ReadmissionCompleted) for r in rs)
        )
        assert admitted_uids(records) == {ETCD_KUBELET_UID, POD_B}
        restored = [
            r.event
            for r in records
            if isinstance(r.event, PodAdmitted) and r.event.uid == ETCD_KUBELET_UID
        ]
        assert restored[-1].restored
        assert node.terminate() == 0
    finally:
        standin.stop()


def wait_file(node: Node, path: str, file: str, expected: str) -> None:
    deadline = time.monotonic() + 60
    while node.cgroup_file(path, file) != expected:
        assert time.monotonic() < deadline, f"{path}/{file} is {node.cgroup_file(path, file)!r}"
        time.sleep(0.1)


def test_daemon_with_apiserver_source_through_a_kubeconfig(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    import base64

    import yaml

    standin = ApiServerStandIn(certificates, "s3cr3t-token")
    standin.add(kube_pod("a", POD_A))
    standin.start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        ca = base64.b64encode(certificates.ca.cert_pem.bytes()).decode()
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "memstate@node-a",
                    "contexts": [
                        {"name": "memstate@node-a", "context": {"cluster": "c", "user": "memstate"}}
                    ],
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {"server": standin.url, "certificate-authority-data": ca},
                        }
                    ],
                    "users": [{"name": "memstate", "user": {"token": "s3cr3t-token"}}],
                }
            )
        )
        node = make_node(
            extra_settings={
                "nodeName": "node-a",
                "podSources": ["apiserver"],
                "apiServer": {"kubeconfig": str(kubeconfig)},
            }
        )
        node.start()
        node.wait_for(lambda rs: admitted_uids(rs) == {POD_A})
        standin.add(kube_pod("b", POD_B, memory="2Gi"))
        node.wait_for(lambda rs: admitted_uids(rs) == {POD_A, POD_B})
        wait_file(node, f"kubepods/pod{POD_B}", "memory.max", str(2 * Gi))
        standin.modify(kube_pod("a", POD_A, phase="Succeeded"))
        node.wait_for(lambda rs: admitted_uids(rs) == {POD_B})
        # The history is compacted while the watch is down: 410, relist; b was deleted meanwhile.
        standin.expire()
        with standin.lock:
            standin.pods.pop(POD_B)
        standin.drop_watches()
        node.wait_for(lambda rs: admitted_uids(rs) == set())
        assert standin.list_count() >= 2
        deadline = time.monotonic() + 60
        while node.metric('memstate_pod_source_in_sync{source="apiserver"}') != 1.0:
            assert time.monotonic() < deadline, "the source never showed in sync again"
            time.sleep(0.1)
        sources = {
            r.event.pod_source for r in node.records() if isinstance(r.event, PodAdmissionRequested)
        }
        assert sources == {"apiserver"}
        assert node.terminate() == 0
    finally:
        standin.stop()


def test_new_pod_cgroup_nudges_the_kubelet_poll(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(ca_file))
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token")
    standin = KubeletStandIn(certificates, "s3cr3t-token")
    standin.start()
    try:
        node = make_node(
            extra_settings={
                "podSources": ["kubelet"],
                "kubelet": {
                    "url": standin.url,
                    "tokenFile": str(token_file),
                    "caFile": str(ca_file),
                    "pollSeconds": 3600,  # only a nudge can make it poll again
                },
            }
        )
        node.start()
        deadline = time.monotonic() + 60
        while standin.polls() < 1:
            assert time.monotonic() < deadline, "no first poll"
            time.sleep(0.05)
        time.sleep(1.0)
        polls = standin.polls()
        standin.set_pods([kube_pod("a", POD_A)])
        # The kubelet creates the pod cgroup before the sandbox: the cgroup watcher's hint makes
        # memstate poll at once.
        (node.cgroup_dir / "kubepods" / "burstable" / f"pod{POD_B}").mkdir(parents=True)
        node.wait_for(lambda rs: admitted_uids(rs) == {POD_A})
        assert standin.polls() > polls
        assert node.terminate() == 0
    finally:
        standin.stop()
