"""The HTTP endpoint (/metrics, /healthz, /readyz) with real sockets on 127.0.0.1.

Goal: the endpoint answers its three paths and 404 elsewhere, holds at most `max_connections`
connections (tasks) however many clients connect and idle, closes slow and garbage clients,
warns when it listens on a non-loopback address, and reports liveness and readiness as they
change. Method: `HttpEndpoint.serve` runs in a trio nursery on an ephemeral port; clients are raw
trio TCP streams speaking HTTP/1.1 by hand (so the test controls every byte); liveness and
readiness are driven through a fake clock and the `Readiness` object the daemon sets. Timeouts
are hang guards, never assertions about speed.
"""

from __future__ import annotations

import logging
import threading

import pytest
import trio

from memstate.node.endpoint import EndpointLimits, HttpEndpoint, status_routes
from memstate.node.health import HEARTBEAT_GRACE_SECONDS, Heartbeat, Readiness
from memstate.node.metrics import Metrics, Snapshot

HANG_GUARD_SECONDS = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_endpoint(
    limits: EndpointLimits | None = None,
) -> tuple[HttpEndpoint, Metrics, Heartbeat, Readiness, FakeClock]:
    metrics = Metrics()
    metrics.publish(Snapshot(last_seq=42))
    clock = FakeClock()
    heartbeat = Heartbeat(clock)
    readiness = Readiness()
    endpoint = HttpEndpoint(status_routes(metrics.render, heartbeat, readiness), limits)
    return endpoint, metrics, heartbeat, readiness, clock


async def start(nursery: trio.Nursery, endpoint: HttpEndpoint, host: str = "127.0.0.1") -> int:
    bound: list[tuple[str, int]] = await nursery.start(endpoint.serve, host, 0)
    return bound[0][1]


async def receive_all(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    with trio.fail_after(HANG_GUARD_SECONDS):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def request(port: int, raw: bytes) -> bytes:
    """Send `raw` on a new connection and return everything the server sent until it closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        return await receive_all(stream)


async def get(port: int, path: str) -> tuple[int, bytes]:
    response = await request(
        port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def count_tasks() -> int:
    """Every task of this trio run."""
    pending = [trio.lowlevel.current_root_task()]
    count = 0
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def test_metrics_on_metrics_only_and_404_elsewhere() -> None:
    endpoint, _metrics, _heartbeat, _readiness, _clock = make_endpoint()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, endpoint)
        status, body = await get(port, "/metrics")
        assert status == 200 and b"memstate_last_applied_seq 42.0" in body
        status, body = await get(port, "/metrics?name[]=x")
        assert status == 200 and b"memstate_last_applied_seq" in body
        for path in ("/", "/other", "/metrics/", "/metricsx", "/../metrics"):
            status, body = await get(port, path)
            assert (status, body) == (404, b"not found\n"), path
        response = await request(
            port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
        )
        assert response.startswith(b"HTTP/1.1 405 ") and b"\r\nallow: GET, HEAD\r\n" in response
        response = await request(
            port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\n")
        nursery.cancel_scope.cancel()


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    endpoint, _metrics, _heartbeat, _readiness, _clock = make_endpoint()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, endpoint)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n"
            )
            response = await receive_all(stream)
        assert response.count(b"HTTP/1.1 ") == 2
        assert response.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in response
        nursery.cancel_scope.cancel()


async def test_300_idle_connections_stay_within_the_bound_and_a_scrape_still_answers() -> None:
    """Issue 10: 300 idle connections made 310 threads. Now: at most `max_connections`
    connection tasks, no thread at all, and a scraper arriving last is answered."""
    limits = EndpointLimits(max_connections=8, request_timeout_seconds=HANG_GUARD_SECONDS * 10)
    endpoint, _metrics, _heartbeat, _readiness, _clock = make_endpoint(limits)
    threads_before = threading.active_count()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, endpoint)
        tasks_before = count_tasks()
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(300)]
        # Let the server accept what it will (every accept beyond the bound evicts an idle one).
        with trio.fail_after(HANG_GUARD_SECONDS):
            while endpoint.connections_evicted + endpoint.connections_refused < 300 - 8:
                assert endpoint.open_connections <= 8
                assert count_tasks() <= tasks_before + 8
                await trio.sleep(0.01)
        assert endpoint.open_connections <= 8
        assert count_tasks() <= tasks_before + 8
        assert threading.active_count() == threads_before
        status, body = await get(port, "/metrics")
        assert status == 200 and b"memstate_last_applied_seq" in body
        assert endpoint.open_connections <= 8
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_slow_and_garbage_clients_are_closed_and_others_still_served() -> None:
    limits = EndpointLimits(max_connections=4, request_timeout_seconds=0.5, max_head_bytes=1024)
    endpoint, _metrics, _heartbeat, _readiness, _clock = make_endpoint(limits)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, endpoint)
        # Slowloris: a request head dripped a byte at a time, never finished. The server closes
        # the connection once the request deadline passes (the hang guard bounds the test).
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        closed = False
        with trio.fail_after(HANG_GUARD_SECONDS):
            for byte in b"GET /metrics HTTP/1.1\r\nX-" + b"a" * 10_000:
                try:
                    await slow.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    closed = True
                    break
                with trio.move_on_after(0.05):
                    try:
                        if await slow.receive_some(1) == b"":
                            closed = True
                            break
                    except trio.BrokenResourceError:
                        # Reset: the server closed with some of our drip unread.
                        closed = True
                        break
        assert closed, "a dripping client was never closed"
        await slow.aclose()
        # A silent client is closed too.
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        assert await receive_all(silent) == b""
        await silent.aclose()
        # Garbage: 400 and a close.
        response = await request(port, b"\x00\xff\xfe garbage \x01\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")
        # A head larger than the bound: 431 and a close.
        huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
        response = await request(port, huge)
        assert response.startswith(b"HTTP/1.1 431 ")
        # Not HTTP/1: 400 (or 505) and a close.
        response = await request(port, b"GET /metrics HTTP/9.9\r\n\r\n")
        assert response.split(b" ", 2)[1] in (b"400", b"505")
        status, body = await get(port, "/metrics")
        assert status == 200 and b"memstate_last_applied_seq" in body
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_non_loopback_address_is_warned_about(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, _metrics, _heartbeat, _readiness, _clock = make_endpoint()
    caplog.set_level(logging.WARNING, logger="memstate.node.endpoint")
    async with trio.open_nursery() as nursery:
        await start(nursery, endpoint, host)
        nursery.cancel_scope.cancel()  # listening on every interface only as long as needed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if host == "127.0.0.1":
        assert warnings == []
    else:
        assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "not a loopback" in warnings[0]


async def test_healthz_follows_the_heartbeat() -> None:
    endpoint, _metrics, heartbeat, _readiness, clock = make_endpoint()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, endpoint)
        assert await get(port, "/healthz") == (200, b"ok\n")
        heartbeat.beat("reconcile", 30.0)
        heartbeat.beat("manifests", 10.0)
        clock.now += 2 * 10.0 + HEARTBEAT_GRACE_SECONDS - 1
        assert await get(port, "/healthz") == (200, b"ok\n")
        clock.now += 2
        status, body = await get(port, "/healthz")
        assert status == 503
        assert body.startswith(b"unhealthy: the manifests loop last went round 51 s ago")
        assert body.count(b"\n") == 1
        heartbeat.beat("manifests", 10.0)
        assert await get(port, "/healthz") == (200, b"ok\n")
        clock.now += 2 * 30.0 + HEARTBEAT_GRACE_SECONDS + 1
        heartbeat.beat("manifests", 10.0)
        status, body = await get(port, "/healthz")
        assert status == 503 and b"the reconcile loop" in body
        nursery.cancel_scope.cancel()


async def test_readyz_follows_recovery_sources_and_convergence() -> None:
    endpoint, _metrics, _heartbeat, readiness, _clock = make_endpoint()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, endpoint)

        async def readyz() -> tuple[int, str]:
            status, body = await get(port, "/readyz")
            assert body.count(b"\n") == 1, body  # one line
            return status, body.decode().strip()

        assert await readyz() == (
            503,
            "not ready: starting: the event log is being recovered and the pods readmitted",
        )
        readiness.recovered = True
        assert await readyz() == (
            503,
            "not ready: the cgroup tree has not converged to the targets",
        )
        readiness.pending_removals = 2
        assert await readyz() == (
            503,
            "not ready: the cgroup tree has not converged (2 pod cgroups waiting to be removed)",
        )
        readiness.converged, readiness.pending_removals = True, 0
        readiness.source_in_sync("manifests")
        assert await readyz() == (200, "ready")
        readiness.source_failed("manifests", "/etc/memstate/pods: permission\ndenied")
        assert await readyz() == (
            503,
            "not ready: source manifests is out of sync: /etc/memstate/pods: permission denied",
        )
        readiness.source_in_sync("manifests")
        assert await readyz() == (200, "ready")
        nursery.cancel_scope.cancel()
