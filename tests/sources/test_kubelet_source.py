"""The kubelet `/pods` source against a real HTTPS stand-in on 127.0.0.1.

Goal: pods appearing, completing init containers, finishing, being deleted and disappearing on the
kubelet become exactly the documented input events; a nudge polls at once; an outage, a wrong
token or a malformed PodList change nothing already decided and show in the health; the source
stays up and picks up again. Method: `KubeletStandIn` (http.server + trustme TLS, bearer token),
the real `KubeletSource` on httpx/trio, the real `SourceFeed`/`PodTracker`, and a recorder
playing the writer.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import pytest
import trio

from memstate.core.events import PodAdmissionRequested
from memstate.core.pod import PodResources, pod_request, qos_class
from memstate.node.sources import kubelet as kubelet_module
from memstate.node.sources.connection import kubelet_connection
from memstate.node.sources.feed import SourceFeed
from memstate.node.sources.kubelet import KubeletSource
from memstate.node.sources.tracker import PodTracker
from tests.sources.conftest import Recorder, wait_for
from tests.sources.standins import Certificates, KubeletStandIn, kube_pod, running

UID_A = "0b6c2f7e-1111-4a3b-9c1d-000000000001"
UID_B = "0b6c2f7e-1111-4a3b-9c1d-000000000002"


def source_for(
    standin: KubeletStandIn, ca_file: Path, token_file: Path, **kw: float
) -> KubeletSource:
    connection = kubelet_connection(standin.url, token_file=token_file, ca_file=ca_file)
    return KubeletSource(connection, **kw)


async def test_pods_drive_events(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    cgroups = {UID_A, UID_B}  # pod cgroups that exist on the "node"
    tracker = PodTracker(cgroup_gone=lambda uid: uid not in cgroups)
    feed = SourceFeed(tracker, recorder.submit)
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        source = source_for(standin, ca_file, token_file, interval=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("kubelet"))
            standin.set_pods([kube_pod("a", UID_A, init_containers=["setup"])])
            await wait_for(lambda: ("admit", UID_A) in recorder.summary(), "admission of a")
            assert source.health.in_sync and source.health.consecutive_failures == 0
            admitted = recorder.events[0]
            assert getattr(admitted, "pod_source", "") == "kubelet"
            assert getattr(admitted, "source", "") == "kubelet:default/a"

            # init container fails: nothing; then succeeds (exit 0): init completed, once
            standin.set_pods(
                [kube_pod("a", UID_A, init_containers=["setup"], init_exit_codes={"setup": 1})]
            )
            polls = standin.polls()
            await wait_for(lambda: standin.polls() > polls + 2, "more polls")
            assert ("init", UID_A) not in recorder.summary()
            standin.set_pods(
                [
                    kube_pod("a", UID_A, init_containers=["setup"], init_exit_codes={"setup": 0}),
                    kube_pod("b", UID_B),
                ]
            )
            await wait_for(lambda: ("admit", UID_B) in recorder.summary(), "admission of b")
            await wait_for(lambda: ("init", UID_A) in recorder.summary(), "init of a")

            # b succeeds: removal at once (no running container), even with its cgroup present
            standin.set_pods(
                [
                    kube_pod("a", UID_A, init_containers=["setup"], init_exit_codes={"setup": 0}),
                    kube_pod("b", UID_B, phase="Succeeded"),
                ]
            )
            await wait_for(lambda: ("remove", UID_B) in recorder.summary(), "removal of b")

            # a is deleted: terminating, held while its cgroup exists
            standin.set_pods(
                [
                    kube_pod(
                        "a",
                        UID_A,
                        deletion=True,
                        init_containers=["setup"],
                        init_exit_codes={"setup": 0},
                    )
                ]
            )
            polls = standin.polls()
            await wait_for(lambda: standin.polls() > polls + 2, "more polls")
            assert ("remove", UID_A) not in recorder.summary()
            standin.set_pods([])  # gone from the kubelet, cgroup still there: still held
            polls = standin.polls()
            await wait_for(lambda: standin.polls() > polls + 2, "more polls")
            assert ("remove", UID_A) not in recorder.summary()
            cgroups.discard(UID_A)  # the kubelet removed the pod cgroup
            await wait_for(lambda: ("remove", UID_A) in recorder.summary(), "removal of a")
            nursery.cancel_scope.cancel()
    assert recorder.summary() == [
        ("admit", UID_A),
        ("init", UID_A),  # in listing order: a before b
        ("admit", UID_B),
        ("remove", UID_B),
        ("remove", UID_A),
    ]


async def test_outage_wrong_token_and_garbage_change_nothing(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder, tmp_path: Path
) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        source = source_for(standin, ca_file, token_file, interval=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("kubelet"))
            standin.set_pods([kube_pod("a", UID_A)])
            await wait_for(lambda: recorder.summary() == [("admit", UID_A)], "admission")

            for break_it in ("status", "garbage", "not-a-podlist", "token", "hang-up"):
                if break_it == "status":
                    standin.failure = 503
                elif break_it == "garbage":
                    standin.garbage = b'{"kind": "PodList", "items": [{"metadata": 7}'
                elif break_it == "not-a-podlist":
                    standin.garbage = b'{"kind": "Status", "apiVersion": "v1", "code": 500}'
                elif break_it == "token":
                    token_file.write_text("wrong")
                else:
                    standin.hang_up = True
                standin.set_pods([])  # would remove a, if the source could see it
                await wait_for(lambda: source.health.consecutive_failures >= 3, break_it)
                assert not source.health.in_sync
                assert recorder.summary() == [("admit", UID_A)], break_it
                if break_it == "status":
                    assert "HTTP 503" in source.health.last_error
                elif break_it == "garbage":
                    assert "not a PodList" in source.health.last_error
                elif break_it == "not-a-podlist":
                    assert "expected apiVersion v1, kind PodList" in source.health.last_error
                elif break_it == "token":
                    assert "HTTP 401" in source.health.last_error
                standin.failure, standin.garbage, standin.hang_up = None, None, False
                token_file.write_text("s3cr3t-token")
                standin.set_pods([kube_pod("a", UID_A)])
                await wait_for(lambda: source.health.in_sync, f"recovery after {break_it}")
                assert source.health.last_success_unix is not None
                assert recorder.summary() == [("admit", UID_A)], break_it
            nursery.cancel_scope.cancel()


async def test_nudge_polls_at_once(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        source = source_for(standin, ca_file, token_file, interval=3600.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("kubelet"))
            await wait_for(lambda: source.health.in_sync, "first poll")
            standin.set_pods([kube_pod("a", UID_A)])
            assert recorder.summary() == []
            source.nudge()  # a pod cgroup appeared
            await wait_for(lambda: recorder.summary() == [("admit", UID_A)], "poll on nudge")
            assert standin.polls() == 2
            nursery.cancel_scope.cancel()


async def test_untrusted_server_certificate_is_refused(
    certificates: Certificates, token_file: Path, recorder: Recorder, tmp_path: Path
) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.crt"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        standin.set_pods([kube_pod("a", UID_A)])
        source = source_for(standin, other_ca, token_file, interval=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("kubelet"))
            await wait_for(lambda: source.health.consecutive_failures >= 2, "failures")
            nursery.cancel_scope.cancel()
    assert "CERTIFICATE_VERIFY_FAILED" in source.health.last_error
    assert recorder.events == []
    assert standin.polls() == 0  # the request never reached the handler


async def test_pod_level_resources_are_admitted_with_their_pod_level_values(
    certificates: Certificates, ca_file: Path, token_file: Path, recorder: Recorder
) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        standin.set_pods([kube_pod("p", UID_A, pod_level_resources=True)])
        source = source_for(standin, ca_file, token_file, interval=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("kubelet"))
            await wait_for(lambda: bool(recorder.events), "admission")
            nursery.cancel_scope.cancel()
    assert recorder.summary() == [("admit", UID_A)]
    event = recorder.events[0]
    assert isinstance(event, PodAdmissionRequested)
    # spec.resources: limits memory 2Gi, cpu 2; the API defaulting copies them into requests.
    assert event.pod.pod_level == PodResources(
        requests={"cpu": 2000, "memory": 2 << 30}, limits={"cpu": 2000, "memory": 2 << 30}
    )
    assert qos_class(event.pod) == "Guaranteed"
    assert pod_request(event.pod) == 2 << 30


async def test_read_only_port(certificates: Certificates, recorder: Recorder) -> None:
    feed = SourceFeed(PodTracker(), recorder.submit)
    with running(KubeletStandIn(certificates, "unused", read_only_port=True)) as standin:
        assert isinstance(standin, KubeletStandIn)
        assert standin.url.startswith("http://")
        standin.set_pods([kube_pod("a", UID_A)])
        source = KubeletSource(kubelet_connection(standin.url), interval=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, feed.deliverer("kubelet"))
            await wait_for(lambda: recorder.summary() == [("admit", UID_A)], "admission")
            nursery.cancel_scope.cancel()
    # no credentials are sent to the unauthenticated port
    assert all("authorization" not in {k.lower() for k in h} for _, _, h in standin.requests)


async def test_an_unchanged_answer_is_not_decoded_again(
    certificates: Certificates, ca_file: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same `/pods` answer gives the same observation objects (what lets the tracker skip
    its pass over the pods), without decoding it; a changed answer is decoded."""
    decoded: list[int] = []
    real = kubelet_module.decode_pod_list

    def counted(body: bytes, *, where: str) -> Any:
        decoded.append(1)
        return real(body, where=where)

    monkeypatch.setattr(kubelet_module, "decode_pod_list", counted)
    with running(KubeletStandIn(certificates, "s3cr3t-token")) as standin:
        assert isinstance(standin, KubeletStandIn)
        source = source_for(standin, ca_file, token_file)
        standin.set_pods([kube_pod("a", UID_A), kube_pod("b", UID_B)])
        async with source.transport() as client:
            first = await source.poll(client)
            again = await source.poll(client)
            assert decoded == [1]
            assert again == first and all(map(operator.is_, again, first))
            standin.set_pods([kube_pod("a", UID_A)])
            changed = await source.poll(client)
            assert decoded == [1, 1]
            assert [pod.uid for pod in changed] == [UID_A]
            assert changed[0] is first[0]  # unchanged pods keep their observations
