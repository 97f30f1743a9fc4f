"""A structural, readable diff of two `State`s: per pod, per NUMA node, per field.

Replay and bisect show it at a divergence: the state the recorded decisions led to against the
one this build's decisions lead to (or two logs' states at the same point). A hash only says
*that* two states differ; this says *where*, in the vocabulary of `memstate state show`.

Method: both states become plain builtins (`msgspec.to_builtins`), then one recursive walk
compares them. Lists of records that have an identity are compared by that identity, not by
position, so one pod moving from node 0 to node 1 reads as two changed takes rather than a
shifted list:

| list | keyed by |
|---|---|
| `machine.nodes`, `topology.nodes` | `id` (shown as `NUMA 0`) |
| `allocation.takes` | NUMA node and resource (`node 1 memory`) |
| `containers` (spec and allocation) | container name |
| `blocks` | resource type and mask (`memory on [0, 1]`) |
| `hugepages` | page size |
| `reserved_memory` | NUMA node and resource |

Every change is attributed to a *section* (`machine`, `pods`, `rejections`, `deferred`,
`topology`, `config`, `counters`, ...) and a *subject* inside it (`NUMA 1 memory`,
`pod db-1 (prod/db)`), so the rendering groups what belongs together:

    machine
      NUMA 0
        memory.reserved: 3Gi → 3008Mi (-64Mi)
    pods
      pod zz-1 (ops/trigger)
        allocation.takes[node 0 memory]: only in recorded: node 0 memory 64Mi
 A pod or rejection present
on one side only is one change whose other side is `MISSING`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from memstate.core.state import State


class _Missing:
    """The value on the side where something does not exist."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# Fields that hold byte counts: rendered as 1.5Gi in tables (exact integers in JSON).
_BYTE_FIELDS = frozenset(
    {
        "total",
        "system_reserved",
        "allocatable",
        "reserved",
        "free",
        "size",
        "size_bytes",
        "memory_bytes",
        "memory",
        "page_size_bytes",
    }
)


@dataclass(frozen=True)
class Change:
    """One difference: `field` of `subject` in `section` is `before` on one side, `after` on
    the other (`MISSING` where it does not exist)."""

    section: str
    subject: str
    field: str
    before: Any
    after: Any


def _label_node(item: dict[str, Any]) -> str:
    return str(item.get("id"))


def _label_take(item: dict[str, Any]) -> str:
    return f"node {item.get('numa_node')} {item.get('resource')}"


def _label_named(item: dict[str, Any]) -> str:
    return str(item.get("name"))


def _label_block(item: dict[str, Any]) -> str:
    return f"{item.get('type')} on {list(item.get('numa_affinity') or ())}"


def _label_hugepages(item: dict[str, Any]) -> str:
    return f"{item.get('page_size_bytes')}B pages"


def _label_reservation(item: dict[str, Any]) -> str:
    return f"node {item.get('numa_node')} {item.get('resource')}"


# Which lists are keyed, by the name of the field that holds them.
_KEYED_LISTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "nodes": _label_node,
    "takes": _label_take,
    "containers": _label_named,
    "blocks": _label_block,
    "hugepages": _label_hugepages,
    "reserved_memory": _label_reservation,
}


def diff_states(before: State, after: State) -> list[Change]:
    """Every difference between two states, grouped by section and subject, in a stable order."""
    if before == after:
        return []
    # Builtins keep tuples as tuples; the walk treats them as lists.
    left = msgspec.to_builtins(before, order="sorted")
    right = msgspec.to_builtins(after, order="sorted")
    raw: list[tuple[list[str], Any, Any]] = []
    _walk([], left, right, raw)
    return [_attribute(path, a, b, left, right) for path, a, b in raw]


def _walk(path: list[str], a: Any, b: Any, out: list[tuple[list[str], Any, Any]]) -> None:
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            _walk([*path, str(key)], a.get(key, MISSING), b.get(key, MISSING), out)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        labeller = _KEYED_LISTS.get(path[-1]) if path else None
        if labeller is not None and all(isinstance(x, dict) for x in (*a, *b)):
            keyed_a = {labeller(x): x for x in a}
            keyed_b = {labeller(x): x for x in b}
            if len(keyed_a) == len(a) and len(keyed_b) == len(b):  # labels are unique
                for label in sorted(set(keyed_a) | set(keyed_b)):
                    _walk(
                        [*path, f"[{label}]"],
                        keyed_a.get(label, MISSING),
                        keyed_b.get(label, MISSING),
                        out,
                    )
                return
        if len(a) == len(b) and any(isinstance(x, (dict, list)) for x in a):
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                _walk([*path, f"[{index}]"], x, y, out)
            return
    out.append((path, a, b))


def _pod_label(uid: str, *sides: dict[str, Any]) -> str:
    for side in sides:
        record = side.get("pods", {}).get(uid) or side.get("deferred", {}).get(uid)
        if isinstance(record, dict):
            pod = record.get("pod", {})
            return f"pod {uid} ({pod.get('namespace')}/{pod.get('name')})"
    return f"pod {uid}"


def _attribute(
    path: list[str], before: Any, after: Any, left: dict[str, Any], right: dict[str, Any]
) -> Change:
    section = path[0] if path else "state"
    rest = path[1:]
    subject = ""
    if section == "machine" and len(rest) >= 2 and rest[0] == "nodes":
        subject = f"NUMA {rest[1].strip('[]')}"
        rest = rest[2:]
        if rest and rest[0] == "memory_map":
            rest = rest[1:]  # `memory.free`, `hugepages-2Mi.reserved`
    elif section in ("pods", "deferred") and rest:
        subject = _pod_label(rest[0], left, right)
        rest = rest[1:]
    elif section == "rejections" and rest:
        subject = f"rejection {rest[0]}"
        rest = rest[1:]
    return Change(section=section, subject=subject, field=_join(rest), before=before, after=after)


def _join(path: list[str]) -> str:
    """`allocation.containers[app].blocks[memory on [0]]`: keyed elements in brackets."""
    text = ""
    for part in path:
        text += part if part.startswith("[") or not text else "." + part
    return text


# --- rendering ------------------------------------------------------------------------------------


def exact_bytes(size_bytes: int) -> str:
    """`3008Mi`, `64Ki`, `1000`: the largest binary unit that divides exactly, never rounded
    (a diff must not show two different sizes as the same text)."""
    for shift, suffix in ((40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")):
        if size_bytes and size_bytes % (1 << shift) == 0:
            return f"{size_bytes >> shift}{suffix}"
    return str(size_bytes)


def _is_bytes(field: str) -> bool:
    return field.rsplit(".", 1)[-1].split("[", 1)[0] in _BYTE_FIELDS


def _value_text(field: str, value: Any) -> str:
    if value is MISSING:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int) and _is_bytes(field):
        return exact_bytes(value)
    if isinstance(value, dict):
        return _summary(value)
    return msgspec.json.encode(value).decode() if not isinstance(value, str) else value


def _change_text(change: Change) -> str:
    text = f"{_value_text(change.field, change.before)} → {_value_text(change.field, change.after)}"
    before, after = change.before, change.after
    if (
        isinstance(before, int)
        and isinstance(after, int)
        and not isinstance(before, bool)
        and not isinstance(after, bool)
    ):
        delta = after - before
        shown = exact_bytes(abs(delta)) if _is_bytes(change.field) else str(abs(delta))
        text += f" ({'+' if delta > 0 else '-'}{shown})"
    return text


def _summary(record: dict[str, Any]) -> str:
    """A one-line summary of a whole record that exists on one side only."""
    if {"numa_node", "resource", "size_bytes"} <= record.keys():
        return (
            f"node {record['numa_node']} {record['resource']} {exact_bytes(record['size_bytes'])}"
        )
    if {"numa_affinity", "type", "size"} <= record.keys():
        return f"{record['type']} {exact_bytes(record['size'])} on {list(record['numa_affinity'])}"
    pod = record.get("pod")
    if isinstance(pod, dict):
        allocation = record.get("allocation") or {}
        takes = allocation.get("takes") or []
        held = ", ".join(
            f"node {t['numa_node']} {t['resource']} {exact_bytes(t['size_bytes'])}" for t in takes
        )
        status = record.get("status", "")
        return f"{record.get('qos_class', '')} {status} {held or 'not pinned'}".strip()
    if "reason" in record:
        return f"{record['reason']}: {record.get('message', '')}"
    return msgspec.json.encode(record).decode()


def render_diff(
    changes: Iterable[Change], *, labels: tuple[str, str] = ("recorded", "derived")
) -> list[str]:
    """Readable lines, grouped by section and subject: `field: before → after`."""
    lines: list[str] = []
    section = subject = None
    for change in changes:
        if change.section != section:
            section, subject = change.section, None
            lines.append(change.section)
        if change.subject != subject:
            subject = change.subject
            if subject:
                lines.append(f"  {subject}")
        indent = "    " if change.subject else "  "
        if change.before is MISSING or change.after is MISSING:
            side = labels[0] if change.after is MISSING else labels[1]
            value = change.before if change.after is MISSING else change.after
            name = f"{change.field}: " if change.field else ""
            lines.append(f"{indent}{name}only in {side}: {_value_text(change.field, value)}")
            continue
        lines.append(f"{indent}{change.field or '(value)'}: {_change_text(change)}")
    return lines


def diff_document(
    changes: Iterable[Change], *, labels: tuple[str, str] = ("recorded", "derived")
) -> list[dict[str, Any]]:
    """JSON form: one object per change, the two sides under `labels` (absent side: null and
    `only_in` names the side that has it)."""
    documents = []
    for change in changes:
        document: dict[str, Any] = {
            "section": change.section,
            "subject": change.subject,
            "field": change.field,
            labels[0]: None if change.before is MISSING else change.before,
            labels[1]: None if change.after is MISSING else change.after,
        }
        if change.before is MISSING:
            document["only_in"] = labels[1]
        elif change.after is MISSING:
            document["only_in"] = labels[0]
        documents.append(document)
    return documents
