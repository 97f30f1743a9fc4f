"""The one place where pod observations become input events.

Theory of operation
-------------------
Every source hands `PodTracker.update(name, pods)` the full set of pods it currently sees (see
memstate.node.sources.observation). The tracker keeps each source's last set, merges the sets by
precedence into the pods memstate should hold, and compares that with what it already asked for:

- a pod seen for the first time, or with another spec: `pod_admission_requested`;
- a pod no source sees any more: `pod_removal_requested` (a locator that held another UID before
  gets the removal of the old UID first, like a manifest whose UID changed);
- a pod that `Succeeded` or `Failed`: `pod_removal_requested` (it holds no running container);
- a terminating pod (`deletionTimestamp` set), or one that left a source that reports deletion
  while its containers may still run (kubelet, API server): held until `cgroup_gone(uid)` says
  its pod cgroup is gone, then `pod_removal_requested` (a deleted pod's containers use memory until
  they stop, and the kubelet also frees a pod's memory only once it is no longer active);
- every regular init container terminated with exit code 0: `pod_init_completed`, once;
- a pod that cannot be decoded: `manifest_invalid` under its locator, once per distinct error;
  when the locator goes away, `pod_removal_requested` with an empty UID clears the rejection.

Merging: a UID seen by several sources is taken from the source first in `PRECEDENCE` (kubelet,
API server, manifest directory). A manifest pod with a *derived* UID (a static pod without
`metadata.uid`) is dropped while a higher source lists the same static pod under the kubelet's
own UID (same `static_key`): the kubelet's real UID wins. Within one source two locators with one
UID: the locator that holds the pod keeps it — the one the tracker already admitted it from, or,
after a restart when nothing is held yet, the one the running pod came from (`holder_of`, which
the daemon answers from its state) — and only among newcomers does the locator sorting first win.
The others are invalid, naming both locators: a new file never takes over a running pod.

A source that fails keeps its last set, so an outage changes nothing already decided; only a new
successful observation can. Events carry `pod_source` (the source name) and `source` (the locator).

Commit protocol: `update` (and `recheck`) return events and stage the new view; the caller makes
the events durable and then calls `accept()`. Without `accept` the next call diffs against the
old view again, so events that were never recorded are asked for again. Callers serialise
update → commit → accept (memstate.node.sources.feed does). A source that knows which of its
entries changed since its previous update (the manifest directory after a hinted read) passes
that account as `changes`, and a small change then costs no pass over the list
(memstate.node.sources.tracker_delta); an account is ignored after an update that was not
accepted.

Container ids: the kubelet and the API server report each container's runtime id
(`containerStatuses[].containerID`). They decide nothing and are not events: `container_ids()`
(pod UID → {bare id → container name}, from the accepted view, the source first in
`PRECEDENCE` winning per id) is what the reconciler maps runtime-named container cgroups with, and
`accept()` records which pods' ids changed (`ids_changed`) so the daemon can converge their
containers at once. After a restart they come back with the sources' first poll or list.

The tracker does no I/O itself: the cgroup question is an injected callable.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from memstate.core.errors import InvariantViolation
from memstate.core.events import (
    Event,
    ManifestInvalid,
    PodAdmissionRequested,
    PodInitCompleted,
    PodRemovalRequested,
)
from memstate.node.sources.observation import PRECEDENCE, ObservedPod, SourceName
from memstate.node.sources.tracker_delta import Held as _Held
from memstate.node.sources.tracker_delta import (
    SingleSource,
    ViewEdits,
    evaluate_delta,
    index_single_source,
)

CgroupGone = Callable[[str], bool]
"""`cgroup_gone(uid)`: True when no process is left in the pod's cgroup (it is gone or empty)."""
HolderOf = Callable[[str], "str | None"]
"""`holder_of(uid)`: the locator the running pod with that UID came from, None if none runs."""

# Sources whose pods may still run after they stopped being listed (deleted through the API,
# force-deleted): their removals wait for the pod cgroup to be gone. The manifest directory is
# memstate's own: a deleted file removes the pod at once, as before.
_CGROUP_GATED: frozenset[str] = frozenset({"kubelet", "apiserver"})


@dataclass(frozen=True)
class _View:
    # The accepted view's dicts are edited in place by `accept` after a delta evaluation
    # (tracker_delta.ViewEdits); a pending view from the full evaluation holds new ones.
    held: dict[str, _Held] = field(default_factory=dict)  # uid → held pod
    invalid: dict[str, tuple[str, str]] = field(default_factory=dict)  # locator → (source, error)
    # Finished or released pods still listed by a source: not asked for again. uid → spec hash.
    done: dict[str, str] = field(default_factory=dict)
    # When one source holds every pod: its index for the delta path (tracker_delta).
    single: SingleSource | None = None
    # What a recheck asks again (see `PodTracker.recheck`): the UIDs whose pod cgroup was not
    # gone, in the order the evaluation asked.
    waiting: tuple[str, ...] = ()
    # A recheck evaluates in full: a UID two locators of one source declare may change owner
    # (`holder_of` answers from the daemon's state, which moves), or the view is not known to
    # be what the full evaluation gives (the delta path's edits keep a reordered list's old
    # order). Both are rare beside the network sources: their pods make the view a full one.
    in_full: bool = True


class PodTracker:
    """Turns the sources' observations into input events (see the module docstring)."""

    def __init__(
        self, *, cgroup_gone: CgroupGone | None = None, holder_of: HolderOf | None = None
    ) -> None:
        self._cgroup_gone = cgroup_gone
        self._holder_of = holder_of
        self._observed: dict[str, list[ObservedPod]] = {}
        self._view = _View()
        # The staged view: whole (the full evaluation), or the edits of the accepted one (the
        # delta path), applied in place by `accept`.
        self._pending: tuple[dict[str, list[ObservedPod]], _View | ViewEdits] | None = None
        # The container ids of the pending view and the pods whose ids it changes, when the
        # delta path patched them (None: `accept` derives them from every observation).
        self._pending_ids: tuple[dict[str, dict[str, str]], frozenset[str]] | None = None
        # Sources whose last `update` was not accepted (a recheck's acceptance is not theirs):
        # their accounts of changes (see `update`) are relative to a list the tracker does not
        # hold, so they are not used until an update of theirs is accepted.
        self._unaccepted: set[str] = set()
        self._pending_source: str | None = None  # whose update `_pending` holds
        self._container_ids: dict[str, dict[str, str]] = {}
        # The pods whose container ids the last `accept()` changed.
        self.ids_changed: frozenset[str] = frozenset()

    def update(
        self,
        source_name: SourceName,
        pods: Sequence[ObservedPod],
        *,
        holders: Mapping[str, str] | None = None,
        changes: Mapping[str, ObservedPod | None] | None = None,
    ) -> list[Event]:
        """`source_name` now sees exactly `pods`; the events for what changed (staged).

        `holders` (UID → locator of the running pod) overrides the injected `holder_of`.
        `changes`, from a source that keeps account (the manifest directory): locator → its
        observation now, None if gone, for every entry of `pods` that may differ from this
        source's previous `update`; new entries were appended to the list in this order, and
        every other entry is the same object at the same place. It lets a small change cost
        work proportional to it instead of a pass over `pods` (see tracker_delta).
        """
        observed = dict(self._observed)
        observed[source_name] = list(pods)
        before = self._view
        if source_name in self._unaccepted:
            changes = None
        self._unaccepted.add(source_name)
        self._pending_source = source_name
        delta = evaluate_delta(
            before.single,
            source_name,
            observed[source_name],
            held_before=before.held,
            invalid_before=before.invalid,
            done_before=before.done,
            changes=changes,
        )
        if delta is not None:
            self._pending = (observed, delta.edits)
            self._pending_ids = _patched_container_ids(self._container_ids, delta.pods_of)
            return delta.events
        if _same_pods(self._observed.get(source_name, ()), observed[source_name]):
            # A poll that found nothing new (the kubelet source keeps unchanged pods'
            # observations): evaluating it is a recheck.
            return self._again(observed, holders)
        return self._evaluate(observed, holders)

    def recheck(self) -> list[Event]:
        """Re-evaluate without a new observation: releases pods whose cgroup is gone now.

        A view the full evaluation made is what evaluating the accepted observations gives, so
        evaluating them again can differ only where an injected answer changed: the cgroup of a
        waiting pod (`_View.waiting`) or a contested UID's holder (then `_View.in_full` is set,
        as for a view the delta path edited). Only the cgroups are asked; the full evaluation
        runs when one is gone now or the view says so, and otherwise the accepted view is
        staged as it is: an idle node's recheck costs O(waiting pods), not O(pods)."""
        self._pending_source = None
        return self._again(dict(self._observed), None)

    def _again(
        self, observed: dict[str, list[ObservedPod]], holders: Mapping[str, str] | None
    ) -> list[Event]:
        """The evaluation of `observed`, the accepted observations (the same objects), staged:
        the full one only when a waiting pod's cgroup is gone or the view asks for it (see
        `recheck`), else the accepted view as it is."""
        view = self._view
        answers = {uid: self._is_gone(uid) for uid in view.waiting}
        if any(answers.values()) or view.in_full:
            return self._evaluate(observed, holders, answers)
        self._pending = (observed, view)
        self._pending_ids = (self._container_ids, frozenset())
        return []

    @property
    def settled(self) -> bool:
        """A recheck now would ask no cgroup and stage the accepted view as it is (no pod waits
        for its cgroup, the view needs no full evaluation): until an accepted view changes that,
        only a cgroup hint can make a recheck find something (memstate.node.loops.pods)."""
        view = self._view
        return not view.waiting and not view.in_full

    def accept(self) -> None:
        """The last call's events are durable: make its view the current one."""
        self.ids_changed = frozenset()
        if self._pending is not None:
            self._unaccepted.discard(self._pending_source or "")
            self._observed, pending = self._pending
            self._pending = None
            self._view = self._applied(pending, in_place=True)
            if self._pending_ids is not None:
                self._container_ids, self.ids_changed = self._pending_ids
                self._pending_ids = None
                return
            ids = _container_ids(self._observed)
            before = self._container_ids
            self.ids_changed = frozenset(
                uid for uid in ids.keys() | before.keys() if ids.get(uid) != before.get(uid)
            )
            self._container_ids = ids

    def _applied(self, pending: _View | ViewEdits, *, in_place: bool) -> _View:
        """The view `pending` stages: the accepted view edited (in place, or a copy), or
        itself."""
        if isinstance(pending, _View):
            return pending
        view = self._view
        if view.single is None:
            raise InvariantViolation("view edits staged without the delta path's index")
        edit = pending.apply if in_place else pending.applied_to
        return _View(*edit(view.held, view.invalid, view.done, view.single))

    def pending_view(self) -> _View | None:
        """The view the last `update` or `recheck` staged (None: none is staged), as `accept`
        would make it, the accepted view untouched (for tests)."""
        if self._pending is None:
            return None
        return self._applied(self._pending[1], in_place=False)

    def container_ids(self) -> dict[str, dict[str, str]]:
        """Pod UID → {bare runtime container id → container name}, as of the accepted view (a
        new dict after every change: safe to hand to another thread)."""
        return self._container_ids

    # --- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self,
        observed: dict[str, list[ObservedPod]],
        holders: Mapping[str, str] | None,
        answers: Mapping[str, bool] | None = None,
    ) -> list[Event]:
        """The full evaluation (staged). `answers`: cgroup answers already asked (a recheck's)."""
        before = self._view
        waiting: list[str] = []

        def gone(uid: str) -> bool:
            known = answers.get(uid) if answers is not None else None
            is_gone = self._is_gone(uid) if known is None else known
            if not is_gone:
                waiting.append(uid)
            return is_gone

        def holder(uid: str) -> str | None:
            held = before.held.get(uid)
            if held is not None:
                return held.locator
            if holders is not None:
                return holders.get(uid)
            return self._holder_of(uid) if self._holder_of is not None else None

        wanted, invalid, owners = _merge(observed, holder)
        held: dict[str, _Held] = {}
        done: dict[str, str] = {}
        removals: list[Event] = []
        requests: list[Event] = []

        for uid, previous in before.held.items():
            if uid in wanted:
                continue
            if previous.source_name in _CGROUP_GATED and not gone(uid):
                held[uid] = previous  # deleted, but its containers may still run
            else:
                removals.append(_removal(uid, previous))
        for locator, (name, _) in before.invalid.items():
            if locator not in invalid and not any(p.locator == locator for _, p in wanted.values()):
                removals.append(PodRemovalRequested(uid="", source=locator, pod_source=name))

        # Admissions, init completions and rejections in the order the sources list their pods.
        for name in PRECEDENCE:
            for pod in observed.get(name, []):
                rejected = invalid.get(pod.locator)
                if rejected is not None:
                    if rejected[0] == name and before.invalid.get(pod.locator) != rejected:
                        requests.append(
                            ManifestInvalid(source=pod.locator, error=rejected[1], pod_source=name)
                        )
                    continue
                if pod.pod is None or wanted.get(pod.uid, (None, None))[1] is not pod:
                    continue  # seen by a source of higher precedence
                uid = pod.uid
                was = before.held.get(uid)
                gone_now = pod.lifecycle == "terminating" and name in _CGROUP_GATED and gone(uid)
                if pod.lifecycle == "finished" or gone_now:
                    if was is not None:
                        removals.append(_removal(uid, was))
                    done[uid] = pod.spec_hash
                    continue
                if was is None and before.done.get(uid) == pod.spec_hash:
                    done[uid] = pod.spec_hash  # released earlier and still listed
                    continue
                if was is None or was.spec_hash != pod.spec_hash:
                    requests.append(
                        PodAdmissionRequested(pod=pod.pod, source=pod.locator, pod_source=name)
                    )
                init_done = was is not None and was.init_completed
                if pod.init_completed and not init_done:
                    requests.append(PodInitCompleted(uid=uid, pod_source=name))
                    init_done = True
                held[uid] = _Held(name, pod.locator, pod.spec_hash, init_done)

        single = index_single_source(
            observed, {h.source_name for h in held.values()}, _CGROUP_GATED
        )
        # The next evaluation asks `holder_of` for a contested UID unless the pod held under it
        # names the owner chosen now (then the owner stays).
        in_full = any(held.get(uid) is None or held[uid].locator != owner for uid, owner in owners)
        view = _View(held, invalid, done, single, tuple(waiting), in_full)
        self._pending = (observed, view)
        self._pending_ids = None
        return removals + requests

    def _is_gone(self, uid: str) -> bool:
        return True if self._cgroup_gone is None else self._cgroup_gone(uid)


def _container_ids(
    observed: Mapping[str, Sequence[ObservedPod]], order: Sequence[str] = PRECEDENCE
) -> dict[str, dict[str, str]]:
    ids: dict[str, dict[str, str]] = {}
    for name in order:
        for pod in observed.get(name, ()):
            if pod.pod is None or not pod.container_ids:
                continue
            known = ids.setdefault(pod.uid, {})
            for runtime_id, container in pod.container_ids:
                known.setdefault(runtime_id, container)
    return ids


def _patched_container_ids(
    ids: dict[str, dict[str, str]], pods_of: Mapping[str, ObservedPod | None]
) -> tuple[dict[str, dict[str, str]], frozenset[str]]:
    """`ids` with the pods in `pods_of` (UID → its one observation now, None: none) re-derived,
    and the UIDs whose ids that changes; `ids` itself when none. Valid where the delta path
    is: one source has pods, and each UID in `pods_of` has at most that one observation."""
    patched: dict[str, dict[str, str]] | None = None
    changed: list[str] = []
    for uid, pod in pods_of.items():
        now = _container_ids({"": [pod]}, ("",)).get(uid) if pod is not None else None
        if now != ids.get(uid):
            if patched is None:
                patched = dict(ids)  # a new dict after every change (see `container_ids`)
            if now is None:
                del patched[uid]
            else:
                patched[uid] = now
            changed.append(uid)
    return (ids if patched is None else patched), frozenset(changed)


def _same_pods(before: Sequence[ObservedPod], now: Sequence[ObservedPod]) -> bool:
    """The same observation objects in the same order (a C pass, no comparison of values)."""
    return len(before) == len(now) and all(map(operator.is_, before, now))


def _removal(uid: str, held: _Held) -> PodRemovalRequested:
    return PodRemovalRequested(uid=uid, source=held.locator, pod_source=held.source_name)


def _merge(
    observed: dict[str, list[ObservedPod]], holder: Callable[[str], str | None]
) -> tuple[dict[str, tuple[str, ObservedPod]], dict[str, tuple[str, str]], list[tuple[str, str]]]:
    """The pods to hold (uid → (source, pod)), the invalid ones (locator → (source, error)) and
    the contested UIDs' owners ((uid, locator) where two locators of one source declare it).

    `holder(uid)` names the locator that holds a running pod: it keeps the UID."""
    wanted: dict[str, tuple[str, ObservedPod]] = {}
    invalid: dict[str, tuple[str, str]] = {}
    contested: list[tuple[str, str]] = []
    static_keys: set[str] = set()
    for name in PRECEDENCE:
        pods = observed.get(name, [])
        claims: dict[str, list[str]] = {}
        for pod in pods:
            if pod.pod is not None:
                claims.setdefault(pod.uid, []).append(pod.locator)
        owners: dict[str, str] = {}
        for uid, locators in claims.items():
            if len(locators) > 1:
                held = holder(uid)
                owners[uid] = held if held in locators else min(locators)
                contested.append((uid, owners[uid]))
            else:
                owners[uid] = locators[0]
        for pod in pods:
            if pod.pod is None:
                invalid[pod.locator] = (name, pod.error)
                continue
            if owners[pod.uid] != pod.locator:
                invalid[pod.locator] = (
                    name,
                    f"$.metadata.uid: uid {pod.uid} is already declared by "
                    f"{owners[pod.uid]}; {pod.locator} is ignored while that one holds it",
                )
                continue
            if pod.uid in wanted:
                continue  # a source of higher precedence sees this pod
            if pod.derived_uid and pod.static_key in static_keys:
                continue  # the kubelet's own UID for this static pod wins
            wanted[pod.uid] = (name, pod)
        static_keys.update(p.static_key for p in pods if p.static_key and not p.derived_uid)
    return wanted, invalid, contested
