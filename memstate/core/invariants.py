"""Invariants of the reducer's state, checked after every step in tests and at checkpoints.

Each check recomputes from first principles rather than trusting incremental bookkeeping:
- the node map equals a fresh map for (topology, config) plus every surviving allocation, placed
  in UID order, so per node and resource `free + reserved == allocatable` and nothing leaks;
- no node mixes single- and cross-NUMA blocks, and groups never overlap (every block touching a
  node has exactly that node's `cells` as its mask);
- a pod's block sizes add up to the bytes it holds, on nodes of its masks;
- only Static-policy Guaranteed pods hold allocations; pods await readmission only while the
  readmission window is open;
- the cgroup targets satisfy `memory.min <= memory.high <= memory.max` and parents cover children.
"""

from __future__ import annotations

from memstate.core.errors import InvariantViolation
from memstate.core.machine import Machine, MachineBuilder, default_machine
from memstate.core.pod import GUARANTEED
from memstate.core.qos import check_targets, node_targets
from memstate.core.state import State


def expected_machine(state: State) -> Machine:
    """The node map a state must have, rebuilt from its allocations."""
    if state.topology is None or state.config is None:
        return Machine()
    builder = MachineBuilder(default_machine(state.topology, state.config))
    for record in state.sorted_pods():
        if record.allocation is not None:
            builder.reserve(record.allocation.takes)
            builder.assign(record.allocation.blocks)
    return builder.freeze()


def violations(state: State) -> list[str]:
    """Every invariant the state breaks, as operator-readable sentences (empty when sound)."""
    found: list[str] = []
    try:
        expected = expected_machine(state)
    except InvariantViolation as exc:
        return [f"allocations cannot be placed on the node map: {exc}"]
    if expected != state.machine:
        found.append("the node map differs from the one rebuilt from the pods' allocations")
    for node in state.machine.nodes:
        for resource, table in node.memory_map.items():
            if table.free + table.reserved != table.allocatable:
                found.append(f"NUMA node {node.id} {resource}: free + reserved != allocatable")
            if table.free < 0 or table.reserved < 0:
                found.append(f"NUMA node {node.id} {resource}: negative free or reserved")
    cells = {node.id: node.cells for node in state.machine.nodes}
    assignments = {node.id: node.number_of_assignments for node in state.machine.nodes}
    for node_id, group in cells.items():
        for member in group:
            if cells.get(member) != group and assignments.get(node_id, 0) > 0:
                found.append(f"NUMA node {node_id}: group {list(group)} overlaps another group")
    if state.deferred and not state.readmission_open:
        found.append("readmission requests are deferred outside a readmission window")
    for uid in sorted(state.deferred):
        waiting = state.pods.get(uid)
        if waiting is not None and waiting.status != "awaiting_readmission":
            found.append(f"pod {uid} is both running and deferred")
    for record in state.sorted_pods():
        uid = record.pod.uid
        if record.status == "awaiting_readmission" and not state.readmission_open:
            found.append(f"pod {uid} awaits readmission outside a readmission window")
        allocation = record.allocation
        if allocation is None:
            continue
        if state.config is None or state.config.memory_manager_policy != "Static":
            found.append(f"pod {uid} holds an allocation without the Static policy")
        if record.qos_class != GUARANTEED:
            found.append(f"pod {uid} holds an allocation but is {record.qos_class}")
        for block in allocation.blocks:
            for node_id in block.numa_affinity:
                if cells.get(node_id) != block.numa_affinity:
                    found.append(
                        f"pod {uid}: block on {list(block.numa_affinity)} but NUMA node "
                        f"{node_id} is in group {list(cells.get(node_id, ()))}"
                    )
        for resource in sorted({b.type for b in allocation.blocks}):
            listed = sum(b.size for b in allocation.blocks if b.type == resource)
            held = allocation.reserved_bytes(resource)
            if listed != held:
                found.append(f"pod {uid}: blocks list {listed} of {resource}, pod holds {held}")
            nodes = {n for b in allocation.blocks if b.type == resource for n in b.numa_affinity}
            for take in allocation.takes:
                if take.resource == resource and take.numa_node not in nodes:
                    found.append(
                        f"pod {uid}: holds {resource} on node {take.numa_node} outside its masks"
                    )
    if state.topology is not None and state.config is not None:
        pods = [(r.pod, r.allocation) for r in state.sorted_pods()]
        found.extend(check_targets(node_targets(pods, state.config, state.topology)))
    return found


def check_invariants(state: State) -> None:
    """Raise `InvariantViolation` listing every broken invariant."""
    found = violations(state)
    if found:
        raise InvariantViolation("; ".join(found))
