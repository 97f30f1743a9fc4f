"""The cgroup targets of a state: the one place `NodeTargets` are built from the reducer's state.

A pod's targets are computed once, by `decide`, and recorded in its `pod_admitted` decision
(`PodAdmitted.targets`). `TargetsTracker` builds the node's targets from successive states,
reusing what it already has: for each pod the targets recorded in the decisions that admitted it
(the daemon passes each commit's decisions), else those it computed for an earlier state; only a
pod whose spec or allocation changed since (an init container finished, a new spec under an old
UID), or every pod after the config or topology changed, is computed again. The node-level sums
are then assembled (`memstate.core.qos.assemble_node_targets`), which is linear in the pods.

`state_targets(state)` is the same for a single state (views, `memstate plan`/`diff`): one
computation per pod. Pure: no I/O, deterministic (pods by UID).
"""

from __future__ import annotations

from collections.abc import Iterable

from memstate.core.config import NodeConfig
from memstate.core.events import Event, NodeReconfigured, PodAdmitted
from memstate.core.numa_policy import PodAllocation
from memstate.core.qos import assemble_node_targets, pod_targets
from memstate.core.state import State
from memstate.core.targets import NodeTargets, PodTargets
from memstate.core.topology import Topology

# What a pod's targets depend on besides the config and topology: its spec and its allocation.
_PodKey = tuple[str, PodAllocation | None]


class TargetsTracker:
    """Builds `NodeTargets` for successive states, computing each pod's targets at most once.

    `computed` counts the calls to `pod_targets` (a test holds one admission to none: its
    targets come from the decision).
    """

    def __init__(self) -> None:
        self._context: tuple[NodeConfig, Topology] | None = None
        self._pods: dict[str, tuple[_PodKey, PodTargets]] = {}
        self.computed = 0

    def update(self, state: State, decisions: Iterable[Event] = ()) -> NodeTargets | None:
        """The targets of `state` (None before a topology and config are in force).

        `decisions`: those applied since the previous call; the targets recorded in their
        `pod_admitted` are taken as they are when the pod still has that spec and allocation and
        the config and topology did not change in between."""
        if state.topology is None or state.config is None:
            self._context = None
            self._pods.clear()
            return None
        context = (state.config, state.topology)
        recorded: dict[str, PodAdmitted] = {}
        if self._context != context:
            # New naming, sizes or policy: every pod's targets change (and a decision in this
            # batch may predate the change).
            self._pods.clear()
            self._context = context
        else:
            for decision in decisions:
                if isinstance(decision, NodeReconfigured):
                    recorded.clear()
                elif isinstance(decision, PodAdmitted) and decision.targets is not None:
                    recorded[decision.uid] = decision
        entries = []
        for uid, record in state.pods.items():
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
            entries.append((record.pod, targets))
        if len(self._pods) != len(entries):
            for uid in [u for u in self._pods if u not in state.pods]:
                del self._pods[uid]
        return assemble_node_targets(entries, state.config, state.topology)


def state_targets(state: State) -> NodeTargets | None:
    """The cgroup targets of a state, or None before a topology and config are in force."""
    return TargetsTracker().update(state)
