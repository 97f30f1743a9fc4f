"""Container cgroups: which directories under a pod cgroup are which container, and their targets.

memstate never creates a container cgroup (the runtime does); it discovers them under the pod
cgroups it observes and manages the Memory QoS files the kubelet would have put into the CRI
`unified` map: `memory.min`, `memory.low` (TieredReservation, per the *pod* class) and
`memory.high` (memory-qos.md §3, §4.1). `memory.max`, hugetlb and cpuset files of containers
belong to the runtime and are never written.

Naming rule (kubelet-node.md §6): a directory directly under the pod cgroup is the container

- whose **name** it is (the standalone layout, `<pod cgroup>/<container name>`: a runtime or test
  harness that names container cgroups after the container); else
- whose **runtime container id** it carries: `<64 hex>` (containerd, cgroupfs),
  `cri-containerd-<id>.scope` (containerd, systemd), `crio-<id>` / `crio-<id>.scope` (CRI-O). The
  id comes from the kubelet's pod status (`containerStatuses[].containerID`, with its
  `containerd://` / `cri-o://` prefix stripped) or from NRI; without a known id such a directory
  is left alone.

Everything else (the sandbox's pause container, `crio-conmon-<id>`, unknown names) is left alone.
Pure: the observed tree and the ids are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, compress
from operator import attrgetter, is_not

import msgspec

from memstate.core.errors import InvariantViolation
from memstate.core.plan.model import ObservedTree, join_path, one_edit
from memstate.core.targets import (
    MEMORY_HIGH,
    MEMORY_LOW,
    MEMORY_MIN,
    CgroupTarget,
    NodeTargets,
    PodTargets,
    TargetsChange,
)

# The files memstate manages on a container cgroup; the runtime owns the rest.
CONTAINER_FILES = (MEMORY_MIN, MEMORY_LOW, MEMORY_HIGH)

_RUNTIME_DIR_RES = (
    re.compile(r"(?P<id>[0-9a-f]{64})"),
    re.compile(r"cri-containerd-(?P<id>[0-9a-f]{64})\.scope"),
    re.compile(r"crio-(?P<id>[0-9a-f]{64})(?:\.scope)?"),
)
_ID_PREFIX_RE = re.compile(r"[a-z0-9.+-]+://")


def runtime_container_id(container_id: str) -> str:
    """The bare id of a `containerStatuses[].containerID` (``containerd://<id>`` → ``<id>``)."""
    match = _ID_PREFIX_RE.match(container_id)
    return container_id[match.end() :] if match else container_id


def container_for_directory(
    name: str, container_names: frozenset[str], ids: Mapping[str, str]
) -> str | None:
    """The container a directory under its pod cgroup belongs to (the module's naming rule), or
    None. `ids` maps bare runtime container ids to container names for this pod."""
    if name in container_names:
        return name
    for pattern in _RUNTIME_DIR_RES:
        match = pattern.fullmatch(name)
        if match is not None:
            found = ids.get(match.group("id"))
            return found if found in container_names else None
    return None


def container_targets_for_pod(
    pod: PodTargets, children: tuple[str, ...], ids: Mapping[str, str]
) -> list[CgroupTarget]:
    """Targets for the container cgroups found among `children` of the pod's cgroup."""
    files_by_name = {
        c.name: {f: c.files[f] for f in CONTAINER_FILES if f in c.files} for c in pod.containers
    }
    names = frozenset(files_by_name)
    found: list[CgroupTarget] = []
    for directory in sorted(children):
        container = container_for_directory(directory, names, ids)
        if container is None or not files_by_name[container]:
            continue
        found.append(
            CgroupTarget(
                path=join_path(pod.cgroup, directory),
                level="container",
                files=files_by_name[container],
                pod_uid=pod.uid,
            )
        )
    return found


# (pod, its cgroup's listing, its runtime ids) -> the container targets that listing shows
DeriveContainers = Callable[[PodTargets, tuple[str, ...], Mapping[str, str]], list[CgroupTarget]]
_NO_IDS: Mapping[str, str] = {}


def with_container_targets(
    targets: NodeTargets,
    observed: ObservedTree,
    container_ids: Mapping[str, Mapping[str, str]] | None = None,
    *,
    listed_is_enough: bool = False,
    derive: DeriveContainers | None = None,
) -> NodeTargets:
    """`targets` plus a target for every container cgroup `observed` shows under a desired pod
    cgroup (never one that does not exist: memstate creates no container cgroup).

    A container cgroup must have been observed to exist itself, or, with `listed_is_enough`,
    merely be listed by its pod cgroup (to know which cgroups to observe next; the planner must
    only ever get the observed ones, or it would create the missing). `container_ids`: pod UID →
    {bare runtime container id → container name}. Container targets come after every other
    cgroup, so parents stay listed before children. `derive` computes one pod's candidates
    (`container_targets_for_pod` unless given: the reconciler passes a memo of it, since every
    round looks at every pod's listing).
    """
    ids = container_ids or {}
    derive = derive or container_targets_for_pod
    extra: list[CgroupTarget] = []
    for pod in targets.pods:
        found = observed.get(pod.cgroup)
        if found is None or not found.exists or not found.children:
            continue
        candidates = [
            t
            for t in derive(pod, found.children, ids.get(pod.uid, _NO_IDS))
            if listed_is_enough or observed.exists(t.path)
        ]
        extra.extend(candidates)
    if not extra:
        return targets
    return msgspec.structs.replace(targets, cgroups=(*targets.cgroups, *extra))


def container_paths(targets: NodeTargets) -> dict[str, list[str]]:
    """Pod cgroup path → the container cgroup paths of `targets` under it."""
    by_pod: dict[str, list[str]] = {}
    for target in targets.cgroups:
        if target.level == "container":
            parent = target.path.rpartition("/")[0]
            by_pod.setdefault(parent, []).append(target.path)
    return by_pod


def changed_paths(old: ObservedTree, new: ObservedTree) -> list[str]:
    """The paths whose observation is not the same object in both trees (held by one only, or
    replaced), found in C: no Python step per unchanged cgroup. Unordered."""
    before, after = old.cgroups, new.cgroups
    changed = list(compress(after, map(is_not, map(before.get, after), after.values())))
    kept = len(after) - sum(1 for path in changed if path not in before)
    if kept != len(before):  # some were dropped
        changed.extend(before.keys() - after.keys())
    return changed


class ContainerIndex:
    """`with_container_targets` carried from one round to the next.

    Holds, for one (targets, observed tree, runtime ids), every pod's container candidates (the
    listed ones and those observed to exist) and the complete targets. `updated` derives the
    index of the next (targets, tree, ids) from the pods whose targets, runtime ids, cgroup
    observation or container cgroups' observations are not the same objects as before (found
    in C by identity: the targets tracker keeps an unchanged pod's targets, the reconciler's
    trees share unchanged observations), so a scoped round does not look at every pod. The
    answers are those of `with_container_targets` on the same inputs (tests/reconcile/
    test_container_index.py compares them over random sequences).

    Handed on, not copied: `updated` edits the tables (every pod's entry, each a dict of
    every pod) in place for the affected pods and returns a new index over them; the index it
    was called on is spent (`spent`: every later `updated`, `listed` or `complete` of it raises
    `InvariantViolation`), so no answer changes under a holder. Copying them cost a pass in C
    over every pod per round, and again to free the copy: what made a one-pod round grow with
    the node.
    """

    __slots__ = (
        "_cgroup_of",
        "_complete",
        "_derive",
        "_extra",
        "_ids",
        "_listed",
        "_pods",
        "_present",
        "recent",
        "spent",
        "targets",
        "tree",
    )

    def __init__(self, derive: DeriveContainers | None = None) -> None:
        self.targets: NodeTargets | None = None
        self.tree: ObservedTree = ObservedTree(cgroups={})
        self._derive = derive or container_targets_for_pod
        self._pods: dict[str, PodTargets] = {}
        self._ids: dict[str, Mapping[str, str]] = {}
        self._cgroup_of: dict[str, str] = {}  # pod cgroup path -> pod UID
        self._listed: dict[str, tuple[CgroupTarget, ...]] = {}  # UID -> listed candidates
        self._present: dict[str, tuple[CgroupTarget, ...]] = {}  # UID -> observed to exist
        self._complete: NodeTargets | None = None
        self._extra: tuple[CgroupTarget, ...] = ()  # what `_complete` adds to its targets
        # The change records of the last few complete targets, each against the one before
        # (`memstate.core.targets.change_since`), while they are known; () otherwise.
        self.recent: tuple[TargetsChange, ...] = ()
        # True once `updated` handed the tables on to the next index.
        self.spent = False

    def updated(
        self,
        targets: NodeTargets,
        observed: ObservedTree,
        container_ids: Mapping[str, Mapping[str, str]] | None = None,
        change: TargetsChange | None = None,
        tree_paths: Iterable[str] | None = None,
    ) -> ContainerIndex:
        """The index of (`targets`, `observed`, `container_ids`), from this one's. `change`:
        the targets' record against those this index holds, if known: then only the pods it
        lists are compared, not every pod. `tree_paths`: every path whose observation may
        differ between this index's tree and `observed` (`touched_since`), if known: then
        only those are compared, not every cgroup."""
        if self.spent:
            _refuse()
        self.spent = True
        ids = dict(container_ids or {})
        pods: dict[str, PodTargets] | None = None
        followed: TargetsChange | None = None  # what changed in the targets, when known
        # UID -> its entry in the pods' table before this update edited it in place.
        prior_pods: dict[str, PodTargets | None] = {}
        if self.targets is None:
            affected: set[str] = set()
        elif targets is self.targets:
            pods, affected = self._pods, set()
            followed = TargetsChange(previous=targets)
        elif change is not None and change.previous is self.targets:
            followed = change
            # Only the listed pods can differ: the table edited by the change, in place.
            pods = self._pods
            affected = set()
            for gone in change.dropped_uids:
                if gone in pods:
                    prior_pods.setdefault(gone, pods.pop(gone))
                    affected.add(gone)
            for given in change.pods:
                held = pods.get(given.uid)
                if held is not given:
                    prior_pods.setdefault(given.uid, held)
                    affected.add(given.uid)
                    pods[given.uid] = given
            if len(pods) != len(targets.pods):
                # A UID listed twice: put the table back and compare every pod, as without
                # the record.
                for edited, held in prior_pods.items():
                    if held is None:
                        del pods[edited]
                    else:
                        pods[edited] = held
                prior_pods = {}
                pods = None
                followed = None
        if pods is None:
            # Comprehensions: cheaper here than map/zip over attribute getters.
            pods = {pod.uid: pod for pod in targets.pods}
            if self.targets is None:
                affected = set(pods)
            else:
                known = self._pods.get
                affected = {uid for uid, pod in pods.items() if known(uid) is not pod}
                kept = len(pods) - sum(1 for uid in affected if uid not in self._pods)
                if kept != len(self._pods):
                    affected.update(self._pods.keys() - pods.keys())
        if self.targets is not None:
            # The pods whose runtime ids are not the same object, found in C (no Python step
            # per pod: the owner keeps an unchanged pod's ids).
            affected.update(compress(ids, map(is_not, map(self._ids.get, ids), ids.values())))
            affected.update(self._ids.keys() - ids.keys())
            cgroup_of = self._cgroup_of
            was, now = self.tree.cgroups, observed.cgroups
            moved = (
                changed_paths(self.tree, observed)
                if tree_paths is None
                else [path for path in tree_paths if was.get(path) is not now.get(path)]
            )
            for path in moved:
                # A pod cgroup's own observation (its listing) or a container cgroup's.
                uid = cgroup_of.get(path) or cgroup_of.get(path.rpartition("/")[0])
                if uid is not None:
                    affected.add(uid)
        new = ContainerIndex(self._derive)
        new.targets, new.tree, new._pods, new._ids = targets, observed, pods, ids
        cgroup_of, listed, present = self._cgroup_of, self._listed, self._present
        new._cgroup_of, new._listed, new._present = cgroup_of, listed, present
        if not affected and targets is self.targets and self._complete is not None:
            new._complete, new._extra = self._complete, self._extra
            new.recent = self.recent
            return new
        # The affected pods' entries before they are edited in place (what the complete
        # targets and their change record are derived from).
        old_pods = self._pods
        prior_present = {uid: present.get(uid) for uid in affected}
        for uid in affected:
            before = prior_pods[uid] if uid in prior_pods else old_pods.get(uid)
            pod = pods.get(uid)
            if (
                before is not None
                and (pod is None or pod.cgroup != before.cgroup)
                and cgroup_of.get(before.cgroup) == uid
            ):
                del cgroup_of[before.cgroup]
            candidates: tuple[CgroupTarget, ...] = ()
            there: tuple[CgroupTarget, ...] = ()
            if pod is not None:
                cgroup_of[pod.cgroup] = uid
                found = observed.cgroups.get(pod.cgroup)
                if found is not None and found.exists and found.children:
                    candidates = tuple(self._derive(pod, found.children, ids.get(uid, _NO_IDS)))
                    there = tuple(t for t in candidates if observed.exists(t.path))
                    was_there = prior_present[uid]
                    if there and was_there is not None and there == was_there:
                        # Derived again, equal: the objects already held (what the complete
                        # targets and their change record hold stays the same objects).
                        there = was_there
            _put(listed, uid, candidates)
            _put(present, uid, there)
        new._extra = extra = self._extra_for(targets, affected, present, prior_present)
        new._complete = (
            msgspec.structs.replace(targets, cgroups=(*targets.cgroups, *extra))
            if extra
            else targets
        )
        if followed is not None and self._complete is not None:
            new.recent = (
                *self.recent[-3:],
                self._complete_change(followed, affected, present, prior_present),
            )
        return new

    def _extra_for(
        self,
        targets: NodeTargets,
        affected: set[str],
        present: Mapping[str, tuple[CgroupTarget, ...]],
        prior: Mapping[str, tuple[CgroupTarget, ...] | None],
    ) -> tuple[CgroupTarget, ...]:
        """The container cgroups of `targets`' pods, in the pods' order (what
        `with_container_targets` adds). This index's own when no affected pod's entry changed
        (the same object: an equal one derived again is replaced by the one held) and the pods
        are this index's targets' pods (compared by identity first), or those with one pod
        that has no entry put in or taken out: the same entries in the same order. Gathered
        again otherwise (a pass over every pod: ~60 us at 500 pods with containers). `prior`:
        the affected pods' entries before the update (the others are unchanged)."""
        if not present:
            return ()
        if self.targets is not None and self._complete is not None:
            before, after = self.targets.pods, targets.pods
            if all(present.get(uid) is prior[uid] for uid in affected):
                if len(before) == len(after) and before == after:
                    return self._extra
                edit = one_edit(before, after)
                if edit is not None:
                    uid = edit[0].uid
                    held = prior[uid] if uid in prior else present.get(uid)
                    if uid not in present and held is None:
                        return self._extra
        # In the targets' pod order, as `with_container_targets` (C-level passes only).
        order = list(filter(present.__contains__, map(_uid, targets.pods)))
        return tuple(chain.from_iterable(map(present.__getitem__, order)))

    def _complete_change(
        self,
        change: TargetsChange,
        affected: set[str],
        present: Mapping[str, tuple[CgroupTarget, ...]],
        prior: Mapping[str, tuple[CgroupTarget, ...] | None],
    ) -> TargetsChange:
        """The record of the new complete targets against this index's: the targets' own
        record plus the container cgroups of the affected pods, before (`prior`) and after."""
        if self._complete is None:
            raise InvariantViolation("a container index without complete targets")
        cgroups = list(change.cgroups)
        dropped = set(change.dropped_paths)
        for uid in sorted(affected):  # a deterministic record
            dropped.update(t.path for t in prior[uid] or ())
            cgroups.extend(present.get(uid, ()))
        dropped.difference_update(t.path for t in cgroups)
        return TargetsChange(
            previous=self._complete,
            cgroups=tuple(cgroups),
            dropped_paths=frozenset(dropped),
            pods=change.pods,
            dropped_uids=change.dropped_uids,
        )

    @property
    def complete(self) -> NodeTargets:
        """The targets plus every container cgroup observed to exist (what
        `with_container_targets(targets, observed, container_ids)` returns)."""
        if self.spent:
            _refuse()
        if self._complete is None:
            raise InvariantViolation("a container index asked before its first update")
        return self._complete

    def listed(self, pod_cgroups: Iterable[str] | None = None) -> list[CgroupTarget]:
        """The container cgroups listed under `pod_cgroups` (every pod cgroup when None) that
        are candidates, whether observed to exist or not, sorted by path."""
        if self.spent:
            _refuse()
        if pod_cgroups is None:
            found = [t for targets in self._listed.values() for t in targets]
        else:
            uids = {self._cgroup_of.get(path) for path in pod_cgroups}
            found = [t for uid in uids if uid is not None for t in self._listed.get(uid, ())]
        return sorted(found, key=_path)


def _refuse() -> None:
    raise InvariantViolation("a container index used after it was updated (spent: handed on)")


def _put(
    table: dict[str, tuple[CgroupTarget, ...]], uid: str, value: tuple[CgroupTarget, ...]
) -> None:
    """`table[uid] = value`, or no entry for an empty `value` (taken out only if held)."""
    if value:
        table[uid] = value
    elif uid in table:
        del table[uid]


def _path(target: CgroupTarget) -> str:
    return target.path


_uid = attrgetter("uid")
