"""What the NRI plugin asks memstate, and the plain values it passes (no protobuf here).

The plugin turns every runtime event into a call on an `NriDecider`; the daemon implements it
(decision durable in the log before the call returns). The values are what memstate needs from
NRI, already joined to the pod UID; everything else in the NRI messages is dropped at the edge.

Budget: the runtime drops a plugin that answers a request later than its request timeout (2 s by
default), serially for every container start on the node. `create_container` is on that path:
implementations must do per-call work bounded by the pod (look-ups by UID), never by node size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

QOSHint = Literal["Guaranteed", "Burstable", "BestEffort"]


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A pod sandbox as the runtime reports it.

    `qos_hint` is derived from the cgroup parent (``besteffort``/``burstable`` in it, otherwise
    Guaranteed: the only QoS signal NRI carries, nri.md §12).
    """

    id: str
    uid: str
    name: str
    namespace: str
    cgroup_parent: str
    qos_hint: QOSHint


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as the runtime reports it, joined to its pod by `pod_uid`.

    `memory_limit` is None when the runtime sent no limit; `unified` is what the kubelet (or an
    earlier plugin) asked for in cgroup v2 files.
    """

    id: str
    sandbox_id: str
    pod_uid: str
    name: str
    state: int
    memory_limit: int | None = None
    cpuset_mems: str = ""
    unified: Mapping[str, str] = field(default_factory=dict)
    cgroups_path: str = ""


@dataclass(frozen=True, slots=True)
class ResourceAdjustment:
    """memstate's values for one container: `cpuset_mems` ("" = leave as is) and `unified`
    cgroup v2 files (`memory.high`, `memory.min`, `memory.low`)."""

    cpuset_mems: str = ""
    unified: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether the adjustment changes nothing."""
        return not self.cpuset_mems and not self.unified


@dataclass(frozen=True, slots=True)
class Refusal:
    """A creation memstate refuses, with the upstream admission reason and message."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ContainerUpdate:
    """New values for an existing container."""

    container_id: str
    adjustment: ResourceAdjustment
    ignore_failure: bool = False


def container_updates(
    container_ids: Sequence[str],
    containers: Mapping[str, tuple[str, str]],
    decide: Callable[[str, str], object],
) -> list[ContainerUpdate]:
    """The updates that re-apply memstate's values to running containers (Synchronize, and an
    update of containers already running): one per container whose decision is a non-empty
    `ResourceAdjustment`. `containers` maps a container id to (pod UID, container name);
    `decide(pod_uid, name)` is the decider's answer for a container."""
    updates = []
    for container_id in container_ids:
        pod_uid, name = containers[container_id]
        decision = decide(pod_uid, name)
        if isinstance(decision, ResourceAdjustment) and not decision.empty:
            updates.append(ContainerUpdate(container_id, decision))
    return updates


class NriDecider(Protocol):
    """memstate's side of every runtime event the plugin subscribes to.

    Calls arrive one at a time, in the runtime's order. Raising from a method answers the runtime
    with an error (which fails the runtime operation for run/create/update); prefer returning a
    `Refusal` for a deliberate "no".
    """

    async def synchronize(
        self, pods: Sequence[SandboxInfo], containers: Sequence[ContainerInfo]
    ) -> Sequence[ContainerUpdate]:
        """Everything the runtime runs, after (re)connecting; updates to re-apply values."""
        ...

    async def run_pod_sandbox(self, pod: SandboxInfo) -> Refusal | None:
        """A pod sandbox is being started."""
        ...

    async def create_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> ResourceAdjustment | Refusal:
        """A container is being created: its adjustment, or a refusal."""
        ...

    async def update_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> Sequence[ContainerUpdate]:
        """A container's resources are being updated (resize, CPU manager); `container` carries
        the newly requested resources."""
        ...

    async def stop_container(self, pod: SandboxInfo, container: ContainerInfo) -> None:
        """A container stopped (once per container)."""
        ...

    async def remove_container(self, pod: SandboxInfo, container: ContainerInfo) -> None:
        """A container was removed."""
        ...

    async def stop_pod_sandbox(self, pod: SandboxInfo) -> None:
        """A pod sandbox stopped."""
        ...

    async def remove_pod_sandbox(self, pod: SandboxInfo) -> None:
        """A pod sandbox was removed: release what the pod held."""
        ...
