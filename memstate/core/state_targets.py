"""The cgroup targets of a state: the one place `NodeTargets` are built from the reducer's state.

A pod's targets are computed once, by `decide`, and recorded in its `pod_admitted` decision
(`PodAdmitted.targets`). `TargetsTracker` builds the node's targets from successive states,
reusing what it already has: for each pod the targets recorded in the decisions that admitted it
(the daemon passes each commit's decisions), else those it computed for an earlier state; only a
pod whose spec or allocation changed since (an init container finished, a new spec under an old
UID), or every pod after the config or topology changed, is computed again. The tracker keeps
each pod's part of the node's targets, the sorted pod cgroups and the QoS-level sums between
states and updates them for the pods whose records changed, so assembling the node's targets
(`memstate.core.qos.assemble_from_parts`) does not walk every pod in Python.

`state_targets(state)` is the same for a single state (views, `memstate plan`/`diff`): one
computation per pod. Pure: no I/O, deterministic (pods by UID).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.events import Event, NodeReconfigured, PodAdmitted
from memstate.core.numa_policy import PodAllocation
from memstate.core.pod import BURSTABLE, GUARANTEED
from memstate.core.qos import PodPart, assemble_from_parts, pod_part, pod_targets
from memstate.core.state import PodRecord, State
from memstate.core.targets import CgroupTarget, NodeTargets, PodTargets
from memstate.core.topology import Topology

# What a pod's targets depend on besides the config and topology: its spec and its allocation.
_PodKey = tuple[str, PodAllocation | None]


class TargetsTracker:
    """Builds `NodeTargets` for successive states, computing each pod's targets at most once.

    Between commits it keeps every pod's part of the node's targets (`memstate.core.qos.PodPart`),
    the pod cgroups in their sorted order and the QoS-level sums, and updates them for the pods
    that changed only (found by identity: the reducer keeps an unchanged pod's record), so a
    commit costs O(changed pods) plus C-level copies, not a walk over every pod.

    `computed` counts the calls to `pod_targets` (a test holds one admission to none: its
    targets come from the decision).
    """

    def __init__(self) -> None:
        self._context: tuple[NodeConfig, Topology] | None = None
        self._pods: dict[str, tuple[_PodKey, PodTargets]] = {}
        self._records: dict[str, PodRecord] = {}  # the record each pod's part was made from
        self._parts: dict[str, PodPart] = {}
        self._uids: list[str] = []  # sorted
        self._orders: list[tuple[int, str]] = []  # sorted; parallel to _cgroups
        self._cgroups: list[CgroupTarget] = []
        self._sums = {GUARANTEED: 0, BURSTABLE: 0}
        self._throttled = 0
        self.computed = 0

    def update(self, state: State, decisions: Iterable[Event] = ()) -> NodeTargets | None:
        """The targets of `state` (None before a topology and config are in force).

        `decisions`: those applied since the previous call; the targets recorded in their
        `pod_admitted` are taken as they are when the pod still has that spec and allocation and
        the config and topology did not change in between."""
        if state.topology is None or state.config is None:
            self._context = None
            self._forget_all()
            return None
        context = (state.config, state.topology)
        recorded: dict[str, PodAdmitted] = {}
        if self._context != context:
            # New naming, sizes or policy: every pod's targets change (and a decision in this
            # batch may predate the change).
            self._forget_all()
            self._context = context
        else:
            for decision in decisions:
                if isinstance(decision, NodeReconfigured):
                    recorded.clear()
                elif isinstance(decision, PodAdmitted) and decision.targets is not None:
                    recorded[decision.uid] = decision
        known = self._records
        changed = [uid for uid, record in state.pods.items() if known.get(uid) is not record]
        still_known = len(state.pods) - len(changed) + sum(1 for uid in changed if uid in known)
        if len(known) != still_known:  # some pods are gone
            for uid in [u for u in known if u not in state.pods]:
                self._drop(uid)
                del self._pods[uid]
        for uid in changed:
            record = state.pods[uid]
            key = (record.spec_hash, record.allocation)
            cached = self._pods.get(uid)
            if cached is not None and cached[0] == key:
                targets = cached[1]
            else:
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
            self._drop(uid)
            self._add(uid, record, pod_part(record.pod, targets))
        return assemble_from_parts(
            [self._parts[uid] for uid in self._uids],
            self._orders,
            self._cgroups,
            state.config,
            state.topology,
            guaranteed_bytes=self._sums[GUARANTEED],
            burstable_bytes=self._sums[BURSTABLE],
            throttled=self._throttled,
        )

    def _forget_all(self) -> None:
        self._pods.clear()
        self._records.clear()
        self._parts.clear()
        self._uids.clear()
        self._orders.clear()
        self._cgroups.clear()
        self._sums = {GUARANTEED: 0, BURSTABLE: 0}
        self._throttled = 0

    def _add(self, uid: str, record: PodRecord, part: PodPart) -> None:
        self._records[uid] = record
        self._parts[uid] = part
        bisect.insort(self._uids, uid)
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
        del self._records[uid]
        del self._uids[bisect.bisect_left(self._uids, uid)]
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
