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

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec

from memstate.core.config import NodeConfig, node_allocatable_reservation
from memstate.core.pod import Pod, pod_request, requested_resources, resource_shape, spec_hash
from memstate.core.state import PodRecord, State
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
    hugepages = [r for r in named if is_hugepage_resource(r)]
    if len(hugepages) > 1:
        hugepages.sort(key=hugepage_page_size)
    return [MEMORY, *hugepages]


def _requests(pod: Pod) -> dict[str, int]:
    """The pod's effective request of memory and of every hugepage size it names (kept with
    the pod: it is immutable; and remembered by the pod's resource shape, which pods of one
    workload share while their spec hashes differ). Do not modify the result."""
    cache = vars(pod)
    found: dict[str, int] | None = cache.get("_predicate_requests")
    if found is None:
        shape = resource_shape(pod)
        found = _REQUESTS_BY_SHAPE.get(shape)
        if found is None:
            if len(_REQUESTS_BY_SHAPE) >= _MEMO_LIMIT:
                _REQUESTS_BY_SHAPE.clear()
            found = _REQUESTS_BY_SHAPE[shape] = {
                r: size for r in _checked_resources(pod) if (size := pod_request(pod, r)) > 0
            }
        cache["_predicate_requests"] = found
    return found


_REQUESTS_BY_SHAPE: dict[bytes, dict[str, int]] = {}


# A memo of `_requests` by spec hash (equal hashes are equal specs): "used" sums every admitted
# pod at each admission, and walking their containers every time would make admission O(pods ×
# containers). Bounded; clearing it only costs recomputation.
_REQUESTS_BY_SPEC: dict[str, dict[str, int]] = {}
_MEMO_LIMIT = 65536


def _requests_of(record: PodRecord) -> dict[str, int]:
    return _requests_by_spec(record.spec_hash, record.pod)


def _requests_by_spec(digest: str, pod: Pod) -> dict[str, int]:
    found = _REQUESTS_BY_SPEC.get(digest)
    if found is None:
        if len(_REQUESTS_BY_SPEC) >= _MEMO_LIMIT:
            _REQUESTS_BY_SPEC.clear()
        found = _REQUESTS_BY_SPEC[digest] = _requests(pod)
    return found


def insufficient_resource(
    pod: Pod, admitted: Iterable[PodRecord], config: NodeConfig, topology: Topology
) -> InsufficientResource | None:
    """The first resource `pod` requests beyond what node allocatable leaves after `admitted`
    (the records of the pods already admitted, `pod` itself not among them), or None.

    The straightforward form, walking every admitted pod; the reducer uses
    `insufficient_resource_in`, which gives the same answer from sums kept with the state."""
    requests = _requests(pod)
    if not requests:
        return None
    used = dict.fromkeys(requests, 0)
    for record in admitted:
        theirs = _requests_of(record)
        for resource in used:
            used[resource] += theirs.get(resource, 0)
    return _first_short(requests, used, node_allocatable(config, topology))


def _first_short(
    requests: Mapping[str, int], used: Mapping[str, int], allocatable: Mapping[str, int]
) -> InsufficientResource | None:
    for resource, requested in requests.items():
        capacity = allocatable.get(resource, 0)
        taken = used.get(resource, 0)
        if requested > capacity - taken:
            return InsufficientResource(
                resource=resource, requested=requested, used=taken, capacity=capacity
            )
    return None


# --- the same check from sums carried with the state ---------------------------------------------
#
# Re-deriving a log admits a pod every few records, and summing every admitted pod's requests
# each time made the predicate a third of `memstate replay`'s time. The sums over `state.pods`
# are instead kept in the state's `__dict__` (a cache: not encoded, not hashed, not compared),
# tagged with the pods map they describe, and carried by `apply` from one state to the next with
# the one pod that changed. A state without them (decoded, built elsewhere, or whose pods map was
# replaced without carrying) computes them once. Integer sums: order never matters.


class _Totals(NamedTuple):
    pods: Mapping[str, PodRecord]  # the map the sums describe (compared by identity)
    sums: dict[str, int]


_TOTALS = "_pod_request_totals"


def pod_request_totals(state: State) -> Mapping[str, int]:
    """Σ over `state.pods` of each pod's effective request, per resource (memory and hugepage
    sizes; absent = 0). Cached on the state; do not modify the result."""
    cache = vars(state)
    entry: _Totals | None = cache.get(_TOTALS)
    if entry is not None and entry.pods is state.pods:
        return entry.sums
    sums: dict[str, int] = {}
    for record in state.pods.values():
        for resource, amount in _requests_of(record).items():
            sums[resource] = sums.get(resource, 0) + amount
    cache[_TOTALS] = _Totals(state.pods, sums)
    return sums


def carry_request_totals(
    before: State,
    after: State,
    removed: PodRecord | None,
    added: PodRecord | None,
    *,
    owned: bool = False,
) -> None:
    """Give `after` the sums of `before` with `removed` taken out and `added` put in, when
    `before` has them; `after.pods` must be `before.pods` with exactly that change (a record
    replaced by one of the same spec is removed=old, added=new, or both None). `owned`: the
    caller owns `before` (`reducer.apply_owned`), so its sums are updated in place."""
    entry: _Totals | None = vars(before).get(_TOTALS)
    if entry is None or entry.pods is not before.pods:
        return  # nothing known: `after` computes its own when asked
    sums = entry.sums if owned else dict(entry.sums)
    # `_requests_of`, its memo read inline: this runs at every admission and removal applied.
    if removed is not None:
        requests = _REQUESTS_BY_SPEC.get(removed.spec_hash)
        if requests is None:
            requests = _requests_of(removed)
        for resource, amount in requests.items():
            sums[resource] -= amount
    if added is not None:
        requests = _REQUESTS_BY_SPEC.get(added.spec_hash)
        if requests is None:
            requests = _requests_of(added)
        for resource, amount in requests.items():
            sums[resource] = sums.get(resource, 0) + amount
    # An owned walk hands the same pods map on: the entry, updated in place, still describes it.
    pods = after.pods
    vars(after)[_TOTALS] = entry if pods is entry.pods else _Totals(pods, sums)


# One slot: the last (config, topology, allocatable); replaced whole, so threads see either.
_ALLOCATABLE_MEMO: list[tuple[NodeConfig, Topology, dict[str, int]] | None] = [None]


def _allocatable_of(config: NodeConfig, topology: Topology) -> dict[str, int]:
    """`node_allocatable`, remembered for the last (config, topology) objects (by identity:
    they change only at a reconfiguration). Do not modify the result."""
    memo = _ALLOCATABLE_MEMO[0]
    if memo is not None and memo[0] is config and memo[1] is topology:
        return memo[2]
    allocatable = node_allocatable(config, topology)
    _ALLOCATABLE_MEMO[0] = (config, topology, allocatable)
    return allocatable


def insufficient_resource_in(
    state: State, pod: Pod, config: NodeConfig, topology: Topology
) -> InsufficientResource | None:
    """`insufficient_resource` of `pod` against the pods of `state` other than `pod` itself
    and the deferred ones (which hold nothing until decided), from the sums kept with the
    state: constant work per admission instead of a walk over every pod."""
    # By spec hash, so that the record `apply` adds for this pod (in replay: a decoded copy of
    # it) finds its requests in the memo when the sums are carried.
    requests = _requests_by_spec(spec_hash(pod), pod)
    if not requests:
        return None
    used = pod_request_totals(state)
    pods = state.pods
    record = pods.get(pod.uid)
    deferred = state.deferred
    if record is not None or deferred:
        # Rare (a replaced spec, a readmission window): take the pods that hold nothing out.
        used = dict(used)
        for uid in (pod.uid, *(u for u in deferred if u != pod.uid)):
            record = pods.get(uid)
            if record is not None:
                for resource, amount in _requests_of(record).items():
                    used[resource] -= amount
    return _first_short(requests, used, _allocatable_of(config, topology))
