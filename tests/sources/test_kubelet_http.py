"""The kubelet poll's transport (memstate.node.sources.httpget) against the real HTTPS stand-in.

Goal: the `/pods` GET keeps one connection between polls (a 5 s poll does not reconnect, as it
did through httpx's 5 s pool expiry), replaces one the server closed or hung up on without a
failed poll, reads chunked bodies, refuses a body above the bound, times a silent server out, and
reports failures as httpx did (`describe_http_error`). Method: `KubeletStandIn` (real sockets,
real TLS) and the real `KubeletSource.poll`; trio's `MockClock` moves time between polls (it
does not move by itself: `mock_clock`), so no test waits for seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from memstate.core.errors import SourceError
from memstate.node.sources import kubelet as kubelet_module
from memstate.node.sources.connection import kubelet_connection
from memstate.node.sources.httpget import KeptConnection
from memstate.node.sources.kubelet import KEEPALIVE_SECONDS, KubeletSource
from tests.sources.standins import Certificates, KubeletStandIn, kube_pod, running

UIDS = [f"0b6c2f7e-3333-4a3b-9c1d-{index:012d}" for index in range(3)]
PODS = [kube_pod(f"p{index}", uid) for index, uid in enumerate(UIDS)]


def source_for(standin: KubeletStandIn, ca_file: Path, token_file: Path) -> KubeletSource:
    connection = kubelet_connection(standin.url, token_file=token_file, ca_file=ca_file)
    return KubeletSource(connection)


@contextmanager
def serving(
    certificates: Certificates, ca_file: Path, token_file: Path
) -> Iterator[tuple[KubeletStandIn, KubeletSource]]:
    """The HTTPS stand-in serving `PODS`, and a source polling it."""
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        standin.set_pods(PODS)
        yield standin, source_for(standin, ca_file, token_file)


async def test_one_connection_is_kept_between_polls(
    certificates: Certificates, ca_file: Path, token_file: Path, mock_clock: trio.testing.MockClock
) -> None:
    with serving(certificates, ca_file, token_file) as (standin, source):
        async with source.transport() as client:
            for _ in range(3):
                assert [pod.uid for pod in await source.poll(client)] == UIDS
                mock_clock.jump(source.interval + 1)  # httpx's pool dropped it after 5 s
            assert client.connections == 1 and len(standin.connections) == 1
            mock_clock.jump(KEEPALIVE_SECONDS)  # idle longer than it is kept: a new one
            assert len(await source.poll(client)) == 3
            assert client.connections == 2 and len(standin.connections) == 2
    assert standin.polls() == 4


async def test_a_connection_the_server_closed_is_replaced(
    certificates: Certificates, ca_file: Path, token_file: Path
) -> None:
    with serving(certificates, ca_file, token_file) as (standin, source):
        standin.close_after_answer = True  # no `Connection: close`: the client finds out
        async with source.transport() as client:
            for _ in range(3):
                assert len(await source.poll(client)) == 3
        assert len(standin.connections) == 3


async def test_a_request_hung_up_on_is_sent_again_on_a_new_connection(
    certificates: Certificates, ca_file: Path, token_file: Path
) -> None:
    with serving(certificates, ca_file, token_file) as (standin, source):
        async with source.transport() as client:
            await source.poll(client)
            # The server closes the kept connection as the request arrives (an idle timeout
            # racing the poll): sent again, once, on a new connection.
            standin.hang_ups = 1
            assert len(await source.poll(client)) == 3
            assert client.connections == 2
            # On a new connection a hang-up is the server's answer: a failed poll, as with httpx.
            await client.aclose()  # the next poll connects anew
            standin.hang_ups = 1
            with pytest.raises(SourceError) as failed:
                await source.poll(client)
        assert failed.value.describe().endswith(
            "RemoteProtocolError: Server disconnected without sending a response."
        ), failed.value.describe()
        assert standin.polls() == 4


async def test_chunked_answers_are_read_and_the_connection_kept(
    certificates: Certificates, ca_file: Path, token_file: Path
) -> None:
    with serving(certificates, ca_file, token_file) as (standin, source):
        standin.chunked = True
        async with source.transport() as client:
            assert [pod.uid for pod in await source.poll(client)] == UIDS
            standin.set_pods(PODS[:1])
            assert [pod.uid for pod in await source.poll(client)] == UIDS[:1]
            assert client.connections == 1


async def test_a_body_above_the_bound_is_refused(
    certificates: Certificates, ca_file: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(certificates, ca_file, token_file) as (_standin, source):
        async with source.transport() as client:
            monkeypatch.setattr(kubelet_module, "MAX_BODY_BYTES", 2000)
            with pytest.raises(SourceError) as refused:
                await source.poll(client)
            assert "response larger than 2000 bytes" in refused.value.describe()
            monkeypatch.undo()
            assert len(await source.poll(client)) == 3  # on a new connection
            assert client.connections == 2


async def test_a_silent_server_times_out(
    certificates: Certificates, ca_file: Path, token_file: Path, mock_clock: trio.testing.MockClock
) -> None:
    with serving(certificates, ca_file, token_file) as (standin, source):
        async with source.transport() as client:
            await source.poll(client)
            standin.stall = True
            failures: list[str] = []

            async def poll() -> None:
                try:
                    await source.poll(client)
                except SourceError as exc:
                    failures.append(exc.describe())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                # Wait until the request is out and the poll waits for the answer …
                while standin.polls() < 2:
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.sleep(0)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(source.read_timeout + 1)  # … then the read timeout passes
        assert len(failures) == 1 and "ReadTimeout" in failures[0], failures


async def _slow_answer(listener: trio.SocketListener, gaps: list[float]) -> None:
    """Serve one request: the head and 2 body bytes, then 2 more after each of `gaps`."""
    stream = await listener.accept()
    async with stream:
        await stream.receive_some(65536)
        body = b"ab" * (len(gaps) + 1)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nab" % len(body))
        for gap in gaps:
            await trio.sleep(gap)
            await stream.send_all(b"ab")
        await trio.sleep(math.inf)


@pytest.mark.parametrize(("gaps", "answered"), [([6.0, 6.0, 6.0], True), ([6.0, 11.0], False)])
async def test_the_read_timeout_is_per_read(
    autojump_clock: trio.testing.MockClock, gaps: list[float], answered: bool
) -> None:
    """A slow answer is read while no gap reaches the read timeout (10 s), however long all of
    it takes; a longer gap is a `ReadTimeout`. (Plain HTTP from a trio server in this test, so
    the simulated clock drives both sides.)"""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = KeptConnection(
        f"http://127.0.0.1:{port}",
        None,
        connect_timeout=5.0,
        read_timeout=10.0,
        keepalive_seconds=60,
    )
    async with trio.open_nursery() as nursery, client:
        nursery.start_soon(_slow_answer, listeners[0], gaps)
        if answered:
            assert await client.get("/pods", {}, 100) == (200, b"ab" * (len(gaps) + 1))
        else:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/pods", {}, 100)
        nursery.cancel_scope.cancel()
