"""The real `memstate run` (nri enabled, over a real unix socket) with the Go runtime peer on the
real containerd/ttrpc library as the runtime (tests/nri/gopeer): registration, Configure, a split
Synchronize, a pod life cycle with several containers, a refused creation, a runtime restart, and
memstate SIGKILLed and restarted (a split Synchronize in another order readmits with identical
allocations and answers identical values). The same scenario as test_daemon_nri.py, whose runtime
is the Python stand-in; the Go peer frames like containerd (a message over 4 KiB leaves as two
frames) and enforces the Go receiver's rules on what memstate sends.
"""

from __future__ import annotations

from pathlib import Path

import trio

from memstate.core.events import PodRemoved
from tests.daemon.harness import Node
from tests.nri import daemon_node as dn
from tests.nri import wire
from tests.nri.gopeer_runtime import WAIT, GoRuntime

EVENT_MASK = 0x068F
# Containers of the pinned pod listed by Synchronize so that its first chunk is over 4 KiB and
# leaves the Go client as two frames.
FILLER = 60


async def _start(node: Node, runtime: GoRuntime) -> None:
    """Start the daemon; wait until its plugin registered; Configure it."""
    await trio.to_thread.run_sync(node.start)
    await runtime.connected()
    reply = await runtime.call("Configure", wire.configure_request())
    assert reply.code == 0, reply
    assert wire.one(wire.decode(reply.payload), 2) == EVENT_MASK


def _requests(uid: str) -> list[tuple[str, bytes]]:
    return [
        (container_id, wire.container_request(dn.sandbox(uid), dn.container(uid, container_id, n)))
        for container_id, n in dn.CONTAINERS[uid]
    ]


def test_go_runtime_against_the_daemon(node: Node, socket_dir: Path, go_peer_binary: Path) -> None:
    socket_path = str(socket_dir / "nri.sock")

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            runtime = await GoRuntime.start(go_peer_binary, socket_path, nursery)
            try:
                await _run(runtime)
            finally:
                await runtime.stop()
            nursery.cancel_scope.cancel()

    async def _run(runtime: GoRuntime) -> None:
        # Registration and configure.
        await _start(node, runtime)
        assert runtime.registered_as(0) == ("memstate", "50")
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
        app = dn.expected(node, admitted[dn.PINNED], "app")
        assert app.mems

        # A split Synchronize: the first chunk (over 4 KiB) is answered "more" with no updates,
        # the last one carries the updates for the whole set.
        filler = [dn.container(dn.PINNED, f"c-f{i}", "app") for i in range(FILLER)]
        assert len(wire.synchronize_request([dn.sandbox(dn.PINNED)], filler, True)) > 4096
        reply = await runtime.call(
            "Synchronize", wire.synchronize_request([dn.sandbox(dn.PINNED)], filler, True)
        )
        assert reply.code == 0 and wire.decode(reply.payload) == {2: [1]}, reply
        reply = await runtime.call("Synchronize", wire.synchronize_request([], [], False))
        assert reply.code == 0, reply
        assert wire.updates_of(reply.payload) == {f"c-f{i}": app for i in range(FILLER)}

        # A pod life cycle with several containers per pod: each answer is what the daemon's
        # own recorded decision says.
        first: dict[str, wire.Adjusted] = {}
        for uid in dn.CONTAINERS:
            reply = await runtime.call("RunPodSandbox", wire.pod_request(dn.sandbox(uid)))
            assert reply.code == 0, reply
            for (container_id, request), (_, name) in zip(
                _requests(uid), dn.CONTAINERS[uid], strict=True
            ):
                reply = await runtime.call("CreateContainer", request)
                assert reply.code == 0, reply
                got = wire.create_response_adjustment(reply.payload)
                assert got == dn.expected(node, admitted[uid], name)
                first[container_id] = got
        assert first["c-app"] == app and first["c-side"].mems == app.mems
        assert first["c-web"].mems == ""  # a Burstable pod is not pinned
        reply = await runtime.call("UpdateContainer", _requests(dn.PINNED)[0][1])
        assert reply.code == 0 and wire.updates_of(reply.payload) == {"c-app": app}, reply

        # A rejected pod: its sandbox and its container creation refused with the reason.
        reason = rejected[dn.REJECTED].reason
        reply = await runtime.call("RunPodSandbox", wire.pod_request(dn.sandbox(dn.REJECTED)))
        assert reply.code == dn.FAILED_PRECONDITION, reply
        assert reply.message.startswith(f"{reason}: ")
        assert rejected[dn.REJECTED].message in reply.message
        big = wire.container_request(
            dn.sandbox(dn.REJECTED), dn.container(dn.REJECTED, "c-big", "big")
        )
        reply = await runtime.call("CreateContainer", big)
        assert reply.code == dn.FAILED_PRECONDITION and reply.message.startswith(f"{reason}: ")

        # The runtime restarts (connection and socket gone, a new socket): the daemon's plugin
        # reconnects on its own, registers again and gets the same values at Synchronize.
        await runtime.command(op="restart")
        await runtime.connected()
        assert runtime.registered_as(1) == ("memstate", "50")
        reply = await runtime.call("Configure", wire.configure_request())
        assert reply.code == 0, reply
        running = [dn.sandbox(uid) for uid in dn.CONTAINERS]
        containers = [
            dn.container(uid, container_id, name)
            for uid in dn.CONTAINERS
            for container_id, name in dn.CONTAINERS[uid]
        ]
        reply = await runtime.call(
            "Synchronize", wire.synchronize_request(running, containers, False)
        )
        assert reply.code == 0 and wire.updates_of(reply.payload) == first, reply
        with trio.fail_after(WAIT):
            while dn.daemon_status(node)["nri"]["sessions"] < 2:
                await trio.sleep(0.05)

        # memstate SIGKILLed and restarted: the runtime sees the connection close; the new
        # process registers, and a split Synchronize listing the pods in another order readmits
        # them with identical allocations and answers identical values.
        before = {uid: admitted[uid].allocation for uid in dn.CONTAINERS}
        await trio.to_thread.run_sync(node.kill)
        await runtime.event("closed")
        await runtime.command(op="restart")  # the peer accepts one plugin per listen
        await _start(node, runtime)
        assert runtime.registered_as(2) == ("memstate", "50")
        reordered = list(reversed(containers))
        reply = await runtime.call(
            "Synchronize", wire.synchronize_request(running[1:], reordered[:2], True)
        )
        assert reply.code == 0 and wire.updates_of(reply.payload) == {}, reply
        reply = await runtime.call(
            "Synchronize", wire.synchronize_request(running[:1], reordered[2:], False)
        )
        assert reply.code == 0 and wire.updates_of(reply.payload) == first, reply
        after = dn.allocations_since_restart(node)
        assert {uid: after.get(uid, before[uid]) for uid in dn.CONTAINERS} == before
        # Creation after the restart answers as before it.
        reply = await runtime.call("CreateContainer", _requests(dn.PINNED)[1][1])
        assert wire.create_response_adjustment(reply.payload) == first["c-side"], reply

        # The Burstable pod goes: its source says so, the runtime stops and removes it; memstate
        # answers every call and releases the pod as without NRI.
        (node.manifest_dir / "burstable.yaml").unlink()
        for _, request in _requests(dn.BURSTABLE):
            for method in ("StopContainer", "RemoveContainer"):
                reply = await runtime.call(method, request)
                assert reply.code == 0, (method, reply)
        for method in ("StopPodSandbox", "RemovePodSandbox"):
            reply = await runtime.call(method, wire.pod_request(dn.sandbox(dn.BURSTABLE)))
            assert reply.code == 0, (method, reply)
        await trio.to_thread.run_sync(
            lambda: node.wait_for(
                lambda records: any(
                    isinstance(r.event, PodRemoved) and r.event.uid == dn.BURSTABLE for r in records
                )
            )
        )
        assert node.alive()
        await trio.to_thread.run_sync(node.terminate)

    trio.run(scenario)
