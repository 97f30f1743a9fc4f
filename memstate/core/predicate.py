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
from memstate.core.pod import Pod, pod_request, requested_resources
from memstate.core.state import PodRecord
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
    named = requested_resources(pod)
    hugepages = {r for r in named if is_hugepage_resource(r)}
    return [MEMORY, *sorted(hugepages, key=hugepage_page_size)]


def _requests(pod: Pod) -> dict[str, int]:
    """The pod's effective request of memory and of every hugepage size it names."""
    return {r: size for r in _checked_resources(pod) if (size := pod_request(pod, r)) > 0}


# A memo of `_requests` by spec hash (equal hashes are equal specs): "used" sums every admitted
# pod at each admission, and walking their containers every time would make admission O(pods ×
# containers). Bounded; clearing it only costs recomputation.
_REQUESTS_BY_SPEC: dict[str, dict[str, int]] = {}
_MEMO_LIMIT = 65536


def _requests_of(record: PodRecord) -> dict[str, int]:
    found = _REQUESTS_BY_SPEC.get(record.spec_hash)
    if found is None:
        if len(_REQUESTS_BY_SPEC) >= _MEMO_LIMIT:
            _REQUESTS_BY_SPEC.clear()
        found = _REQUESTS_BY_SPEC[record.spec_hash] = _requests(record.pod)
    return found


def insufficient_resource(
    pod: Pod, admitted: Iterable[PodRecord], config: NodeConfig, topology: Topology
) -> InsufficientResource | None:
    """The first resource `pod` requests beyond what node allocatable leaves after `admitted`
    (the records of the pods already admitted, `pod` itself not among them), or None."""
    requests = _requests(pod)
    if not requests:
        return None
    used = dict.fromkeys(requests, 0)
    for record in admitted:
        theirs = _requests_of(record)
        for resource in used:
            used[resource] += theirs.get(resource, 0)
    allocatable = node_allocatable(config, topology)
    for resource, requested in requests.items():
        capacity = allocatable.get(resource, 0)
        if requested > capacity - used[resource]:
            return InsufficientResource(
                resource=resource, requested=requested, used=used[resource], capacity=capacity
            )
    return None
