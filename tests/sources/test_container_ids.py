"""Runtime container ids from the pod sources: decoded from `containerStatuses[].containerID`,
merged by the tracker, handed to the reconciler when they change.

Goal: the ids the kubelet and the API server report (containerd and CRI-O, init and app
containers) reach `PodTracker.container_ids()` with their container names; a change (a container
started, restarted under a new id) is reported once, with the pod, through `SourceFeed`'s
`on_container_ids`, and never becomes an event; ids that are not the runtime's 64 hex digits are
left out. Method: pods of the shape the kubelet serves (`kube_pod`), the real decoder and
tracker, and the real API-server source against its HTTPS stand-in for the watch path.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import trio

from memstate.node.sources.apiserver import ApiServerSource
from memstate.node.sources.connection import kubelet_connection
from memstate.node.sources.feed import SourceFeed
from memstate.node.sources.kube import KubePod, observe
from memstate.node.sources.tracker import PodTracker
from tests.sources.conftest import Recorder, wait_for
from tests.sources.standins import ApiServerStandIn, Certificates, kube_pod, running

UID = "7a1e0c44-2222-4b5c-8d6e-0000000000c1"
UID_2 = "7a1e0c44-2222-4b5c-8d6e-0000000000c2"
APP = "a1" * 32
APP_RESTARTED = "a2" * 32
SETUP = "5e" * 32


def decoded(document: dict[str, object]) -> KubePod:
    return msgspec.convert(document, KubePod)


def test_ids_of_init_and_app_containers_for_both_runtimes() -> None:
    pod = kube_pod(
        "p",
        UID,
        init_containers=["setup", "odd"],
        init_exit_codes={"setup": 0, "odd": 0},
        init_container_ids={"setup": f"cri-o://{SETUP}", "odd": "docker://not-a-runtime-id"},
        container_id=f"containerd://{APP}",
    )
    seen = observe(decoded(pod), "kubelet")
    assert seen.container_ids == ((SETUP, "setup"), (APP, "app"))
    # A container not created yet (no id) is simply absent.
    assert observe(decoded(kube_pod("p", UID)), "kubelet").container_ids == ()


def test_the_tracker_reports_each_change_once_and_records_nothing() -> None:
    tracker = PodTracker()

    def deliver(source: str, *pods: dict[str, object]) -> list[object]:
        events = tracker.update(source, [observe(decoded(p), source) for p in pods])  # type: ignore[arg-type]
        tracker.accept()
        return list(events)

    deliver("kubelet", kube_pod("p", UID))
    assert tracker.container_ids() == {} and tracker.ids_changed == frozenset()
    # The app container started: an id, no event (the spec did not change).
    assert deliver("kubelet", kube_pod("p", UID, container_id=f"containerd://{APP}")) == []
    assert tracker.container_ids() == {UID: {APP: "app"}}
    assert tracker.ids_changed == {UID}
    # The same list again: nothing changed.
    deliver("kubelet", kube_pod("p", UID, container_id=f"containerd://{APP}"))
    assert tracker.ids_changed == frozenset()
    # The API server lags with no id, another pod appears there with one: both sources count,
    # and only the new pod changed.
    deliver(
        "apiserver",
        kube_pod("p", UID),
        kube_pod("q", UID_2, container_id=f"cri-o://{APP_RESTARTED}"),
    )
    assert tracker.container_ids() == {UID: {APP: "app"}, UID_2: {APP_RESTARTED: "app"}}
    assert tracker.ids_changed == {UID_2}
    # An update that is not accepted (its events were not made durable) changes nothing.
    tracker.update("kubelet", [])
    assert tracker.container_ids()[UID] == {APP: "app"}


async def test_a_watched_container_start_reaches_the_reconciler_hook(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    heard: list[tuple[dict[str, dict[str, str]], frozenset[str]]] = []
    feed = SourceFeed(
        PodTracker(),
        recorder.submit,
        on_container_ids=lambda ids, pods: heard.append((ids, pods)),
    )
    with running(ApiServerStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, ApiServerStandIn)
        standin.add(kube_pod("p", UID))
        source = ApiServerSource(
            kubelet_connection(standin.url, token_file=token_file, ca_file=ca_file),
            "node-a",
            read_timeout=30.0,
            backoff_initial=0.05,
            backoff_max=0.2,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("apiserver"))
            await wait_for(lambda: recorder.summary() == [("admit", UID)], "admitted")
            await wait_for(lambda: standin.watch_count() == 1, "watch")
            assert heard == []
            standin.modify(kube_pod("p", UID, container_id=f"containerd://{APP}"))
            await wait_for(lambda: len(heard) == 1, "container id heard")
            assert heard[0] == ({UID: {APP: "app"}}, frozenset({UID}))
            # Restarted under a new id: heard again, the old id gone.
            standin.modify(kube_pod("p", UID, container_id=f"containerd://{APP_RESTARTED}"))
            await wait_for(lambda: len(heard) == 2, "new id heard")
            assert heard[1][0] == {UID: {APP_RESTARTED: "app"}}
            nursery.cancel_scope.cancel()
    assert recorder.summary() == [("admit", UID)]  # ids are never events
