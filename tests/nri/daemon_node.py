"""The node of the NRI daemon tests: a real `memstate run` (tests.daemon.harness.Node) with `nri:`
on a socket, three pods in its manifest directory (pinned Guaranteed, Burstable, too large and
rejected), and what its event log says each container should get. Shared by the stand-in
(test_daemon_nri.py) and Go peer (test_go_peer_daemon.py) runs of the same scenario.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memstate.core.events import ConfigLoaded, PodAdmitted, PodRejected
from memstate.nri.adapter import adjustment_for
from tests.daemon.harness import Node
from tests.nri import wire

FAILED_PRECONDITION = 9
PINNED = "aaaaaaaa-0000-0000-0000-000000000001"
BURSTABLE = "aaaaaaaa-0000-0000-0000-000000000002"
REJECTED = "aaaaaaaa-0000-0000-0000-000000000003"
UNKNOWN = "aaaaaaaa-0000-0000-0000-000000000004"


def pod(uid: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    """A pod manifest for the manifest directory."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{uid[-1]}", "namespace": "default", "uid": uid},
        "spec": {"containers": containers},
    }


def guaranteed(name: str, memory: str) -> dict[str, Any]:
    return {"name": name, "image": "x", "resources": {"limits": {"memory": memory, "cpu": "1"}}}


def burstable(name: str, request: str, limit: str) -> dict[str, Any]:
    resources = {"requests": {"memory": request}, "limits": {"memory": limit}}
    return {"name": name, "image": "x", "resources": resources}


CONTAINERS = {
    PINNED: [("c-app", "app"), ("c-side", "sidecar")],
    BURSTABLE: [("c-web", "web"), ("c-log", "log")],
}


def daemon_node(root: Path, socket_path: Path) -> Node:
    """The node (not started) with `nri:` on `socket_path` and the three pods' manifests."""
    node = Node(
        root,
        extra_settings={
            "nri": {
                "socket": str(socket_path),
                "pluginName": "memstate",
                "pluginIndex": "50",
                "unknownPodWaitSeconds": 0.3,
            }
        },
    )
    node.drop(
        "pinned.yaml", pod(PINNED, [guaranteed("app", "1Gi"), guaranteed("sidecar", "512Mi")])
    )
    node.drop(
        "burstable.yaml",
        pod(BURSTABLE, [burstable("web", "256Mi", "1Gi"), burstable("log", "64Mi", "256Mi")]),
    )
    node.drop("rejected.yaml", pod(REJECTED, [guaranteed("big", "20Gi")]))
    return node


def decisions(node: Node) -> tuple[dict[str, PodAdmitted], dict[str, PodRejected]]:
    """The last admission and rejection recorded per pod UID."""
    admitted: dict[str, PodAdmitted] = {}
    rejected: dict[str, PodRejected] = {}
    for record in node.records():
        if isinstance(record.event, PodAdmitted):
            admitted[record.event.uid] = record.event
        elif isinstance(record.event, PodRejected) and record.event.uid:
            rejected[record.event.uid] = record.event
    return admitted, rejected


def expected(node: Node, decision: PodAdmitted, name: str) -> wire.Adjusted:
    """What memstate's own recorded decision says the container gets (cpuset.mems of the pod's
    NUMA nodes, the container's unified values), via the core mapping."""
    assert decision.targets is not None
    config = next(
        r.event.config for r in reversed(node.records()) if isinstance(r.event, ConfigLoaded)
    )
    adjustment = adjustment_for(decision.targets, name, config)
    return wire.Adjusted(mems=adjustment.cpuset_mems, unified=dict(adjustment.unified))


def sandbox(uid: str) -> bytes:
    """The runtime's PodSandbox message for the pod."""
    return wire.pod_sandbox(f"sb-{uid[-1]}", uid, f"pod-{uid[-1]}")


def container(uid: str, container_id: str, name: str) -> bytes:
    """The runtime's Container message for a container of the pod."""
    return wire.container(container_id, f"sb-{uid[-1]}", uid, name)


def daemon_status(node: Node) -> dict[str, Any]:
    """The daemon's daemon-status.json."""
    document: dict[str, Any] = json.loads((node.state_dir / "daemon-status.json").read_bytes())
    return document


def allocations_since_restart(node: Node) -> dict[str, object]:
    """Allocation per pod UID recorded by the readmission after the last daemon restart."""
    records = node.records()
    restart = max(i for i, r in enumerate(records) if r.event.kind == "daemon_restarted")
    return {
        r.event.uid: r.event.allocation
        for r in records[restart:]
        if isinstance(r.event, PodAdmitted)
    }
