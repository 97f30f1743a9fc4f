"""`PodTracker`'s evaluation of a small change, proportional to the change.

The full evaluation (`memstate.node.sources.tracker`) merges every source's whole list on each
delivery: O(pods) of Python work per admission. In the common shape — one source holds every pod
memstate tracks, it does not gate removals on the pod cgroup (the manifest directory), and no UID
is claimed by two of its locators — the outcome of a delivery that changes a few locators is
determined by those locators alone. `evaluate_delta` computes exactly the events and the view the
full evaluation would (same events, same order, same dicts in the same order) from the changed
locators, and returns None whenever the shape does not hold, so the caller falls back to the full
evaluation. `tests/sources/test_tracker_delta.py` compares both on seeded random deliveries.

Finding what changed: a source that keeps account of it (the manifest directory after a hinted
read: `changes`, locator → observation now) names the changed locators, so nothing walks the list;
otherwise the new list is compared with the accepted one, in C but for the entries that are not
the same objects as before (the manifest source keeps an unchanged file's observation object).
What is still linear is done in C: copies of the view's dicts and of the list, and — only when an
added entry does not belong at the end of a dict (a file sorting before others) — that dict
re-ordered by the new list (a Python pass, for that rare case).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from memstate.core.events import (
    Event,
    ManifestInvalid,
    PodAdmissionRequested,
    PodInitCompleted,
    PodRemovalRequested,
)
from memstate.node.sources.observation import ObservedPod

V = TypeVar("V")

# Larger deliveries (a first listing, a directory replaced) take the full evaluation.
DELTA_LIMIT = 32


@dataclass(frozen=True)
class Held:
    """A pod memstate asked to admit and has not asked to remove."""

    source_name: str
    locator: str
    spec_hash: str
    init_completed: bool


@dataclass(frozen=True)
class SingleSource:
    """What the delta needs about the accepted view when one source holds every pod."""

    source: str
    by_locator: dict[str, ObservedPod]  # the source's accepted list, in its order
    claims: dict[str, int]  # uid → how many of its locators declare it (decodable pods)


def index_single_source(
    observed: dict[str, list[ObservedPod]],
    held_sources: set[str],
    gated: frozenset[str],
) -> SingleSource | None:
    """The index for the delta path, or None when more than one source has pods, the one
    source gates removals, a held pod came from elsewhere, or two entries share a locator."""
    names = [name for name, pods in observed.items() if pods]
    if len(names) != 1 or names[0] in gated or not held_sources <= {names[0]}:
        return None
    pods = observed[names[0]]
    by_locator = {pod.locator: pod for pod in pods}
    if len(by_locator) != len(pods):
        return None
    claims: dict[str, int] = {}
    for pod in pods:
        if pod.pod is not None:
            claims[pod.pod.uid] = claims.get(pod.pod.uid, 0) + 1
    return SingleSource(names[0], by_locator, claims)


@dataclass(frozen=True)
class DeltaResult:
    """The events, and the view's parts, of one delta evaluation."""

    events: list[Event]
    held: dict[str, Held]
    invalid: dict[str, tuple[str, str]]
    done: dict[str, str]
    index: SingleSource
    # Every UID whose observations the delivery touched → its decodable observation now (None:
    # it has none): what the tracker's container ids are patched with.
    pods_of: dict[str, ObservedPod | None]


def evaluate_delta(
    index: SingleSource | None,
    name: str,
    pods: Sequence[ObservedPod],
    *,
    held_before: dict[str, Held],
    invalid_before: dict[str, tuple[str, str]],
    done_before: dict[str, str],
    changes: Mapping[str, ObservedPod | None] | None = None,
) -> DeltaResult | None:
    """Events and view for `name` now seeing `pods`, or None (take the full evaluation).

    `changes`, when the source keeps account of them: locator → its observation now (None: gone)
    for every entry that may differ from the accepted list, new entries in the order they were
    appended to it; every other entry is the same object at the same place. With it no pass
    over the list is needed (cheap checks that it fits the list fall back to comparing).
    """
    if index is None or index.source != name:
        return None
    old = index.by_locator
    found = (
        _hinted_changes(old, pods, changes) if changes is not None else _compared_changes(old, pods)
    )
    if found is None:
        return None
    new, changed, gone = found
    if not changed and not gone:
        return DeltaResult([], held_before, invalid_before, done_before, index, {})

    claims = dict(index.claims)
    affected: set[str] = set()
    touched = [old[locator] for locator in gone] + [
        was for pod in changed if (was := old.get(pod.locator)) is not None
    ]
    for was in touched:
        if was.pod is not None:
            uid = was.pod.uid
            if claims.get(uid, 0) > 1:
                return None  # duplicate UIDs: the holder decides, the full evaluation knows how
            affected.add(uid)
            claims[uid] -= 1
            if claims[uid] == 0:
                del claims[uid]
    for pod in changed:
        if pod.pod is not None:
            uid = pod.pod.uid
            claims[uid] = claims.get(uid, 0) + 1
            affected.add(uid)
    if any(claims.get(uid, 0) > 1 for uid in affected):
        return None

    held = dict(held_before)
    done = dict(done_before)
    invalid = dict(invalid_before)
    requests: list[Event] = []
    wanted_locators: set[str] = set()
    for uid in affected:
        held.pop(uid, None)
        done.pop(uid, None)
    for locator in gone:
        invalid.pop(locator, None)
    for pod in changed:
        invalid.pop(pod.locator, None)
    # What is added below lands at the end of each dict; the dicts must end up in the source's
    # order (the full evaluation builds them so), re-ordered only when the end is not the place.
    held_tail = next(reversed(held.values()), None)
    invalid_tail = next(reversed(invalid), None)
    held_added: list[str] = []  # locators
    invalid_added: list[str] = []
    done_added = False
    for pod in changed:  # in the source's order, as the full evaluation lists them
        locator = pod.locator
        if pod.pod is None:
            rejected = (name, pod.error)
            if invalid_before.get(locator) != rejected:
                requests.append(ManifestInvalid(source=locator, error=pod.error, pod_source=name))
            invalid[locator] = rejected
            invalid_added.append(locator)
            continue
        wanted_locators.add(locator)
        uid = pod.pod.uid
        held_was = held_before.get(uid)
        if pod.lifecycle == "finished" or (
            held_was is None and done_before.get(uid) == pod.spec_hash
        ):
            done[uid] = pod.spec_hash  # finished, or released earlier and still listed
            done_added = True
            continue
        if held_was is None or held_was.spec_hash != pod.spec_hash:
            requests.append(PodAdmissionRequested(pod=pod.pod, source=locator, pod_source=name))
        init_done = held_was is not None and held_was.init_completed
        if pod.init_completed and not init_done:
            requests.append(PodInitCompleted(uid=uid, pod_source=name))
            init_done = True
        held[uid] = Held(name, locator, pod.spec_hash, init_done)
        held_added.append(locator)

    # Removals in the order the full evaluation finds them: held pods no longer wanted (in the
    # held order), then invalid locators no longer invalid nor holding a pod.
    wanted_uids = {pod.pod.uid for pod in changed if pod.pod is not None}
    leaving = {uid for uid in affected if uid in held_before and uid not in wanted_uids}
    removals: list[Event] = []
    finished_removals: dict[str, Event] = {}
    for pod in changed:
        if pod.pod is not None and pod.lifecycle == "finished":
            finished = held_before.get(pod.pod.uid)
            if finished is not None:
                finished_removals[pod.pod.uid] = _removal(pod.pod.uid, finished)
    if leaving:  # in the held order
        ranked = sorted(leaving, key=list(held_before).index) if len(leaving) > 1 else leaving
        removals.extend(_removal(uid, held_before[uid]) for uid in ranked)
    cleared = {
        locator
        for locator in [*gone, *(pod.locator for pod in changed)]
        if locator in invalid_before and locator not in invalid
    }
    if cleared:
        removals.extend(
            PodRemovalRequested(uid="", source=locator, pod_source=source)
            for locator, (source, _) in invalid_before.items()
            if locator in cleared and locator not in wanted_locators
        )
    # A finished pod's removal comes with the requests, in the source's order.
    events: list[Event] = []
    events.extend(removals)
    ordered_requests: list[Event] = []
    if finished_removals:
        for pod in changed:
            if pod.pod is not None and pod.pod.uid in finished_removals:
                events.append(finished_removals.pop(pod.pod.uid))
    ordered_requests.extend(requests)
    order = _Order(new)
    if held_added and not order.ascending(
        held_tail.locator if held_tail is not None else None, held_added
    ):
        held = _reorder(held, new, invalid)
    if done_added:
        done = _reorder(done, new, invalid)
    if invalid_added and not order.ascending(invalid_tail, invalid_added):
        invalid = {locator: invalid[locator] for locator in new if locator in invalid}
    pods_of: dict[str, ObservedPod | None] = dict.fromkeys(affected)
    for pod in changed:
        if pod.pod is not None:
            pods_of[pod.pod.uid] = pod
    return DeltaResult(
        events + ordered_requests, held, invalid, done, SingleSource(name, new, claims), pods_of
    )


def _compared_changes(
    old: dict[str, ObservedPod], pods: Sequence[ObservedPod]
) -> tuple[dict[str, ObservedPod], list[ObservedPod], list[str]] | None:
    """(the new list by locator, the changed observations in its order, the locators gone),
    found by comparing the whole new list with the old one (in C, but for the changed entries),
    or None: too many changes, or two entries share a locator."""
    new = dict(zip(map(_LOCATOR, pods), pods, strict=True))
    if len(new) != len(pods):
        return None
    # The observations that are not the same objects as before (the manifest source keeps an
    # unchanged file's), found in C; of those, the ones that differ.
    others = itertools.compress(pods, map(operator.is_not, map(old.get, new), pods))
    changed = [pod for pod in others if old.get(pod.locator) != pod]
    if len(changed) > DELTA_LIMIT:
        return None
    if len(new) == len(old) and not changed:
        return new, [], []
    # Every old locator is in `new` when the sizes match and nothing was added (C-speed check).
    added = sum(1 for pod in changed if pod.locator not in old)
    if len(new) - added == len(old):
        return new, changed, []
    gone = list(old.keys() - new.keys())
    if len(changed) + len(gone) > DELTA_LIMIT:
        return None
    # In the old list's order, as the full evaluation finds them.
    return new, changed, sorted(gone, key=list(old).index) if len(gone) > 1 else gone


def _hinted_changes(
    old: dict[str, ObservedPod],
    pods: Sequence[ObservedPod],
    changes: Mapping[str, ObservedPod | None],
) -> tuple[dict[str, ObservedPod], list[ObservedPod], list[str]] | None:
    """As `_compared_changes`, from the source's own account of what changed (see
    `evaluate_delta`), without a pass over the list; None when the account does not fit it."""
    if len(changes) > DELTA_LIMIT:
        return None
    new = dict(old)
    appended: list[str] = []
    gone: list[str] = []
    for locator, pod in changes.items():
        if pod is None:
            if new.pop(locator, None) is not None:
                gone.append(locator)
        else:
            if pod.locator != locator:
                return None
            if locator not in new:
                appended.append(locator)
            new[locator] = pod
    # Cheap checks that the account matches the list (a wrong one falls back to the full path).
    if len(new) != len(pods) or (pods and next(reversed(new.values())) is not pods[-1]):
        return None
    changed = [
        pod
        for locator, pod in changes.items()
        if pod is not None and (was := old.get(locator)) is not pod and was != pod
    ]
    if len(changed) > 1 or len(gone) > 1:
        # The source's order: changed entries keep their places, added ones come last in the
        # order the account lists them; gone ones in the old list's order.
        places = {locator: place for place, locator in enumerate(new)}
        changed.sort(key=lambda pod: places[pod.locator])
        if len(gone) > 1:
            gone.sort(key=list(old).index)
    return new, changed, gone


_LOCATOR = operator.attrgetter("locator")


class _Order:
    """Positions of locators in the new list, found only when asked (C-speed scans)."""

    def __init__(self, new: dict[str, ObservedPod]) -> None:
        self._new = new
        self._locators: list[str] | None = None

    def ascending(self, tail: str | None, added: list[str]) -> bool:
        """`tail` (the last entry kept) and then `added` are in the list's order."""
        last = list(itertools.islice(reversed(self._new), len(added)))
        if last == added[::-1] and tail not in added:
            return True  # appended at the end (a new file): no pass over the list
        if self._locators is None:
            self._locators = list(self._new)
        positions = [self._locators.index(locator) for locator in added]
        if tail is not None:
            positions.insert(0, self._locators.index(tail))
        return all(a < b for a, b in itertools.pairwise(positions))


def _reorder(
    entries: dict[str, V], new: dict[str, ObservedPod], invalid: dict[str, tuple[str, str]]
) -> dict[str, V]:
    """`entries` (by UID) in the order of the locators that hold them."""
    out: dict[str, V] = {}
    for locator, pod in new.items():
        if pod.pod is not None and pod.pod.uid in entries and locator not in invalid:
            out[pod.pod.uid] = entries[pod.pod.uid]
    return out


def _removal(uid: str, held: Held) -> PodRemovalRequested:
    return PodRemovalRequested(uid=uid, source=held.locator, pod_source=held.source_name)
