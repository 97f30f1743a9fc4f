"""The replay/ corpus: every scenario reproduces its hand-computed expected outcome.

Goal: each known bug class (restart order, cross-NUMA accounting, mixed single/cross NUMA, init
containers after restart, hugepage exhaustion, topology drift, bad input, Memory QoS targets)
behaves as documented in `replay/<name>.expected.json`. Method: parse the scenario with the same
parser `memstate replay` uses, walk it transition by transition, check the reducer's invariants
after every step, and compare the full decision list and the final state with the expectations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memstate.core.events import (
    Event,
    NodeReconfigured,
    PodAdmitted,
    PodRejected,
    PodRemoved,
    ReadmissionDeferred,
)
from memstate.core.invariants import violations
from memstate.core.qos import node_targets
from memstate.core.scenario import read_scenario
from memstate.core.state import State
from memstate.history.replay import transitions

CORPUS = Path(__file__).resolve().parents[2] / "replay"
SCENARIOS = sorted(CORPUS.glob("*.jsonl"))


def expected_path(scenario: Path) -> Path:
    return Path(str(scenario)[: -len(".jsonl")] + ".expected.json")


def test_every_scenario_has_an_expected_outcome() -> None:
    assert SCENARIOS, f"no scenarios in {CORPUS}"
    for scenario in SCENARIOS:
        assert expected_path(scenario).exists(), f"{scenario.name} has no expected outcome"


def decision_view(seq: int, event: Event, wanted: dict[str, Any]) -> dict[str, Any]:
    """The fields of a decision that an expectation names."""
    view: dict[str, Any] = {"seq": seq, "kind": event.kind}
    if isinstance(event, PodAdmitted):
        view["uid"] = event.uid
        view["numa"] = list(event.allocation.numa_nodes) if event.allocation else []
        view["restored"] = event.restored
        view["qos_class"] = event.qos_class
    elif isinstance(event, PodRejected):
        view["uid"] = event.uid
        view["reason"] = event.reason
        view["message_contains"] = event.message
    elif isinstance(event, (PodRemoved, ReadmissionDeferred)):
        view["uid"] = event.uid
        view["reason"] = event.reason
    elif isinstance(event, NodeReconfigured):
        view["revoked"] = {r.uid: r.reason for r in event.revoked}
    return {k: v for k, v in view.items() if k in wanted or k in ("seq", "kind")}


def check_decision(actual: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key, value in wanted.items():
        if key == "message_contains":
            assert value in actual[key], f"{value!r} not in {actual[key]!r}"
        else:
            assert actual.get(key) == value, f"{key}: {actual.get(key)!r} != {value!r}"


def check_final(state: State, final: dict[str, Any]) -> None:
    for uid, wanted in final.get("pods", {}).items():
        assert uid in state.pods, f"pod {uid} missing"
        record = state.pods[uid]
        if "numa" in wanted:
            numa = list(record.allocation.numa_nodes) if record.allocation else []
            assert numa == wanted["numa"], f"pod {uid} numa {numa}"
        if "status" in wanted:
            assert record.status == wanted["status"]
    for uid in final.get("absent_pods", []):
        assert uid not in state.pods, f"pod {uid} should be gone"
    for node_id, wanted in final.get("nodes", {}).items():
        node = state.machine.node(int(node_id))
        for key, value in wanted.items():
            if key == "cells":
                assert list(node.cells) == value, f"node {node_id} cells"
            elif key == "assignments":
                assert node.number_of_assignments == value, f"node {node_id} assignments"
            else:
                table = node.memory_map[key]
                assert {"reserved": table.reserved, "free": table.free} == value, (
                    f"node {node_id} {key}"
                )
    if "counters" in final:
        assert {
            "pinning_requests": state.counters.pinning_requests,
            "pinning_errors": state.counters.pinning_errors,
        } == final["counters"]
    if "rejections" in final:
        assert {k: r.reason for k, r in state.rejections.items()} == final["rejections"]
    if "readmission_open" in final:
        assert state.readmission_open == final["readmission_open"]
    if any(k in final for k in ("targets", "containers", "node_memory_min_bytes")):
        assert state.topology is not None and state.config is not None
        targets = node_targets(
            [(r.pod, r.allocation) for r in state.sorted_pods()], state.config, state.topology
        )
        for path, files in final.get("targets", {}).items():
            actual = targets.cgroup(path).files
            for name, value in files.items():
                assert actual.get(name) == value, f"{path} {name}: {actual.get(name)!r}"
        for key, files in final.get("containers", {}).items():
            uid, name = key.split("/")
            container = {c.name: c for c in targets.pod(uid).containers}[name]
            for file_name, value in files.items():
                assert container.files.get(file_name) == value, f"{key} {file_name}"
        for key in ("node_memory_min_bytes", "node_memory_low_bytes"):
            if key in final:
                assert getattr(targets, key) == final[key]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_scenario(scenario: Path) -> None:
    expected = json.loads(expected_path(scenario).read_text())
    envelopes = read_scenario(scenario.read_text(), source=str(scenario))
    decided: list[tuple[int, Event]] = []
    state = State()
    for transition in transitions(envelopes):
        state = transition.after
        problems = violations(state)
        assert not problems, f"seq {transition.record.seq}: {problems}"
        decided.extend((transition.record.seq, d) for d in transition.decisions)
    wanted_decisions = expected["decisions"]
    assert len(decided) == len(wanted_decisions), [
        (seq, d.kind, getattr(d, "uid", "")) for seq, d in decided
    ]
    for (seq, event), wanted in zip(decided, wanted_decisions, strict=True):
        check_decision(decision_view(seq, event, wanted), wanted)
    check_final(state, expected["final"])
