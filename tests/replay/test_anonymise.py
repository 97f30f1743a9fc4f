"""`memstate replay anonymise`: identifiers gone, behaviour kept.

Goal: the anonymised copy of a log names no pod, namespace, container, source or host of the
original, keeps every size, and replays exactly like the original — including where the
original diverges (a bug report's point) and where the outcome depends on the order of pod UIDs.
Method: a log recorded by an altered reducer (so replay diverges), and a restart where two
revoked pods are re-decided in UID order; the check inside `anonymise_log` is shown to have
teeth by breaking the UID order on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memstate.core.events import (
    SCHEMA_VERSION,
    ConfigLoaded,
    DaemonRestarted,
    Envelope,
    Event,
    PodAdmissionRequested,
    PodAdmitted,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.scenario import write_scenario
from memstate.history import anonymise
from memstate.history.replay import open_source, replay_log
from memstate.store.checkpoint import list_checkpoints
from tests import factories
from tests.replay.recording import (
    BASE_TS_NS,
    churn_inputs,
    fill_highest_first,
    input_seq,
    record_log,
    start_inputs,
)


def test_a_diverging_recorded_log_keeps_its_divergence_and_loses_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    with monkeypatch.context() as patch:
        fill_highest_first(patch)
        written = record_log(state_dir, churn_inputs(150, triggers=(90,)))
    first = input_seq(written, "zz-000090")
    assert list_checkpoints(state_dir)
    copy = tmp_path / "copy.jsonl"
    result = anonymise.anonymise_log(open_source(state_dir), copy)
    assert result.divergence_seq == first
    report = replay_log(open_source(copy))
    assert report.divergence is not None
    assert (report.divergence.kind, report.divergence.seq) == ("decisions", first)
    text = copy.read_text()
    for secret in ("shop", "web-", "uid-0", "zz-0", "trigger", "ops", "/etc/memstate", "node-a"):
        assert secret not in text, secret
    records = [json.loads(line) for line in text.splitlines()[1:]]
    assert len(records) == result.records == len(written)
    assert [r["seq"] for r in records] == [e.seq for e in written]
    assert [r["ts_ns"] for r in records] == [e.ts_ns for e in written]
    # The divergent decision kept its allocation (node 1), under the pseudonym.
    recorded = report.divergence.recorded
    assert recorded is not None and isinstance(recorded[0], PodAdmitted)
    assert recorded[0].allocation is not None and recorded[0].allocation.numa_nodes == (1,)
    assert recorded[0].uid == result.pseudonyms.uids["zz-000090"]


def _envelopes(events: list[Event]) -> list[Envelope]:
    return [
        Envelope(seq=i, ts_ns=BASE_TS_NS + i * 10**9, schema_v=SCHEMA_VERSION, event=e)  # type: ignore[arg-type]
        for i, e in enumerate(events, start=1)
    ]


def _uid_order_history() -> list[Event]:
    """uid-b (first to appear) and uid-a, 5Gi each on their own 8Gi node; after a reboot both
    nodes report 4Gi, both allocations are revoked and both pods deferred; at the end of
    readmission uid-a is decided first (UID order) and takes a cross-NUMA group, uid-b is
    rejected. An anonymiser numbering pods by appearance would swap them."""

    def admit(uid: str) -> PodAdmissionRequested:
        return PodAdmissionRequested(pod=factories.pod(uid, "5Gi", namespace="team"))

    events: list[Event] = [
        *start_inputs()[:2],
        ConfigLoaded(
            config=factories.static_config(["512Mi", "512Mi"], topology_policy="best-effort")
        ),
        admit("uid-b"),
        admit("uid-a"),
    ]
    events += [
        DaemonRestarted(),
        TopologyObserved(topology=factories.topology("4Gi", "4Gi")),
        admit("uid-b"),
        admit("uid-a"),
        ReadmissionCompleted(),
    ]
    return events


def test_pseudonyms_keep_the_uid_order_that_decisions_depend_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "order.jsonl"
    scenario.write_text(write_scenario(_envelopes(_uid_order_history())))
    original = replay_log(open_source(scenario))
    assert set(original.state.pods) == {"uid-a"}  # the premise: order decided the outcome
    assert original.state.rejections["uid-b"].reason == "UnexpectedAdmissionError"
    copy = tmp_path / "copy.jsonl"
    result = anonymise.anonymise_log(open_source(scenario), copy)
    pseudonym = result.pseudonyms.uids
    assert pseudonym["uid-a"] < pseudonym["uid-b"]
    anonymised = replay_log(open_source(copy))
    assert set(anonymised.state.pods) == {pseudonym["uid-a"]}
    # Numbered by appearance instead, the copy would decide otherwise: the check refuses it
    # and leaves no file behind.
    monkeypatch.setattr(
        anonymise,
        "sorted_uid_pseudonyms",
        lambda uids: {"uid-b": "pod-0001", "uid-a": "pod-0002"},
    )
    with pytest.raises(anonymise.AnonymiseError, match="other decisions"):
        anonymise.anonymise_log(open_source(scenario), tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()


def test_text_and_paths_are_rewritten_by_known_identifiers() -> None:
    names = anonymise.Pseudonyms(uids={"6a4f-77": "pod-0001"})
    mapper = anonymise.Mapper(names)
    pod = mapper.pod(factories.pod("6a4f-77", "1Gi", name="db", namespace="prod"))
    assert (pod.uid, pod.name, pod.namespace, pod.containers[0].name) == (
        "pod-0001",
        "name-1",
        "ns-1",
        "ctr-1",
    )
    names.source("/etc/memstate/pods/db.yaml")
    text = mapper.text(
        "pod prod/db (6a4f-77), container app: free memory in /etc/memstate/pods/db.yaml; "
        "application prod/other"
    )
    assert text == (
        "pod ns-1/name-1 (pod-0001), container ctr-1: free memory in source-1; "
        "application prod/other"
    )
    assert mapper.path("kubepods/burstable/pod6a4f-77") == "kubepods/burstable/podpod-0001"
    assert (
        mapper.path("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6a4f_77.slice")
        == "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podpod_0001.slice"
    )
    # An orphan's UID that no record names does not leak either.
    assert mapper.path("kubepods/podffff-1") == "kubepods/podunknown-2"
