"""Memory QoS: the cgroup v2 targets of every pod and QoS-level cgroup (memory-qos.md §2–§6).

Theory of operation. `node_targets` turns the set of running pods (with their Memory Manager
allocations), the node config and the topology into one `NodeTargets`: the whole desired tree,
parents before children, plus the values of the two upstream gauges and operator warnings. It is a
pure function of its inputs — the order of the input pods does not matter — so the reducer can
store per-pod results in decision events and the reconciler can recompute the tree at will.

What is managed, per cgroup level:

- **root** (the mount root "" and the cgroupRoot ancestors of kubepods): no files, only the
  controllers their children need in `cgroup.subtree_control`.
- **node** (kubepods): `memory.max` = node allocatable when ``pods`` is enforced, else the machine
  capacity. With the MemoryQoS gate: `memory.min` = G_sum + B_sum and `memory.low` = B_sum under
  TieredReservation (the low part is memstate decision §12.2, k/k#140267), "0"/"0" under None.
- **qos** (burstable, besteffort): burstable `memory.low` = B_sum under TieredReservation;
  burstable `memory.min` is written "0" explicitly (fixes the upgraded-node caveat §11.9).
- **pod**: `memory.max` = the pod limit when every container declares one, else "max"; under
  TieredReservation a Guaranteed pod's `memory.min`, or a Burstable pod's `memory.low`, is its
  effective request (overhead and init/sidecar rules included). Pod `memory.high` is never set.
  With the Static Memory Manager policy `cpuset.mems` carries the pinned NUMA nodes ("" =
  inherit); every topology hugepage size gets `hugetlb.<size>.max` (the pod's hugepage limit, "0"
  when it requested none: a pod cannot use hugepages it did not request, as in the kubelet).
- **containers** (the runtime creates their cgroups; the reconciler writes min/low/high on those
  it finds, memstate.core.plan.containers): min/low per the *pod* class, `memory.high` by the
  page-rounded formula of §4.1, `memory.max` = limit (the runtime's, reported only).

"Unset" is rendered as the kernel default ("0" for min/low, "max" for high/max) and still managed:
drift gets corrected, and a fresh tree needs no write. With the MemoryQoS gate off only
`memory.max` (plus cpuset/hugetlb) is managed; min/low/high are absent from `files`, untouched.

Deliberate differences from the v1.36.0 kubelet (memory-qos.md §12): BestEffort containers and
containers with neither memory request nor limit get `memory.high` on allocatable (the request ==
limit skip needs request == limit > 0, k/k#137685); kubepods gets `memory.low` = B_sum.

`check_targets` re-derives the invariants the targets must satisfy (ordering of min/low/high/max,
parents covering children, the tree's shape); the reducer runs it after every step.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from memstate.core.cgroup_paths import (
    hugetlb_max_file,
    node_path,
    parent_path,
    path_depth,
    pod_path,
    qos_path,
    root_paths,
)
from memstate.core.cgroup_values import format_bitmap_list, uncovered_parents
from memstate.core.config import NodeConfig, allocatable_bytes
from memstate.core.errors import InvariantViolation
from memstate.core.numa_policy import PodAllocation
from memstate.core.pod import (
    BEST_EFFORT,
    BURSTABLE,
    GUARANTEED,
    ContainerSpec,
    Pod,
    QOSClass,
    pod_limit,
    pod_limits_total,
    pod_request,
    qos_class,
    resource_shape,
)
from memstate.core.quantity import INT64_MAX, format_bytes
from memstate.core.targets import (
    CPUSET_MEMS,
    MEMORY_HIGH,
    MEMORY_LOW,
    MEMORY_MAX,
    MEMORY_MIN,
    CgroupTarget,
    ContainerTargets,
    NodeTargets,
    PodTargets,
)
from memstate.core.topology import MEMORY, Topology, hugepage_resource_name

UNLIMITED = "max"
ZERO = "0"
CONTROLLER_CPUSET = "cpuset"
CONTROLLER_HUGETLB = "hugetlb"
CONTROLLER_MEMORY = "memory"
# memory.high can livelock allocators outpacing reclaim before this kernel (memory-qos.md §7.2).
MEMORY_HIGH_SAFE_KERNEL = (5, 9)

_KERNEL_RELEASE_RE = re.compile(r"(\d+)\.(\d+)")


# --- formulas -------------------------------------------------------------------------------------


def memory_high(
    request_bytes: int, limit_bytes: int, alloc_bytes: int, factor: float, page_size_bytes: int
) -> int | None:
    """A container's `memory.high` (memory-qos.md §4.1), or None when it is not written.

    ``L = limit if > 0 else alloc``; ``high = floor((request + factor × (L − request)) / page) ×
    page`` in IEEE doubles, in the kubelet's order (difference and product, add the request, divide
    by the page as a double, floor, to integer, multiply by the page). Written iff high != 0 and
    high > request. Skipped when request == limit > 0 (memstate decision §12.1: a container with
    neither request nor limit is *not* skipped, unlike v1.36.0).

    Above 2^53 bytes (8 PiB) double rounding can land a page above L; the result is clamped to
    L's page floor so that `memory.high <= memory.max` always holds. Below that the clamp never
    changes a value.
    """
    if request_bytes < 0 or limit_bytes < 0 or alloc_bytes < 0:
        raise InvariantViolation(
            f"negative memory.high input: request {request_bytes}, limit {limit_bytes}, "
            f"alloc {alloc_bytes}"
        )
    if not 0.0 < factor <= 1.0:
        raise InvariantViolation(f"memoryThrottlingFactor {factor} is outside (0, 1]")
    if page_size_bytes <= 0:
        raise InvariantViolation(f"page size {page_size_bytes} is not positive")
    if limit_bytes > 0 and request_bytes == limit_bytes:
        return None
    ceiling_bytes = limit_bytes if limit_bytes > 0 else alloc_bytes
    if ceiling_bytes <= 0:
        return None  # no limit and allocatable unknown
    product = (float(ceiling_bytes) - float(request_bytes)) * factor
    raw = float(request_bytes) + product
    high_bytes = math.floor(raw / float(page_size_bytes)) * page_size_bytes
    high_bytes = min(high_bytes, ceiling_bytes // page_size_bytes * page_size_bytes)
    if high_bytes == 0 or high_bytes <= request_bytes:
        return None
    return high_bytes


def format_node_list(nodes: Iterable[int]) -> str:
    """NUMA node ids in the kernel's list format: ``0``, ``0-1``, ``0,2``, ``0-2,5`` ("" = none),
    as the kernel prints `cpuset.mems`, so desired and read-back values compare equal as text."""
    ids = sorted(set(nodes))
    if ids and ids[0] < 0:
        raise InvariantViolation(f"negative NUMA node id in {ids}")
    return format_bitmap_list(ids)


def tiered(config: NodeConfig) -> bool:
    """TieredReservation in effect (it needs the MemoryQoS gate; config validation enforces it,
    this guards hand-built configs)."""
    return config.memory_qos and config.memory_reservation_policy == "TieredReservation"


def _render_bytes(size_bytes: int) -> str:
    """Decimal bytes; anything beyond int64 is "max" (the kernel saturates such values to max,
    and it could not parse a number past 2^64)."""
    if size_bytes < 0:
        raise InvariantViolation(f"negative byte count {size_bytes}")
    return UNLIMITED if size_bytes > INT64_MAX else str(size_bytes)


def _limit_text(limit_bytes: int | None) -> str:
    return _render_bytes(limit_bytes) if limit_bytes else UNLIMITED


# --- containers and pods --------------------------------------------------------------------------


def container_targets(
    container: ContainerSpec,
    pod_class: QOSClass,
    config: NodeConfig,
    alloc_bytes: int,
    page_size_bytes: int,
    *,
    pod_memory_limit: int = 0,
) -> ContainerTargets:
    """What the kubelet would hand the runtime for one container (app, sidecar or init).

    min vs low follows the *pod* class (memory-qos.md §3.3); the memory.high skip is decided per
    container. `pod_memory_limit` is the pod-level memory limit (0 = none): a container without
    its own limit gets it as `memory.max` (the kubelet's `getMemoryLimit`), and `memory.high` is
    computed on it too, so that high never exceeds max (the kubelet computes high on allocatable
    there, above the container's own `memory.max`, where it never throttles).
    """
    request = container.requests.get(MEMORY, 0)
    limit = container.limits.get(MEMORY, 0) or pod_memory_limit
    files: dict[str, str] = {}
    if config.memory_qos:
        protect = tiered(config) and request > 0
        files[MEMORY_MIN] = _render_bytes(request) if protect and pod_class == GUARANTEED else ZERO
        files[MEMORY_LOW] = _render_bytes(request) if protect and pod_class == BURSTABLE else ZERO
        high = memory_high(
            request, limit, alloc_bytes, config.memory_throttling_factor, page_size_bytes
        )
        files[MEMORY_HIGH] = UNLIMITED if high is None else _render_bytes(high)
    files[MEMORY_MAX] = _limit_text(limit)
    return ContainerTargets(name=container.name, files=files, kind=container.kind)


class _TargetsContext(NamedTuple):
    """What every pod's targets take from the config and topology."""

    alloc_bytes: int
    hugetlb: tuple[tuple[str, str], ...]  # (resource, hugetlb limit file), page sizes ascending
    # Targets by pod shape (`pod.resource_shape`) under this config and topology: everything but the
    # UID and the cgroup path (`pod_targets`). Bounded; clearing only costs recomputation.
    shapes: dict[tuple[bytes, tuple[int, ...]], _ShapeTargets]


class _ShapeTargets(NamedTuple):
    qos_class: QOSClass
    files: dict[str, str]  # shared by the pods of one shape: never modified
    containers: tuple[ContainerTargets, ...]


_SHAPES_LIMIT = 4096


# One slot: the last (config, topology, context), compared by identity (they change only at a
# reconfiguration); replaced whole, so threads see one or the other.
_CONTEXT_MEMO: list[tuple[NodeConfig, Topology, _TargetsContext] | None] = [None]


def _targets_context(config: NodeConfig, topology: Topology) -> _TargetsContext:
    memo = _CONTEXT_MEMO[0]
    if memo is not None and memo[0] is config and memo[1] is topology:
        return memo[2]
    context = _TargetsContext(
        alloc_bytes=allocatable_bytes(config, topology),
        hugetlb=tuple(
            (hugepage_resource_name(size), hugetlb_max_file(size))
            for size in topology.hugepage_sizes
        ),
        shapes={},
    )
    _CONTEXT_MEMO[0] = (config, topology, context)
    return context


def pod_targets(
    pod: Pod, allocation: PodAllocation | None, config: NodeConfig, topology: Topology
) -> PodTargets:
    """The pod cgroup's targets (and its containers', for reference).

    `allocation` is the pod's Memory Manager allocation; it only matters with the Static policy
    (its NUMA nodes become `cpuset.mems`).

    Pods of one workload share their resources, so the files are remembered by the pod's shape
    (what they are computed from: every container's name, kind, requests and limits, the
    overhead, the pod-level resources and the NUMA nodes of the allocation) for the config and
    topology in force; only the UID and the cgroup path are the pod's own.
    """
    context = _targets_context(config, topology)
    nodes = allocation.numa_nodes if allocation and config.memory_manager_policy == "Static" else ()
    key = (resource_shape(pod), nodes)
    shaped = context.shapes.get(key)
    if shaped is None:
        if len(context.shapes) >= _SHAPES_LIMIT:
            context.shapes.clear()
        shaped = context.shapes[key] = _shape_targets(pod, allocation, config, topology, context)
    return PodTargets(
        uid=pod.uid,
        qos_class=shaped.qos_class,
        cgroup=pod_path(config, pod.uid, shaped.qos_class),
        files=shaped.files,
        containers=shaped.containers,
    )


def _shape_targets(
    pod: Pod,
    allocation: PodAllocation | None,
    config: NodeConfig,
    topology: Topology,
    context: _TargetsContext,
) -> _ShapeTargets:
    pod_class = qos_class(pod)
    alloc_bytes = context.alloc_bytes
    pod_level = pod.pod_level
    pod_memory_limit = pod_level.limits.get(MEMORY, 0) if pod_level is not None else 0
    containers = tuple(
        container_targets(
            c,
            pod_class,
            config,
            alloc_bytes,
            topology.page_size_bytes,
            pod_memory_limit=pod_memory_limit,
        )
        for c in pod.containers
    )
    files: dict[str, str] = {}
    if config.memory_qos:
        request = pod_request(pod, MEMORY)
        protect = tiered(config) and request > 0
        files[MEMORY_MIN] = _render_bytes(request) if protect and pod_class == GUARANTEED else ZERO
        files[MEMORY_LOW] = _render_bytes(request) if protect and pod_class == BURSTABLE else ZERO
        files[MEMORY_HIGH] = UNLIMITED  # never set on pods in 1.36
    files[MEMORY_MAX] = _limit_text(pod_limit(pod, MEMORY))
    if config.memory_manager_policy == "Static":
        files[CPUSET_MEMS] = format_node_list(allocation.numa_nodes) if allocation else ""
    for resource, file in context.hugetlb:
        # Like the kubelet's PodLimits: the pod-level limit, else the aggregate of declared
        # limits (hugepages always have one), plus overhead; no "every container declares it"
        # rule, sizes not requested get 0.
        limit = pod_limits_total(pod, resource)
        files[file] = _render_bytes(limit)
    return _ShapeTargets(pod_class, files, containers)


# --- the node tree --------------------------------------------------------------------------------


def subtree_controllers(config: NodeConfig, topology: Topology) -> tuple[str, ...]:
    """Controllers every managed non-pod cgroup enables for its children, sorted."""
    controllers = {CONTROLLER_MEMORY}  # memory.max is always managed
    if config.memory_manager_policy == "Static":
        controllers.add(CONTROLLER_CPUSET)
    if topology.hugepage_sizes:
        controllers.add(CONTROLLER_HUGETLB)
    return tuple(sorted(controllers))


def node_targets(
    pods: Sequence[tuple[Pod, PodAllocation | None]], config: NodeConfig, topology: Topology
) -> NodeTargets:
    """The whole desired tree for the node: root, kubepods, QoS and pod cgroups.

    Deterministic and independent of the order of `pods`: pods are sorted by UID and cgroups
    ordered parents before children (depth, then path). Two pods with one UID are an
    `InvariantViolation`.
    """
    return assemble_node_targets(
        [(pod, pod_targets(pod, alloc, config, topology)) for pod, alloc in pods], config, topology
    )


class PodPart(NamedTuple):
    """What a pod contributes to its node's targets (`pod_part`): assembled by
    `assemble_from_parts`, kept by the daemon's tracker while the pod does not change."""

    targets: PodTargets
    request_bytes: int  # the pod's memory request (the QoS-level sums)
    cgroup: CgroupTarget  # its pod cgroup
    order: tuple[int, str]  # where its cgroup sorts among the node's (depth, path)
    throttled: int  # containers with a memory.high (the old-kernel warning)


def pod_part(pod: Pod, targets: PodTargets) -> PodPart:
    """`pod`'s part of the node's targets, given its `pod_targets`."""
    return PodPart(
        targets=targets,
        request_bytes=pod_request(pod, MEMORY),
        cgroup=CgroupTarget(
            path=targets.cgroup, level="pod", files=targets.files, pod_uid=targets.uid
        ),
        order=(path_depth(targets.cgroup), targets.cgroup),
        throttled=sum(
            1 for c in targets.containers if c.files.get(MEMORY_HIGH, UNLIMITED) != UNLIMITED
        ),
    )


def assemble_node_targets(
    pods: Sequence[tuple[Pod, PodTargets]], config: NodeConfig, topology: Topology
) -> NodeTargets:
    """`node_targets` from pod targets computed earlier (each must be `pod_targets` of its pod
    under this config and topology). The daemon reuses unchanged pods' targets this way, so a
    commit recomputes only what it changed plus the node-level sums."""
    ordered = sorted(pods, key=lambda entry: entry[0].uid)
    for first, second in itertools.pairwise(ordered):
        if first[0].uid == second[0].uid:
            raise InvariantViolation(f"pod uid {first[0].uid} appears twice")
    parts = [pod_part(pod, targets) for pod, targets in ordered]
    by_order = sorted(parts, key=lambda part: part.order)
    return assemble_from_parts(
        [part.targets for part in parts],
        [part.order for part in by_order],
        [part.cgroup for part in by_order],
        config,
        topology,
        guaranteed_bytes=sum(p.request_bytes for p in parts if p.targets.qos_class == GUARANTEED),
        burstable_bytes=sum(p.request_bytes for p in parts if p.targets.qos_class == BURSTABLE),
        throttled=sum(p.throttled for p in parts),
    )


def assemble_from_parts(
    pods: Sequence[PodTargets],
    orders: Sequence[tuple[int, str]],
    cgroups: Sequence[CgroupTarget],
    config: NodeConfig,
    topology: Topology,
    *,
    guaranteed_bytes: int,
    burstable_bytes: int,
    throttled: int,
) -> NodeTargets:
    """The node's targets from its pods' parts (`pod_part`): the pods' targets by UID, the pod
    cgroups sorted by their `order` (given as two parallel lists), the Guaranteed and Burstable
    request sums and the count of containers with a memory.high. Linear only in C-level copies.
    The whole computation: the daemon's tracker keeps the same lists with the node-level
    cgroups merged in and follows them with a `NodeLevel` (see
    `memstate.core.state_targets.TargetsTracker`)."""
    level = NodeLevel(config, topology)
    # Every cgroup sorted by (depth, path), as `node_targets` always listed them: the few
    # node-level cgroups are inserted into the sorted pod cgroups.
    keys = list(orders)
    merged = list(cgroups)
    for key, target in zip(
        level.orders, level.cgroups(guaranteed_bytes, burstable_bytes), strict=True
    ):
        index = bisect.bisect_right(keys, key)
        keys.insert(index, key)
        merged.insert(index, target)
    return level.node_targets(
        tuple(merged),
        tuple(pods),
        guaranteed_bytes=guaranteed_bytes,
        burstable_bytes=burstable_bytes,
        throttled=throttled,
    )


class NodeLevel:
    """The node-level part of a node's targets under one config and topology: the root, node
    (kubepods) and QoS cgroups, the warnings and the node's QoS sums.

    Each cgroup is rendered again only when the sum it depends on changed since the last call
    (kubepods' memory.min follows both sums, the Burstable QoS cgroup's memory.low the Burstable
    one; the root and BestEffort cgroups follow neither), and an unchanged one is the very same
    object, so a tracker that keeps one `NodeLevel` per config pays for the QoS classes a commit
    touched only. A fresh one computes everything (`assemble_from_parts`). Deterministic: a
    result depends only on the config, the topology and the arguments."""

    __slots__ = (
        "_alloc_bytes",
        "_burstable_at",
        "_burstable_path",
        "_config",
        "_controllers",
        "_held",
        "_node_at",
        "_node_max_bytes",
        "_node_path",
        "_tiered",
        "_topology",
        "_warnings",
        "orders",
    )

    def __init__(self, config: NodeConfig, topology: Topology) -> None:
        self._config = config
        self._topology = topology
        self._tiered = tiered(config)
        self._alloc_bytes = allocatable_bytes(config, topology)
        self._node_max_bytes = (
            self._alloc_bytes
            if "pods" in config.enforce_node_allocatable
            else topology.capacity_bytes
        )
        self._controllers = subtree_controllers(config, topology)
        paths = (*root_paths(config), node_path(config))
        paths += (qos_path(config, BURSTABLE), qos_path(config, BEST_EFFORT))
        # Where each node-level cgroup sorts among the node's: `orders[i]` is the (depth, path)
        # of `cgroups(...)[i]`.
        self.orders: tuple[tuple[int, str], ...] = tuple(
            sorted((path_depth(path), path) for path in paths)
        )
        self._node_path, self._burstable_path = paths[-3], paths[-2]
        self._node_at = self.orders.index((path_depth(paths[-3]), paths[-3]))
        self._burstable_at = self.orders.index((path_depth(paths[-2]), paths[-2]))
        # (kubepods' memory.min, its memory.low, the cgroups) of the last `cgroups` call.
        self._held: tuple[int, int, list[CgroupTarget]] | None = None
        self._warnings: tuple[tuple[int, int, int], tuple[str, ...]] | None = None

    def _memory_files(self, min_bytes: int, low_bytes: int, max_text: str) -> dict[str, str]:
        files: dict[str, str] = {}
        if self._config.memory_qos:
            files[MEMORY_MIN] = _render_bytes(min_bytes)
            files[MEMORY_LOW] = _render_bytes(low_bytes)
            files[MEMORY_HIGH] = UNLIMITED
        files[MEMORY_MAX] = max_text
        return files

    def _node_cgroup(self, min_bytes: int, low_bytes: int) -> CgroupTarget:
        return CgroupTarget(
            path=self._node_path,
            level="node",
            files=self._memory_files(min_bytes, low_bytes, _render_bytes(self._node_max_bytes)),
            controllers=self._controllers,
        )

    def _burstable_cgroup(self, low_bytes: int) -> CgroupTarget:
        return CgroupTarget(
            path=self._burstable_path,
            level="qos",
            files=self._memory_files(0, low_bytes, UNLIMITED),
            controllers=self._controllers,
        )

    def cgroups(self, guaranteed_bytes: int, burstable_bytes: int) -> list[CgroupTarget]:
        """The node-level cgroups for these QoS sums, in the order of `orders`: the first call
        renders them all, a later one only those whose sum changed."""
        node_min = guaranteed_bytes + burstable_bytes if self._tiered else 0
        node_low = burstable_bytes if self._tiered else 0
        held = self._held
        if held is None:
            cgroups = self._render_all(node_min, node_low)
        else:
            cgroups = list(held[2])
            if (held[0], held[1]) != (node_min, node_low):
                cgroups[self._node_at] = self._node_cgroup(node_min, node_low)
            if held[1] != node_low:
                cgroups[self._burstable_at] = self._burstable_cgroup(node_low)
        self._held = (node_min, node_low, cgroups)
        return list(cgroups)

    def _render_all(self, node_min: int, node_low: int) -> list[CgroupTarget]:
        by_path = {
            path: CgroupTarget(path=path, level="root", controllers=self._controllers)
            for path in root_paths(self._config)
        }
        node = self._node_cgroup(node_min, node_low)
        burstable = self._burstable_cgroup(node_low)
        best_effort = CgroupTarget(
            path=qos_path(self._config, BEST_EFFORT),
            level="qos",
            files=self._memory_files(0, 0, UNLIMITED),
            controllers=self._controllers,
        )
        by_path.update({t.path: t for t in (node, burstable, best_effort)})
        return [by_path[path] for _depth, path in self.orders]

    def node_targets(
        self,
        cgroups: tuple[CgroupTarget, ...],
        pods: tuple[PodTargets, ...],
        *,
        guaranteed_bytes: int,
        burstable_bytes: int,
        throttled: int,
    ) -> NodeTargets:
        """The `NodeTargets` of every cgroup (sorted, the node-level ones among them) and pod
        (by UID), with the sums and warnings these QoS sums and throttled containers give."""
        key = (guaranteed_bytes, burstable_bytes, throttled)
        if self._warnings is None or self._warnings[0] != key:
            warnings = _warnings(
                self._config,
                self._topology,
                throttled,
                g_sum=guaranteed_bytes,
                b_sum=burstable_bytes,
                alloc_bytes=self._alloc_bytes,
                node_max_bytes=self._node_max_bytes,
            )
            self._warnings = (key, warnings)
        return NodeTargets(
            cgroups=cgroups,
            pods=pods,
            node_memory_min_bytes=guaranteed_bytes if self._tiered else 0,
            node_memory_low_bytes=burstable_bytes if self._tiered else 0,
            warnings=self._warnings[1],
            cgroup_driver=self._config.cgroup_driver,
            cgroup_root=self._config.cgroup_root,
        )


# Asked per commit (the old-kernel warning, in the targets and in the published metrics) of the
# one release a node has: remembered rather than matched again.
@functools.lru_cache(maxsize=8)
def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string such as ``5.4.0-100-generic``; None if unknown."""
    match = _KERNEL_RELEASE_RE.match(release)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _amount(size_bytes: int) -> str:
    return f"{size_bytes} bytes ({format_bytes(size_bytes)})"


def _warnings(
    config: NodeConfig,
    topology: Topology,
    throttled: int,
    *,
    g_sum: int,
    b_sum: int,
    alloc_bytes: int,
    node_max_bytes: int,
) -> tuple[str, ...]:
    """Conditions no write ordering can fix; reported to the operator, never hidden."""
    warnings: list[str] = []
    protected = g_sum + b_sum
    if tiered(config) and protected > node_max_bytes:
        warnings.append(
            f"kubepods memory.min {_amount(protected)} (Guaranteed {_amount(g_sum)} + Burstable "
            f"{_amount(b_sum)}) exceeds kubepods memory.max {_amount(node_max_bytes)}: "
            "protections are over-committed and the kernel will OOM-kill instead of honouring them"
        )
    elif tiered(config) and protected > alloc_bytes:
        warnings.append(
            f"kubepods memory.min {_amount(protected)} exceeds node allocatable "
            f"{_amount(alloc_bytes)}: protections eat into kube-reserved and system-reserved memory"
        )
    if tiered(config) and protected > 0 and config.cgroup_root:
        warnings.append(
            f"kubepods sits under cgroupRoot {'/'.join(config.cgroup_root)}, whose memory.min and "
            "memory.low memstate does not manage: kubepods' protection is only effective if every "
            "ancestor carries at least as much"
        )
    version = kernel_version(topology.kernel_release)
    if (
        config.memory_qos
        and version is not None
        and version < MEMORY_HIGH_SAFE_KERNEL
        and throttled
    ):
        warnings.append(
            f"kernel {topology.kernel_release} is older than 5.9: memory.high on "
            f"{throttled} container(s) can stall allocating tasks indefinitely (livelock); "
            "use a 5.9 or newer kernel"
        )
    return tuple(warnings)


# --- invariants -----------------------------------------------------------------------------------

_ORDERED_PAIRS = (
    (MEMORY_MIN, MEMORY_HIGH),
    (MEMORY_LOW, MEMORY_HIGH),
    (MEMORY_HIGH, MEMORY_MAX),
    (MEMORY_MIN, MEMORY_MAX),
    (MEMORY_LOW, MEMORY_MAX),
)


def _value(text: str) -> int | float | None:
    """A memory file value as a number ("max" = infinity); None when it is not one."""
    if text == UNLIMITED:
        return math.inf
    if text.isdigit():
        return int(text)
    return None


def _check_files(where: str, files: dict[str, str], found: list[str]) -> None:
    values: dict[str, int | float] = {}
    for name in (MEMORY_MIN, MEMORY_LOW, MEMORY_HIGH, MEMORY_MAX):
        if name in files:
            value = _value(files[name])
            if value is None:
                found.append(f"{where}: {name} {files[name]!r} is not a byte count or 'max'")
            else:
                values[name] = value
    if values.get(MEMORY_HIGH) == math.inf:
        # "max" is the kernel default, i.e. no throttle: nothing to order against memory.max.
        del values[MEMORY_HIGH]
    for lower, upper in _ORDERED_PAIRS:
        if lower in values and upper in values and values[lower] > values[upper]:
            found.append(f"{where}: {lower} {files[lower]} is above {upper} {files[upper]}")


def _concurrent_sets(containers: tuple[ContainerTargets, ...]) -> list[list[ContainerTargets]]:
    """Groups of containers that run at the same time: app containers + sidecars; and each
    regular init container with the sidecars declared before it."""
    groups: list[list[ContainerTargets]] = []
    sidecars: list[ContainerTargets] = []
    for container in containers:
        if container.kind == "init":
            groups.append([*sidecars, container])
        elif container.kind == "sidecar":
            sidecars.append(container)
    groups.append([c for c in containers if c.kind != "init"])
    return groups


def _sum(values: Iterable[int | float | None]) -> int | float:
    return sum(v for v in values if v is not None)


def check_targets(targets: NodeTargets) -> list[str]:
    """Invariant violations of a target tree, as sentences (empty when sound).

    - the tree: unique paths, parents listed before children, every pod exactly one pod cgroup
      carrying the pod's files;
    - per pod and container: memory.min/low <= memory.high <= memory.max where set ("max" =
      infinity; a memory.high of "max" means no throttle and is not ordered against
      memory.max), containers' memory.max <= the pod's;
    - parents cover children: a cgroup's memory.min (memory.low) >= the sum over its child
      cgroups, and a pod's >= the sum over every group of containers running at the same time.
    """
    found: list[str] = []
    counts = Counter(c.path for c in targets.cgroups)
    found.extend(f"cgroup {path!r} is listed {n} times" for path, n in counts.items() if n > 1)
    by_path = {c.path: c for c in targets.cgroups}
    seen: set[str] = set()
    for target in targets.cgroups:
        parent = parent_path(target.path)
        if parent is not None and parent not in seen:
            found.append(f"cgroup {target.path!r} is not preceded by its parent {parent!r}")
        seen.add(target.path)
        if target.level == "pod":
            _check_files(f"pod cgroup {target.path}", target.files, found)
    pod_cgroups = Counter(c.pod_uid for c in targets.cgroups if c.level == "pod")
    pod_uids = {p.uid for p in targets.pods}
    found.extend(
        f"pod cgroup {c.path!r} belongs to unknown pod {c.pod_uid!r}"
        for c in targets.cgroups
        if c.level == "pod" and c.pod_uid not in pod_uids
    )
    for pod in targets.pods:
        if pod_cgroups[pod.uid] != 1:
            found.append(f"pod {pod.uid} has {pod_cgroups[pod.uid]} pod cgroups, expected 1")
        cgroup = by_path.get(pod.cgroup)
        if cgroup is None or cgroup.level != "pod" or cgroup.pod_uid != pod.uid:
            found.append(f"pod {pod.uid}: its cgroup {pod.cgroup!r} is not its pod cgroup")
        elif cgroup.files != pod.files:
            found.append(f"pod {pod.uid}: cgroup files differ from the pod's targets")
        _check_pod_containers(pod, found)
    _check_parents_cover_children(targets, found)
    return found


def _check_pod_containers(pod: PodTargets, found: list[str]) -> None:
    pod_max = _value(pod.files[MEMORY_MAX]) if MEMORY_MAX in pod.files else None
    for container in pod.containers:
        where = f"pod {pod.uid} container {container.name}"
        _check_files(where, container.files, found)
        if MEMORY_MAX not in container.files:
            continue
        container_max = _value(container.files[MEMORY_MAX])
        if pod_max is not None and container_max is not None and container_max > pod_max:
            found.append(
                f"{where}: memory.max {container.files[MEMORY_MAX]} is above the pod's "
                f"{pod.files[MEMORY_MAX]}"
            )
    for name in (MEMORY_MIN, MEMORY_LOW):
        if name not in pod.files:
            continue
        pod_value = _value(pod.files[name])
        if pod_value is None:
            continue  # reported by _check_files
        for group in _concurrent_sets(pod.containers):
            total = _sum(_value(c.files[name]) for c in group if name in c.files)
            if total > pod_value:
                names = ", ".join(c.name for c in group)
                found.append(
                    f"pod {pod.uid}: {name} {pod.files[name]} is below the sum {total} of "
                    f"containers running together ({names})"
                )


def _check_parents_cover_children(targets: NodeTargets, found: list[str]) -> None:
    children: dict[str, list[CgroupTarget]] = {}
    for target in targets.cgroups:
        parent = parent_path(target.path)
        if parent is not None:
            children.setdefault(parent, []).append(target)
    files = {target.path: target.files for target in targets.cgroups}
    for target in targets.cgroups:
        if target.path not in children:
            continue
        for name in (MEMORY_MIN, MEMORY_LOW):
            if name not in target.files:
                continue
            if _value(target.files[name]) is None:
                found.append(f"cgroup {target.path}: {name} {target.files[name]!r} is not bytes")
                continue

            def value_of(path: str, name: str = name) -> float | None:
                text = files[path].get(name)
                return None if text is None else _value(text)

            found.extend(
                f"cgroup {path}: {name} {files[path][name]} is below the sum {total} of its "
                "children's"
                for path, _own, total in uncovered_parents(
                    [target.path], lambda p: (k.path for k in children[p]), value_of
                )
            )
