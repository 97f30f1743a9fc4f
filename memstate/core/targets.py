"""Cgroup targets: the values every pod and QoS-level cgroup must carry (the interface types).

The reducer's state says which pods run and what they hold; `memstate.core.qos` turns that into
`NodeTargets`, which the reconciler converges the live tree to and `memstate status` prints.

Conventions:
- `path` is relative to the cgroup2 mount (or the delegated subtree the reconciler owns), joined
  with "/", and built only from validated components (`memstate.core.cgroup_paths`). The root of
  the managed tree is the empty path "".
- `files` maps a cgroup interface file to the exact value memstate wants in it, as text the kernel
  accepts: decimal bytes, "max", a NUMA node list ("0-1"), or "" for an empty cpuset. Values are
  exact; page rounding is the planner's business (it compares in kernel-normalised form).
- A file absent from `files` is not managed and never touched.
- `controllers` lists what must be enabled in this cgroup's `cgroup.subtree_control` for its
  children's managed files to exist.
- `cgroups` is ordered parents before children, deterministically.
- `NodeTargets` carries the cgroup naming its paths were rendered with (`cgroup_driver`,
  `cgroup_root`), so whoever must recognise a pod cgroup in the live tree reads it here instead
  of parsing it back out of the paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from memstate.core.config import CgroupDriver
from memstate.core.pod import ContainerKind, QOSClass

# "container": a runtime-created cgroup under a pod cgroup, discovered, never created
# (memstate.core.plan.containers).
CgroupLevel = Literal["root", "node", "qos", "pod", "container"]

MEMORY_MIN = "memory.min"
MEMORY_LOW = "memory.low"
MEMORY_HIGH = "memory.high"
MEMORY_MAX = "memory.max"
CPUSET_MEMS = "cpuset.mems"
MEMORY_FILES = (MEMORY_MIN, MEMORY_LOW, MEMORY_HIGH, MEMORY_MAX)


class ContainerTargets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the kubelet would put into the CRI `unified` map for a container.

    memstate does not create container cgroups (the runtime does); the reconciler writes the
    Memory QoS files of those it finds (memstate.core.plan.containers), the rest is reported in
    status and audit output and used by the invariant checks.
    """

    name: str
    files: dict[str, str]
    # "init", "sidecar" or "app": which containers run at the same time, for the check that a
    # pod's protection covers its live containers (memstate.core.qos.check_targets).
    kind: ContainerKind = "app"


class PodTargets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pod cgroup's targets, plus its containers' for reference."""

    uid: str
    qos_class: QOSClass
    cgroup: str
    files: dict[str, str]
    containers: tuple[ContainerTargets, ...]


class CgroupTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One cgroup the reconciler owns: where it is and what it must contain."""

    path: str
    level: CgroupLevel
    files: dict[str, str] = {}
    controllers: tuple[str, ...] = ()
    pod_uid: str = ""


class NodeTargets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole desired tree for the node."""

    cgroups: tuple[CgroupTarget, ...]
    pods: tuple[PodTargets, ...]
    # The values of kubelet_memory_qos_node_memory_{min,low}_bytes.
    node_memory_min_bytes: int
    node_memory_low_bytes: int
    # Over-commit and similar conditions ordering cannot fix: reported, never hidden.
    warnings: tuple[str, ...] = ()
    # The naming the paths were rendered with (NodeConfig.cgroup_driver, .cgroup_root).
    cgroup_driver: CgroupDriver = "cgroupfs"
    cgroup_root: tuple[str, ...] = ()

    def cgroup(self, path: str) -> CgroupTarget:
        for target in self.cgroups:
            if target.path == path:
                return target
        raise KeyError(path)

    def pod(self, uid: str) -> PodTargets:
        for target in self.pods:
            if target.uid == uid:
                return target
        raise KeyError(uid)


class TargetsChange(msgspec.Struct, frozen=True):
    """How one published `NodeTargets` differs from the one published before it (`previous`).

    Published beside each new targets object by `memstate.core.state_targets.TargetsTracker`, so
    whoever holds `previous` (the reconciler's carried indexes) can follow the change by an
    identity check instead of comparing every cgroup and pod. Every cgroup or pod that is not
    the same object in both is listed: `cgroups` (the new or replaced ones, as they are in the
    new targets) or `dropped_paths` (no longer there), `pods` or `dropped_uids` likewise; an
    unchanged one may be listed too (a superset is correct, so changes compose). Data only:
    a consumer that does not hold `previous` compares everything, as without it.
    """

    previous: NodeTargets
    cgroups: tuple[CgroupTarget, ...] = ()
    dropped_paths: frozenset[str] = frozenset()
    pods: tuple[PodTargets, ...] = ()
    dropped_uids: frozenset[str] = frozenset()


def change_since(
    changes: Sequence[TargetsChange], held: NodeTargets | None
) -> TargetsChange | None:
    """The change from `held` to the targets the last of `changes` describes, composed from
    the consecutive records `changes` (oldest first, each against the targets the one before it
    led to); None when `held` is not among their `previous` (a chain too long, a restart).
    Work proportional to the records composed, not to the targets."""
    if held is None:
        return None
    for start in range(len(changes) - 1, -1, -1):
        if changes[start].previous is held:
            break
    else:
        return None
    if start == len(changes) - 1:
        return changes[start]
    cgroups = {target.path: target for target in changes[start].cgroups}
    pods = {pod.uid: pod for pod in changes[start].pods}
    dropped_paths, dropped_uids = (
        set(changes[start].dropped_paths),
        set(changes[start].dropped_uids),
    )
    for later in changes[start + 1 :]:
        for path in later.dropped_paths:
            cgroups.pop(path, None)
        for uid in later.dropped_uids:
            pods.pop(uid, None)
        dropped_paths |= later.dropped_paths
        dropped_uids |= later.dropped_uids
        for target in later.cgroups:
            cgroups[target.path] = target
            dropped_paths.discard(target.path)
        for pod in later.pods:
            pods[pod.uid] = pod
            dropped_uids.discard(pod.uid)
    return TargetsChange(
        previous=held,
        cgroups=tuple(cgroups.values()),
        dropped_paths=frozenset(dropped_paths),
        pods=tuple(pods.values()),
        dropped_uids=frozenset(dropped_uids),
    )
