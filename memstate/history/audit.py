"""Audit: answer questions about a node's allocation history from its log, streaming.

Theory of operation
-------------------
Every query walks the log once, forward, with the replay engine in `recorded` mode
(`memstate.history.replay.transitions`): recorded decisions are applied verbatim (audit
reports what the node *did*; `memstate replay` is the tool that questions it), and decisions are
derived only for inputs that record none (hand-written scenarios). The walk holds the current
state and whatever small summary the query keeps — never the list of states, never the whole log:

- `pod_history` / `pod_rows` keep the UIDs a name stood for (and the rows about that pod):
  every event that touched the pod, with the allocation, cgroup targets or rejection reason;
- `state_at` + `numa_holdings` keep one state: who held how many bytes of each resource on a
  NUMA node at a seq or a time;
- `rejection_summary` keeps one group per reason (or per pod and reason): why pods were
  rejected, how often, the latest message;
- `timeline` keeps nothing: admissions, rejections, removals, reconfigurations, restarts;
- `export_records` keeps the recording daemon's name and version: one flat record per log
  record (`ExportRecord`; docs/audit.md has the schema);
- `plot_data` keeps a bounded step series per NUMA node and the heaviest pod spans.

Records are seen as `Item`s: an input or note (index 0) and its decisions (index 1..n), each
with its own seq (a derived decision has none; it reports its input's seq). Times are UTC
nanoseconds; renderers print them as ISO 8601 with a `Z`.

Pods are named by UID, by name, or by `namespace/name`. Names are mapped to UIDs while scanning
(a pod recreated under the same name gets a new UID, and removals carry only the UID), so a name
query follows every incarnation of the pod.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from memstate.core.events import (
    DaemonRestarted,
    DaemonStarted,
    Event,
    NodeReconfigured,
    PodAdmissionRequested,
    PodAdmitted,
    PodRejected,
    PodRemoved,
    ReadmissionDeferred,
    pod_uid_of,
)
from memstate.core.pod import Pod, pod_limit, pod_request
from memstate.core.state import State
from memstate.core.topology import MEMORY, is_hugepage_resource
from memstate.history.replay import LogSource, Transition, starting_point, transitions
from memstate.present.output import format_ts
from memstate.present.views import describe_event, holders_by_numa

EXPORT_VERSION = 1


@dataclass(frozen=True)
class Item:
    """One record as audit sees it: an input or note (`index` 0) or one of its decisions."""

    seq: int  # the record's own seq; a derived decision reports its input's
    input_seq: int
    index: int
    ts_ns: int
    event: Event
    derived: bool  # a decision this build derived (the source recorded none)


def items_of(transition: Transition) -> list[Item]:
    """The input (or note) and its decisions, in log order."""
    record = transition.record
    found = [Item(record.seq, record.seq, 0, record.ts_ns, record.event, False)]
    if transition.recorded is not None:
        found.extend(
            Item(e.seq, record.seq, i, e.ts_ns, e.event, False)
            for i, e in enumerate(transition.recorded, start=1)
        )
    else:
        found.extend(
            Item(record.seq, record.seq, i, record.ts_ns, d, True)
            for i, d in enumerate(transition.derived, start=1)
        )
    return found


def history(source: LogSource) -> Iterator[Transition]:
    """The log's transitions with the recorded decisions applied (derived where none are).
    A pruned log starts after its oldest usable checkpoint (what precedes it is gone)."""
    state, after_seq, _ = starting_point(source)
    return transitions(source.envelopes(after_seq + 1), state=state, mode="recorded")


@dataclass(frozen=True)
class Window:
    """`--since` / `--until` (inclusive, UTC nanoseconds) and `--kind`."""

    since_ns: int | None = None
    until_ns: int | None = None
    kinds: frozenset[str] | None = None

    def covers(self, ts_ns: int) -> bool:
        """Whether a time is inside the window (records are filtered, never cut off early:
        a clock stepped back between two daemon starts leaves the log out of time order)."""
        if self.since_ns is not None and ts_ns < self.since_ns:
            return False
        return self.until_ns is None or ts_ns <= self.until_ns

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        return (self.since_ns is None or end_ns >= self.since_ns) and (
            self.until_ns is None or start_ns <= self.until_ns
        )

    def admits(self, item: Item) -> bool:
        if self.since_ns is not None and item.ts_ns < self.since_ns:
            return False
        if self.until_ns is not None and item.ts_ns > self.until_ns:
            return False
        return self.kinds is None or item.event.kind in self.kinds


class PodSelector:
    """`UID`, `NAME` or `NAMESPACE/NAME`, learning the UIDs a name stands for as it scans."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        namespace, slash, name = spec.partition("/")
        self.namespace: str | None = namespace if slash else None
        self.name = name if slash else spec
        self.uids: list[str] = []

    def _names_match(self, namespace: str, name: str) -> bool:
        if self.namespace is None:
            return name == self.name
        return (namespace, name) == (self.namespace, self.name)

    def learn(self, event: Event) -> None:
        """Remember the UID of a pod spec or rejection that carries the wanted name."""
        pod = _pod_of(event)
        if pod is not None and self._names_match(pod.namespace, pod.name):
            self._add(pod.uid)
        elif (
            isinstance(event, PodRejected)
            and event.uid
            and self._names_match(event.namespace, event.name)
        ):
            self._add(event.uid)

    def _add(self, uid: str) -> None:
        if uid and uid not in self.uids:
            self.uids.append(uid)

    def matches_uid(self, uid: str) -> bool:
        if not uid:
            return False
        return (self.namespace is None and uid == self.spec) or uid in self.uids

    def matches(self, event: Event) -> bool:
        """Whether `event` is about the selected pod (call `learn` first)."""
        if self.matches_uid(pod_uid_of(event)):
            return True
        if isinstance(event, NodeReconfigured):
            return any(self.matches_uid(r.uid) for r in event.revoked)
        return False


def _pod_of(event: Event) -> Pod | None:
    if isinstance(event, (PodAdmissionRequested, PodAdmitted, ReadmissionDeferred)):
        return event.pod
    return None


def _detail(event: Event, selector: PodSelector | None) -> str:
    if isinstance(event, NodeReconfigured) and selector is not None:
        revoked = [r for r in event.revoked if selector.matches_uid(r.uid)]
        if revoked:
            return "; ".join(f"allocation revoked: {r.reason}: {r.message}" for r in revoked)
    if isinstance(event, DaemonRestarted) and selector is not None:
        return "daemon restarted: the pod awaits readmission and keeps its memory"
    return describe_event(event)


def item_document(item: Item, selector: PodSelector | None = None) -> dict[str, Any]:
    """One record for audit output: where and when, what, and the decided facts."""
    event = item.event
    pod = _pod_of(event)
    document: dict[str, Any] = {
        "seq": item.seq,
        "input_seq": item.input_seq,
        "ts": format_ts(item.ts_ns),
        "kind": event.kind,
        "role": event.role,
        "derived": item.derived,
        "uid": (pod.uid if pod else pod_uid_of(event)) or None,
        "pod": pod.key if pod else _rejected_key(event),
        "detail": _detail(event, selector),
    }
    if isinstance(event, PodAdmitted):
        allocation = event.allocation
        document["restored"] = event.restored
        document["qos_class"] = event.qos_class
        document["numa_nodes"] = list(allocation.numa_nodes) if allocation else []
        document["takes"] = [msgspec.to_builtins(t) for t in allocation.takes] if allocation else []
        document["containers"] = [
            {
                "name": c.name,
                "blocks": [msgspec.to_builtins(b) for b in c.blocks],
            }
            for c in (allocation.containers if allocation else ())
        ]
        targets = event.targets
        document["cgroup"] = targets.cgroup if targets else None
        document["cgroup_files"] = dict(sorted(targets.files.items())) if targets else {}
        document["container_files"] = (
            {c.name: dict(sorted(c.files.items())) for c in targets.containers} if targets else {}
        )
    elif isinstance(event, PodRejected):
        document["reason"] = event.reason
        document["message"] = event.message
    elif isinstance(event, (PodRemoved, ReadmissionDeferred)):
        document["reason"] = event.reason
    elif isinstance(event, NodeReconfigured) and selector is not None:
        revoked = [r for r in event.revoked if selector.matches_uid(r.uid)]
        if revoked:
            document["reason"] = revoked[0].reason
            document["message"] = revoked[0].message
    return document


def _rejected_key(event: Event) -> str | None:
    if isinstance(event, PodRejected) and event.name:
        return f"{event.namespace}/{event.name}"
    return None


# --- pod ------------------------------------------------------------------------------------------


@dataclass
class PodHistory:
    """What `pod_history` found: the rows (already filtered) and the pod's state at the end."""

    selector: PodSelector
    rows: list[dict[str, Any]] = field(default_factory=list)
    final: list[dict[str, Any]] = field(default_factory=list)
    last_seq: int = 0


def _touching(transition: Transition, selector: PodSelector, window: Window) -> list[Item]:
    """The records of one transition that touched the selected pod. A restart touches every
    pod admitted at that moment (each must be readmitted); `readmission_completed` touches the
    pods its decisions remove or admit."""
    found = []
    for item in items_of(transition):
        selector.learn(item.event)
        if isinstance(item.event, DaemonRestarted):
            touched = any(selector.matches_uid(uid) for uid in transition.before.pods)
        else:
            touched = selector.matches(item.event)
        if touched and window.admits(item):
            found.append(item)
    return found


def pod_rows(source: LogSource, selector: PodSelector, window: Window) -> Iterator[dict[str, Any]]:
    """Every record that touched the pod, in log order. Streams (`-o jsonl` keeps nothing)."""
    for transition in history(source):
        for item in _touching(transition, selector, window):
            yield item_document(item, selector)


def pod_history(source: LogSource, selector: PodSelector, window: Window) -> PodHistory:
    """`pod_rows` collected, plus where the pod stands at the end of the log."""
    result = PodHistory(selector=selector)
    state = State()
    for transition in history(source):
        state = transition.after
        result.last_seq = transition.last_seq
        result.rows.extend(
            item_document(item, selector) for item in _touching(transition, selector, window)
        )
    for uid in selector.uids or ([selector.spec] if selector.namespace is None else []):
        record = state.pods.get(uid)
        rejection = state.rejections.get(uid)
        if record is None and rejection is None and uid not in state.deferred:
            continue
        allocation = record.allocation if record else None
        result.final.append(
            {
                "uid": uid,
                "status": record.status
                if record
                else ("deferred" if uid in state.deferred else "rejected"),
                "numa_nodes": list(allocation.numa_nodes) if allocation else [],
                "takes": [msgspec.to_builtins(t) for t in allocation.takes] if allocation else [],
                "rejection": {"reason": rejection.reason, "message": rejection.message}
                if rejection
                else None,
            }
        )
    return result


# --- numa -----------------------------------------------------------------------------------------


@dataclass
class PointInTime:
    """The state at a point of the log: after `seq`, stamped `ts_ns`."""

    state: State
    seq: int
    ts_ns: int | None


def state_at(source: LogSource, *, seq: int | None = None, at_ns: int | None = None) -> PointInTime:
    """The state after the transaction holding `seq`, or after every input stamped up to
    `at_ns`, or at the end. Streams; keeps one state."""
    point = PointInTime(state=State(), seq=0, ts_ns=None)
    for transition in history(source):
        if seq is not None and transition.record.seq > seq:
            break
        if at_ns is not None and transition.record.ts_ns > at_ns:
            break
        point = PointInTime(transition.after, transition.last_seq, transition.record.ts_ns)
    return point


def numa_holdings(point: PointInTime, numa_node: int) -> dict[str, Any]:
    """Per resource on `numa_node`: who holds how many bytes (from their exact takes), the
    total they hold, and the node's memory table (allocatable, reserved, free). `held` equals
    `reserved` by the reducer's invariants; both are shown so a reader can see it."""
    state = point.state
    try:
        node = state.machine.node(numa_node)
    except KeyError:
        known = ", ".join(str(n) for n in state.machine.node_ids) or "none yet"
        raise LookupError(
            f"NUMA node {numa_node} is not in the node map (nodes: {known})"
        ) from None
    holders = holders_by_numa(state, numa_node)
    resources = {}
    for resource, table in sorted(node.memory_map.items()):
        if table.total == 0 and resource != MEMORY and resource not in holders:
            continue
        rows = holders.get(resource, [])
        resources[resource] = {
            "total": table.total,
            "system_reserved": table.system_reserved,
            "allocatable": table.allocatable,
            "reserved": table.reserved,
            "free": table.free,
            "held": sum(row["size_bytes"] for row in rows),
            "holders": rows,
        }
    return {
        "numa_node": numa_node,
        "seq": point.seq,
        "ts": format_ts(point.ts_ns) if point.ts_ns is not None else None,
        "cells": list(node.cells),
        "number_of_assignments": node.number_of_assignments,
        "resources": resources,
    }


# --- rejections -----------------------------------------------------------------------------------


@dataclass
class RejectionGroup:
    reason: str
    pod: str | None  # `namespace/name` (or the manifest) when grouped per pod
    count: int = 0
    uids: set[str] = field(default_factory=set)
    first_seq: int = 0
    last_seq: int = 0
    last_ts_ns: int = 0
    last_pod: str = ""
    last_message: str = ""

    def document(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "pod": self.pod,
            "count": self.count,
            "pods": len(self.uids),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_ts": format_ts(self.last_ts_ns),
            "last_pod": self.last_pod,
            "last_message": self.last_message,
        }


def rejection_summary(
    source: LogSource,
    window: Window,
    *,
    selector: PodSelector | None = None,
    by_pod: bool = False,
) -> list[dict[str, Any]]:
    """Rejections grouped by reason (or by pod and reason): counts, distinct pods, the latest
    message. Most frequent first."""
    groups: dict[tuple[str, str | None], RejectionGroup] = {}
    for transition in history(source):
        for item in items_of(transition):
            event = item.event
            if selector is not None:
                selector.learn(event)
            if not isinstance(event, PodRejected) or not window.admits(item):
                continue
            if selector is not None and not selector.matches(event):
                continue
            who = f"{event.namespace}/{event.name}" if event.name else (event.source or "?")
            key = (event.reason, who if by_pod else None)
            group = groups.get(key)
            if group is None:
                group = groups[key] = RejectionGroup(event.reason, key[1], first_seq=item.seq)
            group.count += 1
            group.uids.add(event.uid or event.source)
            group.last_seq, group.last_ts_ns = item.seq, item.ts_ns
            group.last_pod, group.last_message = who, event.message
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.reason, g.pod or ""))
    return [g.document() for g in ordered]


# --- timeline -------------------------------------------------------------------------------------

TIMELINE_KINDS = frozenset(
    {
        "daemon_started",
        "daemon_restarted",
        "readmission_completed",
        "pod_admitted",
        "pod_rejected",
        "pod_removed",
        "readmission_deferred",
        "node_reconfigured",
        "node_reconfiguration_deferred",
        "config_rejected",
        "log_tail_truncated",
    }
)


def timeline(
    source: LogSource, window: Window, *, selector: PodSelector | None = None
) -> Iterator[dict[str, Any]]:
    """Admissions, rejections, removals, deferrals, reconfigurations and restarts in log
    order (`window.kinds` replaces the default set). Streams."""
    kinds = window.kinds if window.kinds is not None else TIMELINE_KINDS
    chosen = Window(window.since_ns, window.until_ns, kinds)
    for transition in history(source):
        for item in items_of(transition):
            if selector is not None:
                selector.learn(item.event)
                if not selector.matches(item.event):
                    continue
            if chosen.admits(item):
                yield item_document(item, selector)


# --- export ---------------------------------------------------------------------------------------


class ExportTake(msgspec.Struct, frozen=True):
    numa_node: int
    resource: str
    size_bytes: int


class ExportRevocation(msgspec.Struct, frozen=True):
    uid: str
    reason: str


class ExportRecord(msgspec.Struct, frozen=True):
    """One line of `memstate audit export` (schema version `EXPORT_VERSION`; docs/audit.md).

    Every key is always present (no omitted defaults), so engines infer one schema: strings are
    "" and numbers 0 when they do not apply, lists are empty."""

    export_v: int
    node: str
    seq: int
    input_seq: int
    decision_index: int
    derived: bool
    ts: str
    ts_ns: int
    kind: str
    role: str
    pod_uid: str
    pod_namespace: str
    pod_name: str
    source: str
    qos_class: str
    reason: str
    message: str
    restored: bool
    numa_nodes: list[int]
    memory_bytes: int
    hugepages_bytes: int
    takes: list[ExportTake]
    request_memory_bytes: int
    limit_memory_bytes: int
    cgroup: str
    memory_min: str
    memory_low: str
    memory_high: str
    memory_max: str
    revoked: list[ExportRevocation]
    memstate_version: str
    reducer_version: int


# The node name of an export whose log names no host and no --node was given.
UNKNOWN_NODE = "unknown"


def export_records(
    source: LogSource,
    window: Window,
    *,
    selector: PodSelector | None = None,
    node: str | None = None,
    default_node: str = UNKNOWN_NODE,
    from_seq: int = 1,
    to_seq: int | None = None,
) -> Iterator[ExportRecord]:
    """Every record as one flat `ExportRecord`. Streams. The node's name is never empty (one
    node must not show up under two names in a table of many): `node` if given; else the
    hostname of the latest `daemon_started` that names one, and before it (the records a log
    starts with, or a pruned log's first segments) the first hostname the log names; in a log
    that names none (a scenario, a log from a build that did not record it), `default_node`."""
    started: DaemonStarted | None = None
    name = node or first_hostname(source) or default_node or UNKNOWN_NODE
    for transition in history(source):
        if to_seq is not None and transition.record.seq > to_seq:
            return
        if isinstance(transition.record.event, DaemonStarted):
            started = transition.record.event
            if started.hostname and not node:
                name = started.hostname
        for item in items_of(transition):
            if selector is not None:
                selector.learn(item.event)
                if not selector.matches(item.event):
                    continue
            if item.seq < from_seq or not window.admits(item):
                continue
            yield _export_record(item, started, name)


def first_hostname(source: LogSource) -> str | None:
    """The hostname of the first `daemon_started` that names one. Reads until it finds it
    (normally the first record), the whole log if none names a host."""
    for envelope in source.envelopes():
        event = envelope.event
        if isinstance(event, DaemonStarted) and event.hostname:
            return event.hostname
    return None


def _export_record(item: Item, started: DaemonStarted | None, node: str) -> ExportRecord:
    event = item.event
    pod = _pod_of(event)
    uid = pod.uid if pod else pod_uid_of(event)
    namespace = pod.namespace if pod else str(getattr(event, "namespace", ""))
    name = pod.name if pod else str(getattr(event, "name", ""))
    takes: list[ExportTake] = []
    numa: list[int] = []
    files: dict[str, str] = {}
    cgroup = qos = ""
    restored = False
    if isinstance(event, PodAdmitted):
        qos, restored = event.qos_class, event.restored
        if event.allocation is not None:
            numa = list(event.allocation.numa_nodes)
            takes = [
                ExportTake(t.numa_node, t.resource, t.size_bytes) for t in event.allocation.takes
            ]
        if event.targets is not None:
            cgroup, files = event.targets.cgroup, dict(event.targets.files)
    revoked: list[ExportRevocation] = []
    if isinstance(event, NodeReconfigured):
        revoked = [ExportRevocation(r.uid, r.reason) for r in event.revoked]
    limit = pod_limit(pod, MEMORY) if pod else None
    return ExportRecord(
        export_v=EXPORT_VERSION,
        node=node,
        seq=item.seq,
        input_seq=item.input_seq,
        decision_index=item.index,
        derived=item.derived,
        ts=format_ts(item.ts_ns),
        ts_ns=item.ts_ns,
        kind=event.kind,
        role=event.role,
        pod_uid=uid,
        pod_namespace=namespace,
        pod_name=name,
        source=str(getattr(event, "source", "")),
        qos_class=qos,
        reason=str(getattr(event, "reason", "")),
        message=str(getattr(event, "message", "")),
        restored=restored,
        numa_nodes=numa,
        memory_bytes=sum(t.size_bytes for t in takes if t.resource == MEMORY),
        hugepages_bytes=sum(t.size_bytes for t in takes if is_hugepage_resource(t.resource)),
        takes=takes,
        request_memory_bytes=pod_request(pod, MEMORY) if pod else 0,
        limit_memory_bytes=limit or 0,
        cgroup=cgroup,
        memory_min=files.get("memory.min", ""),
        memory_low=files.get("memory.low", ""),
        memory_high=files.get("memory.high", ""),
        memory_max=files.get("memory.max", ""),
        revoked=revoked,
        memstate_version=started.memstate_version if started else "",
        reducer_version=started.reducer_version if started else 0,
    )


# --- plot -----------------------------------------------------------------------------------------


@dataclass(order=True)
class PodSpan:
    """A pinned pod's stay on its NUMA nodes: admitted at `start_ns`, gone at `end_ns`."""

    weight: int  # bytes × seconds: which spans are worth drawing
    uid: str = field(compare=False)
    label: str = field(compare=False)
    numa_nodes: tuple[int, ...] = field(compare=False)
    size_bytes: int = field(compare=False)
    start_ns: int = field(compare=False)
    end_ns: int = field(compare=False)


@dataclass(frozen=True)
class PlotMarker:
    """A moment the plot marks: a rejected pod or a daemon restart."""

    ts_ns: int
    kind: str  # "rejection" or "restart"
    label: str


@dataclass
class PlotData:
    """A step series of reserved bytes per NUMA node, the pod spans worth drawing, and the
    rejections and restarts (the first `max_markers` in the window; `markers_dropped` counts the
    rest). `times_ns` is strictly increasing: events that share a timestamp make one point, the
    value that holds after them."""

    resource: str
    node_ids: tuple[int, ...] = ()
    allocatable: dict[int, int] = field(default_factory=dict)
    times_ns: list[int] = field(default_factory=list)
    reserved: list[tuple[int, ...]] = field(default_factory=list)  # per node, at times_ns
    spans: list[PodSpan] = field(default_factory=list)
    merged: bool = False  # the series was thinned (each point: the max over its interval)
    markers: list[PlotMarker] = field(default_factory=list)
    markers_dropped: int = 0


def plot_data(
    source: LogSource,
    window: Window,
    *,
    resource: str = MEMORY,
    max_points: int = 4000,
    max_spans: int = 40,
    max_markers: int = 500,
) -> PlotData:
    """Walk the log once and keep what the plot needs, bounded: at most ~`max_points` series
    points (pairs are merged keeping each node's maximum once there are more), the
    `max_spans` heaviest pod spans (bytes × duration) and `max_markers` markers."""
    data = PlotData(resource=resource)
    open_spans: dict[str, tuple[int, tuple[int, ...], int, str]] = {}
    heaviest: list[PodSpan] = []
    last: tuple[int, ...] | None = None
    end_ns = 0

    def close(uid: str, at_ns: int) -> None:
        start_ns, nodes, size, label = open_spans.pop(uid)
        if not window.overlaps(start_ns, at_ns) or max_spans == 0:
            return
        # Clipped to the window, so the plot's time axis is the window's.
        if window.since_ns is not None:
            start_ns = max(start_ns, window.since_ns)
        if window.until_ns is not None:
            at_ns = min(at_ns, window.until_ns)
        weight = size * max(at_ns - start_ns, 1) // 10**9
        span = PodSpan(weight, uid, label, nodes, size, start_ns, at_ns)
        if len(heaviest) < max_spans:
            heapq.heappush(heaviest, span)
        else:
            heapq.heappushpop(heaviest, span)

    for transition in history(source):
        ts_ns = transition.record.ts_ns
        for item in items_of(transition):
            _track_span(item, resource, open_spans, close)
        if not window.covers(ts_ns):
            continue
        end_ns = max(end_ns, ts_ns)
        for marker in _markers_of(transition):
            if len(data.markers) < max_markers:
                data.markers.append(marker)
            else:
                data.markers_dropped += 1
        machine = transition.after.machine
        if machine.node_ids != data.node_ids:
            data.node_ids = machine.node_ids
            last = None
        current = tuple(
            n.memory_map[resource].reserved if resource in n.memory_map else 0
            for n in machine.nodes
        )
        for n in machine.nodes:
            if resource in n.memory_map:
                data.allocatable[n.id] = n.memory_map[resource].allocatable
        if current != last and data.node_ids:
            if data.times_ns and data.times_ns[-1] == ts_ns:
                # Same instant as the previous point: what holds after both is this value.
                data.reserved[-1] = current
            else:
                data.times_ns.append(ts_ns)
                data.reserved.append(current)
            last = current
            if len(data.times_ns) > 2 * max_points:
                _thin(data)
    for uid in list(open_spans):
        close(uid, max(end_ns, open_spans[uid][0]))
    if data.times_ns and data.times_ns[-1] != end_ns:
        data.times_ns.append(end_ns)  # extend the last step to the end of the log
        data.reserved.append(data.reserved[-1])
    data.spans = sorted(heaviest, key=lambda s: (s.start_ns, s.uid))
    return data


def _markers_of(transition: Transition) -> list[PlotMarker]:
    """The rejections and restarts among a transition's input and decisions."""
    found = []
    request = transition.record.event
    for item in items_of(transition):
        event = item.event
        if isinstance(event, DaemonRestarted):
            found.append(PlotMarker(item.ts_ns, "restart", "restart"))
        elif isinstance(event, PodRejected):
            name = (
                request.pod.key
                if isinstance(request, PodAdmissionRequested) and request.pod.uid == event.uid
                else event.uid or event.source
            )
            found.append(PlotMarker(item.ts_ns, "rejection", f"{name}: {event.reason}"))
    return found


def _track_span(
    item: Item,
    resource: str,
    open_spans: dict[str, tuple[int, tuple[int, ...], int, str]],
    close: Any,
) -> None:
    event = item.event
    if isinstance(event, PodAdmitted):
        if event.restored and event.uid in open_spans:
            return
        if event.uid in open_spans:
            close(event.uid, item.ts_ns)
        allocation = event.allocation
        size = allocation.reserved_bytes(resource) if allocation else 0
        if allocation is not None and size > 0:
            open_spans[event.uid] = (item.ts_ns, allocation.numa_nodes, size, event.pod.key)
    elif isinstance(event, (PodRemoved, PodRejected)) and event.uid in open_spans:
        close(event.uid, item.ts_ns)
    elif isinstance(event, NodeReconfigured):
        for revoked in event.revoked:
            if revoked.uid in open_spans:
                close(revoked.uid, item.ts_ns)


def _thin(data: PlotData) -> None:
    """Halve the series: each pair of points becomes one, at the first time, with each node's
    maximum (a step plot of the result never hides a peak)."""
    times, values = data.times_ns, data.reserved
    data.times_ns = times[::2]
    data.reserved = [
        tuple(max(pair) for pair in zip(*values[i : i + 2], strict=True))
        for i in range(0, len(values), 2)
    ]
    data.merged = True
