"""The NRI plugin against an independent runtime peer in Go on the real containerd/ttrpc library
(tests/nri/gopeer, built offline from Debian's golang-go and golang-github-containerd-ttrpc-dev;
.ci/run installs them). The Go peer owns the socket, runs its own multiplexer with the Go
receiver's rules (one frame per read into a 4 KiB buffer, 256 queued frames) and calls the plugin
through ttrpc.Client; NRI payloads are built and checked by tests.nri.wire.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from memstate.nri.adapter import TargetsDecider
from memstate.nri.plugin import NriPlugin, PluginSettings
from tests.nri import wire
from tests.nri.gopeer_runtime import GoRuntime
from tests.nri.scenario import BURSTABLE, PINNED, REJECTED, Gi, node_decisions

FAILED_PRECONDITION = 9
RESOURCE_EXHAUSTED = 8


@pytest.fixture
async def go_runtime(
    go_peer_binary: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[GoRuntime, NriPlugin]]:
    directory = tempfile.mkdtemp(prefix="nri-", dir="/tmp")
    socket_path = f"{directory}/nri.sock"
    runtime = await GoRuntime.start(go_peer_binary, socket_path, nursery)
    decisions = node_decisions()
    plugin = NriPlugin(
        PluginSettings(socket=socket_path, index="42", backoff_initial=0.01, backoff_max=0.2),
        TargetsDecider(lambda: decisions),
    )
    nursery.start_soon(plugin.run)
    await runtime.connected()
    try:
        yield runtime, plugin
    finally:
        await runtime.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _pod(sandbox_id: str, uid: str, parent: str = "kubepods-pod.slice") -> bytes:
    return wire.pod_sandbox(sandbox_id, uid, sandbox_id, parent)


async def test_go_peer_full_scenario(go_runtime: tuple[GoRuntime, NriPlugin]) -> None:
    runtime, plugin = go_runtime
    assert runtime.registered_as(0) == ("memstate", "42")

    reply = await runtime.call("Configure", wire.configure_request())
    assert reply.code == 0 and wire.one(wire.decode(reply.payload), 2) == 0x068F

    pinned = _pod("sb-pinned", PINNED)
    app = wire.container("c-app", "sb-pinned", PINNED, "app", memory_limit=Gi)
    # Split Synchronize; the first chunk is over 4 KiB so Go frames it in two.
    filler = [wire.container(f"c-f{i}", "sb-pinned", PINNED, "app") for i in range(60)]
    reply = await runtime.call("Synchronize", wire.synchronize_request([pinned], filler, True))
    assert reply.code == 0 and wire.decode(reply.payload) == {2: [1]}
    reply = await runtime.call("Synchronize", wire.synchronize_request([], [app], False))
    assert reply.code == 0
    updates = wire.updates_of(reply.payload)
    assert len(updates) == 61 and updates["c-app"].mems == "0"

    # Pod life cycle with several containers.
    assert (await runtime.call("RunPodSandbox", wire.pod_request(pinned))).code == 0
    for cid, name, memory in (("c-1", "app", Gi), ("c-2", "sidecar", Gi // 2)):
        container = wire.container(cid, "sb-pinned", PINNED, name, memory_limit=memory)
        reply = await runtime.call("CreateContainer", wire.container_request(pinned, container))
        assert reply.code == 0
        adjusted = wire.create_response_adjustment(reply.payload)
        assert adjusted.mems == "0" and adjusted.unified["memory.min"] == str(memory)
    burst = _pod("sb-burst", BURSTABLE, "kubepods-burstable-pod.slice")
    web = wire.container("c-web", "sb-burst", BURSTABLE, "web", memory_limit=Gi)
    reply = await runtime.call("CreateContainer", wire.container_request(burst, web))
    assert reply.code == 0
    assert wire.create_response_adjustment(reply.payload).unified["memory.low"] == str(256 << 20)
    for method in ("StopContainer", "RemoveContainer"):
        container = wire.container("c-1", "sb-pinned", PINNED, "app")
        assert (await runtime.call(method, wire.container_request(pinned, container))).code == 0
    assert (await runtime.call("RemovePodSandbox", wire.pod_request(pinned))).code == 0

    # Rejected pod: creation refused with the upstream reason.
    big_pod = _pod("sb-big", REJECTED)
    big = wire.container("c-big", "sb-big", REJECTED, "big", memory_limit=20 * Gi)
    reply = await runtime.call("CreateContainer", wire.container_request(big_pod, big))
    assert reply.code == FAILED_PRECONDITION
    assert reply.message.startswith("UnexpectedAdmissionError: Allocate failed")

    # Unknown method: UNIMPLEMENTED through the real client.
    reply = await runtime.call("PostStartContainer", wire.container_request(pinned, app))
    assert (reply.code, reply.message) == (12, "method PostStartContainer")

    # An oversized request through the real client: RESOURCE_EXHAUSTED, connection kept.
    reply = await runtime.call("CreateContainer", b"\0" * (4 * 2**20 + 1))
    assert reply.code == RESOURCE_EXHAUSTED
    assert "exceed maximum message size" in reply.message
    assert (await runtime.call("Configure", wire.configure_request())).code == 0

    # Runtime restart: the plugin reconnects, registers again and is synchronized afresh.
    await runtime.command(op="restart")
    await runtime.connected()
    assert len(runtime.registrations) == 2
    reply = await runtime.call("Configure", wire.configure_request())
    assert reply.code == 0
    reply = await runtime.call("Synchronize", wire.synchronize_request([pinned], [app], False))
    assert wire.updates_of(reply.payload)["c-app"].mems == "0"
    assert plugin.status.sessions == 2


async def test_go_peer_plugin_process_sigkill_and_restart(
    go_peer_binary: Path, nursery: trio.Nursery
) -> None:
    """memstate's plugin process SIGKILLed under the Go runtime: the runtime sees the connection
    close; a new process registers and its Synchronize re-applies what creation answered."""
    directory = tempfile.mkdtemp(prefix="nri-", dir="/tmp")
    socket_path = f"{directory}/nri.sock"
    runtime = await GoRuntime.start(go_peer_binary, socket_path, nursery)
    plugins: list[trio.Process] = []

    async def start_plugin() -> None:
        plugins.append(
            await trio.lowlevel.open_process(
                [sys.executable, "-m", "tests.nri.plugin_process", socket_path],
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        )
        await runtime.connected()

    try:
        await start_plugin()
        assert (await runtime.call("Configure", wire.configure_request())).code == 0
        pod = _pod("sb-pinned", PINNED)
        created = {}
        for cid, name, memory in (("c-1", "app", Gi), ("c-2", "sidecar", Gi // 2)):
            container = wire.container(cid, "sb-pinned", PINNED, name, memory_limit=memory)
            reply = await runtime.call("CreateContainer", wire.container_request(pod, container))
            created[cid] = wire.create_response_adjustment(reply.payload)
        plugins[0].send_signal(signal.SIGKILL)
        await runtime.event("closed")
        # The Go peer accepts one plugin per listen (containerd keeps accepting): listen again.
        await runtime.command(op="restart")
        await start_plugin()
        assert (await runtime.call("Configure", wire.configure_request())).code == 0
        running = [
            wire.container("c-1", "sb-pinned", PINNED, "app", memory_limit=Gi),
            wire.container("c-2", "sb-pinned", PINNED, "sidecar", memory_limit=Gi // 2),
        ]
        reply = await runtime.call("Synchronize", wire.synchronize_request([pod], running, False))
        assert wire.updates_of(reply.payload) == created
    finally:
        for process in plugins:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await runtime.stop()
        shutil.rmtree(directory, ignore_errors=True)
