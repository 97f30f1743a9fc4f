"""The node the reconciler benchmarks converge: N mixed pods decided by the real reducer.

Pods cycle through five shapes: Guaranteed (NUMA-pinned), Burstable, BestEffort, Guaranteed
with 2 MiB hugepages, Burstable with an app and a sidecar. The machine has two NUMA nodes of
256 GiB, 4 KiB pages and 1024 hugepages of 2 MiB per node; the config is the Static Memory
Manager policy with TieredReservation, so every kind of managed file is present: memory.min/low
(protections), memory.high/max (limits), cpuset.mems and hugetlb.2MB.max.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memstate.core.config import NodeConfig, config_from_object
from memstate.core.errors import HostError
from memstate.core.events import ConfigLoaded, Event, PodAdmissionRequested, TopologyObserved
from memstate.core.pod import Pod, pod_from_manifest
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.state_targets import state_targets
from memstate.core.targets import NodeTargets
from memstate.core.topology import Topology, topology_from_object
from memstate.host import CgroupFS, walk
from memstate.host.sim import SimCgroupFS

PAGE_SIZE_BYTES = 4096


def machine() -> tuple[Topology, NodeConfig]:
    topology = topology_from_object(
        {
            "pageSize": PAGE_SIZE_BYTES,
            "kernelRelease": "6.1.0",
            "nodes": [{"id": i, "memory": "256Gi", "hugepages": {"2Mi": 1024}} for i in range(2)],
        }
    )
    config = config_from_object(
        {
            "memoryManagerPolicy": "Static",
            "memoryReservationPolicy": "TieredReservation",
            "reservedMemory": [{"numaNode": i, "limits": {"memory": "1Gi"}} for i in range(2)],
            "systemReserved": {"memory": "2Gi"},
            "evictionHard": {"memory.available": "0"},
        }
    )
    return topology, config


def _container(name: str, request: str | None, limit: str | None, **extra: Any) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if request:
        requests.update(memory=request, cpu="100m")
    if limit:
        limits.update(memory=limit, cpu="100m")
    for resource, size in extra.items():
        requests[resource.replace("_", "-")] = size
        limits[resource.replace("_", "-")] = size
    return {"name": name, "resources": {"requests": requests, "limits": limits}}


def mixed_pod(index: int, prefix: str = "p") -> Pod:
    """The index-th pod of the mix (see the module docstring)."""
    size = f"{64 * (1 + index % 3)}Mi"
    kind = index % 5
    if kind == 0:
        containers = [_container("app", size, size)]
    elif kind == 1:
        containers = [_container("app", size, "1Gi")]
    elif kind == 2:
        containers = [{"name": "app"}]
    elif kind == 3:
        containers = [_container("app", size, size, hugepages_2Mi="4Mi")]
    else:
        containers = [_container("app", size, None), _container("side", "32Mi", "64Mi")]
    uid = f"{prefix}{index:05d}-aaaa"
    return pod_from_manifest(
        {"metadata": {"name": f"pod-{uid}", "uid": uid}, "spec": {"containers": containers}}
    )


def node_targets(pods: list[Pod]) -> NodeTargets:
    """Targets after the real reducer admitted every pod (all fit this machine)."""
    topology, config = machine()
    state = State()
    events: list[Event] = [TopologyObserved(topology=topology), ConfigLoaded(config=config)]
    events.extend(PodAdmissionRequested(pod=p) for p in pods)
    for event in events:
        state = step(state, event).state
    targets = state_targets(state)
    if targets is None or len(targets.pods) != len(pods):
        raise SystemExit("the benchmark node did not admit every pod")
    return targets


def new_sim() -> SimCgroupFS:
    return SimCgroupFS(page_size_bytes=PAGE_SIZE_BYTES, online_nodes="0-1")


# The interface files copied when a simulated tree is materialised as plain files.
INTERFACE_FILES = (
    "cgroup.controllers",
    "cgroup.subtree_control",
    "cgroup.events",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "cpuset.mems",
    "hugetlb.2MB.max",
    "hugetlb.1GB.max",
)


def materialise(fs: SimCgroupFS, directory: Path) -> int:
    """Copy a simulated tree into plain directories and files; returns the files written."""
    written = 0
    for path in walk(fs):
        target = directory / path if path else directory
        target.mkdir(parents=True, exist_ok=True)
        for file in INTERFACE_FILES:
            try:
                text = fs.read(path, file)
            except HostError:
                continue
            (target / file).write_text(text)
            written += 1
    return written


def blind_write(fs: CgroupFS, targets: NodeTargets) -> int:
    """The baseline: rewrite every managed file of every cgroup, no reads, no comparison."""
    writes = 0
    for target in targets.cgroups:
        for file, value in target.files.items():
            fs.write(target.path, file, value or "\n")
            writes += 1
    return writes
