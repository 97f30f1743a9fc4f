"""The API-server source against a real HTTPS list + chunked-watch stand-in on 127.0.0.1.

Goal: list (paginated) then watch from the list's resourceVersion; pod changes become events;
bookmarks move the resourceVersion; `410 Gone` (HTTP status or in-stream `ERROR`) relists; a
dropped connection resumes from the last resourceVersion without a relist; slow responses (events
split across slow chunks) are read correctly; an outage changes nothing and shows in the health;
mirror pods are known by their kubelet-side UID. Method: `ApiServerStandIn` (http.server +
trustme TLS, bearer token, chunked transfer encoding), the real `ApiServerSource` on httpx/trio.
"""

from __future__ import annotations

from pathlib import Path

import trio

from memstate.node.sources.apiserver import ApiServerSource
from memstate.node.sources.connection import Connection, kubelet_connection
from memstate.node.sources.feed import SourceFeed
from memstate.node.sources.tracker import PodTracker
from tests.sources.conftest import Recorder, wait_for
from tests.sources.standins import ApiServerStandIn, Certificates, kube_pod, running

UIDS = [f"7a1e0c44-2222-4b5c-8d6e-00000000000{i}" for i in range(8)]


def connection_for(standin: ApiServerStandIn, ca_file: Path, token_file: Path) -> Connection:
    # Same shape as the kubelet's: base URL, token file, CA (kubeconfig/in-cluster parsing is
    # tested in test_connection.py).
    return kubelet_connection(standin.url, token_file=token_file, ca_file=ca_file)


def source_for(standin: ApiServerStandIn, ca_file: Path, token_file: Path) -> ApiServerSource:
    return ApiServerSource(
        connection_for(standin, ca_file, token_file),
        "node-a",
        read_timeout=30.0,
        backoff_initial=0.05,
        backoff_max=0.2,
    )


async def test_list_watch_and_lifecycle(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    cgroups: set[str] = set()
    feed = SourceFeed(PodTracker(cgroup_gone=lambda uid: uid not in cgroups), recorder.submit)
    with running(ApiServerStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, ApiServerStandIn)
        for i in range(5):  # more than one page (the stand-in pages by 2)
            standin.add(kube_pod(f"p{i}", UIDS[i]))
        source = source_for(standin, ca_file, token_file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("apiserver"))
            await wait_for(lambda: len(recorder.events) == 5, "listed pods admitted")
            assert sorted(recorder.summary()) == [("admit", u) for u in UIDS[:5]]
            assert len(standin.requests_to("/api/v1/pods")) >= 3  # 3 pages
            await wait_for(lambda: standin.watch_count() == 1, "watch")
            watch = next(q for q in standin.requests_to("/api/v1/pods") if q.get("watch"))
            assert watch["allowWatchBookmarks"] == ["true"]
            assert watch["resourceVersion"] == [str(standin.version)]
            assert watch["fieldSelector"] == ["spec.nodeName=node-a"]
            recorder.events.clear()

            standin.add(kube_pod("p5", UIDS[5], init_containers=["setup"]))
            await wait_for(lambda: recorder.summary() == [("admit", UIDS[5])], "watched add")
            standin.modify(
                kube_pod("p5", UIDS[5], init_containers=["setup"], init_exit_codes={"setup": 0})
            )
            await wait_for(lambda: ("init", UIDS[5]) in recorder.summary(), "init completed")
            standin.modify(kube_pod("p0", UIDS[0], phase="Failed"))
            await wait_for(lambda: ("remove", UIDS[0]) in recorder.summary(), "failed → removal")
            cgroups.add(UIDS[1])
            standin.modify(kube_pod("p1", UIDS[1], deletion=True))
            standin.delete(kube_pod("p2", UIDS[2]))
            await wait_for(lambda: ("remove", UIDS[2]) in recorder.summary(), "deleted → removal")
            assert ("remove", UIDS[1]) not in recorder.summary()  # terminating, cgroup present
            standin.delete(kube_pod("p1", UIDS[1], deletion=True))
            cgroups.discard(UIDS[1])
            await feed.recheck()  # the daemon does this on cgroup hints
            await wait_for(lambda: ("remove", UIDS[1]) in recorder.summary(), "released")
            # a pod of another node that slipped through is never ours
            standin.add(kube_pod("elsewhere", UIDS[6], node="node-b"))
            standin.bookmark()
            await wait_for(lambda: source.resource_version == str(standin.version), "bookmark")
            nursery.cancel_scope.cancel()
    assert ("admit", UIDS[6]) not in recorder.summary()
    assert source.relists == 0
    assert all(getattr(e, "pod_source", "") == "apiserver" for e in recorder.events)


async def test_gone_relists_and_drops_resume(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(ApiServerStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, ApiServerStandIn)
        standin.add(kube_pod("p0", UIDS[0]))
        source = source_for(standin, ca_file, token_file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("apiserver"))
            await wait_for(lambda: standin.streaming_count() == 1, "first watch")

            # dropped connection: watch again from the last rv, no relist
            standin.add(kube_pod("p1", UIDS[1]))
            await wait_for(lambda: ("admit", UIDS[1]) in recorder.summary(), "p1")
            seen_rv = source.resource_version
            standin.drop_watches()
            await wait_for(lambda: standin.streaming_count() == 2, "rewatch after drop")
            rewatch = [q for q in standin.requests_to("/api/v1/pods") if q.get("watch")][1]
            assert rewatch["resourceVersion"] == [seen_rv]
            assert standin.list_count() == 1

            # 410 inside the stream: relist; a pod deleted meanwhile is noticed by the relist
            standin.error_410_in_stream()
            await wait_for(lambda: standin.list_count() == 2, "relist after in-stream 410")
            assert source.relists == 1
            # Only a watch that is streaming sees the drop below (else it would start from the
            # fresh list's resourceVersion, which the compaction may already include).
            await wait_for(lambda: standin.streaming_count() == 3, "watching after the relist")

            # 410 as the HTTP status of the watch, after the history was compacted while the
            # watch was down; a pod deleted in the gap disappears with the relist
            standin.expire()
            with standin.lock:
                standin.pods.pop(UIDS[0])  # deleted while nobody watched (compacted away)
            standin.drop_watches()
            await wait_for(lambda: standin.list_count() >= 3, "relist after HTTP 410")
            await wait_for(lambda: ("remove", UIDS[0]) in recorder.summary(), "gap deletion")
            await wait_for(lambda: standin.watch_count() >= 4, "watching again")
            standin.add(kube_pod("p2", UIDS[2]))
            await wait_for(lambda: ("admit", UIDS[2]) in recorder.summary(), "p2 after relist")
            nursery.cancel_scope.cancel()
    # One relist per 410: the fresh list's resourceVersion is watchable again.
    assert standin.list_count() == 3
    assert source.relists == 2
    assert recorder.summary() == [
        ("admit", UIDS[0]),
        ("admit", UIDS[1]),
        ("remove", UIDS[0]),
        ("admit", UIDS[2]),
    ]


async def test_repeated_gone_backs_off(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    """A server answering 410 to the watch of every fresh list is not relisted in a tight loop."""
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(ApiServerStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, ApiServerStandIn)
        standin.add(kube_pod("p0", UIDS[0]))
        standin.watch_status, standin.watch_status_times = 410, 4
        source = ApiServerSource(
            connection_for(standin, ca_file, token_file),
            "node-a",
            read_timeout=30.0,
            backoff_initial=0.2,
            backoff_max=10.0,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("apiserver"))
            await wait_for(lambda: standin.list_count() >= 1, "first list")
            started = trio.current_time()
            await wait_for(lambda: standin.watch_count() >= 5, "the watch that is answered")
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    # Four 410s in a row: relists after waits of 0, 0.2, 0.4 and 0.8 s (a lower bound, which a
    # loaded machine only lengthens).
    assert standin.list_count() == 5
    assert source.relists == 4
    assert elapsed >= 1.4
    assert recorder.summary() == [("admit", UIDS[0])]


async def test_slow_responses_and_outage(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(ApiServerStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, ApiServerStandIn)
        standin.add(kube_pod("p0", UIDS[0]))
        standin.list_delay = 0.5
        standin.chunk_delay = 0.3  # every event split in two chunks, 0.3 s apart
        source = source_for(standin, ca_file, token_file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("apiserver"))
            await wait_for(lambda: standin.watch_count() == 1, "watch")
            standin.add(kube_pod("p1", UIDS[1]))
            standin.add(kube_pod("p2", UIDS[2]))
            await wait_for(lambda: len(recorder.events) == 3, "slow events")

            # outage: the watch fails and is answered 503 for a while, then the server is back
            standin.watch_status, standin.watch_status_times = 503, 3
            standin.drop_watches()
            await wait_for(lambda: source.health.consecutive_failures >= 2, "failures seen")
            assert not source.health.in_sync
            assert "HTTP 503" in source.health.last_error
            await wait_for(lambda: source.health.in_sync, "back in sync")
            nursery.cancel_scope.cancel()
    assert recorder.summary() == [("admit", UIDS[0]), ("admit", UIDS[1]), ("admit", UIDS[2])]


async def test_server_gone_changes_nothing_and_backoff_is_capped(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    standin = ApiServerStandIn(certificates, "s3cr3t-token")
    standin.add(kube_pod("p0", UIDS[0]))
    standin.start()
    source = source_for(standin, ca_file, token_file)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, feed.deliverer("apiserver"))
        await wait_for(lambda: standin.watch_count() == 1, "watch")
        standin.stop()  # the API server goes away entirely
        await wait_for(lambda: source.health.consecutive_failures >= 6, "repeated failures")
        assert source.backoff_delay() == 0.2  # 0.05 doubling, capped at 0.2
        assert not source.health.in_sync
        nursery.cancel_scope.cancel()
    assert recorder.summary() == [("admit", UIDS[0])]


async def test_mirror_pods_use_the_kubelet_uid(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    kubelet_uid = "d41d8cd98f00b204e9800998ecf8427e"
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(ApiServerStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, ApiServerStandIn)
        mirror = kube_pod(
            "etcd-node-a",
            UIDS[7],
            namespace="kube-system",
            annotations={
                "kubernetes.io/config.mirror": kubelet_uid,
                "kubernetes.io/config.hash": kubelet_uid,
                "kubernetes.io/config.source": "file",
            },
        )
        standin.add(mirror)
        source = source_for(standin, ca_file, token_file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("apiserver"))
            await wait_for(lambda: bool(recorder.events), "mirror admitted")
            standin.delete(mirror)
            await wait_for(lambda: len(recorder.events) == 2, "mirror removed")
            nursery.cancel_scope.cancel()
    assert recorder.summary() == [("admit", kubelet_uid), ("remove", kubelet_uid)]


async def test_backoff_delay_doubles_to_the_cap() -> None:
    source = ApiServerSource(
        Connection(base_url="http://127.0.0.1:1"), "n", backoff_initial=0.5, backoff_max=30.0
    )
    delays = []
    for _ in range(9):
        source.health.failed("x")
        delays.append(source.backoff_delay())
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


async def test_reconnect_waits_on_trios_clock(autojump_clock: trio.abc.Clock) -> None:
    # Nothing listens on the port: every connect fails at once. With MockClock's autojump the
    # backoff sleeps take no real time, so many attempts pass quickly; the virtual time spent is
    # the sum of the capped delays.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = ApiServerSource(
        Connection(base_url=f"http://127.0.0.1:{port}"),
        "n",
        backoff_initial=1.0,
        backoff_max=8.0,
    )

    async def deliver(_: object) -> None:
        raise AssertionError("nothing can be listed")

    start = trio.current_time()
    with trio.move_on_after(100.0):
        await source.run(deliver)
    failures = source.health.consecutive_failures
    # 1 + 2 + 4 + 8 + 8 + … ≤ 100 virtual seconds
    assert failures >= 13
    assert trio.current_time() - start >= 100.0
