"""The daemon's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, on trio, in the daemon's nursery.

Theory of operation
-------------------
One trio task per listening socket accepts connections; each connection is one task (no thread)
that parses HTTP/1.1 with h11 and answers from a fixed table of routes; every other path is 404.
Answers are computed on the event loop from immutable snapshots (the metrics collector reads the
published state), so a scrape never sees a half-updated state and needs no lock.

Robustness, because anything that can reach the port can talk to it:
- at most `max_connections` connections at once. When one more arrives, the connection that has
  waited longest without sending a byte is closed to make room (slowloris and idle keep-alive
  connections cannot starve a scraper: a scraper sends its request at once); when none is idle,
  the newcomer is closed. Beyond that, connections wait in the kernel's listen backlog and cost
  the daemon nothing;
- each request (head, body and the answer) must complete within `request_timeout_seconds`, and a
  connection that sends nothing for that long is closed;
- the request head is bounded (`max_head_bytes`: 431), bodies are never read (a request with one
  is answered and the connection closed), anything that is not HTTP/1.x gets 400 and a close.

Binding a non-loopback address logs a warning naming it: the endpoint has no authentication.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import prometheus_client
import trio

from memstate.node.health import Heartbeat, Readiness

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_HEAD_BYTES = 8192
_RECEIVE_BYTES = 4096
_SERVER_NAME = b"memstate"
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_SECONDS = 0.1
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """An answer: status, content type and body."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Reply]


@dataclass(frozen=True)
class EndpointLimits:
    """How much one client may hold (see the module docstring)."""

    max_connections: int = MAX_CONNECTIONS
    request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS
    max_head_bytes: int = MAX_HEAD_BYTES


@dataclass(eq=False)
class _Connection:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    idle_since: float | None = None  # when it started waiting for a request's first byte


class HttpEndpoint:
    """A small HTTP/1.1 server for a fixed table of GET routes."""

    def __init__(self, routes: Mapping[str, Route], limits: EndpointLimits | None = None) -> None:
        self.routes = dict(routes)
        self.limits = limits or EndpointLimits()
        self._connections: set[_Connection] = set()
        self.connections_evicted = 0
        self.connections_refused = 0

    @property
    def open_connections(self) -> int:
        """Connections being served now (each is one task)."""
        return len(self._connections)

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `host:port` and serve until cancelled.

        Use with `nursery.start`: binding errors (OSError) are raised from it, and it returns the
        bound (address, port) pairs.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = [_address_of(listener) for listener in listeners]
        for address, bound_port in bound:
            if not _is_loopback(address):
                logger.warning(
                    "the metrics endpoint listens on %s port %d, which is not a loopback "
                    "address: anyone who can reach it can read the node's metrics and health; "
                    "bind 127.0.0.1 unless a scraper on another host needs it",
                    address,
                    bound_port,
                )
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(bound)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # Out of descriptors or memory: wait for some to be freed, as trio's own
                    # serve_listeners does; never let it end the daemon.
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    logger.warning("metrics endpoint: accept failed (%s); retrying", exc)
                    await trio.sleep(_ACCEPT_RETRY_SECONDS)
                    continue
                if len(self._connections) >= self.limits.max_connections:
                    victim = _longest_idle(self._connections)
                    if victim is None:
                        self.connections_refused += 1
                        await trio.aclose_forcefully(stream)
                        continue
                    # Its task ends at once (it is waiting for bytes); wait for it so the bound
                    # holds strictly.
                    self.connections_evicted += 1
                    victim.scope.cancel()
                    await victim.done.wait()
                connection = _Connection()
                self._connections.add(connection)
                nursery.start_soon(self._serve_connection, stream, connection)

    async def _serve_connection(self, stream: trio.SocketStream, connection: _Connection) -> None:
        try:
            with connection.scope:
                await self._exchange(stream, connection)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            # A bug here must cost one connection, never the daemon (this task runs in its
            # nursery); the traceback is for the bug report.
            logger.exception("metrics endpoint: connection failed")
        finally:
            self._connections.discard(connection)
            await trio.aclose_forcefully(stream)
            connection.done.set()

    async def _exchange(self, stream: trio.SocketStream, connection: _Connection) -> None:
        """Request after request on one connection, each within the request timeout."""
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        while True:
            connection.idle_since = trio.current_time()
            with trio.move_on_after(self.limits.request_timeout_seconds):
                try:
                    request = await _next_request(http, stream, connection)
                except h11.RemoteProtocolError as exc:
                    await _send_error(http, stream, exc.error_status_hint)
                    await _linger(stream)
                    return
                if request is None:
                    return  # closed by the client
                if request.http_version not in (b"1.0", b"1.1"):
                    await _send_error(http, stream, 505)
                    await _linger(stream)
                    return
                reply = self._answer(request)
                await _send(http, stream, reply, head_only=request.method == b"HEAD")
                if http.their_state is h11.SEND_BODY:
                    # A body is never read: answer, then close (h11 cannot start a next cycle).
                    await _linger(stream)
                    return
                if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    return  # "Connection: close", or HTTP/1.0 without keep-alive
                http.start_next_cycle()
                continue
            return  # timed out: slow or silent client

    def _answer(self, request: h11.Request) -> Reply:
        if request.method not in (b"GET", b"HEAD"):
            return Reply(405, b"method not allowed\n")
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        route = self.routes.get(path)
        if route is None:
            return Reply(404, b"not found\n")
        try:
            return route()
        except Exception:
            logger.exception("metrics endpoint: %s failed", path)
            return Reply(500, b"internal error\n")


async def _next_request(
    http: h11.Connection, stream: trio.SocketStream, connection: _Connection
) -> h11.Request | None:
    """The next request head, or None when the client closed the connection."""
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE_BYTES)
            connection.idle_since = None  # a byte arrived: busy until answered
            http.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            # Takes the EndOfMessage of a request without a body (no bytes needed); a body is
            # left unread, and the caller closes the connection after answering.
            http.next_event()
            return event
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        # Data or EndOfMessage before a request cannot happen in h11's SERVER role.
        return None


async def _send(
    http: h11.Connection, stream: trio.SocketStream, reply: Reply, *, head_only: bool
) -> None:
    headers = [
        (b"server", _SERVER_NAME),
        (b"content-type", reply.content_type.encode()),
        (b"content-length", str(len(reply.body)).encode()),
    ]
    if reply.status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    data = http.send(
        h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
    )
    if not head_only:
        data = (data or b"") + (http.send(h11.Data(data=reply.body)) or b"")
    data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)


async def _send_error(http: h11.Connection, stream: trio.SocketStream, status: int) -> None:
    """Answer a request h11 could not parse, if an answer can still be sent; then close."""
    if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} {_reason(status).decode()}\n".encode()
    try:
        response = h11.Response(
            status_code=status,
            reason=_reason(status),
            headers=[
                (b"server", _SERVER_NAME),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        )
        data = http.send(response) or b""
        data += http.send(h11.Data(data=body)) or b""
        data += http.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)


async def _linger(stream: trio.SocketStream) -> None:
    """Close our side, then read and drop what the client still sends (bounded in bytes and
    time): closing with unread bytes makes the kernel reset the connection, and the client
    could lose the answer just sent."""
    await stream.send_eof()
    discarded = 0
    with trio.move_on_after(_LINGER_SECONDS):
        while discarded < _LINGER_BYTES:
            chunk = await stream.receive_some(_RECEIVE_BYTES)
            if not chunk:
                return
            discarded += len(chunk)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _longest_idle(connections: set[_Connection]) -> _Connection | None:
    idle = [c for c in connections if c.idle_since is not None]
    return min(idle, key=lambda c: c.idle_since or math.inf) if idle else None


def _address_of(listener: trio.SocketListener) -> tuple[str, int]:
    name = listener.socket.getsockname()
    return str(name[0]), int(name[1])


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def status_routes(
    render_metrics: Callable[[], bytes],
    heartbeat: Heartbeat,
    readiness: Readiness,
) -> dict[str, Route]:
    """The daemon's routes: `/metrics` (Prometheus text), `/healthz` and `/readyz` (200, or 503
    with a one-line reason)."""

    def metrics() -> Reply:
        return Reply(200, render_metrics(), prometheus_client.CONTENT_TYPE_LATEST)

    def healthz() -> Reply:
        problem = heartbeat.overdue()
        if problem is not None:
            return Reply(503, f"unhealthy: {problem}\n".encode())
        return Reply(200, b"ok\n")

    def readyz() -> Reply:
        problem = readiness.reason()
        if problem is not None:
            return Reply(503, f"not ready: {problem}\n".encode())
        return Reply(200, b"ready\n")

    return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}
