"""A runtime stand-in for the NRI plugin tests: owns the socket, accepts the plugin, answers
RegisterPlugin, calls the plugin's methods. Built on `tests.nri.wire` (not on memstate.nri), on
trio over a real unix socket.
"""

from __future__ import annotations

import math
import os
import socket

import trio

from tests.nri import wire

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
WAIT = 60.0  # generous: the machine may be loaded


class StandInRuntime:
    """The runtime side of one NRI socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener: trio.socket.SocketType | None = None
        self.stream: trio.SocketStream | None = None
        self.registrations: list[tuple[str, str]] = []
        self.registered = trio.Event()
        self.closed = trio.Event()
        self._next_stream_id = 1
        self._waiting: dict[int, trio.MemorySendChannel[wire.Reply]] = {}
        self._send_lock = trio.Lock()
        self.reassembler = wire.Reassembler()
        # When set, RegisterPlugin is answered only by release_registration(): the runtime may
        # send Configure before it answers (nri.md §8.1).
        self.hold_registration = False
        self._held: list[int] = []

    async def release_registration(self) -> None:
        for stream_id in self._held:
            await self._answer_empty(stream_id)
        self._held.clear()

    async def _answer_empty(self, stream_id: int) -> None:
        reply = wire.ttrpc_message(stream_id, 2, wire.ttrpc_response(b""))
        await self.send_raw(wire.mux_frame(2, reply))

    async def listen(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen(4)
        self.listener = sock

    async def accept(self, nursery: trio.Nursery) -> None:
        """Wait for the plugin to connect and register."""
        assert self.listener is not None
        with trio.fail_after(WAIT):
            conn, _ = await self.listener.accept()
        self.stream = trio.SocketStream(conn)
        self.registered = trio.Event()
        self.closed = trio.Event()
        self.reassembler = wire.Reassembler()
        self._next_stream_id = 1
        nursery.start_soon(self._read_loop, self.stream)
        with trio.fail_after(WAIT):
            await self.registered.wait()

    async def restart(self) -> None:
        """What a runtime restart looks like to the plugin: connection and socket gone, a new
        socket at the same path."""
        if self.stream is not None:
            await self.stream.aclose()
        if self.listener is not None:
            self.listener.close()
        with trio.fail_after(WAIT):
            await self.closed.wait()
        await self.listen()

    async def _read_loop(self, stream: trio.SocketStream) -> None:
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                for conn_id, stream_id, message_type, body in self.reassembler.feed(data):
                    if conn_id == 2 and message_type == 1:
                        await self._serve_runtime(stream_id, body)
                    elif conn_id == 1 and message_type == 2:
                        channel = self._waiting.pop(stream_id)
                        channel.send_nowait(wire.parse_response(body))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            for channel in self._waiting.values():
                channel.close()
            self._waiting.clear()

    async def _serve_runtime(self, stream_id: int, body: bytes) -> None:
        request = wire.decode(body)
        method = wire.one(request, 2)
        payload = wire.one(request, 3)
        assert isinstance(method, bytes) and isinstance(payload, bytes)
        if method == b"RegisterPlugin":
            fields = wire.decode(payload)
            name, idx = wire.one(fields, 1), wire.one(fields, 2)
            assert isinstance(name, bytes) and isinstance(idx, bytes)
            self.registrations.append((name.decode(), idx.decode()))
            self.registered.set()
            if self.hold_registration:
                self._held.append(stream_id)
            else:
                await self._answer_empty(stream_id)
        else:
            reply = wire.ttrpc_response(b"", 12, f"method {method.decode()}")
            await self.send_raw(wire.mux_frame(2, wire.ttrpc_message(stream_id, 2, reply)))

    async def send_raw(self, data: bytes) -> None:
        assert self.stream is not None
        async with self._send_lock:
            await self.stream.send_all(data)

    def next_stream_id(self) -> int:
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        return stream_id

    async def call(
        self, method: str, payload: bytes, *, service: str = PLUGIN_SERVICE, split: bool = True
    ) -> wire.Reply:
        """One unary call on conn 1, framed as the Go runtime frames it (header frame of at most
        4096 bytes, then the rest)."""
        stream_id = self.next_stream_id()
        message = wire.ttrpc_message(stream_id, 1, wire.ttrpc_request(service, method, payload))
        send, receive = trio.open_memory_channel[wire.Reply](1)
        self._waiting[stream_id] = send
        if split and len(message) > 4096:
            await self.send_raw(
                wire.mux_frame(1, message[:4096]) + wire.mux_frame(1, message[4096:])
            )
        else:
            await self.send_raw(wire.mux_frame(1, message))
        with trio.fail_after(WAIT):
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                raise ConnectionError(f"{method}: the plugin closed the connection") from None

    async def wait_closed(self, timeout: float = WAIT) -> None:
        with trio.fail_after(timeout if timeout != math.inf else WAIT):
            await self.closed.wait()
