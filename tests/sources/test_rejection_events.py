"""A Kubernetes Event for every rejection, where the API-server source is configured.

Goal: the real daemon (a subprocess on a simulated tree) watching the API-server stand-in POSTs
one core/v1 Event per rejected pod — reason the rejection's upstream reason, its message, the pod
named by the API server's UID (a mirror pod's, not the kubelet-side UID memstate decides under);
a refused POST is logged and counted and changes nothing else. Method: `ApiServerStandIn` over
HTTPS with a token (it stores the POSTed Events), a kubeconfig, the daemon harness.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from memstate.core.events import PodAdmitted, PodRejected
from tests.daemon.conftest import make_node
from tests.daemon.harness import Node
from tests.sources.standins import ApiServerStandIn, Certificates, kube_pod

pytestmark = pytest.mark.slow
__all__ = ["make_node"]  # the daemon fixture, used by name

API_UID = "0a1b2c3d-4444-4a4b-9c5d-0000000000aa"
KUBELET_UID = "6b1f5e0c9a8d7e6f5a4b3c2d1e0f9a8b"
SMALL_UID = "0a1b2c3d-4444-4a4b-9c5d-0000000000bb"


def kubeconfig(path: Path, standin: ApiServerStandIn, certificates: Certificates) -> Path:
    ca = base64.b64encode(certificates.ca.cert_pem.bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "memstate",
                "contexts": [{"name": "memstate", "context": {"cluster": "c", "user": "m"}}],
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": standin.url, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": "m", "user": {"token": standin.token}}],
            }
        )
    )
    return path


def too_big_mirror_pod() -> dict[str, Any]:
    """A static pod's mirror asking more than any NUMA node holds: rejected."""
    return kube_pod(
        "etcd-node-a",
        API_UID,
        memory="9Gi",
        namespace="kube-system",
        annotations={
            "kubernetes.io/config.mirror": KUBELET_UID,
            "kubernetes.io/config.hash": KUBELET_UID,
            "kubernetes.io/config.source": "file",
        },
    )


def rejected(records: list[Any], uid: str) -> list[PodRejected]:
    return [r.event for r in records if isinstance(r.event, PodRejected) and r.event.uid == uid]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_rejected_pod_gets_one_event_naming_its_api_object(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    standin = ApiServerStandIn(certificates, "s3cr3t-token")
    standin.add(too_big_mirror_pod())
    standin.start()
    try:
        node = make_node(
            extra_settings={
                "nodeName": "node-a",
                "podSources": ["apiserver"],
                "apiServer": {
                    "kubeconfig": str(kubeconfig(tmp_path / "kc", standin, certificates))
                },
            }
        )
        node.start()
        records = node.wait_for(lambda rs: bool(rejected(rs, KUBELET_UID)))
        (rejection,) = rejected(records, KUBELET_UID)
        wait_until(lambda: len(standin.events) >= 1, "no Event was posted")
        (event,) = standin.events
        assert event["kind"] == "Event" and event["type"] == "Warning"
        assert event["reason"] == rejection.reason
        assert event["message"] == rejection.message
        assert event["involvedObject"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": "kube-system",
            "name": "etcd-node-a",
            "uid": API_UID,
        }
        assert event["metadata"]["namespace"] == "kube-system"
        assert event["source"] == {"component": "memstate", "host": "node-a"}

        # The pod changes (a status update, same spec): no new rejection, no second Event.
        standin.modify(too_big_mirror_pod() | {"status": {"phase": "Pending"}})
        standin.add(kube_pod("small", SMALL_UID))
        node.wait_for(
            lambda rs: any(
                isinstance(r.event, PodAdmitted) and r.event.uid == SMALL_UID for r in rs
            )
        )
        wait_until(
            lambda: node.metric('memstate_pod_rejection_events_total{result="posted"}') == 1.0,
            "the posted Event is not counted",
        )
        assert len(standin.events) == 1
        assert len(rejected(node.records(), KUBELET_UID)) == 1
        assert node.terminate() == 0
    finally:
        standin.stop()


def test_a_refused_event_is_logged_and_counted_and_nothing_else_changes(
    make_node: Callable[..., Node], certificates: Certificates, tmp_path: Path
) -> None:
    standin = ApiServerStandIn(certificates, "s3cr3t-token")
    standin.event_status = 403
    standin.add(too_big_mirror_pod())
    standin.start()
    try:
        node = make_node(
            extra_settings={
                "nodeName": "node-a",
                "podSources": ["apiserver"],
                "apiServer": {
                    "kubeconfig": str(kubeconfig(tmp_path / "kc", standin, certificates))
                },
            }
        )
        node.start()
        node.wait_for(lambda rs: bool(rejected(rs, KUBELET_UID)))
        wait_until(
            lambda: node.metric('memstate_pod_rejection_events_total{result="failed"}') == 1.0,
            "the refused Event is not counted",
        )
        assert "HTTP 403" in node.stderr()
        assert standin.events == []
        standin.add(kube_pod("small", SMALL_UID))
        node.wait_for(
            lambda rs: any(
                isinstance(r.event, PodAdmitted) and r.event.uid == SMALL_UID for r in rs
            )
        )
        assert node.alive()
        assert node.terminate() == 0
    finally:
        standin.stop()
