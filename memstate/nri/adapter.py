"""From memstate's decisions to NRI adjustments: the pure mapping, and a decider over it.

`adjustment_for` maps a pod's cgroup targets (`memstate.core.qos.pod_targets`) to what the
runtime applies to one container at creation: `cpuset.mems` of the pod's NUMA nodes when the
Static policy pinned it, and through `unified` the container's `memory.high` (when the MemoryQoS
gate is on) plus, under TieredReservation, `memory.min`/`memory.low` (nri.md §10.2: `unified` is
the only way these reach the container cgroup; memory `reservation` is ignored by the runtimes).

`TargetsDecider` answers the runtime from a snapshot the daemon keeps current: a mapping pod UID
-> `PodTargets` for admitted pods and pod UID -> `Rejection` for rejected ones. Every call is a
dictionary look-up by UID plus work proportional to the pod's containers, never to node size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from memstate.core.config import NodeConfig
from memstate.core.qos import pod_targets, tiered
from memstate.core.state import Rejection, State
from memstate.core.targets import CPUSET_MEMS, MEMORY_HIGH, MEMORY_LOW, MEMORY_MIN, PodTargets
from memstate.nri.decider import (
    ContainerInfo,
    ContainerUpdate,
    Refusal,
    ResourceAdjustment,
    SandboxInfo,
    container_updates,
)

UnknownPodPolicy = Literal["allow", "refuse"]
UNKNOWN_POD_REASON = "UnknownPod"


def adjustment_for(
    targets: PodTargets, container_name: str, config: NodeConfig
) -> ResourceAdjustment:
    """memstate's values for one container of an admitted pod.

    A container the pod spec does not name (an unknown sidecar, a spec that changed) gets the
    pod's `cpuset.mems` only: pinning is a pod property, the memory values are per container.
    """
    mems = targets.files.get(CPUSET_MEMS, "")
    unified: dict[str, str] = {}
    for container in targets.containers:
        if container.name != container_name:
            continue
        if MEMORY_HIGH in container.files:
            unified[MEMORY_HIGH] = container.files[MEMORY_HIGH]
        if tiered(config):
            for key in (MEMORY_MIN, MEMORY_LOW):
                if key in container.files:
                    unified[key] = container.files[key]
        break
    return ResourceAdjustment(cpuset_mems=mems, unified=unified)


def refusal_for(rejection: Rejection) -> Refusal:
    """The runtime-facing refusal of a rejected pod: the upstream reason and message."""
    return Refusal(reason=rejection.reason, message=rejection.message)


@dataclass(frozen=True, slots=True)
class Decisions:
    """A snapshot of memstate's decisions, indexed by pod UID (built by the daemon)."""

    config: NodeConfig
    admitted: Mapping[str, PodTargets]
    rejected: Mapping[str, Rejection]


def decisions_from_state(state: State) -> Decisions | None:
    """The snapshot for `state` (None before a topology and config are in force).

    Built once per state change (work proportional to the node), so that each runtime request
    is a look-up.
    """
    if state.topology is None or state.config is None:
        return None
    admitted = {
        uid: pod_targets(record.pod, record.allocation, state.config, state.topology)
        for uid, record in state.pods.items()
    }
    rejected = {r.uid: r for r in state.rejections.values() if r.uid}
    return Decisions(config=state.config, admitted=admitted, rejected=rejected)


class TargetsDecider:
    """An `NriDecider` answering from the current `Decisions` snapshot.

    It records nothing durable: the daemon's decider (admission, then the decision in the log,
    then the answer) wraps the same mapping. Pods memstate has no decision for are allowed
    unchanged (fail-open) unless `unknown_pod` is "refuse".
    """

    def __init__(
        self, decisions: Callable[[], Decisions], *, unknown_pod: UnknownPodPolicy = "allow"
    ) -> None:
        self._decisions = decisions
        self._unknown_pod = unknown_pod
        # container id -> (pod uid, container name), for updates of running containers.
        self.containers: dict[str, tuple[str, str]] = {}
        self.events: list[tuple[str, str]] = []

    def _decide(self, pod_uid: str, container_name: str) -> ResourceAdjustment | Refusal:
        decisions = self._decisions()
        targets = decisions.admitted.get(pod_uid)
        if targets is not None:
            return adjustment_for(targets, container_name, decisions.config)
        rejection = decisions.rejected.get(pod_uid)
        if rejection is not None:
            return refusal_for(rejection)
        if self._unknown_pod == "refuse":
            return Refusal(UNKNOWN_POD_REASON, f"memstate has no decision for pod {pod_uid}")
        return ResourceAdjustment()

    def _updates(self, container_ids: Sequence[str]) -> list[ContainerUpdate]:
        return container_updates(container_ids, self.containers, self._decide)

    async def synchronize(
        self, pods: Sequence[SandboxInfo], containers: Sequence[ContainerInfo]
    ) -> Sequence[ContainerUpdate]:
        """Re-learn every running container and re-apply memstate's values to each."""
        self.events.append(("synchronize", f"{len(pods)} pods, {len(containers)} containers"))
        self.containers = {c.id: (c.pod_uid, c.name) for c in containers}
        return self._updates([c.id for c in containers])

    async def run_pod_sandbox(self, pod: SandboxInfo) -> Refusal | None:
        """Refuse the sandbox of a rejected pod; allow everything else."""
        self.events.append(("run_pod_sandbox", pod.uid))
        rejection = self._decisions().rejected.get(pod.uid)
        return refusal_for(rejection) if rejection is not None else None

    async def create_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> ResourceAdjustment | Refusal:
        """The container's adjustment, or the pod's refusal."""
        self.events.append(("create_container", f"{pod.uid}/{container.name}"))
        decision = self._decide(pod.uid, container.name)
        if isinstance(decision, ResourceAdjustment):
            self.containers[container.id] = (pod.uid, container.name)
        return decision

    async def update_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> Sequence[ContainerUpdate]:
        """Re-apply memstate's values over whatever the update brings."""
        self.events.append(("update_container", f"{pod.uid}/{container.name}"))
        self.containers[container.id] = (pod.uid, container.name)
        return self._updates([container.id])

    async def stop_container(self, pod: SandboxInfo, container: ContainerInfo) -> None:
        """Nothing to release per container: allocations are per pod."""
        self.events.append(("stop_container", f"{pod.uid}/{container.name}"))

    async def remove_container(self, pod: SandboxInfo, container: ContainerInfo) -> None:
        """Forget the container."""
        self.events.append(("remove_container", f"{pod.uid}/{container.name}"))
        self.containers.pop(container.id, None)

    async def stop_pod_sandbox(self, pod: SandboxInfo) -> None:
        """Recorded only; release happens at removal."""
        self.events.append(("stop_pod_sandbox", pod.uid))

    async def remove_pod_sandbox(self, pod: SandboxInfo) -> None:
        """Forget the pod's containers (the daemon releases the allocation here)."""
        self.events.append(("remove_pod_sandbox", pod.uid))
        self.containers = {
            cid: entry for cid, entry in self.containers.items() if entry[0] != pod.uid
        }
