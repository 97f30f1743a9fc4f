"""Read-only views of state and events, shared by `demo`, `status`, `replay` and `audit`.

Each view is a plain JSON-able document (the stable `-o json` schema, docs/cli.md) and a table
rendering of it. Keeping one function per view means every command shows a pod, a NUMA node or a
decision the same way.
"""

from __future__ import annotations

from typing import Any

from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    DaemonStarted,
    Event,
    ManifestInvalid,
    NodeReconfigurationDeferred,
    NodeReconfigured,
    PodAdmissionRequested,
    PodAdmitted,
    PodInitCompleted,
    PodRejected,
    PodRemovalRequested,
    PodRemoved,
    ReadmissionCompleted,
    ReadmissionDeferred,
    TopologyObserved,
)
from memstate.core.plan.containers import CONTAINER_FILES
from memstate.core.state import State, state_hash
from memstate.core.state_targets import state_targets
from memstate.core.targets import NodeTargets
from memstate.present.output import human_bytes, to_plain


def describe_decision(event: Event) -> str:
    """One line for a decision, as an operator reads it."""
    if isinstance(event, PodAdmitted):
        numa = list(event.allocation.numa_nodes) if event.allocation else []
        where = f"NUMA {numa}" if numa else "not pinned"
        verb = "restored" if event.restored else "admitted"
        return f"{verb} {event.pod.key} ({event.qos_class}, {where})"
    if isinstance(event, PodRejected):
        who = f"{event.namespace}/{event.name}" if event.name else event.source
        return f"rejected {who}: {event.reason}: {event.message}"
    if isinstance(event, PodRemoved):
        return f"removed {event.uid} ({event.reason})"
    if isinstance(event, ReadmissionDeferred):
        return f"deferred {event.pod.key} to the end of readmission ({event.reason})"
    if isinstance(event, NodeReconfigured):
        if not event.revoked:
            return "topology and config in force"
        revoked = "; ".join(f"{r.uid}: {r.reason}" for r in event.revoked)
        return f"topology and config in force; revoked {revoked}"
    if isinstance(event, NodeReconfigurationDeferred):
        return f"reconfiguration deferred: {event.message}"
    return event.kind


def numa_document(state: State) -> list[dict[str, Any]]:
    """Per NUMA node and resource: the kubelet's memory table, plus cells and assignments."""
    return [
        {
            "numa_node": node.id,
            "cells": list(node.cells),
            "number_of_assignments": node.number_of_assignments,
            "resources": {
                resource: {
                    "total": table.total,
                    "system_reserved": table.system_reserved,
                    "allocatable": table.allocatable,
                    "reserved": table.reserved,
                    "free": table.free,
                }
                for resource, table in sorted(node.memory_map.items())
            },
        }
        for node in state.machine.nodes
    ]


def numa_rows(state: State) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for node in state.machine.nodes:
        for resource, table in sorted(node.memory_map.items()):
            if table.total == 0 and resource != "memory":
                continue
            rows.append(
                [
                    node.id,
                    resource,
                    human_bytes(table.allocatable),
                    human_bytes(table.reserved),
                    human_bytes(table.free),
                    ",".join(map(str, node.cells)),
                ]
            )
    return rows


NUMA_HEADERS = ["NUMA", "RESOURCE", "ALLOCATABLE", "RESERVED", "FREE", "CELLS"]


def pods_document(state: State) -> list[dict[str, Any]]:
    """Every pod with its QoS class, pinning, sizes and pod cgroup targets."""
    targets = state_targets(state)
    documents = []
    for record in state.sorted_pods():
        allocation = record.allocation
        pod_target = targets.pod(record.pod.uid) if targets is not None else None
        documents.append(
            {
                "uid": record.pod.uid,
                "namespace": record.pod.namespace,
                "name": record.pod.name,
                "qos_class": record.qos_class,
                "status": record.status,
                "source": record.source,
                "numa_nodes": list(allocation.numa_nodes) if allocation else [],
                "reserved_bytes": {
                    resource: allocation.reserved_bytes(resource)
                    for resource in sorted({t.resource for t in allocation.takes})
                }
                if allocation
                else {},
                "containers": [
                    {
                        "name": c.name,
                        "blocks": [
                            {"numa_affinity": list(b.numa_affinity), "type": b.type, "size": b.size}
                            for b in c.blocks
                        ],
                    }
                    for c in (allocation.containers if allocation else ())
                ],
                "cgroup": pod_target.cgroup if pod_target else None,
                "cgroup_files": dict(pod_target.files) if pod_target else {},
                # What memstate writes on each container cgroup it finds under the pod's.
                "container_files": {
                    c.name: {f: c.files[f] for f in CONTAINER_FILES if f in c.files}
                    for c in (pod_target.containers if pod_target else ())
                },
            }
        )
    return documents


POD_HEADERS = ["NAMESPACE/NAME", "UID", "QOS", "STATUS", "NUMA", "MEMORY", "CGROUP"]


def pod_rows(state: State) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for document in pods_document(state):
        memory = document["reserved_bytes"].get("memory")
        rows.append(
            [
                f"{document['namespace']}/{document['name']}",
                document["uid"],
                document["qos_class"],
                document["status"],
                document["numa_nodes"] or None,
                human_bytes(memory) if memory else None,
                document["cgroup"],
            ]
        )
    return rows


def targets_document(targets: NodeTargets) -> dict[str, Any]:
    return {
        "cgroups": [
            {
                "path": t.path,
                "level": t.level,
                "pod_uid": t.pod_uid or None,
                "files": dict(sorted(t.files.items())),
                "controllers": list(t.controllers),
            }
            for t in targets.cgroups
        ],
        "node_memory_min_bytes": targets.node_memory_min_bytes,
        "node_memory_low_bytes": targets.node_memory_low_bytes,
        "warnings": list(targets.warnings),
    }


CONTAINER_HEADERS = ["POD CGROUP", "CONTAINER", "MEMORY.MIN", "MEMORY.LOW", "MEMORY.HIGH"]


def container_rows(targets: NodeTargets) -> list[list[Any]]:
    """Per container: the Memory QoS values memstate writes on its cgroup once the runtime
    created it (none with the MemoryQoS gate off)."""
    return [
        [pod.cgroup, c.name, *(c.files[f] for f in CONTAINER_FILES)]
        for pod in targets.pods
        for c in pod.containers
        if all(f in c.files for f in CONTAINER_FILES)
    ]


TARGET_HEADERS = ["CGROUP", "LEVEL", "FILE", "VALUE"]


def target_rows(targets: NodeTargets) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for target in targets.cgroups:
        path = target.path or "/"
        if target.controllers:
            enabled = " ".join("+" + c for c in target.controllers)
            rows.append([path, target.level, "cgroup.subtree_control", enabled])
        for name, value in sorted(target.files.items()):
            rows.append([path, target.level, name, value if value else '""'])
    return rows


def rejections_document(state: State) -> list[dict[str, Any]]:
    return [
        {
            "key": key,
            "uid": r.uid or None,
            "namespace": r.namespace or None,
            "name": r.name or None,
            "source": r.source or None,
            "reason": r.reason,
            "message": r.message,
        }
        for key, r in sorted(state.rejections.items())
    ]


# --- replay and audit -----------------------------------------------------------------------------


def describe_event(event: Event) -> str:
    """One line for any event: decisions as `describe_decision`, inputs and notes by what they
    say (the pod, the machine, the config), for replay and audit listings."""
    if event.role == "decision":
        return describe_decision(event)
    if isinstance(event, PodAdmissionRequested):
        pod = event.pod
        memory = sum(c.requests.get("memory", 0) for c in pod.containers if c.kind != "init")
        return (
            f"request {pod.key} ({pod.uid}): {len(pod.containers)} container(s), "
            f"memory {human_bytes(memory)}"
        )
    if isinstance(event, PodRemovalRequested):
        return f"remove {event.uid or event.source}"
    if isinstance(event, PodInitCompleted):
        return f"init containers of {event.uid} completed"
    if isinstance(event, TopologyObserved):
        nodes = ", ".join(
            f"node {n.id} {human_bytes(n.memory_bytes)}" for n in event.topology.nodes
        )
        return f"topology: {nodes}"
    if isinstance(event, ConfigLoaded):
        config = event.config
        return (
            f"config: memoryManagerPolicy {config.memory_manager_policy}, "
            f"topologyManagerPolicy {config.topology_manager_policy}"
        )
    if isinstance(event, DaemonStarted):
        where = f" on {event.hostname}" if event.hostname else ""
        return f"memstate {event.memstate_version} (reducer {event.reducer_version}){where}"
    if isinstance(event, DaemonRestarted):
        return "restart: running pods await readmission"
    if isinstance(event, ReadmissionCompleted):
        return "readmission completed"
    if isinstance(event, ManifestInvalid):
        return f"invalid manifest {event.source}: {event.error}"
    fields = {k: v for k, v in to_plain(event).items() if k != "kind"}
    return " ".join([event.kind, *(f"{k}={v}" for k, v in fields.items())])


def decision_document(event: Event) -> dict[str, Any]:
    """A decision for `-o json`: its one-line description and the raw event."""
    return {"kind": event.kind, "description": describe_event(event), "event": to_plain(event)}


def state_document(state: State) -> dict[str, Any]:
    """A whole state for `-o json`: hash, NUMA tables, pods, rejections, readmission, counters."""
    return {
        "state_hash": state_hash(state),
        "numa": numa_document(state),
        "pods": pods_document(state),
        "rejections": rejections_document(state),
        "readmission_open": state.readmission_open,
        "deferred": sorted(state.deferred),
        "counters": to_plain(state.counters),
    }


def holders_by_numa(state: State, numa_node: int) -> dict[str, list[dict[str, Any]]]:
    """Per resource, the pods holding bytes on `numa_node` (from their exact takes), largest
    first, each with the containers whose blocks include the node."""
    holders: dict[str, list[dict[str, Any]]] = {}
    for record in state.sorted_pods():
        allocation = record.allocation
        if allocation is None:
            continue
        for take in allocation.takes:
            if take.numa_node != numa_node or take.size_bytes == 0:
                continue
            containers = [
                c.name
                for c in allocation.containers
                if any(b.type == take.resource and numa_node in b.numa_affinity for b in c.blocks)
            ]
            holders.setdefault(take.resource, []).append(
                {
                    "uid": record.pod.uid,
                    "namespace": record.pod.namespace,
                    "name": record.pod.name,
                    "qos_class": record.qos_class,
                    "status": record.status,
                    "size_bytes": take.size_bytes,
                    "containers": containers,
                    "numa_nodes": list(allocation.numa_nodes),
                }
            )
    for rows in holders.values():
        rows.sort(key=lambda row: (-row["size_bytes"], row["uid"]))
    return dict(sorted(holders.items()))
