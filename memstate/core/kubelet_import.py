"""Taking over the kubelet Memory Manager's allocations (`memstate import kubelet-state`). Pure.

A node moving from the kubelet's Memory Manager to memstate must keep every pinned pod on its
NUMA nodes. The import records the checkpoint (`kubelet_state_imported`) and, as its decisions,
one `pod_admitted` per pod holding exactly the checkpoint's blocks. The checkpoint knows no pod
spec, so the decision carries a stand-in spec (`stand_in_pod`) marked by `IMPORTED_SPEC_HASH`;
the pod's real spec arrives at the next start, when it is readmitted: `restored_allocation`
gives it the imported blocks if they match its containers' requests, and the existing
readmission rules (a running pod keeps exactly its allocation) do the rest. A pod whose blocks
do not match its spec is decided afresh at the end of readmission, like any changed spec.
"""

from __future__ import annotations

from collections.abc import Iterable

from memstate.core.config import NodeConfig
from memstate.core.kubelet_checkpoint import CheckpointPod
from memstate.core.machine import Block, MachineBuilder, Take, merge_takes
from memstate.core.numa_policy import ContainerAllocation, PodAllocation, pins
from memstate.core.pod import CPU, ContainerSpec, Pod, numa_requests
from memstate.core.topology import MEMORY
from memstate.core.topology_hints import TopologyHint

# The `spec_hash` of a stand-in: no real spec hashes to it (spec hashes are hex digests).
IMPORTED_SPEC_HASH = "kubelet-import"
# Namespace of stand-in pods until the real pod is readmitted (shown by `memstate status`).
IMPORTED_NAMESPACE = "kubelet-import"
# A nominal CPU request and limit (the smallest unit) that makes the stand-in Guaranteed: the
# kubelet pins only Guaranteed pods, and their cgroup lives under the Guaranteed level.
_STAND_IN_CPU = 1


def stand_in_pod(imported: CheckpointPod) -> Pod:
    """A Guaranteed pod whose containers request exactly their imported blocks."""
    containers = []
    for container in imported.containers:
        sizes: dict[str, int] = {}
        for block in container.blocks:
            sizes[block.type] = sizes.get(block.type, 0) + block.size
        sizes[CPU] = _STAND_IN_CPU
        containers.append(
            ContainerSpec(name=container.name, kind="app", requests=sizes, limits=dict(sizes))
        )
    return Pod(
        uid=imported.uid,
        name=imported.uid,
        namespace=IMPORTED_NAMESPACE,
        containers=tuple(containers),
    )


def imported_allocation(
    builder: MachineBuilder, imported: CheckpointPod
) -> tuple[PodAllocation | None, str]:
    """The allocation `imported` holds, reserved in `builder`; (None, why) if it does not fit.

    Each block's bytes come from its mask's nodes lowest first, as memstate's own allocator
    takes them; a node that is absent, lacks the resource or lacks the free memory refuses.
    """
    node_ids = set(builder.node_ids)
    containers: list[ContainerAllocation] = []
    takes: list[Take] = []
    blocks: list[Block] = []
    for container in imported.containers:
        kept: list[Block] = []
        for block in container.blocks:
            where = f"pod {imported.uid} container {container.name!r}: {block.type} block"
            if not block.numa_affinity:
                return None, f"{where} has no NUMA affinity"
            missing = sorted(set(block.numa_affinity) - node_ids)
            if missing:
                return None, f"{where} names NUMA node(s) {missing}, which this machine lacks"
            mask = tuple(sorted(set(block.numa_affinity)))
            lacking = [n for n in mask if not builder.has(n, block.type)]
            if lacking:
                return None, f"{where}: NUMA node(s) {lacking} have no {block.type}"
            free = sum(builder.free(n, block.type) for n in mask)
            if block.size > free:
                return None, (
                    f"{where} of {block.size} bytes on NUMA node(s) {list(mask)} exceeds the "
                    f"{free} bytes free there (allocatable less what is already held)"
                )
            got = builder.fill(mask, block.type, block.size)
            takes.extend(got)
            kept.append(Block(numa_affinity=mask, type=block.type, size=block.size))
        mask = tuple(sorted({n for b in kept for n in b.numa_affinity}))
        containers.append(
            ContainerAllocation(
                name=container.name,
                hint=TopologyHint(numa_affinity=mask or None, preferred=True),
                blocks=tuple(kept),
            )
        )
        blocks.extend(kept)
    builder.assign(blocks)
    return PodAllocation(containers=tuple(containers), takes=merge_takes(takes)), ""


def import_problems(
    pods: Iterable[CheckpointPod],
    *,
    known_uids: Iterable[str],
    builder: MachineBuilder,
    config: NodeConfig,
    policy_name: str,
) -> list[str]:
    """Why these pods cannot be imported into a node in this state ([] if they can). Reserves
    what fits in `builder`, so call it on a scratch copy."""
    problems: list[str] = []
    pods = list(pods)
    if pods and (policy_name != "Static" or config.memory_manager_policy != "Static"):
        problems.append(
            f"the checkpoint's policy is {policy_name} and memstate's memoryManagerPolicy is "
            f"{config.memory_manager_policy}: pinned pods can only be imported from Static "
            "into Static"
        )
        return problems
    known = set(known_uids)
    for pod in pods:
        if pod.uid in known:
            problems.append(f"pod {pod.uid} is already known to memstate")
            continue
        if not any(c.blocks for c in pod.containers):
            continue
        allocation, why = imported_allocation(builder, pod)
        if allocation is None:
            problems.append(why)
    return problems


def restored_allocation(
    pod: Pod, imported: PodAllocation, config: NodeConfig
) -> PodAllocation | None:
    """The imported allocation for the real `pod` if it matches, else None (decide afresh).

    It matches when memstate would pin the pod, every imported container is one of the pod's,
    and every app container's blocks add up to exactly its NUMA requests (init containers may
    hold less: the kubelet shrinks their blocks when later containers reuse them).
    """
    if not pins(pod, config):
        return None
    by_name = {c.name: c for c in imported.containers}
    names = {c.name for c in pod.containers}
    if not set(by_name) <= names:
        return None
    ordered: list[ContainerAllocation] = []
    for container in pod.containers:
        held = by_name.get(container.name)
        requests = {k: v for k, v in numa_requests(container).items() if v}
        sizes: dict[str, int] = {}
        for block in held.blocks if held is not None else ():
            sizes[block.type] = sizes.get(block.type, 0) + block.size
        if container.kind == "init":
            if any(size > requests.get(kind, 0) for kind, size in sizes.items()):
                return None
        elif sizes != requests:
            return None
        ordered.append(
            held
            if held is not None
            else ContainerAllocation(
                name=container.name,
                hint=TopologyHint(numa_affinity=None, preferred=True),
                blocks=(),
            )
        )
    if MEMORY not in {b.type for c in ordered for b in c.blocks}:
        return None
    return PodAllocation(containers=tuple(ordered), takes=imported.takes)
