"""`PodTracker`'s evaluation of a small change, proportional to the change.

The full evaluation (`memstate.node.sources.tracker`) merges every source's whole list on each
delivery: O(pods) of Python work per admission. In the common shape — one source holds every pod
memstate tracks, it does not gate removals on the pod cgroup (the manifest directory), and no UID
is claimed by two of its locators — the outcome of a delivery that changes a few locators is
determined by those locators alone. `evaluate_delta` computes exactly the events and the view the
full evaluation would (same events, same order, same dicts in the same order) from the changed
locators, and returns None whenever the shape does not hold, so the caller falls back to the full
evaluation. `tests/sources/test_tracker_delta.py` compares both on seeded random deliveries.

What is still linear is cheap bookkeeping: a dict of the new list by locator, one look-up and
identity test per locator to find what changed (the manifest source keeps an unchanged file's
observation object), copies of the view's dicts, and — only when an added entry does not belong
at the end of a dict (a file sorting before others) — that dict re-ordered by the new list.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
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


def evaluate_delta(
    index: SingleSource | None,
    name: str,
    pods: Sequence[ObservedPod],
    *,
    held_before: dict[str, Held],
    invalid_before: dict[str, tuple[str, str]],
    done_before: dict[str, str],
) -> DeltaResult | None:
    """Events and view for `name` now seeing `pods`, or None (take the full evaluation)."""
    if index is None or index.source != name:
        return None
    old = index.by_locator
    locators = [pod.locator for pod in pods]
    new = dict(zip(locators, pods, strict=True))
    if len(new) != len(pods):
        return None
    # The observations that are not the same objects as before (the manifest source keeps an
    # unchanged file's), found in C; of those, the ones that differ.
    others = itertools.compress(pods, map(operator.is_not, map(old.get, locators), pods))
    changed = [pod for pod in others if old.get(pod.locator) != pod]
    if len(changed) > DELTA_LIMIT:
        return None
    gone = [locator for locator in old if locator not in new] if len(new) != len(old) else []
    if not changed and len(gone) == 0:
        return DeltaResult([], held_before, invalid_before, done_before, index)
    if len(changed) + len(gone) > DELTA_LIMIT:
        gone = [locator for locator in old if locator not in new]
        if len(changed) + len(gone) > DELTA_LIMIT:
            return None
    gone = gone or [locator for locator in old if locator not in new]

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
    if leaving:
        removals.extend(_removal(uid, h) for uid, h in held_before.items() if uid in leaving)
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
    return DeltaResult(
        events + ordered_requests, held, invalid, done, SingleSource(name, new, claims)
    )


class _Order:
    """Positions of locators in the new list, found only when asked (C-speed scans)."""

    def __init__(self, new: dict[str, ObservedPod]) -> None:
        self._new = new
        self._locators: list[str] | None = None

    def ascending(self, tail: str | None, added: list[str]) -> bool:
        """`tail` (the last entry kept) and then `added` are in the list's order."""
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
