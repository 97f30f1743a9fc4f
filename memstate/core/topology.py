"""The machine's NUMA topology as a value.

A `Topology` is what the daemon observed at start (from sysfs, or from a topology file for
tests and laptops): per NUMA node its total memory, its hugepage pools and its distance row,
plus the base page size (which the Memory QoS `memory.high` formula rounds to) and the kernel
release (memory.high is risky before 5.9). It is recorded in a `topology_observed` event, so a
log replays identically on a machine with a different shape.

Parsers here take *text* and plain objects, never files: `memstate.host.sysfs` reads sysfs and
the CLI reads topology files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from memstate.core.errors import InputError, TopologyError, echo
from memstate.core.quantity import INT64_MAX, QuantityInput, format_bytes, parse_bytes
from memstate.core.validation import convert_input, reraise_as

MEMORY = "memory"
HUGEPAGES_PREFIX = "hugepages-"
MAX_NUMA_NODE_ID = 63  # masks are 64-bit, as in the kubelet's bitmask package
# ACPI SLIT distances are one byte (10 local, 255 unreachable); Linux prints them as read.
MAX_NUMA_DISTANCE = 255
MAX_KERNEL_RELEASE_CHARS = 64  # utsname.release


class HugepagePool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`count` pages of `page_size_bytes` reserved on one NUMA node."""

    page_size_bytes: int
    count: int

    @property
    def total_bytes(self) -> int:
        return self.page_size_bytes * self.count


class NumaNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One NUMA node: MemTotal (hugepage pools included, as the kernel reports it)."""

    id: int
    memory_bytes: int
    hugepages: tuple[HugepagePool, ...] = ()
    distances: tuple[int, ...] = ()

    def hugepage_bytes(self, page_size_bytes: int) -> int:
        """Total bytes of hugepages of one size on this node (0 if the size is absent)."""
        return sum(p.total_bytes for p in self.hugepages if p.page_size_bytes == page_size_bytes)


class Topology(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The NUMA shape of the machine, nodes sorted by id."""

    nodes: tuple[NumaNode, ...]
    page_size_bytes: int = 4096
    kernel_release: str = ""

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(n.id for n in self.nodes)

    def node(self, node_id: int) -> NumaNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def hugepage_sizes(self) -> tuple[int, ...]:
        """Every hugepage size reported on any node, ascending."""
        return tuple(sorted({p.page_size_bytes for n in self.nodes for p in n.hugepages}))

    @property
    def resources(self) -> tuple[str, ...]:
        """`memory` and one `hugepages-<size>` per reported size, in a fixed order."""
        return (MEMORY, *(hugepage_resource_name(s) for s in self.hugepage_sizes))

    @property
    def capacity_bytes(self) -> int:
        """Machine memory capacity: the sum of the nodes' MemTotal."""
        return sum(n.memory_bytes for n in self.nodes)


def hugepage_resource_name(page_size_bytes: int) -> str:
    """`hugepages-<size>` with the size in binary SI (2097152 → ``hugepages-2Mi``)."""
    return HUGEPAGES_PREFIX + format_bytes(page_size_bytes)


def is_hugepage_resource(resource: str) -> bool:
    return resource.startswith(HUGEPAGES_PREFIX)


def hugepage_page_size(resource: str, *, path: str = "") -> int:
    """The page size named by a `hugepages-<size>` resource; `InputError` when malformed."""
    if not is_hugepage_resource(resource):
        raise InputError(f"{echo(resource)} is not a hugepages-<size> resource", path=path)
    size = parse_bytes(resource[len(HUGEPAGES_PREFIX) :], path=path)
    if size <= 0 or size & (size - 1):
        raise InputError(f"hugepage size in {echo(resource)} is not a power of two", path=path)
    return size


def canonical_resource_name(resource: str, *, path: str = "") -> str:
    """Normalise `hugepages-2048Ki` to `hugepages-2Mi`; other names are returned unchanged."""
    if is_hugepage_resource(resource):
        return hugepage_resource_name(hugepage_page_size(resource, path=path))
    return resource


def validate_topology(topology: Topology, *, source: str = "") -> Topology:
    """Check a topology's internal consistency; returns it unchanged or raises `TopologyError`."""

    def fail(message: str, path: str = "") -> TopologyError:
        return TopologyError(message, source=source, path=path)

    if not topology.nodes:
        raise fail("a topology needs at least one NUMA node", "$.nodes")
    page = topology.page_size_bytes
    if page < 4096 or page & (page - 1):
        raise fail(f"base page size {page} is not a power of two >= 4096", "$.pageSize")
    if len(topology.kernel_release) > MAX_KERNEL_RELEASE_CHARS:
        raise fail(
            f"kernel release is longer than {MAX_KERNEL_RELEASE_CHARS} characters",
            "$.kernelRelease",
        )
    if len(topology.nodes) > MAX_NUMA_NODE_ID + 1:
        raise fail(f"more than {MAX_NUMA_NODE_ID + 1} NUMA nodes", "$.nodes")
    ids = [n.id for n in topology.nodes]
    if ids != sorted(set(ids)):
        raise fail(f"NUMA node ids must be unique and ascending, got {echo(ids)}", "$.nodes")
    for index, node in enumerate(topology.nodes):
        where = f"$.nodes[{index}]"
        if not 0 <= node.id <= MAX_NUMA_NODE_ID:
            raise fail(f"NUMA node id {node.id} is outside 0..{MAX_NUMA_NODE_ID}", where)
        if not 0 <= node.memory_bytes <= INT64_MAX:
            raise fail("memory must be between 0 and 2^63-1 bytes", where + ".memory")
        sizes = [p.page_size_bytes for p in node.hugepages]
        if sizes != sorted(set(sizes)):
            raise fail("hugepage sizes must be unique and ascending", where + ".hugepages")
        for pool in node.hugepages:
            if pool.page_size_bytes <= page or pool.page_size_bytes & (pool.page_size_bytes - 1):
                raise fail(
                    f"hugepage size {pool.page_size_bytes} is not a power of two above the "
                    "base page size",
                    where + ".hugepages",
                )
            if pool.count < 0:
                raise fail("hugepage count must not be negative", where + ".hugepages")
            if pool.total_bytes > node.memory_bytes:
                raise fail(
                    f"NUMA node {node.id}: {pool.count} pages of {pool.page_size_bytes} bytes "
                    "exceed the node's memory",
                    where + ".hugepages",
                )
        hugepages_total = sum(p.total_bytes for p in node.hugepages)
        if hugepages_total > node.memory_bytes:
            raise fail(
                f"NUMA node {node.id}: hugepages ({format_bytes(hugepages_total)}) exceed the "
                f"node's memory ({format_bytes(node.memory_bytes)})",
                where,
            )
        if node.distances and len(node.distances) != len(topology.nodes):
            raise fail(
                f"NUMA node {node.id}: {len(node.distances)} distances for "
                f"{len(topology.nodes)} nodes",
                where + ".distances",
            )
        for column, distance in enumerate(node.distances):
            if not 0 <= distance <= MAX_NUMA_DISTANCE:
                raise fail(
                    f"NUMA node {node.id}: distance {echo(distance)} is outside "
                    f"0..{MAX_NUMA_DISTANCE}",
                    f"{where}.distances[{column}]",
                )
    return topology


# --- the hand-writable topology file ------------------------------------------------------------


class _NodeFile(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    memory: QuantityInput
    hugepages: dict[str, int] = {}
    distances: list[int] = []


class _TopologyFile(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    nodes: list[_NodeFile]
    page_size: QuantityInput = 4096
    kernel_release: str = ""


def topology_from_object(obj: Any, *, source: str = "") -> Topology:
    """Build a `Topology` from a decoded topology file (YAML or JSON).

    Shape::

        pageSize: 4Ki            # optional, default 4Ki
        nodes:
          - id: 0
            memory: 16Gi         # MemTotal of the node, hugepage pools included
            hugepages: {2Mi: 512, 1Gi: 2}   # page size -> number of pages
            distances: [10, 20]  # optional
    """
    raw = convert_input(obj, _TopologyFile, source=source, error=TopologyError)
    nodes = []
    for index, raw_node in enumerate(sorted(raw.nodes, key=lambda n: n.id)):
        where = f"$.nodes[{index}]"
        pools = []
        for size_text, count in raw_node.hugepages.items():
            size_path = f"{where}.hugepages.{size_text}"
            name = size_text if is_hugepage_resource(size_text) else HUGEPAGES_PREFIX + size_text
            try:
                size = hugepage_page_size(name, path=size_path)
            except InputError as exc:
                raise reraise_as(exc, TopologyError, source=source) from None
            pools.append(HugepagePool(page_size_bytes=size, count=count))
        try:
            memory = parse_bytes(raw_node.memory, path=where + ".memory")
        except InputError as exc:
            raise reraise_as(exc, TopologyError, source=source) from None
        nodes.append(
            NumaNode(
                id=raw_node.id,
                memory_bytes=memory,
                hugepages=tuple(sorted(pools, key=lambda p: p.page_size_bytes)),
                distances=tuple(raw_node.distances),
            )
        )
    try:
        page = parse_bytes(raw.page_size, path="$.pageSize")
    except InputError as exc:
        raise reraise_as(exc, TopologyError, source=source) from None
    topology = Topology(nodes=tuple(nodes), page_size_bytes=page, kernel_release=raw.kernel_release)
    return validate_topology(topology, source=source)


def topology_to_object(topology: Topology) -> dict[str, Any]:
    """The inverse of `topology_from_object`, for `memstate topology -o json` and scenarios."""
    return {
        "pageSize": topology.page_size_bytes,
        "kernelRelease": topology.kernel_release,
        "nodes": [
            {
                "id": n.id,
                "memory": n.memory_bytes,
                "hugepages": {format_bytes(p.page_size_bytes): p.count for p in n.hugepages},
                "distances": list(n.distances),
            }
            for n in topology.nodes
        ],
    }


# --- sysfs text -----------------------------------------------------------------------------------

_NODE_DIR_RE = re.compile(r"node(\d+)")
_MEMTOTAL_RE = re.compile(r"^Node\s+(\d+)\s+MemTotal:\s+(\d+)\s+kB\s*$", re.MULTILINE)
_HUGEPAGES_DIR_RE = re.compile(r"hugepages-(\d+)kB")


def topology_from_sysfs(
    files: Mapping[str, str], *, page_size_bytes: int, kernel_release: str = ""
) -> Topology:
    """Parse the text of `/sys/devices/system/node`.

    `files` maps paths relative to that directory to their content, for example
    ``node0/meminfo``, ``node0/distance`` and ``node0/hugepages/hugepages-2048kB/nr_hugepages``.
    Only `nodeN/...` entries are read; anything else is ignored.
    """
    memory: dict[int, int] = {}
    distances: dict[int, tuple[int, ...]] = {}
    pools: dict[int, list[HugepagePool]] = {}
    for rel_path in sorted(files):
        parts = rel_path.split("/")
        node_match = _NODE_DIR_RE.fullmatch(parts[0])
        if node_match is None:
            continue
        node_id = int(node_match.group(1))
        text = files[rel_path]
        if parts[1:] == ["meminfo"]:
            found = _MEMTOTAL_RE.search(text)
            if found is None or int(found.group(1)) != node_id:
                raise TopologyError("no 'Node N MemTotal: X kB' line", source=rel_path)
            memory[node_id] = int(found.group(2)) * 1024
        elif parts[1:] == ["distance"]:
            try:
                distances[node_id] = tuple(int(x) for x in text.split())
            except ValueError:
                raise TopologyError(
                    f"malformed distance row {echo(text)}", source=rel_path
                ) from None
        elif len(parts) == 4 and parts[1] == "hugepages" and parts[3] == "nr_hugepages":
            size_match = _HUGEPAGES_DIR_RE.fullmatch(parts[2])
            if size_match is None:
                continue
            try:
                count = int(text.strip())
            except ValueError:
                raise TopologyError(f"malformed page count {echo(text)}", source=rel_path) from None
            pools.setdefault(node_id, []).append(
                HugepagePool(page_size_bytes=int(size_match.group(1)) * 1024, count=count)
            )
    if not memory:
        raise TopologyError("no NUMA node with a meminfo file", source="/sys/devices/system/node")
    nodes = tuple(
        NumaNode(
            id=node_id,
            memory_bytes=memory[node_id],
            hugepages=tuple(sorted(pools.get(node_id, []), key=lambda p: p.page_size_bytes)),
            distances=distances.get(node_id, ()),
        )
        for node_id in sorted(memory)
    )
    topology = Topology(nodes=nodes, page_size_bytes=page_size_bytes, kernel_release=kernel_release)
    return validate_topology(topology, source="/sys/devices/system/node")
