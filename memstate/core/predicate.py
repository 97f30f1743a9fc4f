"""The kubelet's admission predicate: can the node hold the pod's requests at all?

Theory of operation
-------------------
Before a pod runs, the kubelet's predicate admit handler (`lifecycle.PredicateAdmitHandler`,
`GeneralPredicates` → the scheduler's resource fit) compares, per resource, the pod's effective
request with what node allocatable leaves after the requests of the pods already admitted:

    request > allocatable − used   →   rejected

with reason ``OutOf<resource>`` and the message
``Node didn't have enough resource: <resource>, requested: <N>, used: <U>, capacity: <C>``
(integers: bytes for memory and hugepages). Only the first failing resource is reported, as
upstream reports ``reasons[0]``. A resource the pod does not request (0) is never checked.

The figures are upstream's:

- *requested*: the pod's effective request (`PodRequests`: the larger of the running containers'
  sum and the init-container peak, plus pod overhead) — `memstate.core.pod.pod_request`;
- *used*: the same figure summed over every pod admitted before (running or awaiting
  readmission: both hold their memory), the pod itself excluded;
- *capacity*: node allocatable as the kubelet reports it in the node status — memory: capacity −
  kubeReserved − systemReserved − the hard-eviction threshold − every hugepage pool (hugepages
  are carved out of MemTotal); ``hugepages-<size>``: the pool − what kube/systemReserved reserve
  of that size (0 for a size the machine lacks).

memstate checks memory and hugepages only (cpu, pods, ephemeral storage and extended resources
are not its to judge), memory first, then hugepage sizes ascending; upstream walks cpu, memory,
ephemeral storage and then the other resources in Go map order. The predicate is pure: the
reducer calls it for every QoS class (docs/deviations.md says where it sits relative to the
Memory Manager and why).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from memstate.core.config import NodeConfig, node_allocatable_reservation
from memstate.core.pod import Pod, pod_request
from memstate.core.topology import (
    MEMORY,
    Topology,
    hugepage_page_size,
    hugepage_resource_name,
    is_hugepage_resource,
)

OUT_OF_PREFIX = "OutOf"


class InsufficientResource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The first resource the node cannot give the pod, with upstream's three figures."""

    resource: str
    requested: int
    used: int
    capacity: int

    @property
    def reason(self) -> str:
        """``OutOfmemory``, ``OutOfhugepages-2Mi``: the kubelet's ``OutOf<resource>``."""
        return OUT_OF_PREFIX + self.resource

    @property
    def message(self) -> str:
        """The kubelet's `InsufficientResourceError` text, word for word."""
        return (
            f"Node didn't have enough resource: {self.resource}, requested: {self.requested}, "
            f"used: {self.used}, capacity: {self.capacity}"
        )


def node_allocatable(config: NodeConfig, topology: Topology) -> dict[str, int]:
    """Node allocatable per resource as the kubelet's node status reports it (see above)."""
    reservation = node_allocatable_reservation(config, topology.capacity_bytes)
    allocatable: dict[str, int] = {}
    pools = 0
    for size in topology.hugepage_sizes:
        resource = hugepage_resource_name(size)
        total = sum(node.hugepage_bytes(size) for node in topology.nodes)
        pools += total
        allocatable[resource] = max(total - reservation.get(resource, 0), 0)
    memory = topology.capacity_bytes - reservation.get(MEMORY, 0) - pools
    allocatable[MEMORY] = max(memory, 0)
    return allocatable


def _checked_resources(pod: Pod) -> list[str]:
    """Memory, then every hugepage size the pod requests, ascending by page size."""
    named = {r for c in pod.containers for r in c.requests} | set(pod.overhead)
    hugepages = {r for r in named if is_hugepage_resource(r)}
    return [MEMORY, *sorted(hugepages, key=hugepage_page_size)]


def insufficient_resource(
    pod: Pod, admitted: Iterable[Pod], config: NodeConfig, topology: Topology
) -> InsufficientResource | None:
    """The first resource `pod` requests beyond what node allocatable leaves after `admitted`
    (the pods already admitted, `pod` itself not among them), or None when it fits."""
    requests = {r: pod_request(pod, r) for r in _checked_resources(pod)}
    wanted = [r for r, size in requests.items() if size > 0]
    if not wanted:
        return None
    used = dict.fromkeys(wanted, 0)
    for other in admitted:
        for resource in wanted:
            used[resource] += pod_request(other, resource)
    allocatable = node_allocatable(config, topology)
    for resource in wanted:
        capacity = allocatable.get(resource, 0)
        if requests[resource] > capacity - used[resource]:
            return InsufficientResource(
                resource=resource,
                requested=requests[resource],
                used=used[resource],
                capacity=capacity,
            )
    return None
