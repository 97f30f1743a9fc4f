"""Pod cgroups waiting to be removed, derived from the log so that no restart forgets one.

Theory of operation
-------------------
A pod cgroup is *retired* when the pod cgroup path a state implies stops being implied: the pod
was removed or rejected, its manifest changed its QoS class in place (same UID, the cgroup moves
from ``kubepods/burstable`` to ``kubepods/besteffort``), or a reconfiguration changed the cgroup
naming (driver, cgroupRoot). Retirement is by *path*, never by UID, so a UID that is still
desired somewhere else never hides the cgroup it left behind.

Nothing new is recorded for a retirement: it follows from decisions already in the log (the
states before and after each transaction). What is recorded is the end of it: the daemon appends
a `pod_cgroup_removed` note once the reconciler has seen the cgroup gone. So

    pending = paths retired by the log's decisions − paths the log's notes say are gone
              − paths the state implies again

is a pure fold over the log (`fold_removals`), rebuilt at every start by recovery, carried in
checkpoints beside the state (the state hash does not cover it: the fold is of the log, not of the
reducer's state, and old logs keep their hashes), and handed to the reconciler in full every
round. The reconciler keeps no list of its own.

`fold_removals` compares only the pods a transaction names when every event in it names one
(the reducer's handlers change no other pod), and every pod otherwise (a restart, a
reconfiguration, the end of readmission); `tests/property` checks that both agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from memstate.core.cgroup_paths import pod_path
from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.events import Event, PodCgroupRemoved, pod_uid_of
from memstate.core.reducer import FoldedChanges
from memstate.core.state import PodRecord


class PendingRemovals(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retired pod cgroups not yet seen gone: cgroup path → the pod UID it belonged to."""

    paths: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self.paths)


NO_REMOVALS = PendingRemovals()


def _naming(config: NodeConfig | None) -> tuple[object, ...] | None:
    return None if config is None else (config.cgroup_driver, config.cgroup_root)


def _path_of(config: NodeConfig | None, record: PodRecord | None) -> str | None:
    if config is None or record is None:
        return None
    return pod_path(config, record.pod.uid, record.qos_class)


class PodsAt(Protocol):
    """What the fold reads of a state: a `State`, start-up's `Folder`, or a `PodsSnapshot`."""

    @property
    def config(self) -> NodeConfig | None: ...

    @property
    def pods(self) -> Mapping[str, PodRecord]: ...


@dataclass(frozen=True)
class PodsSnapshot:
    """The part of a state one transaction's fold needs, taken before it (see `snapshot_for`)."""

    config: NodeConfig | None
    pods: Mapping[str, PodRecord]


def snapshot_for(current: PodsAt, events: Sequence[Event]) -> PodsSnapshot:
    """Before a transaction of `events` is folded into `current` (mutated in place, as start-up's
    `Folder` is): the pods `fold_removals` will look at — the ones the events name, or all of
    them when an event names none (a restart, a reconfiguration)."""
    uids = {pod_uid_of(e) for e in events if not isinstance(e, PodCgroupRemoved)}
    if "" in uids:
        return PodsSnapshot(current.config, dict(current.pods))
    pods = current.pods
    return PodsSnapshot(current.config, {uid: pods[uid] for uid in uids if uid in pods})


def pod_cgroup_paths(state: PodsAt) -> dict[str, str]:
    """Every pod cgroup path the state implies → its pod UID (empty before a config)."""
    config = state.config
    if config is None:
        return {}
    return {pod_path(config, uid, r.qos_class): uid for uid, r in state.pods.items()}


def fold_removals(
    pending: PendingRemovals, before: PodsAt, events: Sequence[Event], after: PodsAt
) -> PendingRemovals:
    """`pending` after one transaction (an input and its decisions, or one note) took the
    state from `before` to `after`. Pure."""
    paths: dict[str, str] | None = None  # copied on the first change

    def drop(path: str) -> None:
        nonlocal paths
        if path in (pending.paths if paths is None else paths):
            paths = dict(pending.paths) if paths is None else paths
            paths.pop(path)

    def retire(path: str, uid: str) -> None:
        nonlocal paths
        paths = dict(pending.paths) if paths is None else paths
        paths[path] = uid

    _fold(drop, retire, before, events, after)
    # Insertion order is history order; every consumer sorts (checkpoints, the reconciler).
    return pending if paths is None else PendingRemovals(paths=paths)


class RemovalsFolder:
    """`fold_removals` for start-up: a working copy of the pending paths, changed in place (as
    `reducer.Folder` folds the state), so a retirement does not copy the whole pending map.

    It also skips most of the walk over every pod that a transaction naming no pod asks for (an
    unreadable manifest, a restart). After such a walk no pending path is one the state implies
    (the walk drops them all), and every later fold keeps it so: a retired path is the old path
    of a pod whose path changed, and paths embed the pod UID, so no other pod implies it. From
    then on, a walk needs only the pods whose record changed (compared by identity; an unchanged
    record implies the same path under the same naming); the rest would only drop paths that
    are not pending. Before the first walk (pending from a checkpoint is taken as it is) the
    full walk runs, as in `fold_removals`. tests/property/test_removals.py compares the two.
    """

    def __init__(self, pending: PendingRemovals) -> None:
        self.paths = dict(pending.paths)
        # Known: no pending path is implied by the state folded so far (trivially so when
        # nothing is pending).
        self._clean = not self.paths

    @property
    def clean(self) -> bool:
        """True once `fold_changes` may be used (no pending path is implied by the state)."""
        return self._clean

    def gone(self, path: str) -> None:
        """`fold` of a transaction that is one `pod_cgroup_removed` note (a note stands alone and
        changes no pod, so the fold only drops its path), in any state, clean or not."""
        self.paths.pop(path, None)

    def fold_changes(self, changes: FoldedChanges, events: Sequence[Event], after: PodsAt) -> None:
        """`fold` of one transaction from what start-up's `Folder` journaled for it, without a
        snapshot of the pods before it; only while `clean`. A UID whose record did not change
        implies the same path, which is not pending (clean), so only the journaled UIDs are
        compared; notes drop their paths first, as in `fold_removals`."""
        if not self._clean:
            raise InvariantViolation("RemovalsFolder.fold_changes before a clean state")
        if changes.replaced is not None:
            self.fold(PodsSnapshot(changes.config, changes.replaced), events, after)
            return
        paths = self.paths
        if paths:  # a note drops its path; with nothing pending it has nothing to drop
            for event in events:
                if isinstance(event, PodCgroupRemoved):
                    paths.pop(event.path, None)
        self.fold_pods(changes.before, changes.config, after.pods)

    def fold_pods(
        self,
        before: Mapping[str, PodRecord | None],
        config: NodeConfig | None,
        new_pods: Mapping[str, PodRecord],
    ) -> None:
        """`fold_changes` of a transaction that holds no `pod_cgroup_removed` note (an input and
        its decisions: a note stands alone) and replaced nothing (so the config is the same
        before and after it): `before` is its journal, `new_pods` the pods after it."""
        if not self._clean:
            raise InvariantViolation("RemovalsFolder.fold_pods before a clean state")
        paths = self.paths
        if config is None or not before:
            return
        for uid in sorted(before) if len(before) > 1 else before:
            old_record = before[uid]
            new_record = new_pods.get(uid)
            if old_record is None:
                if new_record is None or not paths:
                    continue  # nothing retired, and nothing pending to drop
            elif new_record is not None and new_record.qos_class == old_record.qos_class:
                continue  # the same path (same config and UID): implied before, not pending
            old = None if old_record is None else pod_path(config, uid, old_record.qos_class)
            new = None if new_record is None else pod_path(config, uid, new_record.qos_class)
            if old is not None and old != new:
                paths[old] = uid
            if new is not None:
                paths.pop(new, None)

    def fold(self, before: PodsAt, events: Sequence[Event], after: PodsAt) -> None:
        """`fold_removals` of one transaction, in place."""
        paths = self.paths
        if (
            self._clean
            and before.pods is not after.pods
            and _naming(before.config) == _naming(after.config)
            and "" in {pod_uid_of(e) for e in events if not isinstance(e, PodCgroupRemoved)}
        ):
            for event in events:
                if isinstance(event, PodCgroupRemoved):
                    paths.pop(event.path, None)
            old_pods, new_pods = before.pods, after.pods
            changed = [uid for uid, record in old_pods.items() if new_pods.get(uid) is not record]
            changed.extend(uid for uid in new_pods if uid not in old_pods)
            retired: list[tuple[str, str]] = []
            for uid in changed:
                old = _path_of(before.config, old_pods.get(uid))
                new = _path_of(after.config, new_pods.get(uid))
                if old is not None and old != new:
                    retired.append((old, uid))
                if new is not None:
                    paths.pop(new, None)
            for path, uid in sorted(retired):
                paths[path] = uid
            return

        def drop(path: str) -> None:
            paths.pop(path, None)

        if _fold(drop, paths.__setitem__, before, events, after):
            self._clean = True

    def pending(self, start: PendingRemovals) -> PendingRemovals:
        """The result: `start` itself when nothing changed (as `fold_removals` returns it)."""
        if list(self.paths.items()) == list(start.paths.items()):
            return start
        return PendingRemovals(paths=dict(self.paths))


def _fold(
    drop: Callable[[str], None],
    retire: Callable[[str, str], None],
    before: PodsAt,
    events: Sequence[Event],
    after: PodsAt,
) -> bool:
    """The fold of one transaction through `drop` and `retire`; True when it walked every pod
    (so that afterwards no pending path is one `after` implies)."""
    for event in events:
        if isinstance(event, PodCgroupRemoved):
            drop(event.path)
    same_naming = _naming(before.config) == _naming(after.config)
    if before.pods is not after.pods or not same_naming:
        uids = {pod_uid_of(e) for e in events if not isinstance(e, PodCgroupRemoved)}
        if same_naming and "" not in uids:
            for uid in sorted(uids):
                old = _path_of(before.config, before.pods.get(uid))
                new = _path_of(after.config, after.pods.get(uid))
                if old is not None and old != new:
                    retire(old, uid)
                if new is not None:
                    drop(new)
        else:
            old_paths = pod_cgroup_paths(before)
            new_paths = pod_cgroup_paths(after)
            for path in sorted(old_paths):
                if path not in new_paths:
                    retire(path, old_paths[path])
            for path in sorted(new_paths):
                drop(path)
            return True
    return False


def removals_from_paths(paths: Mapping[str, str]) -> PendingRemovals:
    """A `PendingRemovals` from a decoded mapping (checkpoints), keys sorted."""
    return PendingRemovals(paths=dict(sorted(paths.items()))) if paths else NO_REMOVALS
