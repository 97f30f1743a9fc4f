"""The cgroup targets of a state: the one place `NodeTargets` are built from the reducer's state.

A pod's targets are computed once, by `decide`, and recorded in its `pod_admitted` decision
(`PodAdmitted.targets`). `TargetsTracker` builds the node's targets from successive states,
reusing what it already has: for each pod the targets recorded in the decisions that admitted it
(the daemon passes each commit's decisions), else those it computed for an earlier state; only a
pod whose spec or allocation changed since (an init container finished, a new spec under an old
UID), or every pod after the config or topology changed, is computed again. The tracker keeps
each pod's part of the node's targets, the pods' targets by UID, the sorted pod cgroups and the
QoS-level sums between states and updates them for the pods whose records changed; the root, node
and QoS cgroups sit among the pod cgroups and are rendered again only when the sum they depend on
changed (`memstate.core.qos.NodeLevel`), so publishing the node's targets does not walk every pod in
Python nor rebuild the node level (`memstate.core.qos.assemble_from_parts` is the whole computation
the tests compare it with).
Which pods changed comes from the events applied since the previous state (`pods_changed_by`:
the daemon's writer passes each commit's events), so a commit does not compare every pod's
record either; without them, or after an event that may change any pod (a restart, a
reconfiguration), every record is compared by identity (a C-speed pass is not available there:
that is the one Python-level pass left, and only on those events).

`state_targets(state)` is the same for a single state (views, `memstate plan`/`diff`): one
computation per pod. Pure: no I/O, deterministic (pods by UID).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.events import (
    NOTE_EVENTS,
    ConfigLoaded,
    DaemonStarted,
    Event,
    KubeletStateImported,
    ManifestInvalid,
    NodeReconfigurationDeferred,
    NodeReconfigured,
    PodAdmissionRequested,
    PodAdmitted,
    PodInitCompleted,
    PodRejected,
    PodRemovalRequested,
    PodRemoved,
    ReadmissionCompleted,
    ReadmissionDeferred,
    TopologyObserved,
)
from memstate.core.numa_policy import PodAllocation
from memstate.core.pod import BURSTABLE, GUARANTEED
from memstate.core.qos import NodeLevel, PodPart, pod_part, pod_targets
from memstate.core.state import PodRecord, State
from memstate.core.targets import CgroupTarget, NodeTargets, PodTargets, TargetsChange
from memstate.core.topology import Topology

# What a pod's targets depend on besides the config and topology: its spec and its allocation.
_PodKey = tuple[str, PodAllocation | None]

# How many publications' change records `TargetsTracker.recent` keeps.
_RECENT = 8

# Events whose application changes at most the record of the pod named by their `uid`.
_ONE_POD: frozenset[type[Event]] = frozenset(
    {
        PodAdmitted,
        PodRemoved,
        PodRejected,
        PodRemovalRequested,
        PodInitCompleted,
        ReadmissionDeferred,
    }
)
# Events whose application changes no pod record: the reducer's notes (`NOTE_EVENTS`), inputs
# without effect, the deferral and window bookkeeping, and what changes only the observed topology
# or config (a config or topology in force changes with `node_reconfigured`, which may change any).
_NO_POD: frozenset[type[Event]] = NOTE_EVENTS | frozenset(
    {
        PodAdmissionRequested,
        DaemonStarted,
        ConfigLoaded,
        TopologyObserved,
        ManifestInvalid,
        NodeReconfigurationDeferred,
        KubeletStateImported,
        ReadmissionCompleted,
    }
)


def pods_changed_by(events: Iterable[Event]) -> set[str] | None:
    """The UIDs of the pods whose records applying `events` may change, or None when one of
    them may change any pod (`daemon_restarted`, `node_reconfigured`, a kind not listed here):
    what `TargetsTracker.update` takes as `changed`."""
    uids: set[str] = set()
    for event in events:
        kind = type(event)
        if kind in _ONE_POD:
            uids.add(event.uid)  # type: ignore[attr-defined]
        elif kind not in _NO_POD:
            return None
    return uids


class TargetsTracker:
    """Builds `NodeTargets` for successive states, computing each pod's targets at most once.

    Between commits it keeps every pod's part of the node's targets (`memstate.core.qos.PodPart`),
    the pods' targets in UID order, every cgroup in its sorted order (the root, node and QoS ones
    among the pods', replaced only when the QoS sum they follow changed: a `NodeLevel` per config
    and topology) and the QoS-level sums, and updates them for the pods that changed only (named
    by `changed`, else found by identity: the reducer keeps an unchanged pod's record), so a
    commit costs O(changed pods) plus C-level copies, not a walk over every pod. When no pod's
    part and neither the config nor the topology changed, `update` returns the very
    `NodeTargets` it returned before.

    Each new targets object comes with `change` (`TargetsChange`): the cgroups and pods it
    replaced, added or dropped relative to the targets object returned before it (None for the
    first, or after the config or topology changed), found from the parts and the node-level
    cgroups it replaced (an unchanged root, node or QoS cgroup is the same object, not listed).

    `computed` counts the calls to `pod_targets` (a test holds one admission to none: its
    targets come from the decision); `compared_all` the updates that compared every pod's record.
    """

    def __init__(self) -> None:
        self._context: tuple[NodeConfig, Topology] | None = None
        self._pods: dict[str, tuple[_PodKey, PodTargets]] = {}
        self._records: dict[str, PodRecord] = {}  # the record each pod's part was made from
        self._parts: dict[str, PodPart] = {}
        self._uids: list[str] = []  # sorted
        self._targets: list[PodTargets] = []  # parallel to _uids
        # Every cgroup of the targets, the node-level ones included, sorted by (depth, path):
        # the keys and the cgroups, parallel.
        self._orders: list[tuple[int, str]] = []
        self._cgroups: list[CgroupTarget] = []
        self._level: NodeLevel | None = None  # for `_context`; its cgroups are in `_cgroups`
        self._sums = {GUARANTEED: 0, BURSTABLE: 0}
        self._throttled = 0
        self._last: NodeTargets | None = None  # what the previous update returned
        self._dirty = False  # a part changed since `_last` was assembled
        # Since `_last` was assembled: the UIDs whose part was added or dropped, and the pod
        # cgroup paths dropped with them (for `change`).
        self._touched: set[str] = set()
        self._dropped_paths: set[str] = set()
        self.change: TargetsChange | None = None  # of `_last`, against the one before it
        # The last few of them, oldest first (`memstate.core.targets.change_since` composes
        # them for a reader that missed some publications); () after a reset.
        self.recent: tuple[TargetsChange, ...] = ()
        self.computed = 0
        self.compared_all = 0

    def update(
        self,
        state: State,
        decisions: Iterable[Event] = (),
        *,
        changed: Iterable[str] | None = None,
    ) -> NodeTargets | None:
        """The targets of `state` (None before a topology and config are in force).

        `decisions`: those applied since the previous call; the targets recorded in their
        `pod_admitted` are taken as they are when the pod still has that spec and allocation and
        the config and topology did not change in between. `changed`: the UIDs of every pod whose
        record may differ from the previous call's state (`pods_changed_by` of the events
        applied since); None compares every pod's record."""
        if state.topology is None or state.config is None:
            self._context = None
            self._forget_all()
            return None
        context = (state.config, state.topology)
        recorded: dict[str, PodAdmitted] = {}
        pods = state.pods
        known = self._records
        if self._context != context:
            # New naming, sizes or policy: every pod's targets change (and a decision in this
            # batch may predate the change).
            self._forget_all()
            self._context = context
            self._level = NodeLevel(*context)
            # The lists are empty: the node-level cgroups first, the pods are added below.
            self._orders.extend(self._level.orders)
            self._cgroups.extend(self._level.cgroups(0, 0))
            changed = None
        else:
            for decision in decisions:
                if isinstance(decision, NodeReconfigured):
                    recorded.clear()
                elif isinstance(decision, PodAdmitted) and decision.targets is not None:
                    recorded[decision.uid] = decision
        if changed is None:
            candidates = self._compare_all(state)
        else:
            candidates = [uid for uid in changed if known.get(uid) is not pods.get(uid)]
        for uid in candidates:
            record = pods.get(uid)
            if record is None:
                self._drop(uid)
                self._pods.pop(uid, None)
            else:
                self._replace(uid, record, self._targets_of(uid, record, recorded, context))
        if len(known) != len(pods):
            # `changed` missed a pod (an event kind `pods_changed_by` does not know the effect
            # of): compare every record, as without it.
            for uid in self._compare_all(state):
                record = pods.get(uid)
                if record is None:
                    self._drop(uid)
                    self._pods.pop(uid, None)
                else:
                    self._replace(uid, record, self._targets_of(uid, record, recorded, context))
        if not self._dirty and self._last is not None:
            return self._last
        self._dirty = False
        previous = self._last
        level = self._level
        if level is None:
            raise InvariantViolation("targets tracker: no node level for the config in force")
        g_sum, b_sum = self._sums[GUARANTEED], self._sums[BURSTABLE]
        # The node-level cgroups the sums changed (the others are the same objects): replaced
        # where they sort among the pod cgroups (a bisection in C).
        replaced: list[CgroupTarget] = []
        orders, cgroups = self._orders, self._cgroups
        for key, target in zip(level.orders, level.cgroups(g_sum, b_sum), strict=True):
            at = bisect.bisect_left(orders, key)
            if at >= len(orders) or orders[at] != key:
                raise InvariantViolation(f"targets tracker: cgroup {key[1]!r} is not listed")
            if cgroups[at] is not target:
                cgroups[at] = target
                replaced.append(target)
        self._last = level.node_targets(
            tuple(cgroups),
            tuple(self._targets),
            guaranteed_bytes=g_sum,
            burstable_bytes=b_sum,
            throttled=self._throttled,
        )
        self.change = None if previous is None else self._change(previous, replaced)
        self.recent = () if self.change is None else (*self.recent[1 - _RECENT :], self.change)
        self._touched.clear()
        self._dropped_paths.clear()
        return self._last

    def _change(self, previous: NodeTargets, replaced: list[CgroupTarget]) -> TargetsChange:
        """What the new targets replaced of `previous`: the parts touched since, and the
        node-level cgroups `replaced` (the others are the same objects as in `previous`)."""
        parts = self._parts
        cgroups: list[CgroupTarget] = []
        pods: list[PodTargets] = []
        dropped_uids: set[str] = set()
        for uid in sorted(self._touched):  # a deterministic record
            part = parts.get(uid)
            if part is None:
                dropped_uids.add(uid)
            else:
                cgroups.append(part.cgroup)
                pods.append(part.targets)
        cgroups.extend(replaced)
        dropped_paths = self._dropped_paths.difference(t.path for t in cgroups)
        return TargetsChange(
            previous=previous,
            cgroups=tuple(cgroups),
            dropped_paths=frozenset(dropped_paths),
            pods=tuple(pods),
            dropped_uids=frozenset(dropped_uids),
        )

    @property
    def throttled(self) -> int:
        """How many containers in the last `update`'s result have a memory.high below "max"."""
        return self._throttled

    def pod(self, uid: str) -> PodTargets | None:
        """The targets of pod `uid` in the last `update`'s result (None: not there), by a
        look-up (`NodeTargets.pod` walks the pods)."""
        part = self._parts.get(uid)
        return None if part is None else part.targets

    def _compare_all(self, state: State) -> list[str]:
        """The UIDs whose record is not the one the tracker's part was made from (new, changed
        or gone): the one pass over every pod, when the changes are not named."""
        self.compared_all += 1
        known = self._records
        pods = state.pods
        found = [uid for uid, record in pods.items() if known.get(uid) is not record]
        if len(known) != len(pods) - len(found) + sum(1 for uid in found if uid in known):
            found.extend(uid for uid in known if uid not in pods)
        return found

    def _targets_of(
        self,
        uid: str,
        record: PodRecord,
        recorded: dict[str, PodAdmitted],
        context: tuple[NodeConfig, Topology],
    ) -> PodTargets:
        key = (record.spec_hash, record.allocation)
        cached = self._pods.get(uid)
        if cached is not None and cached[0] == key:
            return cached[1]
        admitted = recorded.get(uid)
        if (
            admitted is not None
            and admitted.targets is not None
            and (admitted.spec_hash, admitted.allocation) == key
        ):
            targets = admitted.targets
        else:
            targets = pod_targets(record.pod, record.allocation, *context)
            self.computed += 1
        self._pods[uid] = (key, targets)
        return targets

    def _forget_all(self) -> None:
        self._pods.clear()
        self._records.clear()
        self._parts.clear()
        self._uids.clear()
        self._targets.clear()
        self._orders.clear()
        self._cgroups.clear()
        self._level = None
        self._sums = {GUARANTEED: 0, BURSTABLE: 0}
        self._throttled = 0
        self._last = None
        self._dirty = True
        self._touched.clear()
        self._dropped_paths.clear()
        self.change = None
        self.recent = ()

    def _replace(self, uid: str, record: PodRecord, targets: PodTargets) -> None:
        old = self._parts.get(uid)
        if old is not None and old.targets is targets:
            self._records[uid] = record  # same targets (e.g. only its status changed)
            return
        self._drop(uid)
        self._add(uid, record, pod_part(record.pod, targets))

    def _add(self, uid: str, record: PodRecord, part: PodPart) -> None:
        self._dirty = True
        self._touched.add(uid)
        self._records[uid] = record
        self._parts[uid] = part
        at = bisect.bisect_left(self._uids, uid)
        self._uids.insert(at, uid)
        self._targets.insert(at, part.targets)
        index = bisect.bisect_right(self._orders, part.order)
        self._orders.insert(index, part.order)
        self._cgroups.insert(index, part.cgroup)
        qos_class = part.targets.qos_class
        if qos_class in self._sums:
            self._sums[qos_class] += part.request_bytes
        self._throttled += part.throttled

    def _drop(self, uid: str) -> None:
        part = self._parts.pop(uid, None)
        if part is None:
            return
        self._dirty = True
        self._touched.add(uid)
        self._dropped_paths.add(part.cgroup.path)
        del self._records[uid]
        at = bisect.bisect_left(self._uids, uid)
        del self._uids[at]
        del self._targets[at]
        index = bisect.bisect_left(self._orders, part.order)
        if self._orders[index] != part.order:
            raise InvariantViolation(f"pod {uid}: its cgroup is not where the tracker put it")
        del self._orders[index]
        del self._cgroups[index]
        qos_class = part.targets.qos_class
        if qos_class in self._sums:
            self._sums[qos_class] -= part.request_bytes
        self._throttled -= part.throttled


def state_targets(state: State) -> NodeTargets | None:
    """The cgroup targets of a state, or None before a topology and config are in force."""
    return TargetsTracker().update(state)
