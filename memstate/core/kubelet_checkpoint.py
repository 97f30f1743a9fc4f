"""The kubelet Memory Manager's checkpoint, `memory_manager_state`: parse it, verify its checksum.

Pure: bytes in, a typed `KubeletCheckpoint` (or a `KubeletCheckpointError` naming the file, the
field and the reason) out. Reading the file is the caller's job (the CLI, the daemon's shadow
comparison). Layouts and the checksum are in ../shared/specs/kubelet-node.md §8:

- **v1** (every release up to 1.35): `policyName`, `machineState`, `entries`, `checksum`;
- **v2** (1.36 with `PodLevelResourceManagers`): v1 plus `podEntries`;
- **v3** (1.37): the v1 keys for rollback plus `data` (the JSON of the state, a string) and
  `dataChecksum`; `data` is authoritative and only `dataChecksum` is verified, as 1.37 does.

The v1/v2 checksum is FNV-1a 32 over the go-spew `%#v` rendering of the decoded Go struct with
`Checksum` zeroed (§8.3); `render_v1`/`render_v2` reproduce that text. A file without
`podEntries` may come from a v1 or a v2 writer (the JSON is the same, the hashed text is not), so
both renderings are tried, as a 1.36 kubelet reads both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from memstate.core.errors import InputError

Layout = Literal["v1", "v2", "v3"]
# The kubelet's Memory Manager policy names (`memoryManagerPolicy`).
KNOWN_POLICIES = ("None", "Static")

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_UINT64_MAX = 2**64 - 1
_INT_KEY = re.compile(r"-?[0-9]+")


class KubeletCheckpointError(InputError):
    """A `memory_manager_state` that cannot be used: malformed, a wrong checksum, an unknown
    policy. `source` names the file, `path` the field."""


class CheckpointBlock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One memory block: `{numaAffinity, type, size}`."""

    numa_affinity: tuple[int, ...]
    type: str
    size: int


class CheckpointContainer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The blocks of one container, in the kubelet's order."""

    name: str
    blocks: tuple[CheckpointBlock, ...]


class CheckpointPod(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pod's container assignments (`entries[uid]`), containers by name."""

    uid: str
    containers: tuple[CheckpointContainer, ...]


class CheckpointMemoryTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One `machineState[node].memoryMap[resource]` row."""

    numa_node: int
    resource: str
    total: int
    system_reserved: int
    allocatable: int
    reserved: int
    free: int


class KubeletCheckpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A verified checkpoint. `pods` by UID; `pod_entries` holds v2/v3 pod-level blocks (as
    pods with one container named "")."""

    layout: Layout
    policy_name: str
    checksum: int
    numa_nodes: tuple[int, ...]
    memory: tuple[CheckpointMemoryTable, ...]
    pods: tuple[CheckpointPod, ...]
    pod_entries: tuple[CheckpointPod, ...] = ()


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits (the kubelet checkpoint manager's hash)."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


# --- go-spew `%#v` rendering (kubelet-node.md §8.3) ---------------------------------------------
# `None` stands for a JSON null or a missing key that leaves a Go nil; the callers pass `{}` for the
# maps the kubelet pre-initialises.


def _render_ints(values: Any) -> str:
    if values is None:
        return "<nil>"
    return "[" + " ".join(str(v) for v in values) + "]"


def _render_map(
    entries: Mapping[Any, Any] | None, value: Callable[[Any], str], *, int_keys: bool = False
) -> str:
    if entries is None:
        return "<nil>"
    if int_keys:
        keys = sorted(entries, key=int)
    else:
        keys = sorted(entries, key=lambda k: k.encode())
    return "map[" + " ".join(f"{int(k) if int_keys else k}:{value(entries[k])}" for k in keys) + "]"


def _render_table(table: Mapping[str, int]) -> str:
    return (
        f"<*>{{TotalMemSize:(uint64){table.get('total', 0)} "
        f"SystemReserved:(uint64){table.get('systemReserved', 0)} "
        f"Allocatable:(uint64){table.get('allocatable', 0)} "
        f"Reserved:(uint64){table.get('reserved', 0)} "
        f"Free:(uint64){table.get('free', 0)}}}"
    )


def _render_node(node: Mapping[str, Any]) -> str:
    memory_map = _render_map(node.get("memoryMap"), _render_table)
    return (
        f"<*>{{NumberOfAssignments:(int){node.get('numberOfAssignments', 0)} "
        f"MemoryMap:(map[v1.ResourceName]*state.MemoryTable){memory_map} "
        f"Cells:([]int){_render_ints(node.get('cells'))}}}"
    )


def _render_block(block: Mapping[str, Any]) -> str:
    return (
        f"{{NUMAAffinity:([]int){_render_ints(block.get('numaAffinity'))} "
        f"Type:(v1.ResourceName){block.get('type', '')} "
        f"Size:(uint64){block.get('size', 0)}}}"
    )


def _render_blocks(blocks: Any) -> str:
    if blocks is None:
        return "<nil>"
    return "[" + " ".join(_render_block(b) for b in blocks) + "]"


def _render_entries(entries: Mapping[str, Any] | None) -> str:
    return _render_map(entries, lambda containers: _render_map(containers, _render_blocks))


def _render_pod_entries(entries: Mapping[str, Any] | None) -> str:
    return _render_map(
        entries,
        lambda entry: (
            f"{{MemoryBlocks:([]state.Block){_render_blocks(entry.get('memoryBlocks'))}}}"
        ),
    )


def render_v1(document: Mapping[str, Any]) -> str:
    """The text the kubelet hashes for a v1 checkpoint (`Checksum` zeroed)."""
    return (
        "(*state.MemoryManagerCheckpoint){"
        f"PolicyName:(string){document.get('policyName', '')} "
        f"MachineState:(state.NUMANodeMap){_render_map(_premade(document, 'machineState'), _render_node, int_keys=True)} "  # noqa: E501
        f"Entries:(state.ContainerMemoryAssignments){_render_entries(_premade(document, 'entries'))} "  # noqa: E501
        "Checksum:(checksum.Checksum)0}"
    )


def render_v2(document: Mapping[str, Any]) -> str:
    """The text the kubelet hashes for a v2 checkpoint (v1 plus `PodEntries`)."""
    v1 = render_v1(document)
    pod_entries = _render_pod_entries(_premade(document, "podEntries"))
    head, _, _ = v1.rpartition(" Checksum:")
    return f"{head} PodEntries:(state.PodMemoryAssignments){pod_entries} Checksum:(checksum.Checksum)0}}"  # noqa: E501


def _premade(document: Mapping[str, Any], key: str) -> Any:
    """A top-level map the kubelet creates before decoding: missing → empty, null → nil."""
    return document.get(key, {})


def checksum_v1(document: Mapping[str, Any]) -> int:
    """The v1 checksum of a decoded checkpoint document."""
    return fnv1a_32(render_v1(document).encode())


def checksum_v2(document: Mapping[str, Any]) -> int:
    """The v2 checksum of a decoded checkpoint document."""
    return fnv1a_32(render_v2(document).encode())


def data_checksum(data: str) -> int:
    """The v3 `dataChecksum` of the `data` string."""
    return fnv1a_32(b"(string)" + data.encode())


# --- parsing -------------------------------------------------------------------------------------


def parse_checkpoint(raw: bytes, *, source: str = "") -> KubeletCheckpoint:
    """Decode a `memory_manager_state` file's bytes and verify its checksum as the kubelet does.

    Raises `KubeletCheckpointError` (exit 65) naming `source`, the field and the reason:
    malformed JSON or fields, a checksum that does not match, an unknown policy name.
    """

    def fail(message: str, path: str = "") -> KubeletCheckpointError:
        return KubeletCheckpointError(message, source=source, path=path)

    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise fail(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise fail("not a JSON object")
    if "data" in document or "dataChecksum" in document:
        return _parse_v3(document, fail)
    stored = _uint(document.get("checksum"), "$.checksum", fail, required=True)
    _check_shape(document, "$", fail)  # before rendering: the renderer trusts the shape
    layouts: list[tuple[Layout, int]] = []
    if "podEntries" not in document:
        layouts.append(("v1", checksum_v1(document)))
    layouts.append(("v2", checksum_v2(document)))
    for layout, computed in layouts:
        if computed == stored:
            return _typed(document, layout, stored, "$", fail)
    expected = " or ".join(f"{computed} ({layout})" for layout, computed in layouts)
    raise fail(
        f"checksum mismatch: the file says {stored}, its content hashes to {expected}; the "
        "kubelet would refuse this checkpoint as corrupted",
        "$.checksum",
    )


def _parse_v3(
    document: dict[str, Any], fail: Callable[..., KubeletCheckpointError]
) -> KubeletCheckpoint:
    data = document.get("data")
    if not isinstance(data, str):
        raise fail("data must be a string holding the state's JSON", "$.data")
    stored = _uint(document.get("dataChecksum"), "$.dataChecksum", fail, required=True)
    computed = data_checksum(data)
    if computed != stored:
        raise fail(
            f"checksum mismatch: the file says {stored}, its data hashes to {computed}; the "
            "kubelet would refuse this checkpoint as corrupted",
            "$.dataChecksum",
        )
    try:
        inner = msgspec.json.decode(data.encode())
    except msgspec.DecodeError as exc:
        raise fail(f"not JSON: {exc}", "$.data") from None
    if not isinstance(inner, dict):
        raise fail("not a JSON object", "$.data")
    _check_shape(inner, "$.data", fail)
    return _typed(inner, "v3", stored, "$.data", fail)


def _uint(
    value: Any,
    path: str,
    fail: Callable[..., KubeletCheckpointError],
    *,
    required: bool = False,
    bits: int = 64,
) -> int:
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise fail(f"must be an unsigned {bits}-bit integer, not {value!r}", path)
    return value


def _check_shape(
    document: Mapping[str, Any], at: str, fail: Callable[..., KubeletCheckpointError]
) -> None:
    """Types the Go decoder would insist on (it would fail to decode otherwise)."""
    if not isinstance(document.get("policyName", ""), str):
        raise fail("must be a string", f"{at}.policyName")
    machine = document.get("machineState")
    if machine is not None and not isinstance(machine, dict):
        raise fail("must be an object", f"{at}.machineState")
    for key, node in (machine or {}).items():
        where = f"{at}.machineState.{key}"
        if not _INT_KEY.fullmatch(key):
            raise fail("NUMA node ids must be integers", where)
        if not isinstance(node, dict):
            raise fail("must be an object (a null node state is not supported)", where)
        _uint(node.get("numberOfAssignments"), f"{where}.numberOfAssignments", fail, bits=63)
        _ints(node.get("cells"), f"{where}.cells", fail)
        memory_map = node.get("memoryMap")
        if memory_map is not None and not isinstance(memory_map, dict):
            raise fail("must be an object", f"{where}.memoryMap")
        for resource, table in (memory_map or {}).items():
            if not isinstance(table, dict):
                raise fail("must be an object", f"{where}.memoryMap.{resource}")
            for name in ("total", "systemReserved", "allocatable", "reserved", "free"):
                _uint(table.get(name), f"{where}.memoryMap.{resource}.{name}", fail)
    entries = document.get("entries")
    if entries is not None and not isinstance(entries, dict):
        raise fail("must be an object", f"{at}.entries")
    for uid, containers in (entries or {}).items():
        if containers is not None and not isinstance(containers, dict):
            raise fail("must be an object", f"{at}.entries.{uid}")
        for name, blocks in (containers or {}).items():
            _blocks(blocks, f"{at}.entries.{uid}.{name}", fail)
    pod_entries = document.get("podEntries")
    if pod_entries is not None and not isinstance(pod_entries, dict):
        raise fail("must be an object", f"{at}.podEntries")
    for uid, entry in (pod_entries or {}).items():
        if not isinstance(entry, dict):
            raise fail("must be an object", f"{at}.podEntries.{uid}")
        _blocks(entry.get("memoryBlocks"), f"{at}.podEntries.{uid}.memoryBlocks", fail)


def _ints(value: Any, path: str, fail: Callable[..., KubeletCheckpointError]) -> None:
    if value is None:
        return
    if not isinstance(value, list) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in value
    ):
        raise fail("must be a list of integers", path)


def _blocks(value: Any, path: str, fail: Callable[..., KubeletCheckpointError]) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise fail("must be a list of blocks", path)
    for index, block in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(block, dict):
            raise fail("must be an object", where)
        _ints(block.get("numaAffinity"), f"{where}.numaAffinity", fail)
        if not isinstance(block.get("type", ""), str):
            raise fail("must be a string", f"{where}.type")
        _uint(block.get("size"), f"{where}.size", fail)


def _typed(
    document: Mapping[str, Any],
    layout: Layout,
    checksum: int,
    at: str,
    fail: Callable[..., KubeletCheckpointError],
) -> KubeletCheckpoint:
    policy = document.get("policyName", "")
    if policy not in KNOWN_POLICIES:
        raise fail(
            f"unknown policy name {policy!r}; the kubelet's Memory Manager policies are "
            + " and ".join(KNOWN_POLICIES),
            f"{at}.policyName",
        )
    machine: Mapping[str, Any] = document.get("machineState") or {}
    tables = [
        CheckpointMemoryTable(
            numa_node=int(key),
            resource=resource,
            total=table.get("total", 0),
            system_reserved=table.get("systemReserved", 0),
            allocatable=table.get("allocatable", 0),
            reserved=table.get("reserved", 0),
            free=table.get("free", 0),
        )
        for key, node in machine.items()
        for resource, table in (node.get("memoryMap") or {}).items()
    ]
    tables.sort(key=lambda t: (t.numa_node, t.resource))
    entries: Mapping[str, Any] = document.get("entries") or {}
    pods = tuple(
        CheckpointPod(
            uid=uid,
            containers=tuple(
                CheckpointContainer(name=name, blocks=_typed_blocks(blocks))
                for name, blocks in sorted((entries[uid] or {}).items())
            ),
        )
        for uid in sorted(entries)
    )
    pod_level: Mapping[str, Any] = document.get("podEntries") or {}
    pod_entries = tuple(
        CheckpointPod(
            uid=uid,
            containers=(
                CheckpointContainer(
                    name="", blocks=_typed_blocks(pod_level[uid].get("memoryBlocks"))
                ),
            ),
        )
        for uid in sorted(pod_level)
    )
    return KubeletCheckpoint(
        layout=layout,
        policy_name=policy,
        checksum=checksum,
        numa_nodes=tuple(sorted(int(k) for k in machine)),
        memory=tuple(tables),
        pods=pods,
        pod_entries=pod_entries,
    )


def _typed_blocks(blocks: Any) -> tuple[CheckpointBlock, ...]:
    return tuple(
        CheckpointBlock(
            numa_affinity=tuple(b.get("numaAffinity") or ()),
            type=b.get("type", ""),
            size=b.get("size", 0),
        )
        for b in blocks or ()
    )
