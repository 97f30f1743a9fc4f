"""The NRI plugin against a Python runtime stand-in over a real unix socket.

The stand-in (tests.nri.standin, tests.nri.wire) shares no code with memstate.nri: every byte
memstate sends is parsed by an independent implementation of the protocol facts.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from memstate.core.errors import InvariantViolation, LogIOError
from memstate.nri.adapter import TargetsDecider
from memstate.nri.decider import ContainerInfo, Refusal, ResourceAdjustment, SandboxInfo
from memstate.nri.plugin import NriPlugin, PluginSettings
from tests.nri import wire
from tests.nri.scenario import BURSTABLE, PINNED, REJECTED, UNKNOWN, Gi, node_decisions
from tests.nri.standin import WAIT, StandInRuntime

UNIMPLEMENTED = 12
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
INTERNAL = 13
MEMSTATE_MASK = 0x068F
GUARANTEED_PARENT = "kubepods-pod1111.slice"
BURSTABLE_PARENT = "kubepods-burstable-pod2222.slice"


@dataclass
class Harness:
    runtime: StandInRuntime
    plugin: NriPlugin
    decider: TargetsDecider
    nursery: trio.Nursery

    async def reconnected(self) -> None:
        """Wait for the plugin to come back after the runtime side dropped it."""
        await self.runtime.restart()
        await self.runtime.accept(self.nursery)

    async def configure(self) -> wire.Fields:
        reply = await self.runtime.call("Configure", wire.configure_request())
        assert reply.code == 0, reply
        return wire.decode(reply.payload)


@contextlib.asynccontextmanager
async def running_plugin(
    nursery: trio.Nursery, decider_class: type[TargetsDecider] = TargetsDecider, **settings: float
) -> AsyncIterator[Harness]:
    """A stand-in runtime and a plugin connected and registered to it."""
    directory = tempfile.mkdtemp(prefix="nri-", dir="/tmp")  # unix socket paths are short
    try:
        runtime = StandInRuntime(f"{directory}/nri.sock")
        await runtime.listen()
        decisions = node_decisions()
        decider = decider_class(lambda: decisions)
        options: dict[str, float] = {
            # Long by default: on a loaded machine a sender may pause between pieces of a large
            # message; only the stall test shortens it.
            "stall_timeout": 30.0,
            "backoff_initial": 0.01,
            "backoff_max": 0.2,
            "registration_timeout": 30.0,
            **settings,
        }
        plugin = NriPlugin(
            PluginSettings(socket=runtime.path, name="memstate", index="42", **options), decider
        )
        nursery.start_soon(plugin.run)
        await runtime.accept(nursery)
        yield Harness(runtime, plugin, decider, nursery)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def harness(nursery: trio.Nursery) -> AsyncIterator[Harness]:
    async with running_plugin(nursery) as running:
        yield running


def pinned_pod() -> bytes:
    return wire.pod_sandbox("sb-pinned", PINNED, "pinned", GUARANTEED_PARENT)


def burstable_pod() -> bytes:
    return wire.pod_sandbox("sb-burst", BURSTABLE, "burst", BURSTABLE_PARENT)


def pinned_container(cid: str, name: str, memory: int) -> bytes:
    return wire.container(cid, "sb-pinned", PINNED, name, memory_limit=memory)


async def test_registration_and_configure(harness: Harness) -> None:
    assert harness.runtime.registrations == [("memstate", "42")]
    fields = await harness.configure()
    assert 1 not in fields  # ConfigureResponse has no field 1
    assert wire.one(fields, 2) == MEMSTATE_MASK


async def test_split_synchronize_answers_updates_only_on_the_last_chunk(harness: Harness) -> None:
    await harness.configure()
    first = wire.synchronize_request(
        [pinned_pod()], [pinned_container("c-app", "app", Gi)], more=True
    )
    reply = await harness.runtime.call("Synchronize", first)
    assert reply.code == 0
    fields = wire.decode(reply.payload)
    assert wire.one(fields, 2, 0) == 1  # more echoed
    assert 1 not in fields  # no updates on an intermediate chunk
    last = wire.synchronize_request(
        [burstable_pod()],
        [
            pinned_container("c-side", "sidecar", Gi // 2),
            wire.container("c-web", "sb-burst", BURSTABLE, "web", memory_limit=Gi),
        ],
        more=False,
    )
    reply = await harness.runtime.call("Synchronize", last)
    assert reply.code == 0
    updates = wire.updates_of(reply.payload)
    # Containers of both chunks are joined to their pods and get memstate's values back.
    assert set(updates) == {"c-app", "c-side", "c-web"}
    assert updates["c-app"].mems == "0"
    assert updates["c-app"].unified["memory.min"] == str(Gi)
    assert updates["c-web"].mems == ""
    assert updates["c-web"].unified["memory.low"] == str(256 * 2**20)
    assert wire.one(wire.decode(reply.payload), 2, 0) == 0


async def test_pod_lifecycle_with_several_containers(harness: Harness) -> None:
    await harness.configure()
    reply = await harness.runtime.call("Synchronize", wire.synchronize_request([], [], False))
    assert reply.code == 0 and wire.updates_of(reply.payload) == {}
    pod = pinned_pod()
    assert (await harness.runtime.call("RunPodSandbox", wire.pod_request(pod))).code == 0
    for cid, name, memory in (("c-app", "app", Gi), ("c-side", "sidecar", Gi // 2)):
        reply = await harness.runtime.call(
            "CreateContainer", wire.container_request(pod, pinned_container(cid, name, memory))
        )
        assert reply.code == 0, reply
        adjusted = wire.create_response_adjustment(reply.payload)
        assert adjusted.mems == "0"
        assert adjusted.unified == {
            "memory.high": "max",
            "memory.min": str(memory),
            "memory.low": "0",
        }
    burst = burstable_pod()
    web = wire.container("c-web", "sb-burst", BURSTABLE, "web", memory_limit=Gi)
    reply = await harness.runtime.call("CreateContainer", wire.container_request(burst, web))
    adjusted = wire.create_response_adjustment(reply.payload)
    assert adjusted.mems == ""  # Burstable pods are not pinned
    assert adjusted.unified["memory.low"] == str(256 * 2**20)
    # memory.high = floor((256Mi + 0.9 × (1Gi − 256Mi)) / 4096) × 4096 (memory-qos.md §4.1)
    assert adjusted.unified["memory.high"] == str(
        (256 * 2**20 + int(0.9 * (Gi - 256 * 2**20))) // 4096 * 4096
    )

    # A resize re-applies memstate's values to the container being updated.
    resized = pinned_container("c-app", "app", Gi)
    reply = await harness.runtime.call(
        "UpdateContainer", wire.container_request(pod, resized) + wire.field_bytes(3, b"")
    )
    assert reply.code == 0
    assert wire.updates_of(reply.payload)["c-app"].mems == "0"

    for method in ("StopContainer", "RemoveContainer"):
        for cid, name in (("c-app", "app"), ("c-side", "sidecar")):
            container = pinned_container(cid, name, Gi)
            reply = await harness.runtime.call(method, wire.container_request(pod, container))
            assert reply.code == 0, (method, reply)
    for method in ("StopPodSandbox", "RemovePodSandbox"):
        assert (await harness.runtime.call(method, wire.pod_request(pod))).code == 0
    kinds = [kind for kind, _ in harness.decider.events]
    assert kinds == [
        "synchronize",
        "run_pod_sandbox",
        "create_container",
        "create_container",
        "create_container",
        "update_container",
        "stop_container",
        "stop_container",
        "remove_container",
        "remove_container",
        "stop_pod_sandbox",
        "remove_pod_sandbox",
    ]
    assert set(harness.decider.containers) == {"c-web"}


async def test_state_change_path_for_older_runtimes(harness: Harness) -> None:
    await harness.configure()
    pod = pinned_pod()
    # A 0.12 runtime first tries the dedicated RPCs memstate does not implement.
    reply = await harness.runtime.call("PostCreateContainer", wire.container_request(pod, b""))
    assert (reply.code, reply.message) == (UNIMPLEMENTED, "method PostCreateContainer")
    assert (await harness.runtime.call("StateChange", wire.state_change(1, pod))).code == 0
    container = pinned_container("c-app", "app", Gi)
    assert (
        await harness.runtime.call("StateChange", wire.state_change(11, pod, container))
    ).code == 0
    assert (await harness.runtime.call("StateChange", wire.state_change(3, pod))).code == 0
    assert [kind for kind, _ in harness.decider.events] == [
        "run_pod_sandbox",
        "remove_container",
        "remove_pod_sandbox",
    ]


async def test_rejected_pod_is_refused_with_the_upstream_reason(harness: Harness) -> None:
    await harness.configure()
    pod = wire.pod_sandbox("sb-big", REJECTED, "big", GUARANTEED_PARENT)
    reply = await harness.runtime.call("RunPodSandbox", wire.pod_request(pod))
    assert reply.code == FAILED_PRECONDITION
    assert reply.message.startswith("UnexpectedAdmissionError: ")
    container = wire.container("c-big", "sb-big", REJECTED, "big", memory_limit=20 * Gi)
    reply = await harness.runtime.call("CreateContainer", wire.container_request(pod, container))
    assert reply.code == FAILED_PRECONDITION
    expected = harness.decider._decisions().rejected[REJECTED]
    assert reply.message == f"{expected.reason}: {expected.message}"
    # A pod memstate knows nothing about is let through unchanged (fail-open default).
    pod = wire.pod_sandbox("sb-unknown", UNKNOWN, "x", GUARANTEED_PARENT)
    container = wire.container("c-x", "sb-unknown", UNKNOWN, "x")
    reply = await harness.runtime.call("CreateContainer", wire.container_request(pod, container))
    assert reply.code == 0
    assert wire.create_response_adjustment(reply.payload) == wire.Adjusted("", {})


async def test_runtime_restart_reconnects_and_resynchronizes(harness: Harness) -> None:
    await harness.configure()
    await harness.reconnected()
    assert harness.runtime.registrations == [("memstate", "42"), ("memstate", "42")]
    await harness.configure()
    reply = await harness.runtime.call(
        "Synchronize",
        wire.synchronize_request([pinned_pod()], [pinned_container("c-app", "app", Gi)], False),
    )
    assert wire.updates_of(reply.payload)["c-app"].mems == "0"
    assert harness.plugin.status.sessions == 2


# --- bad peers: an error answer, or a dropped connection and a plugin that comes back ------------


async def test_unknown_method_and_service_answer_unimplemented(harness: Harness) -> None:
    reply = await harness.runtime.call("Frobnicate", b"")
    assert (reply.code, reply.message) == (UNIMPLEMENTED, "method Frobnicate")
    reply = await harness.runtime.call("Configure", b"", service="nri.Nope")
    assert (reply.code, reply.message) == (UNIMPLEMENTED, "service nri.Nope")
    await harness.configure()  # same connection, still served


async def test_undecodable_payload_answers_invalid_argument(harness: Harness) -> None:
    reply = await harness.runtime.call("CreateContainer", b"\x0a\xff\xff\xff")
    assert reply.code == INVALID_ARGUMENT
    assert "CreateContainer" in reply.message
    await harness.configure()


async def test_oversize_message_answers_resource_exhausted_and_keeps_serving(
    harness: Harness,
) -> None:
    stream_id = harness.runtime.next_stream_id()
    length = 4 * 2**20 + 1
    header = wire.TTRPC.pack(length, stream_id, 1, 0)
    send, receive = trio.open_memory_channel[wire.Reply](1)
    harness.runtime._waiting[stream_id] = send
    await harness.runtime.send_raw(wire.mux_frame(1, header) + wire.mux_frame(1, b"\0" * length))
    with trio.fail_after(WAIT):
        reply = await receive.receive()
    assert reply.code == RESOURCE_EXHAUSTED
    assert str(length) in reply.message
    await harness.configure()


@pytest.mark.parametrize(
    "bad_bytes",
    [
        pytest.param(b"\xde\xad\xbe\xef" * 64, id="garbage"),
        pytest.param(wire.MUX.pack(1, 0xFFFFFFF0), id="frame-length-beyond-limit"),
        pytest.param(
            wire.mux_frame(1, wire.TTRPC.pack(3, 1, 1, 0) + b"\x0a\x05Plugin" * 4),
            id="ttrpc-length-too-short",
        ),
        pytest.param(wire.mux_frame(1, wire.ttrpc_message(2, 1, b"")), id="even-stream-id"),
        pytest.param(wire.mux_frame(1, wire.ttrpc_message(1, 3, b"")), id="data-message-type"),
        pytest.param(wire.mux_frame(1, wire.ttrpc_message(1, 1, b"\x0a\xff")), id="bad-envelope"),
        pytest.param(wire.mux_frame(2, wire.ttrpc_message(7, 2, b"")), id="response-to-nothing"),
    ],
)
async def test_protocol_violation_drops_the_connection_and_the_plugin_returns(
    harness: Harness, bad_bytes: bytes
) -> None:
    await harness.runtime.send_raw(bad_bytes)
    await harness.runtime.wait_closed()
    await harness.reconnected()
    await harness.configure()
    assert "conn" in harness.plugin.status.last_error or "trunk" in harness.plugin.status.last_error


async def test_truncated_frame_then_close(harness: Harness) -> None:
    message = wire.mux_frame(1, wire.ttrpc_message(1, 1, wire.ttrpc_request("x", "y", b"z")))
    await harness.runtime.send_raw(message[:11])
    assert harness.runtime.stream is not None
    await harness.runtime.stream.aclose()  # our side closes mid-frame
    # Seen while the socket still listens: the plugin's reconnection then connects (a refused
    # connect would replace last_error), and its session cannot end before the restart below.
    with trio.fail_after(WAIT):
        while "inside a frame" not in harness.plugin.status.last_error:
            await trio.sleep(0.01)
    await harness.reconnected()
    await harness.configure()


async def test_peer_stalling_mid_message_is_dropped(nursery: trio.Nursery) -> None:
    async with running_plugin(nursery, stall_timeout=0.5) as harness:
        message = wire.ttrpc_message(1, 1, wire.ttrpc_request("x", "y", b"z" * 100))
        # A whole frame carrying half a ttrpc message, then silence.
        await harness.runtime.send_raw(wire.mux_frame(1, message[:40]))
        await harness.runtime.wait_closed()
        assert "stalled" in harness.plugin.status.last_error
        await harness.reconnected()
        await harness.configure()


async def test_frames_for_unknown_connection_ids_are_ignored(harness: Harness) -> None:
    await harness.runtime.send_raw(wire.mux_frame(9, b"whatever"))
    await harness.configure()


async def test_large_answer_is_framed_for_the_go_reader(harness: Harness) -> None:
    """A Synchronize answer over 4 KiB leaves as a header frame plus one payload frame."""
    await harness.configure()
    containers = [pinned_container(f"c-{i:04d}", "app", Gi) for i in range(200)]
    reply = await harness.runtime.call(
        "Synchronize", wire.synchronize_request([pinned_pod()], containers, False)
    )
    assert len(wire.updates_of(reply.payload)) == 200
    assert len(reply.payload) > 4096
    sizes = harness.runtime.reassembler.frame_sizes
    assert max(sizes[:-2], default=0) <= 4096
    assert sizes[-2] == 10  # the ttrpc header alone


async def test_configure_is_served_while_registration_is_unanswered(harness: Harness) -> None:
    harness.runtime.hold_registration = True
    await harness.reconnected()
    # The plugin's RegisterPlugin call is outstanding; Configure and Synchronize must be served.
    await harness.configure()
    reply = await harness.runtime.call("Synchronize", wire.synchronize_request([], [], False))
    assert reply.code == 0
    await harness.runtime.release_registration()
    await harness.configure()


async def test_registration_without_answer_times_out_and_the_plugin_retries(
    nursery: trio.Nursery,
) -> None:
    async with running_plugin(nursery, registration_timeout=2.0) as harness:
        harness.runtime.hold_registration = True
        await harness.reconnected()
        # The registration timeout closes the session; the plugin connects again.
        await harness.runtime.wait_closed()
        assert "RegisterPlugin" in harness.plugin.status.last_error
        harness.runtime.hold_registration = False
        await harness.reconnected()
        await harness.configure()


class FailingDecider(TargetsDecider):
    async def create_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> ResourceAdjustment | Refusal:
        raise LogIOError("fsync failed on the event log", errno=5)


async def test_a_decider_failure_fails_the_request_not_the_plugin(nursery: trio.Nursery) -> None:
    async with running_plugin(nursery, FailingDecider) as harness:
        pod = pinned_pod()
        reply = await harness.runtime.call(
            "CreateContainer", wire.container_request(pod, pinned_container("c", "app", Gi))
        )
        assert reply.code == INTERNAL
        assert "fsync failed on the event log" in reply.message
        await harness.configure()


async def test_plugin_process_killed_and_restarted_gets_the_same_values(
    nursery: trio.Nursery,
) -> None:
    """SIGKILL the plugin process mid-life: the runtime sees the connection close; a new process
    registers, and its Synchronize answer re-applies exactly what the first one answered at
    creation (decisions are a pure function of memstate's state)."""
    directory = tempfile.mkdtemp(prefix="nri-", dir="/tmp")
    processes: list[trio.Process] = []
    try:
        runtime = StandInRuntime(f"{directory}/nri.sock")
        await runtime.listen()

        async def start_plugin() -> None:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tests.nri.plugin_process", runtime.path],
                cwd=str(Path(__file__).resolve().parents[2]),
            )
            processes.append(process)
            await runtime.accept(nursery)

        await start_plugin()
        await runtime.call("Configure", wire.configure_request())
        await runtime.call("Synchronize", wire.synchronize_request([], [], False))
        pod = pinned_pod()
        created = {}
        for cid, name, memory in (("c-app", "app", Gi), ("c-side", "sidecar", Gi // 2)):
            container = pinned_container(cid, name, memory)
            reply = await runtime.call("CreateContainer", wire.container_request(pod, container))
            created[cid] = wire.create_response_adjustment(reply.payload)

        processes[0].send_signal(signal.SIGKILL)
        await runtime.wait_closed()
        await processes[0].wait()
        assert processes[0].returncode == -signal.SIGKILL

        await start_plugin()
        await runtime.call("Configure", wire.configure_request())
        running = [
            pinned_container("c-app", "app", Gi),
            pinned_container("c-side", "sidecar", Gi // 2),
        ]
        reply = await runtime.call("Synchronize", wire.synchronize_request([pod], running, False))
        assert wire.updates_of(reply.payload) == created
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        shutil.rmtree(directory, ignore_errors=True)


class BrokenDecider(TargetsDecider):
    async def create_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> ResourceAdjustment | Refusal:
        raise InvariantViolation("pod holds bytes on a node that does not exist")


async def test_an_invariant_violation_is_not_answered_around(nursery: trio.Nursery) -> None:
    """memstate being wrong ends the plugin with the bare error (the daemon exits 70); the
    runtime sees the connection close and carries on without memstate (fail-open)."""
    directory = tempfile.mkdtemp(prefix="nri-", dir="/tmp")
    try:
        runtime = StandInRuntime(f"{directory}/nri.sock")
        await runtime.listen()
        decisions = node_decisions()
        plugin = NriPlugin(PluginSettings(socket=runtime.path), BrokenDecider(lambda: decisions))
        raised: list[BaseException] = []

        async def run_plugin() -> None:
            try:
                await plugin.run()
            except InvariantViolation as exc:
                raised.append(exc)

        nursery.start_soon(run_plugin)
        await runtime.accept(nursery)
        request = wire.container_request(pinned_pod(), pinned_container("c", "app", Gi))
        with pytest.raises(ConnectionError):
            await runtime.call("CreateContainer", request)
        await runtime.wait_closed()
        with trio.fail_after(WAIT):
            while not raised:
                await trio.sleep(0.01)
        assert "does not exist" in str(raised[0])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
