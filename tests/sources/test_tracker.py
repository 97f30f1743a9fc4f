"""The shared PodTracker: observations in, input events out.

Goal: the diffing rules hold for every source alike — precedence between sources (the kubelet's
UID wins over a derived static-pod UID and over the API server's copy), finished and terminating
pods, init completion once, invalid pods and their clearing, an unaccepted update repeated, a
source that stops reporting changes nothing. Method: `ObservedPod` values built from real pods,
the tracker driven directly (it is pure apart from the injected cgroup question).
"""

from __future__ import annotations

from memstate.core.events import PodAdmissionRequested
from memstate.core.pod import pod_from_manifest, spec_hash
from memstate.node.sources.observation import Lifecycle, ObservedPod
from memstate.node.sources.tracker import PodTracker
from tests.factories import container, manifest


def observed(
    uid: str,
    locator: str,
    *,
    memory: str = "1Gi",
    lifecycle: Lifecycle = "active",
    init_completed: bool = False,
    derived: bool = False,
    static_key: str = "",
    name: str = "p",
) -> ObservedPod:
    pod = pod_from_manifest(manifest(uid, [container("c", memory)], name=name))
    return ObservedPod(
        locator,
        pod=pod,
        spec_hash=spec_hash(pod),
        lifecycle=lifecycle,
        init_completed=init_completed,
        derived_uid=derived,
        static_key=static_key,
    )


def summary(events: list[object]) -> list[tuple[str, str, str]]:
    out = []
    for event in events:
        kind = getattr(event, "kind", "")
        uid = (
            event.pod.uid if isinstance(event, PodAdmissionRequested) else getattr(event, "uid", "")
        )
        out.append((kind, uid, getattr(event, "pod_source", "")))
    return out


def step(tracker: PodTracker, name: str, pods: list[ObservedPod]) -> list[tuple[str, str, str]]:
    events = tracker.update(name, pods)  # type: ignore[arg-type]
    tracker.accept()
    return summary(list(events))


def test_kubelet_wins_over_apiserver_and_outage_changes_nothing() -> None:
    tracker = PodTracker()
    assert step(tracker, "apiserver", [observed("u1", "apiserver:default/p")]) == [
        ("pod_admission_requested", "u1", "apiserver")
    ]
    # the kubelet sees the same pod: nothing new (same spec), the kubelet's copy is in force now
    assert step(tracker, "kubelet", [observed("u1", "kubelet:default/p")]) == []
    # the API server lags with another spec: ignored, the kubelet's view wins
    assert step(tracker, "apiserver", [observed("u1", "apiserver:default/p", memory="2Gi")]) == []
    # the kubelet's view changes: a new request
    assert step(tracker, "kubelet", [observed("u1", "kubelet:default/p", memory="3Gi")]) == [
        ("pod_admission_requested", "u1", "kubelet")
    ]
    # a source failing does not call update: nothing happens; a recheck changes nothing either
    assert summary(list(tracker.recheck())) == []


def test_pod_leaves_only_when_no_source_sees_it() -> None:
    tracker = PodTracker()
    step(tracker, "kubelet", [observed("u1", "kubelet:default/p")])
    step(tracker, "apiserver", [observed("u1", "apiserver:default/p")])
    assert step(tracker, "kubelet", []) == []  # still seen by the API server
    assert step(tracker, "apiserver", []) == [("pod_removal_requested", "u1", "apiserver")]


def test_kubelet_uid_wins_over_a_derived_static_pod_uid() -> None:
    tracker = PodTracker()
    derived = observed(
        "d" * 32, "/etc/pods/etcd.yaml", derived=True, static_key="kube-system/etcd-node-a"
    )
    assert step(tracker, "manifests", [derived]) == [
        ("pod_admission_requested", "d" * 32, "manifests")
    ]
    real = observed(
        "k" * 32, "kubelet:kube-system/etcd-node-a", static_key="kube-system/etcd-node-a"
    )
    assert step(tracker, "kubelet", [real]) == [
        ("pod_removal_requested", "d" * 32, "manifests"),
        ("pod_admission_requested", "k" * 32, "kubelet"),
    ]
    # a manifest with its own metadata.uid is never shadowed that way
    explicit = observed("e" * 32, "/etc/pods/x.yaml", static_key="")
    assert step(tracker, "manifests", [derived, explicit]) == [
        ("pod_admission_requested", "e" * 32, "manifests")
    ]


def test_finished_terminating_and_init() -> None:
    cgroups = {"u1", "u2"}
    tracker = PodTracker(cgroup_gone=lambda uid: uid not in cgroups)
    pods = [observed("u1", "kubelet:default/a"), observed("u2", "kubelet:default/b")]
    step(tracker, "kubelet", pods)
    pods[0] = observed("u1", "kubelet:default/a", init_completed=True)
    assert step(tracker, "kubelet", pods) == [("pod_init_completed", "u1", "kubelet")]
    assert step(tracker, "kubelet", pods) == []  # once
    pods[1] = observed("u2", "kubelet:default/b", lifecycle="finished")
    assert step(tracker, "kubelet", pods) == [("pod_removal_requested", "u2", "kubelet")]
    assert step(tracker, "kubelet", pods) == []  # still listed as finished: not admitted again
    pods[0] = observed("u1", "kubelet:default/a", init_completed=True, lifecycle="terminating")
    assert step(tracker, "kubelet", pods) == []  # cgroup still there
    cgroups.discard("u1")
    assert step(tracker, "kubelet", pods) == [("pod_removal_requested", "u1", "kubelet")]
    assert step(tracker, "kubelet", pods) == []


def test_terminating_pod_seen_first_after_a_restart_is_readmitted() -> None:
    # after a restart a terminating pod may still hold memory: it is requested, then released
    cgroups = {"u1"}
    tracker = PodTracker(cgroup_gone=lambda uid: uid not in cgroups)
    pod = observed("u1", "apiserver:default/a", lifecycle="terminating")
    assert step(tracker, "apiserver", [pod]) == [("pod_admission_requested", "u1", "apiserver")]
    assert step(tracker, "apiserver", []) == []  # deleted; cgroup still there
    cgroups.clear()
    events = tracker.recheck()
    tracker.accept()
    assert summary(list(events)) == [("pod_removal_requested", "u1", "apiserver")]


def test_manifest_removal_is_not_gated_by_cgroups() -> None:
    tracker = PodTracker(cgroup_gone=lambda uid: False)
    step(tracker, "manifests", [observed("u1", "/pods/a.yaml")])
    assert step(tracker, "manifests", []) == [("pod_removal_requested", "u1", "manifests")]


def test_invalid_pods_are_rejected_by_locator_and_cleared() -> None:
    tracker = PodTracker()
    bad = ObservedPod("kubelet:default/x", error="$.spec.resources: not supported")
    assert step(tracker, "kubelet", [bad]) == [("manifest_invalid", "", "kubelet")]
    assert step(tracker, "kubelet", [bad]) == []
    assert step(tracker, "kubelet", []) == [("pod_removal_requested", "", "kubelet")]


def test_unaccepted_update_is_repeated() -> None:
    tracker = PodTracker()
    first = tracker.update("kubelet", [observed("u1", "kubelet:default/a")])
    again = tracker.update("kubelet", [observed("u1", "kubelet:default/a")])
    assert (
        summary(list(first))
        == summary(list(again))
        == [("pod_admission_requested", "u1", "kubelet")]
    )


def test_pod_source_is_omitted_when_unset_so_old_records_keep_their_bytes() -> None:
    import msgspec

    from memstate.core.codec import decode_envelope, encode_envelope
    from memstate.core.events import SCHEMA_VERSION, Envelope, PodRemovalRequested

    old = PodRemovalRequested(uid="u1", source="/pods/a.yaml")
    assert b"pod_source" not in msgspec.msgpack.encode(old)
    new = PodRemovalRequested(uid="u1", source="kubelet:default/a", pod_source="kubelet")
    envelope = Envelope(seq=1, ts_ns=1, schema_v=SCHEMA_VERSION, event=new)
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_observation_cache_reuses_unchanged_pods_only() -> None:
    import msgspec

    from memstate.node.sources.kube import KubePod, ObservationCache
    from tests.sources.standins import kube_pod

    def decoded(**kw: object) -> KubePod:
        return msgspec.convert(kube_pod("a", "u1", **kw), KubePod)  # type: ignore[arg-type]

    cache = ObservationCache("kubelet")
    (first,) = cache.observe_all([decoded()])
    (again,) = cache.observe_all([decoded()])
    assert again is first
    (changed,) = cache.observe_all([decoded(phase="Succeeded")])
    assert changed is not first and changed.lifecycle == "finished"
    twins = cache.observe_all([decoded(), decoded()])
    assert twins[0] is not twins[1] and twins[0] == twins[1]
