"""`memstate run` with `nri:` configured, against the Python runtime stand-in over a real unix
socket (tests.nri.standin: its own framing and protobuf encoder, no memstate.nri code).

The daemon is the real process (tests.daemon.harness.Node): pods come from its manifest
directory, decisions are read back from its event log, and the stand-in plays containerd.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from memstate.core.events import ConfigLoaded, PodAdmitted, PodRejected, PodRemoved
from memstate.nri.adapter import adjustment_for
from tests.daemon.harness import Node
from tests.nri import wire
from tests.nri.standin import WAIT, StandInRuntime

FAILED_PRECONDITION = 9
PINNED = "aaaaaaaa-0000-0000-0000-000000000001"
BURSTABLE = "aaaaaaaa-0000-0000-0000-000000000002"
REJECTED = "aaaaaaaa-0000-0000-0000-000000000003"
UNKNOWN = "aaaaaaaa-0000-0000-0000-000000000004"


def _pod(uid: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{uid[-1]}", "namespace": "default", "uid": uid},
        "spec": {"containers": containers},
    }


def _guaranteed(name: str, memory: str) -> dict[str, Any]:
    return {"name": name, "image": "x", "resources": {"limits": {"memory": memory, "cpu": "1"}}}


def _burstable(name: str, request: str, limit: str) -> dict[str, Any]:
    resources = {"requests": {"memory": request}, "limits": {"memory": limit}}
    return {"name": name, "image": "x", "resources": resources}


CONTAINERS = {
    PINNED: [("c-app", "app"), ("c-side", "sidecar")],
    BURSTABLE: [("c-web", "web"), ("c-log", "log")],
}


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A unix socket path must fit in 108 bytes: pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="nri", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path, socket_dir: Path) -> Iterator[Node]:
    """A node with `nri:` on the stand-in's socket, its pods in the manifest directory; the
    daemon is killed at the end whatever happened."""
    made = _node(tmp_path / "node", socket_dir / "nri.sock")
    yield made
    if made.alive():
        made.kill()


def _node(root: Path, socket_path: Path) -> Node:
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
        "pinned.yaml", _pod(PINNED, [_guaranteed("app", "1Gi"), _guaranteed("sidecar", "512Mi")])
    )
    node.drop(
        "burstable.yaml",
        _pod(BURSTABLE, [_burstable("web", "256Mi", "1Gi"), _burstable("log", "64Mi", "256Mi")]),
    )
    node.drop("rejected.yaml", _pod(REJECTED, [_guaranteed("big", "20Gi")]))
    return node


def _decisions(node: Node) -> tuple[dict[str, PodAdmitted], dict[str, PodRejected]]:
    admitted: dict[str, PodAdmitted] = {}
    rejected: dict[str, PodRejected] = {}
    for record in node.records():
        if isinstance(record.event, PodAdmitted):
            admitted[record.event.uid] = record.event
        elif isinstance(record.event, PodRejected) and record.event.uid:
            rejected[record.event.uid] = record.event
    return admitted, rejected


def _expected(node: Node, decision: PodAdmitted, name: str) -> wire.Adjusted:
    """What memstate's own recorded decision says the container gets (cpuset.mems of the pod's
    NUMA nodes, the container's unified values), via the core mapping."""
    assert decision.targets is not None
    config = next(
        r.event.config for r in reversed(node.records()) if isinstance(r.event, ConfigLoaded)
    )
    adjustment = adjustment_for(decision.targets, name, config)
    return wire.Adjusted(mems=adjustment.cpuset_mems, unified=dict(adjustment.unified))


def _sandbox(uid: str) -> bytes:
    return wire.pod_sandbox(f"sb-{uid[-1]}", uid, f"pod-{uid[-1]}")


def _container(uid: str, container_id: str, name: str) -> bytes:
    return wire.container(container_id, f"sb-{uid[-1]}", uid, name)


async def _start(node: Node, runtime: StandInRuntime, nursery: trio.Nursery) -> None:
    await trio.to_thread.run_sync(node.start)
    await runtime.accept(nursery)
    reply = await runtime.call("Configure", wire.configure_request())
    assert reply.code == 0, reply


def _daemon_status(node: Node) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((node.state_dir / "daemon-status.json").read_bytes())
    return document


def test_pod_lifecycle_refusal_and_restart_readmission(node: Node, socket_dir: Path) -> None:
    socket_path = socket_dir / "nri.sock"

    async def scenario() -> None:
        runtime = StandInRuntime(str(socket_path))
        await runtime.listen()
        async with trio.open_nursery() as nursery:
            await _start(node, runtime, nursery)
            assert runtime.registrations == [("memstate", "50")]
            await trio.to_thread.run_sync(
                lambda: node.wait_for(
                    lambda records: (
                        {PINNED, BURSTABLE} <= set(_decisions(node)[0])
                        and REJECTED in _decisions(node)[1]
                    )
                )
            )
            admitted, rejected = _decisions(node)
            assert admitted[PINNED].allocation is not None  # the Static policy pinned it
            reply = await runtime.call("Synchronize", wire.synchronize_request([], [], False))
            assert reply.code == 0, reply

            # A pod life cycle with several containers per pod.
            first: dict[str, wire.Adjusted] = {}
            for uid, containers in CONTAINERS.items():
                reply = await runtime.call("RunPodSandbox", wire.pod_request(_sandbox(uid)))
                assert reply.code == 0, reply
                for container_id, name in containers:
                    request = wire.container_request(
                        _sandbox(uid), _container(uid, container_id, name)
                    )
                    reply = await runtime.call("CreateContainer", request)
                    assert reply.code == 0, reply
                    got = wire.create_response_adjustment(reply.payload)
                    assert got == _expected(node, admitted[uid], name)
                    first[container_id] = got
            pinned_nodes = first["c-app"].mems
            assert pinned_nodes and first["c-side"].mems == pinned_nodes
            assert first["c-web"].mems == ""  # a Burstable pod is not pinned
            assert {"memory.min", "memory.low"} <= set(first["c-app"].unified)
            assert {"memory.min", "memory.low"} <= set(first["c-web"].unified)

            # UpdateContainer re-applies memstate's values.
            update = wire.container_request(_sandbox(PINNED), _container(PINNED, "c-app", "app"))
            reply = await runtime.call("UpdateContainer", update)
            assert reply.code == 0, reply
            assert wire.updates_of(reply.payload) == {"c-app": first["c-app"]}

            # A rejected pod: sandbox and container creation refused with the upstream reason.
            reason = rejected[REJECTED].reason
            reply = await runtime.call("RunPodSandbox", wire.pod_request(_sandbox(REJECTED)))
            assert reply.code == FAILED_PRECONDITION
            assert reply.message.startswith(f"{reason}: ") and rejected[REJECTED].message in (
                reply.message
            )
            request = wire.container_request(
                _sandbox(REJECTED), _container(REJECTED, "c-big", "big")
            )
            reply = await runtime.call("CreateContainer", request)
            assert reply.code == FAILED_PRECONDITION and reply.message.startswith(f"{reason}: ")

            # A pod no source knows: let through unchanged after the bounded wait (fail-open).
            request = wire.container_request(_sandbox(UNKNOWN), _container(UNKNOWN, "c-x", "x"))
            reply = await runtime.call("CreateContainer", request)
            assert reply.code == 0 and wire.create_response_adjustment(reply.payload) == (
                wire.Adjusted(mems="", unified={})
            )

            # The connection state is published within a status interval: wait for it.
            with trio.fail_after(WAIT):
                while not _daemon_status(node)["nri"]["connected"]:
                    await trio.sleep(0.05)
            assert _daemon_status(node)["nri"]["plugin"] == "50-memstate"
            assert node.metric("memstate_nri_connected") == 1.0
            metrics = node.metrics()
            assert 'method="CreateContainer",result="adjusted"} 4.0' in metrics
            assert 'method="CreateContainer",result="refused"} 1.0' in metrics
            assert 'method="CreateContainer",result="unknown_pod"} 1.0' in metrics

            # memstate is SIGKILLed and restarted: Synchronize (split, in another order)
            # readmits the running pods with identical allocations and values.
            before = {uid: admitted[uid].allocation for uid in CONTAINERS}
            await trio.to_thread.run_sync(node.kill)
            await runtime.wait_closed()
            await _start(node, runtime, nursery)
            pods = [_sandbox(BURSTABLE), _sandbox(PINNED)]
            containers = [
                _container(uid, container_id, name)
                for uid in (BURSTABLE, PINNED)
                for container_id, name in reversed(CONTAINERS[uid])
            ]
            reply = await runtime.call(
                "Synchronize", wire.synchronize_request(pods[:1], containers[:2], True)
            )
            assert reply.code == 0 and wire.updates_of(reply.payload) == {}
            reply = await runtime.call(
                "Synchronize", wire.synchronize_request(pods[1:], containers[2:], False)
            )
            assert reply.code == 0, reply
            assert wire.updates_of(reply.payload) == first
            # Readmission after the restart recorded the same allocation for every pod.
            records = node.records()
            restart = max(i for i, r in enumerate(records) if r.event.kind == "daemon_restarted")
            after = {
                r.event.uid: r.event.allocation
                for r in records[restart:]
                if isinstance(r.event, PodAdmitted)
            }
            assert {uid: after.get(uid, before[uid]) for uid in CONTAINERS} == before

            # The pod goes: its source says so (the file is removed), the runtime stops and
            # removes it; memstate answers every call and releases the pod as without NRI.
            (node.manifest_dir / "burstable.yaml").unlink()
            for container_id, name in CONTAINERS[BURSTABLE]:
                request = wire.container_request(
                    _sandbox(BURSTABLE), _container(BURSTABLE, container_id, name)
                )
                for method in ("StopContainer", "RemoveContainer"):
                    reply = await runtime.call(method, request)
                    assert reply.code == 0, (method, reply)
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                reply = await runtime.call(method, wire.pod_request(_sandbox(BURSTABLE)))
                assert reply.code == 0, (method, reply)
            await trio.to_thread.run_sync(
                lambda: node.wait_for(
                    lambda records: any(
                        isinstance(r.event, PodRemoved) and r.event.uid == BURSTABLE
                        for r in records
                    )
                )
            )
            await trio.to_thread.run_sync(node.terminate)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
