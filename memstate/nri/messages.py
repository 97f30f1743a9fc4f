"""The typed front of the generated NRI protobuf code: conversions between NRI messages and the
plain values of `memstate.nri.decider`, the event mask, and the method table.

Only this module (and the transport's envelopes in `ttrpc`) touches generated classes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from google.protobuf.message import Message

from memstate.nri.decider import (
    ContainerInfo,
    ContainerUpdate,
    QOSHint,
    ResourceAdjustment,
    SandboxInfo,
)
from memstate.nri.proto import nri_pb2 as pb

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
POD_UID_LABEL = "io.kubernetes.pod.uid"


class Event(enum.IntEnum):
    """NRI event numbers (nri.md §7)."""

    RUN_POD_SANDBOX = 1
    STOP_POD_SANDBOX = 2
    REMOVE_POD_SANDBOX = 3
    CREATE_CONTAINER = 4
    POST_CREATE_CONTAINER = 5
    START_CONTAINER = 6
    POST_START_CONTAINER = 7
    UPDATE_CONTAINER = 8
    POST_UPDATE_CONTAINER = 9
    STOP_CONTAINER = 10
    REMOVE_CONTAINER = 11
    UPDATE_POD_SANDBOX = 12
    POST_UPDATE_POD_SANDBOX = 13
    VALIDATE_CONTAINER_ADJUSTMENT = 14


def event_mask(events: Iterable[Event]) -> int:
    """`ConfigureResponse.events`: event v is bit ``1 << (v - 1)``."""
    mask = 0
    for event in events:
        mask |= 1 << (event - 1)
    return mask


# What memstate subscribes to: 0x068F, valid on every NRI version (≤ 0x07FF); pod events reach
# runtimes before NRI 0.12 through StateChange.
MEMSTATE_EVENTS = (
    Event.RUN_POD_SANDBOX,
    Event.STOP_POD_SANDBOX,
    Event.REMOVE_POD_SANDBOX,
    Event.CREATE_CONTAINER,
    Event.UPDATE_CONTAINER,
    Event.STOP_CONTAINER,
    Event.REMOVE_CONTAINER,
)
MEMSTATE_EVENT_MASK = event_mask(MEMSTATE_EVENTS)

# Plugin-service methods memstate implements: name -> request message class. Anything else
# (PostCreateContainer, StartContainer, ValidateContainerAdjustment, ...) answers UNIMPLEMENTED,
# which is also how a 0.12 runtime learns to fall back to StateChange.
PLUGIN_METHODS: dict[str, type[Message]] = {
    "Configure": pb.ConfigureRequest,
    "Synchronize": pb.SynchronizeRequest,
    "Shutdown": pb.Empty,
    "RunPodSandbox": pb.PodSandboxRequest,
    "StopPodSandbox": pb.PodSandboxRequest,
    "RemovePodSandbox": pb.PodSandboxRequest,
    "CreateContainer": pb.ContainerRequest,
    "UpdateContainer": pb.UpdateContainerRequest,
    "StopContainer": pb.ContainerRequest,
    "RemoveContainer": pb.ContainerRequest,
    "StateChange": pb.StateChangeEvent,
}


def parse(message_class: type[Message], payload: bytes) -> Message:
    """Decode a payload (unknown fields skipped); raises `DecodeError` on malformed bytes."""
    message = message_class()
    message.ParseFromString(payload)
    return message


# --- NRI -> memstate ------------------------------------------------------------------------------


def qos_hint(cgroup_parent: str) -> QOSHint:
    """The pod's QoS class as its cgroup parent shows it (nri.md §12)."""
    lowered = cgroup_parent.lower()
    if "besteffort" in lowered:
        return "BestEffort"
    if "burstable" in lowered:
        return "Burstable"
    return "Guaranteed"


def sandbox_info(pod: pb.PodSandbox) -> SandboxInfo:
    """What memstate keeps of a PodSandbox."""
    parent = pod.linux.cgroup_parent
    return SandboxInfo(
        id=pod.id,
        uid=pod.uid,
        name=pod.name,
        namespace=pod.namespace,
        cgroup_parent=parent,
        qos_hint=qos_hint(parent),
    )


def container_info(
    container: pb.Container, pod_uid: str = "", resources: pb.LinuxResources | None = None
) -> ContainerInfo:
    """What memstate keeps of a Container; the pod UID comes from the pod, else the kubelet's
    label. `resources`, when given, replaces the container's own (an UpdateContainer's requested
    resources)."""
    if resources is None:
        resources = container.linux.resources
    memory_limit = (
        resources.memory.limit.value
        if resources.HasField("memory") and resources.memory.HasField("limit")
        else None
    )
    return ContainerInfo(
        id=container.id,
        sandbox_id=container.pod_sandbox_id,
        pod_uid=pod_uid or container.labels.get(POD_UID_LABEL, ""),
        name=container.name,
        state=container.state,
        memory_limit=memory_limit,
        cpuset_mems=resources.cpu.mems,
        unified=dict(resources.unified),
        cgroups_path=container.linux.cgroups_path,
    )


def synchronize_infos(
    pods: Sequence[pb.PodSandbox], containers: Sequence[pb.Container]
) -> tuple[list[SandboxInfo], list[ContainerInfo]]:
    """Pods and containers of a (reassembled) Synchronize, containers joined to pod UIDs."""
    sandboxes = [sandbox_info(p) for p in pods]
    uid_of = {s.id: s.uid for s in sandboxes}
    return sandboxes, [container_info(c, uid_of.get(c.pod_sandbox_id, "")) for c in containers]


# --- memstate -> NRI ------------------------------------------------------------------------------


def linux_resources(adjustment: ResourceAdjustment) -> pb.LinuxResources:
    """The LinuxResources carrying an adjustment (only `cpu.mems` and `unified` are set)."""
    resources = pb.LinuxResources()
    if adjustment.cpuset_mems:
        resources.cpu.mems = adjustment.cpuset_mems
    for key in sorted(adjustment.unified):
        resources.unified[key] = adjustment.unified[key]
    return resources


def container_adjustment(adjustment: ResourceAdjustment) -> pb.ContainerAdjustment:
    """A ContainerAdjustment for CreateContainer (empty when memstate changes nothing)."""
    result = pb.ContainerAdjustment()
    if not adjustment.empty:
        result.linux.resources.CopyFrom(linux_resources(adjustment))
    return result


def container_updates(updates: Iterable[ContainerUpdate]) -> list[pb.ContainerUpdate]:
    """ContainerUpdate messages, skipping updates that change nothing."""
    out = []
    for update in updates:
        if update.adjustment.empty:
            continue
        message = pb.ContainerUpdate(
            container_id=update.container_id, ignore_failure=update.ignore_failure
        )
        message.linux.resources.CopyFrom(linux_resources(update.adjustment))
        out.append(message)
    return out
