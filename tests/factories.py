"""Builders for pods, topologies and configs used across the test suite.

They go through the same public parsers as real input (manifest dicts, topology and config
objects), so a test cannot build a value the product would refuse.
"""

from __future__ import annotations

from typing import Any

from memstate.core.config import NodeConfig, config_from_object
from memstate.core.pod import Pod, pod_from_manifest
from memstate.core.topology import Topology, topology_from_object

Gi = 2**30
Mi = 2**20


def container(
    name: str,
    memory: int | str | None = None,
    cpu: str | None = "1",
    *,
    limit_memory: int | str | None = None,
    limit_cpu: str | None = None,
    hugepages: dict[str, int | str] | None = None,
    restart_policy: str | None = None,
    guaranteed: bool = True,
) -> dict[str, Any]:
    """A container dict. By default memory/cpu limits equal requests (Guaranteed)."""
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if memory is not None:
        requests["memory"] = memory
        if guaranteed:
            limits["memory"] = memory
    if limit_memory is not None:
        limits["memory"] = limit_memory
    if cpu is not None:
        requests["cpu"] = cpu
        if guaranteed:
            limits["cpu"] = cpu
    if limit_cpu is not None:
        limits["cpu"] = limit_cpu
    for name_, size in (hugepages or {}).items():
        requests[name_] = size
        limits[name_] = size
    result: dict[str, Any] = {"name": name, "resources": {}}
    if requests:
        result["resources"]["requests"] = requests
    if limits:
        result["resources"]["limits"] = limits
    if restart_policy is not None:
        result["restartPolicy"] = restart_policy
    return result


def manifest(
    uid: str,
    containers: list[dict[str, Any]],
    *,
    init: list[dict[str, Any]] | None = None,
    name: str | None = None,
    namespace: str = "default",
    overhead: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = init
    if overhead:
        spec["overhead"] = overhead
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name or f"pod-{uid}", "namespace": namespace, "uid": uid},
        "spec": spec,
    }


def pod(uid: str, memory: int | str, *, cpu: str = "1", **kwargs: Any) -> Pod:
    """A one-container Guaranteed pod."""
    return pod_from_manifest(manifest(uid, [container("app", memory, cpu)], **kwargs))


def pod_of(uid: str, containers: list[dict[str, Any]], **kwargs: Any) -> Pod:
    return pod_from_manifest(manifest(uid, containers, **kwargs))


def topology(
    *memory_per_node: int | str,
    hugepages: dict[str, int] | None = None,
    page_size: int = 4096,
    kernel_release: str = "6.1.0",
) -> Topology:
    """Nodes 0..n-1 with the given MemTotal; `hugepages` (size → count) on every node."""
    return topology_from_object(
        {
            "pageSize": page_size,
            "kernelRelease": kernel_release,
            "nodes": [
                {"id": i, "memory": m, "hugepages": dict(hugepages or {})}
                for i, m in enumerate(memory_per_node)
            ],
        }
    )


def static_config(
    reserved_per_node: list[int | str],
    *,
    topology_policy: str = "none",
    scope: str = "container",
    hugepage_reservations: dict[int, dict[str, int | str]] | None = None,
    **extra: Any,
) -> NodeConfig:
    """A Static-policy config whose Node Allocatable sum matches the reservations exactly.

    The whole memory reservation is put into systemReserved with no eviction threshold, so the
    kubelet's sum rule holds by construction.
    """
    from memstate.core.quantity import parse_bytes

    total = sum(parse_bytes(r) for r in reserved_per_node)
    reserved = []
    for node_id, size in enumerate(reserved_per_node):
        limits: dict[str, Any] = {"memory": size}
        limits.update((hugepage_reservations or {}).get(node_id, {}))
        reserved.append({"numaNode": node_id, "limits": limits})
    hugepage_totals: dict[str, int] = {}
    for limits in (hugepage_reservations or {}).values():
        for resource, size in limits.items():
            hugepage_totals[resource] = hugepage_totals.get(resource, 0) + parse_bytes(size)
    obj: dict[str, Any] = {
        "memoryManagerPolicy": "Static",
        "topologyManagerPolicy": topology_policy,
        "topologyManagerScope": scope,
        "reservedMemory": reserved,
        "systemReserved": {"memory": str(total), **{k: str(v) for k, v in hugepage_totals.items()}},
        "evictionHard": {"memory.available": "0"},
    }
    obj.update(extra)
    return config_from_object(obj)
