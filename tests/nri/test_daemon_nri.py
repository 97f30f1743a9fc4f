"""`memstate run` with `nri:` configured, against the Python runtime stand-in over a real unix
socket (tests.nri.standin: its own framing and protobuf encoder, no memstate.nri code).

The daemon is the real process (tests.daemon.harness.Node): pods come from its manifest
directory, decisions are read back from its event log, and the stand-in plays containerd.
"""

from __future__ import annotations

from pathlib import Path

import trio

from memstate.core.events import PodRemoved
from tests.daemon.harness import Node
from tests.nri import daemon_node as dn
from tests.nri import wire
from tests.nri.standin import WAIT, StandInRuntime


async def _start(node: Node, runtime: StandInRuntime, nursery: trio.Nursery) -> None:
    await trio.to_thread.run_sync(node.start)
    await runtime.accept(nursery)
    reply = await runtime.call("Configure", wire.configure_request())
    assert reply.code == 0, reply


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
                        {dn.PINNED, dn.BURSTABLE} <= set(dn.decisions(node)[0])
                        and dn.REJECTED in dn.decisions(node)[1]
                    )
                )
            )
            admitted, rejected = dn.decisions(node)
            assert admitted[dn.PINNED].allocation is not None  # the Static policy pinned it
            reply = await runtime.call("Synchronize", wire.synchronize_request([], [], False))
            assert reply.code == 0, reply

            # A pod life cycle with several containers per pod.
            first: dict[str, wire.Adjusted] = {}
            for uid, containers in dn.CONTAINERS.items():
                reply = await runtime.call("RunPodSandbox", wire.pod_request(dn.sandbox(uid)))
                assert reply.code == 0, reply
                for container_id, name in containers:
                    request = wire.container_request(
                        dn.sandbox(uid), dn.container(uid, container_id, name)
                    )
                    reply = await runtime.call("CreateContainer", request)
                    assert reply.code == 0, reply
                    got = wire.create_response_adjustment(reply.payload)
                    assert got == dn.expected(node, admitted[uid], name)
                    first[container_id] = got
            pinned_nodes = first["c-app"].mems
            assert pinned_nodes and first["c-side"].mems == pinned_nodes
            assert first["c-web"].mems == ""  # a Burstable pod is not pinned
            assert {"memory.min", "memory.low"} <= set(first["c-app"].unified)
            assert {"memory.min", "memory.low"} <= set(first["c-web"].unified)

            # UpdateContainer re-applies memstate's values.
            update = wire.container_request(
                dn.sandbox(dn.PINNED), dn.container(dn.PINNED, "c-app", "app")
            )
            reply = await runtime.call("UpdateContainer", update)
            assert reply.code == 0, reply
            assert wire.updates_of(reply.payload) == {"c-app": first["c-app"]}

            # A rejected pod: sandbox and container creation refused with the upstream reason.
            reason = rejected[dn.REJECTED].reason
            reply = await runtime.call("RunPodSandbox", wire.pod_request(dn.sandbox(dn.REJECTED)))
            assert reply.code == dn.FAILED_PRECONDITION
            assert reply.message.startswith(f"{reason}: ") and rejected[dn.REJECTED].message in (
                reply.message
            )
            request = wire.container_request(
                dn.sandbox(dn.REJECTED), dn.container(dn.REJECTED, "c-big", "big")
            )
            reply = await runtime.call("CreateContainer", request)
            assert reply.code == dn.FAILED_PRECONDITION and reply.message.startswith(f"{reason}: ")

            # A pod no source knows: let through unchanged after the bounded wait (fail-open).
            request = wire.container_request(
                dn.sandbox(dn.UNKNOWN), dn.container(dn.UNKNOWN, "c-x", "x")
            )
            reply = await runtime.call("CreateContainer", request)
            assert reply.code == 0 and wire.create_response_adjustment(reply.payload) == (
                wire.Adjusted(mems="", unified={})
            )

            # The connection state is published within a status interval: wait for it.
            with trio.fail_after(WAIT):
                while not dn.daemon_status(node)["nri"]["connected"]:
                    await trio.sleep(0.05)
            assert dn.daemon_status(node)["nri"]["plugin"] == "50-memstate"
            assert node.metric("memstate_nri_connected") == 1.0
            metrics = node.metrics()
            assert 'method="CreateContainer",result="adjusted"} 4.0' in metrics
            assert 'method="CreateContainer",result="refused"} 1.0' in metrics
            assert 'method="CreateContainer",result="unknown_pod"} 1.0' in metrics

            # memstate is SIGKILLed and restarted: Synchronize (split, in another order)
            # readmits the running pods with identical allocations and values.
            before = {uid: admitted[uid].allocation for uid in dn.CONTAINERS}
            await trio.to_thread.run_sync(node.kill)
            await runtime.wait_closed()
            await _start(node, runtime, nursery)
            pods = [dn.sandbox(dn.BURSTABLE), dn.sandbox(dn.PINNED)]
            containers = [
                dn.container(uid, container_id, name)
                for uid in (dn.BURSTABLE, dn.PINNED)
                for container_id, name in reversed(dn.CONTAINERS[uid])
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
            after = dn.allocations_since_restart(node)
            assert {uid: after.get(uid, before[uid]) for uid in dn.CONTAINERS} == before

            # The pod goes: its source says so (the file is removed), the runtime stops and
            # removes it; memstate answers every call and releases the pod as without NRI.
            (node.manifest_dir / "burstable.yaml").unlink()
            for container_id, name in dn.CONTAINERS[dn.BURSTABLE]:
                request = wire.container_request(
                    dn.sandbox(dn.BURSTABLE), dn.container(dn.BURSTABLE, container_id, name)
                )
                for method in ("StopContainer", "RemoveContainer"):
                    reply = await runtime.call(method, request)
                    assert reply.code == 0, (method, reply)
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                reply = await runtime.call(method, wire.pod_request(dn.sandbox(dn.BURSTABLE)))
                assert reply.code == 0, (method, reply)
            await trio.to_thread.run_sync(
                lambda: node.wait_for(
                    lambda records: any(
                        isinstance(r.event, PodRemoved) and r.event.uid == dn.BURSTABLE
                        for r in records
                    )
                )
            )
            await trio.to_thread.run_sync(node.terminate)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
