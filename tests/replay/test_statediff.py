"""The structural state diff names what differs per pod, per NUMA node and per field.

Goal: a divergence report says *where* two states differ, in the kubelet's vocabulary, and
never rounds two different sizes to the same text. Method: build states with the real reducer
from the restart scenario, change one thing at a time, and read the diff.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from memstate.core.scenario import read_scenario
from memstate.core.state import State
from memstate.history.replay import replay_state
from memstate.history.statediff import MISSING, diff_document, diff_states, exact_bytes, render_diff

ROOT = Path(__file__).resolve().parents[2]


def _state() -> State:
    return replay_state(read_scenario((ROOT / "replay/restart-any-order.jsonl").read_text()))


def test_equal_states_have_no_diff() -> None:
    assert diff_states(_state(), _state()) == []


def test_a_pod_moved_to_another_node_reads_per_node_and_per_take() -> None:
    before = _state()
    record = before.pods["p3"]
    assert record.allocation is not None
    takes = tuple(msgspec.structs.replace(t, numa_node=1) for t in record.allocation.takes)
    moved = msgspec.structs.replace(
        record, allocation=msgspec.structs.replace(record.allocation, takes=takes)
    )
    node0, node1 = before.machine.nodes
    table0, table1 = node0.memory_map["memory"], node1.memory_map["memory"]
    size = 256 << 20
    machine = msgspec.structs.replace(
        before.machine,
        nodes=(
            msgspec.structs.replace(
                node0,
                memory_map={
                    "memory": msgspec.structs.replace(
                        table0, reserved=table0.reserved - size, free=table0.free + size
                    )
                },
            ),
            msgspec.structs.replace(
                node1,
                memory_map={
                    "memory": msgspec.structs.replace(
                        table1, reserved=table1.reserved + size, free=table1.free - size
                    )
                },
            ),
        ),
    )
    after = msgspec.structs.replace(before, machine=machine, pods={**before.pods, "p3": moved})
    changes = diff_states(before, after)
    found = {(c.section, c.subject, c.field): (c.before, c.after) for c in changes}
    assert found[("machine", "NUMA 0", "memory.reserved")] == (
        table0.reserved,
        table0.reserved - size,
    )
    assert found[("machine", "NUMA 1", "memory.free")] == (table1.free, table1.free - size)
    assert found[("pods", "pod p3 (default/p3)", "allocation.takes[node 0 memory]")][1] is MISSING
    assert found[("pods", "pod p3 (default/p3)", "allocation.takes[node 1 memory]")][0] is MISSING
    text = "\n".join(render_diff(changes))
    assert "NUMA 0\n    memory.free: 256Mi → 512Mi (+256Mi)" in text
    assert "allocation.takes[node 1 memory]: only in derived: node 1 memory 256Mi" in text
    documents = diff_document(changes, labels=("a", "b"))
    assert {"section", "subject", "field", "a", "b"} <= documents[0].keys()
    assert any(d.get("only_in") == "b" for d in documents)


def test_a_pod_on_one_side_only_is_one_change() -> None:
    before = _state()
    after = msgspec.structs.replace(
        before, pods={k: v for k, v in before.pods.items() if k != "p1"}
    )
    changes = [c for c in diff_states(before, after) if c.section == "pods"]
    assert len(changes) == 1
    assert changes[0].subject == "pod p1 (default/p1)"
    assert changes[0].after is MISSING
    assert "only in recorded: Guaranteed running node 0 memory 512Mi" in render_diff(changes)[-1]


def test_sizes_are_exact() -> None:
    assert exact_bytes(3 << 30) == "3Gi"
    assert exact_bytes((3 << 30) - (64 << 20)) == "3008Mi"
    assert exact_bytes(4095) == "4095"
    assert exact_bytes(0) == "0"
