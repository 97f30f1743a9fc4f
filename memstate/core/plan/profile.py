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

from operator import is_
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
    TargetsChange,
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


def filters(target: CgroupTarget, profile: WriteProfile) -> bool:
    """True if `profile_targets` under `profile` would leave out a file of `target`."""
    return not all(profile.allows(target.level, f) for f in target.files)


def _cgroup_profiled(target: CgroupTarget, profile: WriteProfile) -> CgroupTarget:
    files = {f: v for f, v in target.files.items() if profile.allows(target.level, f)}
    return (
        target if len(files) == len(target.files) else msgspec.structs.replace(target, files=files)
    )


def _pod_profiled(pod: PodTargets, profile: WriteProfile) -> PodTargets:
    files = {f: v for f, v in pod.files.items() if profile.allows("pod", f)}
    return pod if len(files) == len(pod.files) else msgspec.structs.replace(pod, files=files)


def profile_pod(pod: PodTargets, profile: WriteProfile) -> PodTargets:
    """One pod's targets as `profile_targets` under `profile` leaves them (a look-up by UID
    need not filter every pod)."""
    return _pod_profiled(pod, profile)


class ProfileFilter:
    """`profile_targets(targets, profile)` carried from one round's targets to the next.

    Filtering builds a dict of allowed files per cgroup and per pod; redone for every new
    targets object, that is a walk over every pod per admission, and it gives every filtered
    cgroup a new object, so whatever the reconciler carries by identity afterwards sees every
    cgroup changed. `updated(targets)` filters only the cgroups and pods that are not the same
    objects as last time and reuses the previous result for the others (one identity look-up
    each). `result` equals `profile_targets(targets, profile)` (tests/reconcile/
    test_target_index.py compares them). Immutable: `updated` returns a new filter.

    Given the targets' `TargetsChange` against the targets it filtered last, it looks at the
    listed cgroups and pods only, and `change` is then the same record for `result` against the
    previous result (None otherwise), for the indexes carried after it.
    """

    __slots__ = ("_cgroups", "_pods", "change", "profile", "result", "targets")

    def __init__(self, profile: WriteProfile) -> None:
        self.profile = profile
        self.targets: NodeTargets | None = None
        self.result: NodeTargets | None = None
        self._cgroups: dict[str, tuple[CgroupTarget, CgroupTarget]] = {}  # path -> (given, kept)
        self._pods: dict[str, tuple[PodTargets, PodTargets]] = {}  # uid -> (given, kept)
        self.change: TargetsChange | None = None  # of `result`, against the previous result

    def updated(self, targets: NodeTargets, change: TargetsChange | None = None) -> ProfileFilter:
        """The filter of `targets` (`change`: its record against the targets it replaced)."""
        if targets is self.targets:
            if self.change is None:
                return self
            # The same result, which changed nothing against itself: no record to follow.
            same = ProfileFilter(self.profile)
            same.targets, same.result = self.targets, self.result
            same._cgroups, same._pods = self._cgroups, self._pods
            return same
        new = ProfileFilter(self.profile)
        new.targets = targets
        follows = change is not None and change.previous is self.targets
        if self.profile == STANDALONE:
            new.result = targets
            new.change = change if follows else None
            return new
        profile = self.profile
        known_cgroups, known_pods = self._cgroups.get, self._pods.get
        cgroups: dict[str, tuple[CgroupTarget, CgroupTarget]]
        pods: dict[str, tuple[PodTargets, PodTargets]]
        if change is not None and follows:
            # Only the listed cgroups and pods can differ: copy the memo, then filter those.
            cgroups, pods = dict(self._cgroups), dict(self._pods)
            for path in change.dropped_paths:
                cgroups.pop(path, None)
            for uid in change.dropped_uids:
                pods.pop(uid, None)
            for target in change.cgroups:
                hit = cgroups.get(target.path)
                if hit is None or hit[0] is not target:
                    cgroups[target.path] = (target, _cgroup_profiled(target, profile))
            for pod in change.pods:
                hit_pod = pods.get(pod.uid)
                if hit_pod is None or hit_pod[0] is not pod:
                    pods[pod.uid] = (pod, _pod_profiled(pod, profile))
        else:
            # The memo look-up is written out here and above rather than in one helper: a call
            # per cgroup and pod made this per-pod loop 7 % slower (stop 20, docs/performance.md).
            cgroups = {}
            for target in targets.cgroups:
                hit = known_cgroups(target.path)
                cgroups[target.path] = (
                    hit
                    if hit is not None and hit[0] is target
                    else (target, _cgroup_profiled(target, profile))
                )
            pods = {}
            for pod in targets.pods:
                hit_pod = known_pods(pod.uid)
                pods[pod.uid] = (
                    hit_pod
                    if hit_pod is not None and hit_pod[0] is pod
                    else (pod, _pod_profiled(pod, profile))
                )
        if len(cgroups) != len(targets.cgroups) or len(pods) != len(targets.pods):
            # A path or UID listed twice (the planner refuses such targets): no memo.
            new.result = profile_targets(targets, profile)
            return new
        new._cgroups, new._pods = cgroups, pods
        # As `profile_targets`: the targets themselves when nothing was filtered out.
        kept_cgroups = tuple(cgroups[t.path][1] for t in targets.cgroups)
        kept_pods = tuple(pods[p.uid][1] for p in targets.pods)
        if all(map(is_, kept_cgroups, targets.cgroups)) and all(map(is_, kept_pods, targets.pods)):
            new.result = targets
        else:
            new.result = msgspec.structs.replace(targets, cgroups=kept_cgroups, pods=kept_pods)
        if change is not None and follows and self.result is not None:
            new.change = TargetsChange(
                previous=self.result,
                cgroups=tuple(cgroups[t.path][1] for t in change.cgroups),
                dropped_paths=change.dropped_paths,
                pods=tuple(pods[p.uid][1] for p in change.pods),
                dropped_uids=change.dropped_uids,
            )
        return new
