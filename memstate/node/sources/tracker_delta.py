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
The result is not a new view but its edits (`ViewEdits`: keys dropped, then pairs put, per dict),
which `PodTracker.accept` applies to the accepted view's dicts in place: a delivery copies none of
the 500-entry dicts (a C copy each was most of its cost, and each new large container adds to
what the garbage collector walks). What is still linear is rare: when an added entry does not
belong at the end of a dict (a file sorting before others), or a pod finished, that dict is
built anew in the new list's order (a Python pass), and the edit replaces it whole.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from memstate.core.events import (
    Event,
    ManifestInvalid,
    PodAdmissionRequested,
    PodInitCompleted,
    PodRemovalRequested,
)
from memstate.node.sources.observation import ObservedPod

K = TypeVar("K")
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


class DictEdit(NamedTuple, Generic[K, V]):
    """How one dict of the view changes: the keys in `drop` are removed, then the pairs in `put`
    assigned in order (a key already there keeps its place, a new one lands at the end); or,
    when `whole` is set, that dict replaces it (built in the source's order, the rare case).
    A named tuple: made several times per delivery, built in C."""

    drop: tuple[K, ...] = ()
    put: tuple[tuple[K, V], ...] = ()
    whole: dict[K, V] | None = None

    def apply(self, entries: dict[K, V]) -> dict[K, V]:
        """`entries` edited in place (returned), or `whole`."""
        if self.whole is not None:
            return self.whole
        for key in self.drop:
            entries.pop(key, None)
        for key, value in self.put:
            entries[key] = value
        return entries

    def applied_to(self, entries: dict[K, V]) -> dict[K, V]:
        """A copy of `entries` with the edit applied (`entries` itself untouched)."""
        return self.apply(dict(entries)) if self.whole is None else self.whole


class ViewEdits(NamedTuple):
    """What one delta evaluation changes in the accepted view (see the module docstring)."""

    held: DictEdit[str, Held] = DictEdit()
    invalid: DictEdit[str, tuple[str, str]] = DictEdit()
    done: DictEdit[str, str] = DictEdit()
    by_locator: DictEdit[str, ObservedPod] = DictEdit()
    claims: DictEdit[str, int] = DictEdit()

    def apply(
        self,
        held: dict[str, Held],
        invalid: dict[str, tuple[str, str]],
        done: dict[str, str],
        index: SingleSource,
    ) -> tuple[dict[str, Held], dict[str, tuple[str, str]], dict[str, str], SingleSource]:
        """The view's dicts edited in place where the edit allows (see `DictEdit.apply`); only
        for the accepted view the edits were evaluated against, and only once."""
        by_locator = self.by_locator.apply(index.by_locator)
        claims = self.claims.apply(index.claims)
        if by_locator is not index.by_locator or claims is not index.claims:
            index = SingleSource(index.source, by_locator, claims)
        return (
            self.held.apply(held),
            self.invalid.apply(invalid),
            self.done.apply(done),
            index,
        )

    def applied_to(
        self,
        held: dict[str, Held],
        invalid: dict[str, tuple[str, str]],
        done: dict[str, str],
        index: SingleSource,
    ) -> tuple[dict[str, Held], dict[str, tuple[str, str]], dict[str, str], SingleSource]:
        """`apply` on copies: the view the edits make, the accepted one untouched."""
        return self.apply(
            dict(held),
            dict(invalid),
            dict(done),
            SingleSource(index.source, dict(index.by_locator), dict(index.claims)),
        )


NO_EDITS = ViewEdits()


@dataclass(frozen=True)
class DeltaResult:
    """The events, and the edits of the view, of one delta evaluation."""

    events: list[Event]
    edits: ViewEdits
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
    """Events and the view's edits for `name` now seeing `pods`, or None (take the full
    evaluation). The view the edits make (`ViewEdits.applied_to` the accepted one) is the full
    evaluation's; nothing given is changed.

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
        return DeltaResult([], NO_EDITS, {})

    # The claims of the UIDs the delivery touches (the others' are unchanged).
    counts: dict[str, int] = {}
    affected: set[str] = set()
    touched = [old[locator] for locator in gone] + [
        was for pod in changed if (was := old.get(pod.locator)) is not None
    ]
    for was in touched:
        if was.pod is not None:
            uid = was.pod.uid
            count = counts[uid] if uid in counts else index.claims.get(uid, 0)
            if count > 1:
                return None  # duplicate UIDs: the holder decides, the full evaluation knows how
            affected.add(uid)
            counts[uid] = count - 1
    for pod in changed:
        if pod.pod is not None:
            uid = pod.pod.uid
            counts[uid] = (counts[uid] if uid in counts else index.claims.get(uid, 0)) + 1
            affected.add(uid)
    for uid in affected:
        if counts[uid] > 1:
            return None

    # The edits: what the delivery touches is dropped, then what it holds now is put back (at
    # the end of each dict, or in place).
    dropped = tuple(affected)
    invalid_dropped = (*gone, *map(_LOCATOR, changed))
    held_put: list[tuple[str, Held]] = []
    done_put: list[tuple[str, str]] = []
    invalid_put: list[tuple[str, tuple[str, str]]] = []
    # The last entries the drops leave: what is put lands after them.
    # (Loops, not generators: a delivery is a few dozen small steps, each with cold caches.)
    held_tail: Held | None = None
    for uid, held in reversed(held_before.items()):
        if uid not in affected:
            held_tail = held
            break
    invalid_tail: str | None = None
    if invalid_before:
        leaving_invalid = set(invalid_dropped)
        for locator in reversed(invalid_before):
            if locator not in leaving_invalid:
                invalid_tail = locator
                break
    requests: list[Event] = []
    wanted_locators: set[str] = set()
    held_added: list[str] = []  # locators
    invalid_added: list[str] = []
    for pod in changed:  # in the source's order, as the full evaluation lists them
        locator = pod.locator
        if pod.pod is None:
            rejected = (name, pod.error)
            if invalid_before.get(locator) != rejected:
                requests.append(ManifestInvalid(source=locator, error=pod.error, pod_source=name))
            invalid_put.append((locator, rejected))
            invalid_added.append(locator)
            continue
        wanted_locators.add(locator)
        uid = pod.pod.uid
        held_was = held_before.get(uid)
        if pod.lifecycle == "finished" or (
            held_was is None and done_before.get(uid) == pod.spec_hash
        ):
            done_put.append((uid, pod.spec_hash))  # finished, or released earlier and still listed
            continue
        if held_was is None or held_was.spec_hash != pod.spec_hash:
            requests.append(PodAdmissionRequested(pod=pod.pod, source=locator, pod_source=name))
        init_done = held_was is not None and held_was.init_completed
        if pod.init_completed and not init_done:
            requests.append(PodInitCompleted(uid=uid, pod_source=name))
            init_done = True
        held_put.append((uid, Held(name, locator, pod.spec_hash, init_done)))
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
    still_invalid = set(invalid_added)
    cleared = (
        {
            locator
            for locator in invalid_dropped
            if locator in invalid_before and locator not in still_invalid
        }
        if invalid_before
        else ()
    )
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

    held_edit = DictEdit(dropped, tuple(held_put))
    done_edit = DictEdit(dropped, tuple(done_put))
    invalid_edit = DictEdit(invalid_dropped, tuple(invalid_put))
    # The dicts must end up in the source's order (the full evaluation builds them so): built
    # anew when the end is not the place of what was put.
    order = _Order(new)
    reorder_held = bool(held_added) and not order.ascending(
        held_tail.locator if held_tail is not None else None, held_added
    )
    reorder_invalid = bool(invalid_added) and not order.ascending(invalid_tail, invalid_added)
    if reorder_held or done_put or reorder_invalid:
        listed = new.materialized()
        invalid_now = invalid_edit.applied_to(invalid_before)
        if reorder_held:
            held_edit = DictEdit(
                whole=_reorder(held_edit.applied_to(held_before), listed, invalid_now)
            )
        if done_put:
            done_edit = DictEdit(
                whole=_reorder(done_edit.applied_to(done_before), listed, invalid_now)
            )
        if reorder_invalid:
            invalid_edit = DictEdit(
                whole={
                    locator: invalid_now[locator] for locator in listed if locator in invalid_now
                }
            )
    pods_of: dict[str, ObservedPod | None] = dict.fromkeys(affected)
    for pod in changed:
        if pod.pod is not None:
            pods_of[pod.pod.uid] = pod
    emptied: list[str] = []
    claimed: list[tuple[str, int]] = []
    for uid, count in counts.items():
        if count:
            claimed.append((uid, count))
        else:
            emptied.append(uid)
    claims_edit = DictEdit(tuple(emptied), tuple(claimed))
    edits = ViewEdits(held_edit, invalid_edit, done_edit, new.edit, claims_edit)
    return DeltaResult(events + ordered_requests, edits, pods_of)


class _NewList:
    """The source's entries by locator after the delivery: `old` with `edit` applied. What the
    delta asks of it in the usual case (its length, its last entries) needs no copy of `old`;
    `materialized()` makes one, for the rare cases that need the whole order."""

    __slots__ = ("_appended", "_gone", "_made", "_old", "edit")

    def __init__(
        self,
        old: dict[str, ObservedPod],
        edit: DictEdit[str, ObservedPod],
        appended: list[str],
        gone: list[str],
    ) -> None:
        self._old = old
        self.edit = edit
        self._appended = appended
        self._gone = gone  # a few locators at most (DELTA_LIMIT)
        self._made = edit.whole

    @classmethod
    def replacing(cls, new: dict[str, ObservedPod]) -> _NewList:
        """The list `new`, which replaces the old one whole."""
        return cls(new, DictEdit(whole=new), [], [])

    def __len__(self) -> int:
        if self._made is not None:
            return len(self._made)
        return len(self._old) - len(self._gone) + len(self._appended)

    def reversed_keys(self) -> Iterator[str]:
        """The locators, last first."""
        if self._made is not None:
            return reversed(self._made)
        kept = (locator for locator in reversed(self._old) if locator not in self._gone)
        return itertools.chain(reversed(self._appended), kept)

    def last(self) -> ObservedPod | None:
        """The last entry (None: empty)."""
        if self._made is None and self._appended:
            locator: str | None = self._appended[-1]  # what `reversed_keys` yields first
        else:
            locator = next(self.reversed_keys(), None)
        if locator is None:
            return None
        if self._made is not None:
            return self._made[locator]
        put = [pod for key, pod in self.edit.put if key == locator]
        return put[-1] if put else self._old[locator]

    def materialized(self) -> dict[str, ObservedPod]:
        """The entries by locator, in the list's order (a copy of the old ones, edited)."""
        if self._made is None:
            self._made = self.edit.applied_to(self._old)
        return self._made


def _compared_changes(
    old: dict[str, ObservedPod], pods: Sequence[ObservedPod]
) -> tuple[_NewList, list[ObservedPod], list[str]] | None:
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
        return _NewList.replacing(new), [], []
    # Every old locator is in `new` when the sizes match and nothing was added (C-speed check).
    added = sum(1 for pod in changed if pod.locator not in old)
    if len(new) - added == len(old):
        return _NewList.replacing(new), changed, []
    gone = list(old.keys() - new.keys())
    if len(changed) + len(gone) > DELTA_LIMIT:
        return None
    # In the old list's order, as the full evaluation finds them.
    ranked = sorted(gone, key=list(old).index) if len(gone) > 1 else gone
    return _NewList.replacing(new), changed, ranked


def _hinted_changes(
    old: dict[str, ObservedPod],
    pods: Sequence[ObservedPod],
    changes: Mapping[str, ObservedPod | None],
) -> tuple[_NewList, list[ObservedPod], list[str]] | None:
    """As `_compared_changes`, from the source's own account of what changed (see
    `evaluate_delta`), without a pass over the list or a copy of it; None when the account does
    not fit it."""
    if len(changes) > DELTA_LIMIT:
        return None
    appended: list[str] = []
    gone: list[str] = []
    put: list[tuple[str, ObservedPod]] = []
    for locator, pod in changes.items():  # each locator once
        if pod is None:
            if locator in old:
                gone.append(locator)
        else:
            if pod.locator != locator:
                return None
            if locator not in old:
                appended.append(locator)
            put.append((locator, pod))
    new = _NewList(old, DictEdit(tuple(gone), tuple(put)), appended, gone)
    # Cheap checks that the account matches the list (a wrong one falls back to the full path).
    if len(new) != len(pods) or (pods and new.last() is not pods[-1]):
        return None
    changed = [
        pod
        for locator, pod in changes.items()
        if pod is not None and (was := old.get(locator)) is not pod and was != pod
    ]
    if len(changed) > 1 or len(gone) > 1:
        # The source's order: changed entries keep their places, added ones come last in the
        # order the account lists them; gone ones in the old list's order.
        places = {locator: place for place, locator in enumerate(new.materialized())}
        changed.sort(key=lambda pod: places[pod.locator])
        if len(gone) > 1:
            gone.sort(key=list(old).index)
    return new, changed, gone


_LOCATOR = operator.attrgetter("locator")


class _Order:
    """Positions of locators in the new list, found only when asked (C-speed scans)."""

    def __init__(self, new: _NewList) -> None:
        self._new = new
        self._locators: list[str] | None = None

    def ascending(self, tail: str | None, added: list[str]) -> bool:
        """`tail` (the last entry kept) and then `added` are in the list's order."""
        last = list(itertools.islice(self._new.reversed_keys(), len(added)))
        if last == added[::-1] and tail not in added:
            return True  # appended at the end (a new file): no pass over the list
        if self._locators is None:
            self._locators = list(self._new.materialized())
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
