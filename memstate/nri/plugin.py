"""The NRI plugin on trio: connect, register, configure, synchronize, serve events, reconnect.

Theory of operation. `NriPlugin.run` loops forever: connect to the runtime's socket, run one
`_Session`, and when the session ends (runtime restart, protocol violation, timeout) wait with
exponential backoff on trio's clock and connect again; the runtime remembers nothing, so every
session re-registers and gets a fresh Synchronize. A session runs two tasks: the reader, which
owns the sans-I/O decoders (multiplexer, then one ttrpc decoder per logical connection), answers
the runtime's requests one at a time, in arrival order, through the `NriDecider` (in its own
task: a hand-over to another task would put each answer behind a whole scheduler batch of the
daemon's other tasks), and routes responses to our waiting calls; and registration, a call on
connection 2 while connection 1 is already served, because the runtime may send Configure before
it answers RegisterPlugin (nri.md §8.1).

Failure handling: anything the peer gets wrong in the framing closes the session (logged with
what and where); a request we cannot serve gets a ttrpc error status and the session continues;
an exception from the decider becomes an error status for that request. Nothing a peer sends can
end `run`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from google.protobuf.message import DecodeError, Message

from memstate.core.errors import InvariantViolation, MemstateError
from memstate.nri import messages
from memstate.nri.decider import ContainerUpdate, NriDecider, Refusal
from memstate.nri.errors import (
    ConnectionLost,
    NriError,
    PluginConfigError,
    RpcError,
    TruncatedStream,
)
from memstate.nri.messages import PLUGIN_SERVICE, RUNTIME_SERVICE
from memstate.nri.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, MuxDecoder
from memstate.nri.mux import frames_for_message as _frames
from memstate.nri.proto import nri_pb2 as pb
from memstate.nri.ttrpc import (
    MESSAGE_HEADER,
    ClientConnection,
    IncomingRequest,
    IncomingResponse,
    ServerConnection,
    StatusCode,
    encode_response,
)

logger = logging.getLogger("memstate.nri")

DEFAULT_SOCKET = "/var/run/nri/nri.sock"
_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_INDEX_RE = re.compile(r"[0-9]{2}")
_RECEIVE_SIZE = 65536

Connect = Callable[[str], Awaitable[trio.abc.Stream]]


@dataclass(frozen=True, slots=True)
class PluginSettings:
    """How the plugin reaches and presents itself to the runtime.

    `stall_timeout`: how long a half-received frame or message may wait for its rest before the
    connection is dropped. `registration_timeout`: how long RegisterPlugin may take.
    """

    socket: str = DEFAULT_SOCKET
    name: str = "memstate"
    index: str = "50"
    registration_timeout: float = 5.0
    stall_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def validate(self) -> None:
        """Raise `PluginConfigError` for a name or index the runtime would refuse (§2.1)."""
        if not _NAME_RE.fullmatch(self.name):
            raise PluginConfigError(
                f"NRI plugin name {self.name!r} must be non-empty from [A-Za-z0-9_.+-]",
                path="$.nri.pluginName",
            )
        if not _INDEX_RE.fullmatch(self.index):
            raise PluginConfigError(
                f"NRI plugin index {self.index!r} must be two ASCII digits",
                path="$.nri.pluginIndex",
            )


@dataclass(slots=True)
class PluginStatus:
    """What the plugin reports about itself (for logs, metrics and tests)."""

    connected: bool = False
    sessions: int = 0
    synchronized_sessions: int = 0
    runtime: str = ""
    last_error: str = ""


class NriPlugin:
    """The memstate NRI plugin: one per daemon."""

    def __init__(
        self,
        settings: PluginSettings,
        decider: NriDecider,
        *,
        connect: Connect | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.decider = decider
        self.status = PluginStatus()
        self._connect: Connect = connect or _open_unix_socket

    async def run(self) -> None:
        """Serve the runtime forever, reconnecting with exponential backoff."""
        backoff = self.settings.backoff_initial
        while True:
            try:
                stream = await self._connect(self.settings.socket)
            except OSError as exc:
                self.status.last_error = f"connect {self.settings.socket}: {exc}"
                logger.info("NRI: %s; retrying in %.1fs", self.status.last_error, backoff)
            else:
                session = _Session(stream, self.settings, self.decider, self.status)
                self.status.sessions += 1
                self.status.connected = True
                try:
                    reason = await session.run()
                finally:
                    self.status.connected = False
                    await stream.aclose()
                self.status.last_error = str(reason)
                if session.synchronized:
                    backoff = self.settings.backoff_initial
                logger.warning("NRI: connection closed: %s; reconnecting in %.1fs", reason, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.backoff_max)


async def _open_unix_socket(path: str) -> trio.abc.Stream:
    return await trio.open_unix_socket(path)


class _Session:
    """One connection to the runtime, from connect to close."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        settings: PluginSettings,
        decider: NriDecider,
        status: PluginStatus,
    ) -> None:
        self._stream = stream
        self._settings = settings
        self._decider = decider
        self._status = status
        self._send_lock = trio.Lock()
        self._mux = MuxDecoder()
        self._server = ServerConnection(PLUGIN_SERVICE_CONN)
        self._client = ClientConnection(RUNTIME_SERVICE_CONN)
        self._calls: dict[int, trio.MemorySendChannel[IncomingResponse]] = {}
        self._sync_pods: list[pb.PodSandbox] = []
        self._sync_containers: list[pb.Container] = []
        self.synchronized = False
        self._reason: BaseException | None = None
        self._fatal: InvariantViolation | None = None

    async def run(self) -> BaseException:
        """Run until the connection ends; return why it ended."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._guard, self._read_loop, nursery.cancel_scope)
            nursery.start_soon(self._guard, self._register, nursery.cancel_scope)
        if self._fatal is not None:
            raise self._fatal  # bare, not wrapped in an exception group
        return self._reason or ConnectionLost("session ended")

    async def _guard(
        self, function: Callable[[], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        # The first error ends the session; it is returned, not raised, so nothing a peer does
        # can escape into the daemon.
        try:
            await function()
        except (NriError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._reason is None:
                self._reason = exc
            scope.cancel()
        except InvariantViolation as exc:
            self._fatal = exc
            scope.cancel()

    # --- reading --------------------------------------------------------------------------------

    def _mid_message(self) -> bool:
        return self._mux.mid_frame or self._server.mid_message or self._client.mid_message

    async def _read_loop(self) -> None:
        while True:
            timeout = self._settings.stall_timeout if self._mid_message() else math.inf
            with trio.move_on_after(timeout) as scope:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            if scope.cancelled_caught:
                raise TruncatedStream(
                    f"peer stalled mid-message for {self._settings.stall_timeout:g}s"
                )
            if not data:
                self._mux.close()
                self._server.close()
                self._client.close()
                raise ConnectionLost("the runtime closed the connection")
            for frame in self._mux.feed(bytes(data)):
                if frame.conn_id == PLUGIN_SERVICE_CONN:
                    requests, immediate = self._server.feed(frame.payload)
                    for answer in immediate:
                        logger.warning("NRI: oversized request refused")
                        await self._send(PLUGIN_SERVICE_CONN, answer)
                    for request in requests:
                        # Answered here, in arrival order, before reading on: no hand-over to
                        # another task, whose turn would come only in the scheduler's next
                        # batch (after every other task the daemon has ready). While a request
                        # waits for its pod's decision nothing more is read; the runtime sends
                        # one event at a time anyway (nri.md §9.1).
                        await self._serve(request)
                elif frame.conn_id == RUNTIME_SERVICE_CONN:
                    for response in self._client.feed(frame.payload):
                        channel = self._calls.pop(response.stream_id, None)
                        if channel is not None:
                            channel.send_nowait(response)
                # Frames for any other connection id are discarded, as the Go side does.

    async def _send(self, conn_id: int, message: bytes) -> None:
        async with self._send_lock:
            with trio.move_on_after(self._settings.stall_timeout) as scope:
                await self._stream.send_all(_frames(conn_id, message, MESSAGE_HEADER.size))
            if scope.cancelled_caught:
                raise TruncatedStream(
                    f"the runtime stopped reading for {self._settings.stall_timeout:g}s",
                    conn_id=conn_id,
                )

    # --- our calls ------------------------------------------------------------------------------

    async def _call(self, method: str, request: Message, timeout: float) -> bytes:
        stream_id, data = self._client.request(
            RUNTIME_SERVICE, method, request.SerializeToString(), int(timeout * 1e9)
        )
        send, receive = trio.open_memory_channel[IncomingResponse](1)
        self._calls[stream_id] = send
        await self._send(RUNTIME_SERVICE_CONN, data)
        with trio.move_on_after(timeout):
            response = await receive.receive()
            if response.code != StatusCode.OK:
                raise RpcError(method, response.code, response.message)
            return response.payload
        self._calls.pop(stream_id, None)
        self._client.abandon(stream_id)
        raise RpcError(method, StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:g}s")

    async def _register(self) -> None:
        request = pb.RegisterPluginRequest(
            plugin_name=self._settings.name, plugin_idx=self._settings.index
        )
        await self._call("RegisterPlugin", request, self._settings.registration_timeout)
        logger.info("NRI: registered as %s-%s", self._settings.index, self._settings.name)

    # --- serving --------------------------------------------------------------------------------

    async def _serve(self, request: IncomingRequest) -> None:
        payload, code, message = await self._answer(request)
        await self._send(
            PLUGIN_SERVICE_CONN, encode_response(request.stream_id, payload, code, message)
        )

    async def _answer(self, request: IncomingRequest) -> tuple[bytes, int, str]:
        if request.service != PLUGIN_SERVICE:
            return b"", StatusCode.UNIMPLEMENTED, f"service {request.service}"
        message_class = messages.PLUGIN_METHODS.get(request.method)
        if message_class is None:
            return b"", StatusCode.UNIMPLEMENTED, f"method {request.method}"
        try:
            message = messages.parse(message_class, request.payload)
        except DecodeError as exc:
            return b"", StatusCode.INVALID_ARGUMENT, f"{request.method}: bad payload: {exc}"
        try:
            result = await self._dispatch(request.method, message)
        except InvariantViolation:
            raise  # memstate itself is wrong: never answered around
        except MemstateError as exc:
            # A decider failure (log I/O, bad input) fails this runtime operation, not the plugin.
            logger.error("NRI: %s failed: %s", request.method, exc)
            return b"", StatusCode.INTERNAL, f"memstate: {request.method}: {exc}"
        if isinstance(result, Refusal):
            logger.info("NRI: %s refused: %s: %s", request.method, result.reason, result.message)
            return b"", StatusCode.FAILED_PRECONDITION, f"{result.reason}: {result.message}"
        return result.SerializeToString(), StatusCode.OK, ""

    async def _dispatch(self, method: str, message: Message) -> Message | Refusal:
        decider = self._decider
        if isinstance(message, pb.ConfigureRequest):
            self._status.runtime = f"{message.runtime_name} {message.runtime_version}".strip()
            logger.info("NRI: configured by %s", self._status.runtime or "an unnamed runtime")
            return pb.ConfigureResponse(events=messages.MEMSTATE_EVENT_MASK)
        if isinstance(message, pb.SynchronizeRequest):
            return await self._synchronize(message)
        if isinstance(message, pb.PodSandboxRequest):
            pod = messages.sandbox_info(message.pod)
            if method == "RunPodSandbox":
                refusal = await decider.run_pod_sandbox(pod)
                return refusal if refusal is not None else pb.Empty()
            if method == "StopPodSandbox":
                await decider.stop_pod_sandbox(pod)
            else:
                await decider.remove_pod_sandbox(pod)
            return pb.Empty()
        if isinstance(message, pb.ContainerRequest):
            pod = messages.sandbox_info(message.pod)
            container = messages.container_info(message.container, pod.uid)
            if method == "CreateContainer":
                decision = await decider.create_container(pod, container)
                if isinstance(decision, Refusal):
                    return decision
                return pb.CreateContainerResponse(adjust=messages.container_adjustment(decision))
            if method == "StopContainer":
                await decider.stop_container(pod, container)
                return pb.StopContainerResponse()
            await decider.remove_container(pod, container)
            return pb.Empty()
        if isinstance(message, pb.UpdateContainerRequest):
            pod = messages.sandbox_info(message.pod)
            # The decider sees the resources being requested, not the ones being replaced.
            requested = message.linux_resources if message.HasField("linux_resources") else None
            container = messages.container_info(message.container, pod.uid, requested)
            updates = await decider.update_container(pod, container)
            return pb.UpdateContainerResponse(update=messages.container_updates(updates))
        if isinstance(message, pb.StateChangeEvent):
            return await self._state_change(message)
        return pb.Empty()  # Shutdown: the runtime closes the connection next

    async def _synchronize(self, message: pb.SynchronizeRequest) -> Message:
        # Intermediate chunks are answered "more" with no updates; the last one gets the updates
        # for the whole accumulated set (nri.md §8.2).
        self._sync_pods.extend(message.pods)
        self._sync_containers.extend(message.containers)
        if message.more:
            return pb.SynchronizeResponse(more=True)
        pods, containers = messages.synchronize_infos(self._sync_pods, self._sync_containers)
        self._sync_pods, self._sync_containers = [], []
        updates: list[ContainerUpdate] = list(await self._decider.synchronize(pods, containers))
        self.synchronized = True
        self._status.synchronized_sessions += 1
        logger.info("NRI: synchronized %d pods, %d containers", len(pods), len(containers))
        return pb.SynchronizeResponse(update=messages.container_updates(updates))

    async def _state_change(self, message: pb.StateChangeEvent) -> Message | Refusal:
        # The pre-0.12 path for pod and post-container events (nri.md §9.4).
        pod = messages.sandbox_info(message.pod)
        event = int(message.event)
        if event == messages.Event.RUN_POD_SANDBOX:
            refusal = await self._decider.run_pod_sandbox(pod)
            if refusal is not None:
                return refusal
        elif event == messages.Event.STOP_POD_SANDBOX:
            await self._decider.stop_pod_sandbox(pod)
        elif event == messages.Event.REMOVE_POD_SANDBOX:
            await self._decider.remove_pod_sandbox(pod)
        elif event == messages.Event.REMOVE_CONTAINER:
            container = messages.container_info(message.container, pod.uid)
            await self._decider.remove_container(pod, container)
        return pb.Empty()
