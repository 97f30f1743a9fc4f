"""The tracker's delta path (memstate.node.sources.tracker_delta) against its full evaluation.

Seeded random deliveries — files added, removed, changed, made invalid, finished, UIDs shared by
two files or moved between files, now and then a kubelet listing (a second, gated source) or an
update that is not accepted — go to one tracker through `update` (which takes the delta path when
it can) and to the full evaluation of the same observation; the events (order included) and the
views (dict order included) must be equal after every step. The same with the source's account of
what changed (`update(changes=...)`), and the container ids the delta path patches against the
ones derived from every observation.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from memstate.node.sources import tracker as tracker_module
from memstate.node.sources import tracker_delta
from memstate.node.sources.observation import ObservedPod
from memstate.node.sources.tracker import PodTracker
from tests.sources.test_tracker import observed

UIDS = [f"u{index}" for index in range(24)]
LOCATORS = [f"/m/{index:02d}.yaml" for index in range(14)]


def random_pod(rng: random.Random, locator: str) -> ObservedPod:
    roll = rng.random()
    if roll < 0.08:
        return ObservedPod(locator, error=f"$.spec: bad {rng.randrange(2)}")
    return observed(
        rng.choice(UIDS),
        locator,
        memory=rng.choice(["1Gi", "2Gi"]),
        lifecycle="finished" if roll > 0.92 else "active",
        init_completed=rng.random() < 0.2,
    )


def view(tracker: PodTracker) -> tuple[object, ...]:
    v = tracker.pending_view()
    assert v is not None
    return (list(v.held.items()), list(v.invalid.items()), list(v.done.items()))


def accept_and_check(tracker: PodTracker) -> None:
    """`accept`, which applies the delta path's edits to the accepted view in place: the view
    is then the one staged (dict order included), and the delta path's index is the one built
    from the accepted observations (the list by locator, in its order, and the UID claims)."""
    staged = view(tracker)
    tracker.accept()
    v = tracker._view
    assert (list(v.held.items()), list(v.invalid.items()), list(v.done.items())) == staged
    if v.single is not None:
        index = tracker_delta.index_single_source(
            tracker._observed, {h.source_name for h in v.held.values()}, frozenset()
        )
        assert index is not None
        assert list(v.single.by_locator.items()) == list(index.by_locator.items())
        assert v.single.claims == index.claims


@pytest.mark.parametrize("seed", range(30))
def test_delta_path_equals_the_full_evaluation(seed: int) -> None:
    rng = random.Random(seed)
    tracker = PodTracker(cgroup_gone=lambda uid: rng.random() < 0.5)
    reference = PodTracker(cgroup_gone=lambda uid: True)
    files: dict[str, ObservedPod] = {}
    deltas = 0
    for _ in range(120):
        roll = rng.random()
        if roll < 0.04:
            kubelet = [
                observed(uid, f"kubelet:{uid}")
                for uid in rng.sample(UIDS, rng.choice([0, 0, 1, 2]))
            ]
            name, pods = "kubelet", kubelet
        else:
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 40])):
                locator = rng.choice(LOCATORS)
                if locator in files and rng.random() < 0.35:
                    del files[locator]
                else:
                    files[locator] = random_pod(rng, locator)
            name, pods = "manifests", [files[locator] for locator in sorted(files)]
        # The reference: the full evaluation of the same observation and accepted view.
        reference._observed, reference._view = tracker._observed, tracker._view
        reference._cgroup_gone = tracker._cgroup_gone
        before = tracker._view.single
        state = rng.getstate()
        events = tracker.update(name, pods)  # type: ignore[arg-type]
        got = view(tracker)
        rng.setstate(state)  # the same answers to cgroup_gone
        expected = reference._evaluate({**tracker._observed, name: list(pods)}, None)
        assert events == expected
        assert got == view(reference)
        if before is not None and before.source == name:
            deltas += 1
        if rng.random() < 0.9:
            accept_and_check(tracker)
    assert deltas > 5  # the delta path was tried (it falls back on duplicate UIDs)


def with_ids(rng: random.Random, pod: ObservedPod) -> ObservedPod:
    """`pod` with runtime container ids now and then (what the delta path patches)."""
    if pod.pod is None or rng.random() < 0.6:
        return pod
    ids = tuple((f"{rng.randrange(3):064x}", rng.choice(["c", "d"])) for _ in range(2))
    return dataclasses.replace(pod, container_ids=ids)


@pytest.mark.parametrize("seed", range(30))
def test_account_of_changes_equals_the_full_evaluation(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source's account of changes (`update(changes=...)`, as the manifest directory keeps
    it: a changed file keeps its place, a new one is appended, a gone one dropped) gives the
    events, views and container ids of the full evaluation of the whole list."""
    hinted = []
    real = tracker_delta._hinted_changes

    def counted(*args: Any) -> Any:
        found = real(*args)
        hinted.append(found is not None)
        return found

    monkeypatch.setattr(tracker_delta, "_hinted_changes", counted)
    rng = random.Random(seed)
    tracker = PodTracker(cgroup_gone=lambda uid: True)
    reference = PodTracker(cgroup_gone=lambda uid: True)
    files: dict[str, ObservedPod] = {}  # in the order the source lists them
    for _ in range(150):
        changes: dict[str, ObservedPod | None] | None = {}
        touched = rng.sample(LOCATORS, rng.choice([0, 1, 1, 1, 2, 3, 5, 14]))
        for locator in touched:
            if locator in files and rng.random() < 0.3:
                del files[locator]
                changes[locator] = None
            elif locator in files and rng.random() < 0.1:
                changes[locator] = files[locator]  # reported, but unchanged
            else:
                files[locator] = changes[locator] = with_ids(rng, random_pod(rng, locator))
        if rng.random() < 0.05:
            changes = None  # a full rescan: no account
        pods = list(files.values())
        reference._observed, reference._view = tracker._observed, tracker._view
        events = tracker.update("manifests", pods, changes=changes)
        expected = reference._evaluate({**tracker._observed, "manifests": pods}, None)
        assert events == expected
        assert view(tracker) == view(reference)
        if rng.random() < 0.1:
            continue  # not accepted: the next update's account is not used
        if rng.random() < 0.1:
            tracker.recheck()  # a recheck in between: its acceptance is not this update's
        before = tracker.container_ids()
        accept_and_check(tracker)
        ids = tracker_module._container_ids(tracker._observed)
        assert tracker.container_ids() == ids
        assert tracker.ids_changed == {
            uid for uid in ids.keys() | before.keys() if ids.get(uid) != before.get(uid)
        }
    assert sum(hinted) > 20  # the account was used (not when an update was left unaccepted)
