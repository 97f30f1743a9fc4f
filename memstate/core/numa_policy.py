"""Memory Manager Static policy and its admission flow through the Topology Manager.

`admit` is a pure function: (machine, topology, config, pod, other providers' hints) → either a
`PodAllocation` or a rejection with the upstream reason, plus the pinning counters. It follows the
kubelet v1.32 Static policy (memory-manager.md §2–§4):

- hints: every NUMA mask, by size then lexicographically; `preferred` means "smallest node count
  that could physically hold the request"; masks that would mix single- and cross-NUMA use or
  split a group are skipped; memory and hugepages are decided on one mask;
- allocate: the Topology Manager's hint, else the best default hint; extend to a superset when
  the mask lacks free memory; refuse a multi-node mask that breaks the group rule (k/k#123443);
  fill the mask lowest node first;
- init containers: memory of regular init containers is reused by later containers of the pod on
  the same mask, and their blocks shrink so that a pod's block sizes add up to what it holds;
  sidecars' memory is never reused.

Differences from upstream are deliberate and listed in docs/deviations.md: the admission is atomic
(a rejected pod leaves no partial allocation behind, instead of waiting for stale-state cleanup),
per-node takes are exact, and a single-node hint on a node that belongs to a group is refused.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from memstate.core.config import NodeConfig
from memstate.core.errors import AdmissionError, InvariantViolation
from memstate.core.machine import (
    Block,
    Machine,
    MachineBuilder,
    Mask,
    Take,
    add_allocation,
    merge_takes,
    remove_allocation,
)
from memstate.core.pod import (
    GUARANTEED,
    ContainerSpec,
    Pod,
    numa_requests,
    pod_numa_requests,
    resource_shape,
)
from memstate.core.pod import qos_class as pod_qos_class
from memstate.core.quantity import format_bytes
from memstate.core.topology import MEMORY, Topology
from memstate.core.topology_hints import (
    EMPTY_HINT,
    ProviderAnswer,
    TopologyHint,
    merge_hints,
    to_bits,
)

TOPOLOGY_AFFINITY_ERROR = "TopologyAffinityError"
UNEXPECTED_ADMISSION_ERROR = "UnexpectedAdmissionError"

MSG_NO_DEFAULT = (
    "failed to get the default NUMA affinity, no NUMA nodes with enough memory is available"
)
MSG_NO_DEFAULT_PREFERRED = "failed to find the default preferred hint"
MSG_NO_EXTENSION = "failed to find NUMA nodes to extend the current topology hint"
MSG_NO_EXTENDED_PREFERRED = "failed to find the extended preferred hint"
MSG_GROUP_VIOLATION = "preferred hint violates NUMA node allocation"


class ProviderHints(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Another hint provider's answer, recorded with an admission request.

    `container` "" applies to every container (and to the pod in pod scope). `hints` None means
    the provider has no preference; a resource mapped to None has no preference for it; an empty
    tuple means no possible affinity.
    """

    provider: str
    container: str = ""
    hints: dict[str, tuple[TopologyHint, ...] | None] | None = None


class ContainerAllocation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A container's blocks and the Topology Manager hint it was admitted with."""

    name: str
    hint: TopologyHint
    blocks: tuple[Block, ...]


class PodAllocation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a pinned pod holds: per-container blocks and the exact per-node takes."""

    containers: tuple[ContainerAllocation, ...]
    takes: tuple[Take, ...]

    @property
    def numa_nodes(self) -> Mask:
        """Union of the blocks' masks: the pod's `cpuset.mems`."""
        return tuple(
            sorted({n for c in self.containers for b in c.blocks for n in b.numa_affinity})
        )

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(b for c in self.containers for b in c.blocks)

    def reserved_bytes(self, resource: str) -> int:
        return sum(t.size_bytes for t in self.takes if t.resource == resource)


@dataclass
class Admission:
    """The outcome of `admit`. Exactly one of `allocation`/`rejection` matters:
    `rejection` None means admitted (with `allocation` None when nothing is pinned)."""

    allocation: PodAllocation | None
    rejection: AdmissionError | None
    pinning_requests: int
    pinning_errors: int


def node_distances(topology: Topology, config: NodeConfig) -> dict[int, tuple[int, ...]] | None:
    """Distance rows keyed by node id, when `prefer-closest-numa-nodes` is on and known."""
    if not config.prefer_closest_numa_nodes:
        return None
    ids = topology.node_ids
    rows: dict[int, tuple[int, ...]] = {}
    for node in topology.nodes:
        if len(node.distances) != len(ids):
            return None
        # Rows are given in node-id order; re-key them by id for masks with sparse ids.
        rows[node.id] = tuple(0 for _ in range(max(ids) + 1))
        row = list(rows[node.id])
        for index, other in enumerate(ids):
            row[other] = node.distances[index]
        rows[node.id] = tuple(row)
    return rows


# --- hint generation ------------------------------------------------------------------------------


class _Masks(NamedTuple):
    masks: tuple[Mask, ...]  # every non-empty mask, by size, then lexicographically
    prefixes: tuple[int, ...]  # index of mask[:-1] (listed earlier), -1 for single nodes
    lasts: tuple[int, ...]  # mask[-1]
    bits: tuple[int, ...]  # the mask as a bit set (bit i = NUMA node i)
    sizes: tuple[int, ...]  # len(mask)
    position: dict[Mask, int]
    starts: tuple[int, ...]  # starts[k]: index of the first mask of size k (k = 1..n+1)


@functools.lru_cache(maxsize=32)
def _all_masks(node_ids: tuple[int, ...]) -> _Masks:
    """Cached: a node has one set of NUMA ids, and with 8 nodes there are 255 masks."""
    masks = tuple(
        m for size in range(1, len(node_ids) + 1) for m in itertools.combinations(node_ids, size)
    )
    position = {m: i for i, m in enumerate(masks)}
    starts = [0, 0]
    for size in range(2, len(node_ids) + 2):
        starts.append(starts[-1] + sum(1 for m in masks if len(m) == size - 1))
    return _Masks(
        masks=masks,
        prefixes=tuple(position.get(m[:-1], -1) for m in masks),
        lasts=tuple(m[-1] for m in masks),
        bits=tuple(to_bits(m) for m in masks),
        sizes=tuple(len(m) for m in masks),
        position=position,
        starts=tuple(starts),
    )


def calculate_hints(
    machine: MachineBuilder,
    requests: Mapping[str, int],
    reusable: Mapping[tuple[Mask, str], int],
) -> dict[str, list[TopologyHint]]:
    """`calculateHints`: the same mask list for every requested resource, or an empty map.

    Every node's numbers are read once, every mask's sums are its prefix's plus its last node's
    (the prefix is listed earlier), and the group rule is checked on bit sets, so the walk over
    the 2^n - 1 masks does constant work per mask and resource.
    """
    node_ids = tuple(machine.node_ids)
    table = _all_masks(node_ids)
    count = len(table.masks)
    too_small = [False] * count  # some resource's allocatable sum is below the request
    too_full = [False] * count  # some resource's free (+ reusable) sum is below the request
    for resource, size in requests.items():
        allocatable = {n: machine.allocatable(n, resource) for n in node_ids}
        free = {n: machine.free(n, resource) for n in node_ids}
        reused = {
            table.position[mask]: amount
            for (mask, r), amount in reusable.items()
            if r == resource and mask in table.position
        }
        capacity_sums = [0] * count
        free_sums = [0] * count
        for i, (prefix, last) in enumerate(zip(table.prefixes, table.lasts, strict=True)):
            if prefix < 0:
                capacity, available = allocatable[last], free[last]
            else:
                capacity = capacity_sums[prefix] + allocatable[last]
                available = free_sums[prefix] + free[last]
            capacity_sums[i], free_sums[i] = capacity, available
            if capacity < size:
                too_small[i] = True
            if available + reused.get(i, 0) < size:
                too_full[i] = True
    # The group rule on bit sets: a node in a cross-NUMA group takes no single-node mask; a node
    # in use takes no multi-node mask other than exactly its group (none when it is single).
    grouped = 0  # nodes in a cross-NUMA group
    single_in_use = 0  # nodes in use on their own: no multi-node mask may contain them
    group_in_use: list[tuple[int, int]] = []  # (node bit, group bits) of group members in use
    for n in node_ids:
        cells = machine.cells(n)
        group = to_bits(cells) if len(cells) > 1 else 0
        if group:
            grouped |= 1 << n
        if machine.assignments(n) > 0:
            if group:
                group_in_use.append((1 << n, group))
            else:
                single_in_use |= 1 << n
    # "Preferred" means the smallest node count that could physically hold the request (before
    # the group and free checks); masks come by size, so that is the first one large enough.
    min_size = next(
        (size for size, small in zip(table.sizes, too_small, strict=True) if not small),
        len(node_ids),
    )
    feasible: list[Mask] = []
    for mask, size, bits, small, full in zip(
        table.masks, table.sizes, table.bits, too_small, too_full, strict=True
    ):
        if small or full:
            continue
        if size == 1:
            if bits & grouped:
                continue  # the node belongs to a cross-NUMA group
        elif bits & single_in_use or any(
            bits & node and group != bits for node, group in group_in_use
        ):
            continue  # would mix single- and cross-NUMA use, or split a group
        feasible.append(mask)
    if not feasible:
        return {}
    hints = [TopologyHint(numa_affinity=m, preferred=len(m) == min_size) for m in feasible]
    return {r: list(hints) for r in sorted(requests)}


def preferred_default_hint(
    machine: MachineBuilder,
    requests: Mapping[str, int],
    reusable: Mapping[tuple[Mask, str], int],
) -> TopologyHint | None:
    """The Topology Manager's hint for a container when the Memory Manager is the only hint
    provider, the policy is best-effort or restricted and `prefer-closest-numa-nodes` is off,
    provided `calculate_hints` has a preferred hint; None otherwise (the caller then merges).

    Same result as ``merge_hints(policy, node_ids, [calculate_hints(...)])`` without listing
    every mask: the answer gives the same list for every resource, merging copies of a list
    that holds a preferred hint yields that list's own hints (`topology_hints._candidates`), and
    the best preferred hint is the narrowest, then the smallest mask value. Preferred hints are
    the feasible masks of the smallest size that could hold the request, so only the masks of
    that size are checked (n of them when one node can hold it, not 2^n - 1), with the same
    tests as `calculate_hints`. tests/property/test_hint_fast_path.py holds the two equal.
    """
    if not requests:
        return None  # `calculate_hints` answers {}: no preference, a different merge
    needs = list(requests.items())
    allocatable_of = machine.allocatable
    free_of = machine.free
    # One pass, plain loops (this runs at every pinned container's admission). When one node
    # could hold the request the preferred masks are single nodes, and ascending ids are
    # ascending mask values, so the first feasible node is the answer: the first node whose
    # allocatable holds it, outside a cross-NUMA group, with the free (+ reusable) memory.
    one_node_holds = False
    for n in machine.node_ids:
        for r, need in needs:
            if allocatable_of(n, r) < need:
                break
        else:
            one_node_holds = True
            if len(machine.cells(n)) > 1:
                continue
            for r, need in needs:
                if free_of(n, r) + reusable.get(((n,), r), 0) < need:
                    break
            else:
                return TopologyHint(numa_affinity=(n,), preferred=True)
    if one_node_holds:
        return None
    table, room = _room(machine, requests, reusable)
    best: int | None = None
    best_mask: Mask = ()
    for index in range(table.starts[room.min_size], table.starts[room.min_size + 1]):
        bits = table.bits[index]
        if best is not None and bits >= best:
            continue
        mask = table.masks[index]
        if room.fits(mask, bits):
            best, best_mask = bits, mask
    if best is None:
        return None
    return TopologyHint(numa_affinity=best_mask, preferred=True)


def best_superset_hint(
    machine: MachineBuilder,
    requests: Mapping[str, int],
    reusable: Mapping[tuple[Mask, str], int],
    within: Mask,
) -> TopologyHint | None:
    """`extendTopologyManagerHint`'s choice: the best of `calculate_hints`' memory hints whose
    mask holds every node of `within` (`find_best_hint`: preferred, then narrower, then the
    smaller mask value), or None when there is none (no such mask is feasible, or no memory
    is requested: upstream reads the memory hints only).

    Without listing every mask: a feasible mask is never smaller than the preferred size (the
    smallest that could hold the request), so the best is the smallest mask value among the
    feasible supersets of the fewest nodes; the masks are walked by size, supersets only, with
    `calculate_hints`' tests, and the walk stops at the first size that has one. With 8 NUMA
    nodes `calculate_hints` built a hint for each of up to 255 masks per extension.
    tests/property/test_hint_fast_path.py holds it equal to the supersets of `calculate_hints`."""
    if MEMORY not in requests:
        return None
    table, room = _room(machine, requests, reusable)
    wanted = to_bits(within)
    best: int | None = None
    best_mask: Mask = ()
    best_size = 0
    for size in range(max(wanted.bit_count(), 1), len(table.starts) - 1):
        for index in range(table.starts[size], table.starts[size + 1]):
            bits = table.bits[index]
            if bits & wanted != wanted or (best is not None and bits >= best):
                continue
            mask = table.masks[index]
            if room.fits(mask, bits):
                best, best_mask, best_size = bits, mask, size
        if best is not None:
            return TopologyHint(numa_affinity=best_mask, preferred=best_size == room.min_size)
    return None


@dataclass(frozen=True)
class _Room:
    """What `calculate_hints` tests a mask against, summed per node once: each resource's
    allocatable and free memory, the reusable init memory, and the preferred size (the fewest
    nodes whose allocatable memory could hold the request)."""

    machine: MachineBuilder
    needs: tuple[tuple[str, int], ...]
    allocatable: dict[str, dict[int, int]]
    free: dict[str, dict[int, int]]
    reusable: Mapping[tuple[Mask, str], int]
    min_size: int

    def fits(self, mask: Mask, bits: int) -> bool:
        """`calculate_hints`' tests of one mask: large enough, free enough, the group rule."""
        allocatable, free, reusable = self.allocatable, self.free, self.reusable
        if any(sum(allocatable[r][n] for n in mask) < need for r, need in self.needs):
            return False  # too small
        if any(
            sum(free[r][n] for n in mask) + reusable.get((mask, r), 0) < need
            for r, need in self.needs
        ):
            return False  # too full
        return _group_rule_allows(self.machine, mask, bits)


def _room(
    machine: MachineBuilder,
    requests: Mapping[str, int],
    reusable: Mapping[tuple[Mask, str], int],
) -> tuple[_Masks, _Room]:
    node_ids = tuple(machine.node_ids)
    table = _all_masks(node_ids)
    needs = tuple(requests.items())
    allocatable = {r: {n: machine.allocatable(n, r) for n in node_ids} for r in requests}
    min_size = len(node_ids)
    for mask, size in zip(table.masks, table.sizes, strict=True):
        if all(sum(allocatable[r][n] for n in mask) >= need for r, need in needs):
            min_size = size
            break
    free = {r: {n: machine.free(n, r) for n in node_ids} for r in requests}
    return table, _Room(machine, needs, allocatable, free, reusable, min_size)


def _group_rule_allows(machine: MachineBuilder, mask: Mask, bits: int) -> bool:
    """`calculate_hints`' group rule for one mask (`bits` is the mask as a bit set): a node in a
    cross-NUMA group takes no single-node mask; a node in use takes no multi-node mask other
    than exactly its group."""
    if len(mask) == 1:
        return len(machine.cells(mask[0])) <= 1
    for n in mask:
        if machine.assignments(n) > 0:
            cells = machine.cells(n)
            if len(cells) <= 1 or to_bits(cells) != bits:
                return False
    return True


def find_best_hint(hints: Sequence[TopologyHint]) -> TopologyHint:
    """`findBestHint`: preferred first, then the narrower mask."""

    def key(hint: TopologyHint) -> tuple[bool, int, int]:
        bits = to_bits(hint.numa_affinity or ())
        return (not hint.preferred, bits.bit_count(), bits)

    return min(hints, key=key)


# --- allocation -----------------------------------------------------------------------------------


class _PodAllocator:
    """Scratch state of one pod's admission: the machine copy, reusable init memory, blocks.

    A plain class with slots, not a dataclass: one is built per pinned admission, and the
    dataclass `__init__` with its four default factories cost ~2 % of `memstate replay`."""

    __slots__ = ("blocks", "hints", "init_allocated", "machine", "pod", "reusable", "takes")

    def __init__(self, machine: MachineBuilder, pod: Pod) -> None:
        self.machine = machine
        self.pod = pod
        self.reusable: dict[tuple[Mask, str], int] = {}
        self.blocks: dict[str, list[Block]] = {}
        self.hints: dict[str, TopologyHint] = {}
        self.takes: list[Take] = []
        self.init_allocated = False  # a regular init container holds blocks

    def fail(self, container: ContainerSpec, core: str, detail: str) -> AdmissionError:
        message = (
            f"[memorymanager] {core} (pod {self.pod.key}, container {container.name}: {detail})"
        )
        return AdmissionError(UNEXPECTED_ADMISSION_ERROR, message)

    def describe(self, requests: Mapping[str, int], mask: Mask | None = None) -> str:
        wanted = ", ".join(f"{r} {format_bytes(v)}" for r, v in requests.items())
        nodes = mask if mask is not None else tuple(self.machine.node_ids)
        free = "; ".join(
            f"free {r}: "
            + ", ".join(f"node {n} {format_bytes(self.machine.free(n, r))}" for n in nodes)
            for r in requests
        )
        where = f"mask {list(mask)}, " if mask is not None else ""
        return f"requested {wanted}; {where}{free}"

    def satisfies(self, mask: Mask, requests: Mapping[str, int]) -> bool:
        """`isAffinitySatisfyRequest`: free memory on the mask, reusable memory not counted."""
        free = self.machine.free
        for resource, size in requests.items():
            available = 0
            for n in mask:
                available += free(n, resource)
            if available < size:
                return False
        return True

    def allocate(
        self,
        container: ContainerSpec,
        hint: TopologyHint,
        requests: Mapping[str, int] | None = None,
        *,
        vetted: bool = False,
    ) -> None:
        """The Static policy's `Allocate` for one container (`requests`: its `numa_requests`,
        when the caller has them); raises `AdmissionError`.

        `vetted`: `hint` is `preferred_default_hint`'s answer for these requests on this very
        machine, which has passed the group rule and the free-memory check on its mask (with
        the reusable memory counted: so only when none is reusable is that `satisfies`' check).
        With nothing reusable both checks below would change nothing and are skipped; with
        reusable memory the hint goes through them as any other (upstream's extension looks at
        the memory hints only, so a hugepages-only request may still be refused there).
        tests/property/test_hint_fast_path.py holds the two ways equal."""
        if requests is None:
            requests = numa_requests(container)
        self.hints[container.name] = hint
        best = hint
        if vetted and not self.reusable:
            mask = best.numa_affinity
            if mask is None:
                raise InvariantViolation(f"pod {self.pod.key}: a vetted hint has no NUMA mask")
            self._fill(container, mask, requests)
            return
        if best.numa_affinity is None:
            hints = calculate_hints(self.machine, requests, self.reusable)
            if not hints:
                raise self.fail(container, MSG_NO_DEFAULT, self.describe(requests))
            default = find_best_hint(hints[MEMORY])
            if not default.preferred and best.preferred:
                raise self.fail(container, MSG_NO_DEFAULT_PREFERRED, self.describe(requests))
            best = default
        if best.numa_affinity is None:
            raise InvariantViolation(f"pod {self.pod.key}: the best default hint has no NUMA mask")
        if not self.satisfies(best.numa_affinity, requests):
            best = self._extend(container, requests, best)
        mask = best.numa_affinity
        if mask is None:
            raise InvariantViolation(f"pod {self.pod.key}: the extended hint has no NUMA mask")
        self._check_group_rule(container, mask, requests)
        self._fill(container, mask, requests)

    def _fill(self, container: ContainerSpec, mask: Mask, requests: Mapping[str, int]) -> None:
        """The container's blocks on `mask` (checked to fit): reserved, assigned, recorded."""
        blocks = [Block(numa_affinity=mask, type=r, size=size) for r, size in requests.items()]
        reusable = self.reusable
        for block in blocks:
            reused = reusable.get((mask, block.type), 0) if reusable else 0
            amount = max(block.size - reused, 0)
            takes = self.machine.fill(mask, block.type, amount)
            filled = 0
            for take in takes:
                filled += take.size_bytes
            if filled != amount:
                raise InvariantViolation(
                    f"pod {self.pod.key} container {container.name}: filled less than the "
                    f"{amount} bytes of {block.type} the free-memory check promised"
                )
            self.takes.extend(takes)
        self.machine.assign(blocks)
        self.blocks[container.name] = blocks
        # Both steps change nothing for the usual pod (no regular init container before this
        # one, nothing reusable): skipped then.
        is_init = container.kind == "init"
        if is_init or self.reusable:
            self._update_reusable(container, blocks)
        if self.init_allocated:
            self._shrink_init_blocks(container, blocks)
        if is_init:
            self.init_allocated = True

    def _extend(
        self, container: ContainerSpec, requests: Mapping[str, int], current: TopologyHint
    ) -> TopologyHint:
        """`extendTopologyManagerHint`: the best feasible superset of the current mask."""
        if current.numa_affinity is None:
            raise InvariantViolation(f"pod {self.pod.key}: extending a hint without a NUMA mask")
        extended = best_superset_hint(self.machine, requests, self.reusable, current.numa_affinity)
        if extended is None:
            raise self.fail(
                container, MSG_NO_EXTENSION, self.describe(requests, current.numa_affinity)
            )
        if not extended.preferred and current.preferred:
            raise self.fail(
                container, MSG_NO_EXTENDED_PREFERRED, self.describe(requests, current.numa_affinity)
            )
        return extended

    def _check_group_rule(
        self, container: ContainerSpec, mask: Mask, requests: Mapping[str, int]
    ) -> None:
        """No node may hold single- and cross-NUMA blocks at once (k/k#123443, v1.32).

        Upstream checks multi-node masks only; memstate also refuses a single-node mask on a
        member of a group (reachable only through another provider's hint).
        """
        if len(mask) > 1:
            broken = [
                n for n in mask if self.machine.assignments(n) > 0 and self.machine.cells(n) != mask
            ]
        else:
            node = mask[0]
            broken = (
                [node]
                if self.machine.assignments(node) > 0 and len(self.machine.cells(node)) > 1
                else []
            )
        if broken:
            groups = ", ".join(f"node {n} in group {list(self.machine.cells(n))}" for n in broken)
            raise self.fail(
                container,
                MSG_GROUP_VIOLATION,
                f"{self.describe(requests, mask)}; {groups}",
            )

    def _update_reusable(self, container: ContainerSpec, blocks: Sequence[Block]) -> None:
        for block in blocks:
            key = (block.numa_affinity, block.type)
            current = self.reusable.get(key, 0)
            if container.is_init:
                self.reusable[key] = max(current, block.size)
            elif current:
                self.reusable[key] = 0 if block.size >= current else current - block.size

    def _shrink_init_blocks(self, container: ContainerSpec, blocks: Sequence[Block]) -> None:
        """Move reused bytes from earlier regular init containers' blocks to this container, so
        that the pod's block sizes add up to what it holds."""
        for block in blocks:
            remaining = block.size
            for earlier in self.pod.containers:
                if earlier.name == container.name or earlier.kind == "app":
                    break
                if earlier.kind != "init":
                    continue  # a sidecar's memory is never reused
                earlier_blocks = self.blocks.get(earlier.name, [])
                for index, init_block in enumerate(earlier_blocks):
                    if (
                        init_block.size == 0
                        or init_block.type != block.type
                        or init_block.numa_affinity != block.numa_affinity
                    ):
                        continue
                    moved = min(init_block.size, remaining)
                    remaining -= moved
                    earlier_blocks[index] = msgspec.structs.replace(
                        init_block, size=init_block.size - moved
                    )

    def result(self) -> PodAllocation:
        containers = tuple(
            ContainerAllocation(
                name=c.name,
                hint=self.hints.get(c.name, EMPTY_HINT),
                blocks=tuple(self.blocks.get(c.name, ())),
            )
            for c in self.pod.containers
        )
        allocation = PodAllocation(containers=containers, takes=merge_takes(self.takes))
        if not self.init_allocated and not self.reusable:
            # Nothing was reusable (only a regular init container's blocks become so) and no
            # block was shrunk: `_fill` checked that each block's takes add up to its size, so
            # the totals below agree by construction (most pods: the check is skipped).
            return allocation
        listed_bytes: dict[str, int] = {}
        for container_allocation in containers:
            for block in container_allocation.blocks:
                listed_bytes[block.type] = listed_bytes.get(block.type, 0) + block.size
        held_bytes: dict[str, int] = {}
        for take in allocation.takes:
            held_bytes[take.resource] = held_bytes.get(take.resource, 0) + take.size_bytes
        for resource, listed in listed_bytes.items():
            held = held_bytes.get(resource, 0)
            if held != listed:
                raise InvariantViolation(
                    f"pod {self.pod.key}: blocks list {listed} bytes of {resource} but the pod "
                    f"holds {held}"
                )
        return allocation


# --- admission ------------------------------------------------------------------------------------


def _provider_answers(
    hints: Sequence[ProviderHints], container: str | None
) -> list[ProviderAnswer]:
    answers: list[ProviderAnswer] = []
    for entry in hints:
        if container is None or entry.container in ("", container):
            answers.append(entry.hints)
    return answers


# Policies under which a preferred hint is admitted as it is (`preferred_default_hint`).
_FAST_POLICIES = ("best-effort", "restricted")


def pins(pod: Pod, config: NodeConfig) -> bool:
    """Whether the Memory Manager pins this pod: Static policy and a Guaranteed pod without
    pod-level resources (those are skipped since v1.34, k/k#133279: no hints, no blocks)."""
    return (
        config.memory_manager_policy == "Static"
        and pod.pod_level is None
        and pod_qos_class(pod) == GUARANTEED
    )


def admit(
    machine: Machine | MachineBuilder,
    topology: Topology,
    config: NodeConfig,
    pod: Pod,
    provider_hints: Sequence[ProviderHints] = (),
) -> Admission:
    """Run a pod through the Topology Manager and the Memory Manager. Pure: a `MachineBuilder`
    (a walk's working machine) is read through a scratch copy and left untouched."""
    pinned = pins(pod, config)
    if not pinned and not provider_hints:
        # Nothing to pin and no other provider: every merge would be of the single "no
        # preference" answer, which every policy admits, and the hint would be thrown away.
        return Admission(None, None, 0, 0)
    scratch = machine.scratch() if isinstance(machine, MachineBuilder) else MachineBuilder(machine)
    allocator = _PodAllocator(scratch, pod)
    distances = node_distances(topology, config)
    policy = config.topology_manager_policy
    requests = 0
    pod_hint: TopologyHint | None = None
    if policy != "none" and config.topology_manager_scope == "pod":
        mm_answer = (
            calculate_hints(allocator.machine, pod_numa_requests(pod), {}) if pinned else None
        )
        pod_hint, ok = merge_hints(
            policy,
            topology.node_ids,
            [mm_answer, *_provider_answers(provider_hints, None)],
            distances=distances,
        )
        if not ok:
            return _topology_error(pod_hint, f"pod {pod.key}", policy, requests)

    per_container = _numa_requests_by_container(pod) if pinned else None
    for index, container in enumerate(pod.containers):
        container_requests: dict[str, int] | None = None
        vetted = False  # the hint is `preferred_default_hint`'s, checked on this machine
        if policy == "none":
            hint = EMPTY_HINT
        elif pod_hint is not None:
            hint = pod_hint
        else:
            others = _provider_answers(provider_hints, container.name) if provider_hints else []
            container_requests = per_container[index] if per_container is not None else None
            fast = (
                preferred_default_hint(allocator.machine, container_requests, allocator.reusable)
                if container_requests is not None
                and not others
                and distances is None
                and policy in _FAST_POLICIES
                else None
            )
            if fast is not None:
                hint = fast  # what the merge below gives, without listing every mask
                vetted = True
            else:
                mm_answer = (
                    calculate_hints(allocator.machine, container_requests, allocator.reusable)
                    if container_requests is not None
                    else None
                )
                # The node ids only here: a tuple built per call, and the fast path needs none.
                hint, ok = merge_hints(
                    policy, topology.node_ids, [mm_answer, *others], distances=distances
                )
                if not ok:
                    return _topology_error(
                        hint, f"pod {pod.key} container {container.name}", policy, requests
                    )
        if not pinned:
            continue
        requests += 1
        try:
            allocator.allocate(container, hint, container_requests, vetted=vetted)
        except AdmissionError as exc:
            error = AdmissionError(
                UNEXPECTED_ADMISSION_ERROR,
                f"Allocate failed due to {exc.message}, which is unexpected",
            )
            return Admission(None, error, requests, 1)
    if not pinned:
        return Admission(None, None, 0, 0)
    return Admission(allocator.result(), None, requests, 0)


def _numa_requests_by_container(pod: Pod) -> tuple[dict[str, int], ...]:
    """`numa_requests` of every container of `pod`, in order: kept with the pod, and remembered
    by its resource shape (pods of one workload share it). Do not modify the result."""
    cache = vars(pod)
    found: tuple[dict[str, int], ...] | None = cache.get("_numa_requests")
    if found is None:
        shape = resource_shape(pod)
        found = _NUMA_REQUESTS_BY_SHAPE.get(shape)
        if found is None:
            if len(_NUMA_REQUESTS_BY_SHAPE) >= _NUMA_REQUESTS_MEMO_LIMIT:
                _NUMA_REQUESTS_BY_SHAPE.clear()
            found = _NUMA_REQUESTS_BY_SHAPE[shape] = tuple(numa_requests(c) for c in pod.containers)
        cache["_numa_requests"] = found
    return found


# Bounded; clearing it only costs recomputation. Equal shapes are equal containers.
_NUMA_REQUESTS_BY_SHAPE: dict[bytes, tuple[dict[str, int], ...]] = {}
_NUMA_REQUESTS_MEMO_LIMIT = 65536


def _topology_error(hint: TopologyHint, who: str, policy: str, requests: int) -> Admission:
    """The Topology Manager's refusal: the best merged hint is not preferred."""
    mask = "any" if hint.numa_affinity is None else list(hint.numa_affinity)
    message = (
        f"Resources cannot be allocated with Topology locality ({who}: best hint {mask}, "
        f"not preferred; topologyManagerPolicy {policy})"
    )
    return Admission(None, AdmissionError(TOPOLOGY_AFFINITY_ERROR, message), requests, 0)


# --- releasing ------------------------------------------------------------------------------------


def reserve(machine: Machine, allocation: PodAllocation) -> Machine:
    """Add a recorded allocation to the machine (admission, or re-adding after a rebuild)."""
    return add_allocation(machine, allocation.takes, allocation.blocks)


def release(machine: Machine, allocation: PodAllocation) -> Machine:
    """Give back everything a pod holds."""
    return remove_allocation(machine, allocation.takes, allocation.blocks)


def release_init_containers(
    machine: Machine, pod: Pod, allocation: PodAllocation
) -> tuple[Machine, PodAllocation]:
    """The app containers started, so the regular init containers are done (the kubelet's
    `AddContainer`): drop their blocks and give back what they still held.

    The bytes come back from the pod's own takes on each block's mask, lowest node first.
    """
    freed, dropped, kept = init_containers_done(pod, allocation)
    if not dropped:
        return machine, allocation
    return remove_allocation(machine, freed, dropped), kept


def init_containers_done(
    pod: Pod, allocation: PodAllocation
) -> tuple[list[Take], list[Block], PodAllocation]:
    """(takes to release, blocks to unassign, the allocation kept) when the regular init
    containers are done; nothing to release when they hold no blocks."""
    init_names = {c.name for c in pod.containers if c.kind == "init"}
    dropped = [b for c in allocation.containers if c.name in init_names for b in c.blocks]
    if not dropped:
        return [], [], allocation
    remaining = {(t.numa_node, t.resource): t.size_bytes for t in allocation.takes}
    freed: list[Take] = []
    for block in dropped:
        amount = block.size
        for node_id in block.numa_affinity:
            key = (node_id, block.type)
            taken = min(remaining.get(key, 0), amount)
            if taken:
                remaining[key] -= taken
                amount -= taken
                freed.append(Take(numa_node=node_id, resource=block.type, size_bytes=taken))
        if amount:
            raise InvariantViolation(
                f"pod {pod.key}: init block of {block.size} bytes of {block.type} on "
                f"{list(block.numa_affinity)} is not covered by the pod's takes"
            )
    kept = tuple(
        ContainerAllocation(name=c.name, hint=c.hint, blocks=()) if c.name in init_names else c
        for c in allocation.containers
    )
    takes = merge_takes(
        Take(numa_node=n, resource=r, size_bytes=size) for (n, r), size in remaining.items()
    )
    return freed, dropped, PodAllocation(containers=kept, takes=takes)
