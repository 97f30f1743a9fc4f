"""Write profiles: what the reconciler may do to the tree, per ownership and mode.

A profile is a plain value handed to the planner (and to the diff), never a global: the same
targets and observation plan differently under another profile, and the rules below are tested
on the planner alone.

- `ownership: standalone` (the default): memstate owns the pod tree. It creates the kubepods,
  QoS and pod cgroups, enables their controllers, writes every file of the targets and removes
  retired pod cgroups (and, with `removeOrphans`, empty orphans).
- `ownership: beside-kubelet`: the kubelet creates, writes (`memory.max`, `hugetlb.*`, CPU) and
  removes the pod tree (kubelet-node.md §7). memstate creates, removes and kills nothing and
  enables no controller; it waits for the cgroups the kubelet makes (`Plan.awaiting`) and writes
  only `memory.min`, `memory.low` and `memory.high` on the kubepods, QoS, pod and container
  cgroups, plus `cpuset.mems` on pod cgroups in `numa` mode. A retired pod cgroup has its
  protection zeroed and is left for the kubelet to remove.
- `mode: numa` (the default): pin and protect (today's behaviour). `mode: qos`: Memory QoS values
  only, `cpuset.mems` is never written. `mode: shadow`: decide and record without writing; the
  no-write behaviour lives with the shadow comparison, not here (this module keeps the files of
  the profile it shadows, so a shadow plan shows what would be written).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from memstate.core.targets import (
    CPUSET_MEMS,
    MEMORY_HIGH,
    MEMORY_LOW,
    MEMORY_MIN,
    CgroupLevel,
    CgroupTarget,
    NodeTargets,
    PodTargets,
)

Ownership = Literal["standalone", "beside-kubelet"]
Mode = Literal["numa", "qos", "shadow"]
OWNERSHIPS: tuple[Ownership, ...] = ("standalone", "beside-kubelet")
MODES: tuple[Mode, ...] = ("numa", "qos", "shadow")

# Beside the kubelet, the Memory QoS files are memstate's (the kubelet's MemoryQoS gate is off);
# everything else on the pod tree is the kubelet's or the runtime's.
BESIDE_KUBELET_FILES = frozenset({MEMORY_MIN, MEMORY_LOW, MEMORY_HIGH})
_BESIDE_KUBELET_LEVELS: frozenset[CgroupLevel] = frozenset({"node", "qos", "pod", "container"})


class WriteProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ownership and mode, as the planner reads them (see the module docstring)."""

    ownership: Ownership = "standalone"
    mode: Mode = "numa"

    @property
    def owns_cgroups(self) -> bool:
        """memstate creates, removes and kills cgroups and enables their controllers."""
        return self.ownership == "standalone"

    @property
    def pins(self) -> bool:
        """`cpuset.mems` is written (NUMA pinning takes effect)."""
        return self.mode != "qos"

    def allows(self, level: CgroupLevel, file: str) -> bool:
        """True if this profile lets memstate write `file` on a cgroup of `level`."""
        if file == CPUSET_MEMS and not self.pins:
            return False
        if self.owns_cgroups:
            return True
        if level not in _BESIDE_KUBELET_LEVELS:
            return False
        return file in BESIDE_KUBELET_FILES or (file == CPUSET_MEMS and level == "pod")


STANDALONE = WriteProfile()


def profile_targets(targets: NodeTargets, profile: WriteProfile) -> NodeTargets:
    """`targets` with only the files `profile` lets memstate write, on the cgroups and on the
    pods' own `files` (what the NRI plugin hands the runtime: no `cpuset.mems` in qos mode).
    Cgroups and their `controllers` stay (the controllers say which `cgroup.subtree_control` to
    read; whether they are enabled is the planner's `owns_cgroups` question). Idempotent."""
    if profile == STANDALONE:
        return targets
    cgroups: list[CgroupTarget] = []
    changed = False
    for target in targets.cgroups:
        files = {f: v for f, v in target.files.items() if profile.allows(target.level, f)}
        if len(files) != len(target.files):
            changed = True
            target = msgspec.structs.replace(target, files=files)
        cgroups.append(target)
    pods: list[PodTargets] = []
    for pod in targets.pods:
        files = {f: v for f, v in pod.files.items() if profile.allows("pod", f)}
        if len(files) != len(pod.files):
            changed = True
            pod = msgspec.structs.replace(pod, files=files)
        pods.append(pod)
    if not changed:
        return targets
    return msgspec.structs.replace(targets, cgroups=tuple(cgroups), pods=tuple(pods))
