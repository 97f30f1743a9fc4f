"""Per-NUMA-node memory accounting in the kubelet Memory Manager's vocabulary.

For every NUMA node and every resource (`memory`, `hugepages-<size>`) a `MemoryTable` holds
``total``, ``system_reserved``, ``allocatable``, ``reserved`` and ``free`` with
``free + reserved == allocatable``. A node also counts the blocks that reference it
(``number_of_assignments``) and names its NUMA group (``cells``): ``(id,)`` for a free or
single-NUMA node, the group's mask for a member of a cross-NUMA group.

Where memstate differs from upstream (docs/deviations.md): a pod's reservation is recorded as
exact per-node *takes*, and releasing a pod gives bytes back to the nodes they came from. Upstream
drains the lowest node of the mask first, which makes per-node numbers drift from any replay of the
surviving blocks (root cause of k/k#113130). With exact takes the machine state is a pure function
of (topology, config, surviving allocations), whatever the history.

`MachineBuilder` is the one mutable thing in the core: a scratch copy used inside a single
`decide` or `apply` call and frozen before it is returned, or the working node map of a walk
that owns its state (`reducer.Folder`, `reducer.WorkingState`), frozen where a state is observed.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.topology import MEMORY, Topology, hugepage_resource_name

Mask = tuple[int, ...]


class MemoryTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One (NUMA node, resource) row, as in the kubelet's `memory_manager_state`."""

    total: int
    system_reserved: int
    allocatable: int
    reserved: int
    free: int


class NumaNodeState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int
    number_of_assignments: int
    cells: Mask
    memory_map: dict[str, MemoryTable]


class Machine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole node map, nodes ascending by id."""

    nodes: tuple[NumaNodeState, ...] = ()

    def node(self, node_id: int) -> NumaNodeState:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def node_ids(self) -> Mask:
        return tuple(n.id for n in self.nodes)


class Take(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`size_bytes` of `resource` a pod holds on one NUMA node."""

    numa_node: int
    resource: str
    size_bytes: int


class Block(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A container's memory block: `{numaAffinity, type, size}` in kubelet terms."""

    numa_affinity: Mask
    type: str
    size: int


def default_machine(topology: Topology, config: NodeConfig) -> Machine:
    """The fresh node map for a topology and config: nothing reserved, `cells = (id,)`.

    Allocatable for hugepages is total − reserved; for memory it is total − reserved − every
    hugepage pool of the node (hugepages are carved out of MemTotal). `validate_config_for_topology`
    guarantees none of these is negative; a negative one here is an invariant violation.
    """
    nodes = []
    for node in topology.nodes:
        tables: dict[str, MemoryTable] = {}
        hugepages_total = sum(p.total_bytes for p in node.hugepages)
        memory_reserved = config.reserved(node.id, MEMORY)
        tables[MEMORY] = _fresh_table(
            node.memory_bytes,
            memory_reserved,
            node.memory_bytes - memory_reserved - hugepages_total,
        )
        for size in topology.hugepage_sizes:
            resource = hugepage_resource_name(size)
            total = node.hugepage_bytes(size)
            reserved = config.reserved(node.id, resource)
            tables[resource] = _fresh_table(total, reserved, total - reserved)
        for resource, table in tables.items():
            if table.allocatable < 0:
                raise InvariantViolation(
                    f"NUMA node {node.id}: allocatable {resource} would be negative "
                    f"({table.allocatable}); the config was not validated against the topology"
                )
        nodes.append(
            NumaNodeState(id=node.id, number_of_assignments=0, cells=(node.id,), memory_map=tables)
        )
    return Machine(nodes=tuple(nodes))


def _fresh_table(total: int, system_reserved: int, allocatable: int) -> MemoryTable:
    return MemoryTable(
        total=total,
        system_reserved=system_reserved,
        allocatable=allocatable,
        reserved=0,
        free=allocatable,
    )


class MachineBuilder:
    """A mutable scratch copy of a `Machine` (one decision or one apply, then `freeze`).

    Copy-on-write per entry: only the counters an update touches are held here, reads fall back
    to the frozen machine, and `freeze` rebuilds only the nodes that changed (the others are
    shared with the input). Reserving or releasing one pod therefore costs what the pod holds,
    not the size of the node map.
    """

    def __init__(self, machine: Machine) -> None:
        self._ids: list[int] = [n.id for n in machine.nodes]
        self._base: dict[int, NumaNodeState] = {n.id: n for n in machine.nodes}
        # Overrides of the base machine's values, for the entries updated so far.
        self._reserved: dict[tuple[int, str], int] = {}
        self._assignments: dict[int, int] = {}
        self._cells: dict[int, Mask] = {}

    def scratch(self) -> MachineBuilder:
        """A builder reading this one's current values whose updates leave this one untouched:
        a decision's scratch copy of a walk's working machine. The overrides are at most one
        per (node, resource), so the copy costs the size of the node map, not of the history."""
        copy = MachineBuilder.__new__(MachineBuilder)
        copy._ids = self._ids
        copy._base = self._base  # never updated in place: shared
        copy._reserved = dict(self._reserved)
        copy._assignments = dict(self._assignments)
        copy._cells = dict(self._cells)
        return copy

    # --- queries --------------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return self._ids

    def _table(self, node_id: int, resource: str) -> MemoryTable | None:
        node = self._base.get(node_id)
        return None if node is None else node.memory_map.get(resource)

    def has(self, node_id: int, resource: str) -> bool:
        return self._table(node_id, resource) is not None

    def reserved(self, node_id: int, resource: str) -> int:
        reserved = self._reserved.get((node_id, resource))
        if reserved is not None:
            return reserved
        table = self._table(node_id, resource)
        return 0 if table is None else table.reserved

    # `free` and `allocatable` read the table without `_table`: the hint and allocation
    # checks call them a few times per node and resource at every pinned admission.

    def free(self, node_id: int, resource: str) -> int:
        node = self._base.get(node_id)
        table = None if node is None else node.memory_map.get(resource)
        if table is None:
            return 0
        reserved = self._reserved.get((node_id, resource))
        return table.allocatable - (table.reserved if reserved is None else reserved)

    def allocatable(self, node_id: int, resource: str) -> int:
        node = self._base.get(node_id)
        table = None if node is None else node.memory_map.get(resource)
        return 0 if table is None else table.allocatable

    def assignments(self, node_id: int) -> int:
        count = self._assignments.get(node_id)
        return self._base[node_id].number_of_assignments if count is None else count

    def cells(self, node_id: int) -> Mask:
        cells = self._cells.get(node_id)
        return self._base[node_id].cells if cells is None else cells

    # --- updates --------------------------------------------------------------------------------

    # The updates below read the tables inline (not through `free`, `reserved`, `_table`):
    # `memstate replay` moves its working machine by every admission and removal it folds.

    def fill(self, mask: Mask, resource: str, amount: int) -> list[Take]:
        """Reserve `amount` on `mask`, lowest node first, as far as free memory goes.

        Returns the takes; the caller checks that they add up to `amount`.
        """
        takes: list[Take] = []
        remaining = amount
        base = self._base
        overrides = self._reserved
        for node_id in mask:
            if remaining <= 0:
                break
            node = base.get(node_id)
            table = None if node is None else node.memory_map.get(resource)
            if table is None:
                continue  # nothing free there
            key = (node_id, resource)
            reserved = overrides.get(key)
            if reserved is None:
                reserved = table.reserved
            available = table.allocatable - reserved
            if available <= 0:
                continue
            taken = min(available, remaining)
            overrides[key] = reserved + taken
            remaining -= taken
            takes.append(Take(numa_node=node_id, resource=resource, size_bytes=taken))
        return takes

    def reserve(self, takes: Iterable[Take]) -> None:
        """Apply recorded takes; free memory must not go negative."""
        base = self._base
        overrides = self._reserved
        for take in takes:
            node_id, resource = take.numa_node, take.resource
            node = base.get(node_id)
            table = None if node is None else node.memory_map.get(resource)
            if table is None:
                raise InvariantViolation(
                    f"take of {resource} on NUMA node {node_id}: no such table"
                )
            key = (node_id, resource)
            reserved = overrides.get(key)
            reserved = (table.reserved if reserved is None else reserved) + take.size_bytes
            overrides[key] = reserved
            if reserved > table.allocatable:
                raise InvariantViolation(
                    f"NUMA node {node_id} {resource}: reserved "
                    f"{reserved} exceeds allocatable {table.allocatable}"
                )

    def release(self, takes: Iterable[Take]) -> None:
        base = self._base
        overrides = self._reserved
        for take in takes:
            node_id, resource = take.numa_node, take.resource
            node = base.get(node_id)
            table = None if node is None else node.memory_map.get(resource)
            if table is None:
                raise InvariantViolation(
                    f"release of {resource} on NUMA node {node_id}: no such table"
                )
            key = (node_id, resource)
            reserved = overrides.get(key)
            reserved = (table.reserved if reserved is None else reserved) - take.size_bytes
            overrides[key] = reserved
            if reserved < 0:
                raise InvariantViolation(f"NUMA node {node_id} {resource}: release below zero")

    def assign(self, blocks: Iterable[Block]) -> None:
        """Count blocks on every node of their mask and join the nodes into the mask's group."""
        base = self._base
        counts = self._assignments
        cells = self._cells
        for block in blocks:
            mask = block.numa_affinity
            for node_id in mask:
                node = base.get(node_id)
                if node is None:  # a recorded block from a corrupt or foreign log
                    raise InvariantViolation(f"block on NUMA node {node_id}: no such node")
                count = counts.get(node_id)
                counts[node_id] = (node.number_of_assignments if count is None else count) + 1
                cells[node_id] = mask

    def unassign(self, blocks: Iterable[Block]) -> None:
        base = self._base
        counts = self._assignments
        for block in blocks:
            for node_id in block.numa_affinity:
                node = base.get(node_id)
                if node is None:
                    raise InvariantViolation(f"block on NUMA node {node_id}: no such node")
                count = counts.get(node_id)
                count = (node.number_of_assignments if count is None else count) - 1
                counts[node_id] = count
                if count < 0:
                    raise InvariantViolation(f"NUMA node {node_id}: assignments below zero")
                if count == 0:
                    self._cells[node_id] = (node_id,)

    def freeze(self) -> Machine:
        touched = {n for n, _ in self._reserved} | self._assignments.keys() | self._cells.keys()
        if not touched:
            return Machine(nodes=tuple(self._base[n] for n in self._ids))
        nodes = []
        for node_id in self._ids:
            base = self._base[node_id]
            if node_id not in touched:
                nodes.append(base)
                continue
            tables = {}
            for resource, table in base.memory_map.items():
                reserved = self._reserved.get((node_id, resource), table.reserved)
                if reserved == table.reserved:
                    tables[resource] = table
                else:
                    tables[resource] = MemoryTable(
                        total=table.total,
                        system_reserved=table.system_reserved,
                        allocatable=table.allocatable,
                        reserved=reserved,
                        free=table.allocatable - reserved,
                    )
            assignments = self.assignments(node_id)
            cells = self.cells(node_id)
            if (
                assignments == base.number_of_assignments
                and cells == base.cells
                and all(tables[r] is base.memory_map[r] for r in tables)
            ):
                nodes.append(base)
            else:
                nodes.append(
                    NumaNodeState(
                        id=node_id,
                        number_of_assignments=assignments,
                        cells=cells,
                        memory_map=tables,
                    )
                )
        return Machine(nodes=tuple(nodes))


def add_allocation(machine: Machine, takes: Iterable[Take], blocks: Iterable[Block]) -> Machine:
    """`machine` with recorded takes reserved and blocks assigned (`MachineBuilder.reserve` and
    `assign`, same checks), rebuilding only the nodes they touch: what `apply` pays per pod."""
    return _moved(machine, takes, blocks, 1)


def remove_allocation(machine: Machine, takes: Iterable[Take], blocks: Iterable[Block]) -> Machine:
    """`machine` with takes released and blocks unassigned (`MachineBuilder.release` and
    `unassign`, same checks), rebuilding only the nodes they touch."""
    return _moved(machine, takes, blocks, -1)


def _moved(machine: Machine, takes: Iterable[Take], blocks: Iterable[Block], sign: int) -> Machine:
    # Runs at every pinned admission and removal `apply` folds: per-node rows of the touched
    # values, and structs built positionally (fields in declaration order).
    by_id = {n.id: n for n in machine.nodes}
    reserved: dict[int, dict[str, int]] = {}
    for take in takes:
        node_id, resource = take.numa_node, take.resource
        node = by_id.get(node_id)
        table = None if node is None else node.memory_map.get(resource)
        if table is None:
            action = "take" if sign > 0 else "release"
            raise InvariantViolation(
                f"{action} of {resource} on NUMA node {node_id}: no such table"
            )
        row = reserved.get(node_id)
        if row is None:
            row = reserved[node_id] = {}
        value = row.get(resource, table.reserved) + sign * take.size_bytes
        row[resource] = value
        if sign > 0 and value > table.allocatable:
            raise InvariantViolation(
                f"NUMA node {node_id} {resource}: reserved "
                f"{value} exceeds allocatable {table.allocatable}"
            )
        if sign < 0 and value < 0:
            raise InvariantViolation(f"NUMA node {node_id} {resource}: release below zero")
    assignments: dict[int, int] = {}
    cells: dict[int, Mask] = {}
    for block in blocks:
        for node_id in block.numa_affinity:
            node = by_id.get(node_id)
            if node is None:
                raise InvariantViolation(f"block on NUMA node {node_id}: no such node")
            count = assignments.get(node_id, node.number_of_assignments) + sign
            assignments[node_id] = count
            if count < 0:
                raise InvariantViolation(f"NUMA node {node_id}: assignments below zero")
            if sign > 0:
                cells[node_id] = block.numa_affinity
            elif count == 0:
                cells[node_id] = (node_id,)
    nodes = []
    for node in machine.nodes:
        node_id = node.id
        row = reserved.get(node_id)
        assigned = assignments.get(node_id)
        if row is None and assigned is None:
            nodes.append(node)
            continue
        tables = dict(node.memory_map)
        if row is not None:
            for resource, value in row.items():
                table = tables[resource]
                allocatable = table.allocatable
                tables[resource] = MemoryTable(
                    table.total, table.system_reserved, allocatable, value, allocatable - value
                )
        nodes.append(
            NumaNodeState(
                node_id,
                node.number_of_assignments if assigned is None else assigned,
                cells.get(node_id, node.cells),
                tables,
            )
        )
    return Machine(tuple(nodes))


def merge_takes(takes: Iterable[Take]) -> tuple[Take, ...]:
    """Sum takes per (node, resource), drop zeros, sort: the canonical form stored in state."""
    listed = takes if isinstance(takes, list | tuple) else list(takes)
    # Most pods' takes are already in that form (one container: its resources in sorted order
    # on one node): kept as they are, without building them again.
    previous: tuple[int, str] | None = None
    for take in listed:
        key = (take.numa_node, take.resource)
        if take.size_bytes == 0 or (previous is not None and key <= previous):
            break
        previous = key
    else:
        return tuple(listed)
    totals: dict[tuple[int, str], int] = {}
    for take in listed:
        key = (take.numa_node, take.resource)
        totals[key] = totals.get(key, 0) + take.size_bytes
    return tuple(
        Take(numa_node=node_id, resource=resource, size_bytes=size)
        for (node_id, resource), size in sorted(totals.items())
        if size != 0
    )
