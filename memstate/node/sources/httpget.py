"""A repeated HTTP/1.1 GET over one kept-alive connection: h11 over trio (the kubelet's `/pods`).

Why not httpx (which the API-server source uses): an unchanged `/pods` poll of 500 pods costs
~4.5 ms of CPU through httpx, ~2.5 ms of it httpx's and httpcore's layers over each 16 KiB TLS
record of a 750 KB answer (docs/performance.md, "stop 21 (wave 3)"); at the default 5 s poll that
alone was half of issue 15's idle budget. This client keeps what the poll used of httpx and no
more:

- one connection, kept between requests while it stays idle no longer than `keepalive_seconds`
  (httpx's pool dropped it after 5 s, so a 5 s poll paid a TCP connect and TLS handshake every
  time) and while the server has not closed it (a readable idle socket); a request that fails
  on a kept connection before any answer arrived is sent once more on a new one (the server may
  close an idle connection just as the request goes out; a GET is safe to repeat);
- timeouts: `connect_timeout` for connecting, the TLS handshake and each write, `read_timeout`
  for each read (httpx's `Timeout(connect, read=read)`);
- the body bounded to `limit` bytes, `Content-Length` or chunked or up to the close (h11
  frames them); no `Accept-Encoding` is sent, so no body comes compressed (one that does is
  refused), and redirects are not followed (httpx's default);
- failures are httpx's exception types with httpcore's messages (`ConnectError`,
  `ConnectTimeout`, `ReadTimeout`, `ReadError`, `WriteError`, `WriteTimeout`,
  `RemoteProtocolError`), the OS or TLS error as their cause: `describe_http_error` reports them
  as before. A failed or cancelled request closes the connection.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import h11
import httpx
import trio

from memstate.core.errors import ConfigError, SourceError

READ_BYTES = 64 << 10
MAX_HEAD_BYTES = 64 << 10
USER_AGENT = "memstate"


class _Retry(Exception):
    """A kept connection failed before any answer arrived: send the request on a new one."""


class KeptConnection:
    """GETs to one HTTP(S) server over one connection kept alive (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        tls: ssl.SSLContext | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_seconds: float,
    ) -> None:
        split = urlsplit(base_url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ConfigError(f"not an http(s) URL: {base_url!r}")
        self.host = split.hostname
        self.port = split.port or (443 if split.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{split.port}" if split.port else host  # the Host header
        self.base_url = base_url.rstrip("/")
        self.prefix = split.path.rstrip("/")
        self.tls = None if split.scheme == "http" else (tls or ssl.create_default_context())
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_seconds = keepalive_seconds
        self._stream: trio.abc.Stream | None = None
        self._http: h11.Connection | None = None
        self._idle_since = 0.0
        self.connections = 0  # connections opened so far (for tests and benchmarks)

    async def get(self, path: str, headers: Mapping[str, str], limit: int) -> tuple[int, bytes]:
        """`GET path`: the status and the whole body. Raises `httpx.HTTPError` subclasses for
        transport failures, `SourceError` for a body above `limit` bytes or compressed."""
        kept = self._kept()
        try:
            return await self._exchange(path, headers, limit, reused=kept)
        except _Retry:
            return await self._exchange(path, headers, limit, reused=False)

    async def __aenter__(self) -> KeptConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection, if one is open."""
        stream, self._stream, self._http = self._stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    # --- one request -------------------------------------------------------------------------

    def _kept(self) -> bool:
        """Whether a kept connection is usable; drops it when it is not."""
        if self._stream is None or self._http is None:
            return False
        expired = trio.current_time() - self._idle_since > self.keepalive_seconds
        if expired or self._http.our_state is not h11.IDLE or _readable(self._stream):
            # Idle too long, or the server closed it (or sent what it should not have).
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        stream, self._stream, self._http = self._stream, None, None
        if stream is not None:
            _close_now(stream)

    async def _exchange(
        self, path: str, headers: Mapping[str, str], limit: int, *, reused: bool
    ) -> tuple[int, bytes]:
        try:
            if self._stream is None:
                await self._connect()
            stream, http = self._stream, self._http
            if stream is None or http is None:
                raise httpx.ConnectError("no connection")
            request = h11.Request(
                method="GET",
                target=self.prefix + path,
                headers=[
                    ("Host", self.authority),
                    ("User-Agent", USER_AGENT),
                    ("Accept", "application/json"),
                    *headers.items(),
                ],
            )
            data = (http.send(request) or b"") + (http.send(h11.EndOfMessage()) or b"")
            await self._write(stream, data, reused=reused)
            where = self.base_url + path
            try:
                # One cancel scope for the answer, its deadline moved before each read: the
                # per-read timeout without a scope per TLS record (~0.2 ms of a 750 KB answer).
                with trio.fail_after(self.read_timeout) as reading:
                    status, body = await self._response(
                        stream, http, limit, where, reading, reused=reused
                    )
            except trio.TooSlowError:
                raise httpx.ReadTimeout("") from None
        except BaseException:
            self._drop()
            raise
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
            self._idle_since = trio.current_time()
        else:
            self._drop()  # the server closes it (Connection: close, HTTP/1.0, a close-framed body)
        return status, body

    async def _connect(self) -> None:
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
                self.connections += 1
                if self.tls is not None:
                    stream = trio.SSLStream(
                        stream, self.tls, server_hostname=self.host, https_compatible=True
                    )
                    try:
                        await stream.do_handshake()
                    except BaseException:
                        _close_now(stream)
                        raise
        except trio.TooSlowError:
            raise httpx.ConnectTimeout("") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc)) from exc
        self._stream = stream
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    async def _write(self, stream: trio.abc.Stream, data: bytes, *, reused: bool) -> None:
        try:
            with trio.fail_after(self.connect_timeout):
                await stream.send_all(data)
        except trio.TooSlowError:
            raise httpx.WriteTimeout("") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if reused:
                raise _Retry from exc
            raise httpx.WriteError(str(exc)) from exc

    async def _response(
        self,
        stream: trio.abc.Stream,
        http: h11.Connection,
        limit: int,
        where: str,
        reading: trio.CancelScope,
        *,
        reused: bool,
    ) -> tuple[int, bytes]:
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is h11.NEED_DATA:
                reading.deadline = trio.current_time() + self.read_timeout
                data = await self._read(stream, reused=reused and not status)
                if not data and not status:
                    if reused:
                        raise _Retry
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                encoding = dict(event.headers).get(b"content-encoding", b"identity")
                if encoding.strip().lower() != b"identity":
                    raise SourceError(
                        f"unexpected Content-Encoding {encoding.decode('latin-1')!r}",
                        source=where,
                    )
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise SourceError(
                        f"response larger than {limit} bytes",
                        source=where,
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:  # ConnectionClosed, PAUSED: not before the end of the answer
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def _read(self, stream: trio.abc.Stream, *, reused: bool) -> bytes:
        try:
            data = await stream.receive_some(READ_BYTES)
            return data if isinstance(data, bytes) else bytes(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if reused:
                raise _Retry from exc
            raise httpx.ReadError(str(exc)) from exc


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _readable(stream: trio.abc.Stream) -> bool:
    """Whether an idle connection has something to read: the server's close (or bytes it
    should not send between answers). Either way it cannot carry the next request."""
    sock = _socket_of(stream)
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _close_now(stream: trio.abc.Stream) -> None:
    """Close without a TLS close_notify (what `aclose_forcefully` ends in), synchronously."""
    sock = _socket_of(stream)
    if sock is not None:
        sock.close()
