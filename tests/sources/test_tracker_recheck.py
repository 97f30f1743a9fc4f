"""The tracker's recheck (the sources loop asks it every second) against the full evaluation.

Goal: a recheck of an idle tracker, or a delivery of the same observations again (a kubelet poll
that found nothing new), does no work per pod; a pod waiting for its cgroup is still released
by the recheck after the cgroup empties; and both always give what evaluating the accepted
observations again gives. Method: the tracker driven directly with injected cgroup and
holder answers that the test changes between steps; the pass over every pod (`_merge`) counted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from memstate.node.sources import tracker as tracker_module
from memstate.node.sources.observation import ObservedPod, SourceName
from memstate.node.sources.tracker import PodTracker
from tests.sources.test_tracker import observed, summary
from tests.sources.test_tracker_delta import view

UIDS = [f"u{index}" for index in range(16)]
SOURCES: list[SourceName] = ["kubelet", "apiserver", "manifests"]


@pytest.fixture
def merges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the full evaluation's pass over every source's pods."""
    calls: list[int] = []
    real = tracker_module._merge

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(tracker_module, "_merge", counted)
    return calls


def kubelet_tracker(
    count: int, populated: set[str], asked: list[str]
) -> tuple[PodTracker, list[ObservedPod]]:
    def cgroup_gone(uid: str) -> bool:
        asked.append(uid)
        return uid not in populated

    tracker = PodTracker(cgroup_gone=cgroup_gone)
    pods = [observed(f"u{index:03d}", f"kubelet:default/p{index:03d}") for index in range(count)]
    tracker.update("kubelet", pods)
    tracker.accept()
    return tracker, pods


def test_idle_recheck_does_no_work_per_pod(merges: list[int]) -> None:
    asked: list[str] = []
    tracker, _ = kubelet_tracker(500, set(), asked)
    merges.clear()
    for _ in range(10):
        assert tracker.recheck() == []
        tracker.accept()
    assert merges == []
    assert asked == []


def test_an_unchanged_poll_does_no_work_per_pod(merges: list[int]) -> None:
    asked: list[str] = []
    tracker, pods = kubelet_tracker(500, set(), asked)
    merges.clear()
    for _ in range(3):
        assert tracker.update("kubelet", list(pods)) == []
        tracker.accept()
    assert merges == []
    changed = [*pods[:-1], observed("u499", "kubelet:default/p499", memory="2Gi")]
    assert summary(tracker.update("kubelet", changed)) == [
        ("pod_admission_requested", "u499", "kubelet")
    ]
    assert merges == [1]


def test_a_waiting_pod_is_asked_about_alone_and_released_when_its_cgroup_empties(
    merges: list[int],
) -> None:
    populated = {"u000", "u001"}
    asked: list[str] = []
    tracker, pods = kubelet_tracker(500, populated, asked)
    # Deleted while their containers run: held until the pod cgroup empties.
    assert tracker.update("kubelet", pods[2:]) == []
    tracker.accept()
    asked.clear()
    merges.clear()
    for _ in range(3):
        assert tracker.recheck() == []
        tracker.accept()
    assert merges == []
    assert asked == ["u000", "u001"] * 3
    populated.discard("u001")
    events = tracker.recheck()
    tracker.accept()
    assert summary(list(events)) == [("pod_removal_requested", "u001", "kubelet")]
    asked.clear()
    assert tracker.recheck() == []
    tracker.accept()
    assert asked == ["u000"]
    populated.clear()
    assert summary(list(tracker.recheck())) == [("pod_removal_requested", "u000", "kubelet")]


def random_list(rng: random.Random, name: str) -> list[ObservedPod]:
    """A source's list: terminating, finished, invalid pods, now and then a UID two of its
    locators declare."""
    pods = []
    for index in rng.sample(range(12), rng.randrange(0, 9)):
        locator = f"{name}:default/p{index:02d}"
        roll = rng.random()
        if roll < 0.06:
            pods.append(ObservedPod(locator, error="$.spec: bad"))
            continue
        lifecycle = "terminating" if roll > 0.8 else "finished" if roll > 0.74 else "active"
        uid = UIDS[index] if rng.random() < 0.85 else rng.choice(UIDS)
        pods.append(
            observed(uid, locator, memory=rng.choice(["1Gi", "2Gi"]), lifecycle=lifecycle)  # type: ignore[arg-type]
        )
    return pods


@pytest.mark.parametrize("seed", range(40))
def test_recheck_equals_the_full_evaluation(seed: int) -> None:
    """Seeded random deliveries from the three sources (the manifest directory alone now and
    then, so the delta path's views are rechecked too), cgroups that empty and fill, holders
    that move, updates left unaccepted; after each, a recheck gives the events and the view
    the full evaluation of the accepted observations gives with the same answers."""
    rng = random.Random(seed)
    populated: set[str] = set(UIDS)
    holders: dict[str, str] = {}
    gone: Callable[[str], bool] = lambda uid: uid not in populated  # noqa: E731
    tracker = PodTracker(cgroup_gone=gone, holder_of=holders.get)
    reference = PodTracker(cgroup_gone=gone, holder_of=holders.get)
    lists: dict[str, list[ObservedPod]] = {}
    released = skipped = repeated = 0
    for step in range(150):
        alone = (step // 30) % 2 == 1  # stretches with the manifest directory alone
        name: SourceName = "manifests" if alone else rng.choice(SOURCES)
        if alone:
            lists = {"manifests": lists.get("manifests", [])}
            for other in ("kubelet", "apiserver"):
                tracker.update(other, [])  # type: ignore[arg-type]
                tracker.accept()
        lists[name] = random_list(rng, name)
        tracker.update(name, lists[name])
        if rng.random() < 0.9:
            tracker.accept()
        single = tracker._view.single
        if rng.random() < 0.5 and (single is None or single.source != name):
            # The same pods again (a poll that found nothing new), maybe after cgroups changed;
            # not where the delta path takes it (tests/sources/test_tracker_delta.py).
            populated.symmetric_difference_update(rng.sample(UIDS, 1))
            again = list(tracker._observed.get(name, ()))
            reference._observed, reference._view = tracker._observed, tracker._view
            expected = reference._evaluate({**tracker._observed, name: again}, None)
            assert tracker.update(name, again) == expected
            assert view(tracker) == view(reference)
            repeated += not tracker._view.in_full
            tracker.accept()
        for uid in rng.sample(UIDS, 3):
            populated.symmetric_difference_update({uid})
        for uid in rng.sample(UIDS, 2):
            holders[uid] = f"{rng.choice(SOURCES)}:default/p{rng.randrange(12):02d}"
        for _ in range(rng.randrange(1, 3)):
            reference._observed, reference._view = tracker._observed, tracker._view
            expected = reference._evaluate(dict(tracker._observed), None)
            events = tracker.recheck()
            assert events == expected
            assert view(tracker) == view(reference)
            released += bool(events)
            staged = tracker._pending
            skipped += staged is not None and staged[1] is tracker._view and bool(staged[1].waiting)
            tracker.accept()
    assert released > 3  # rechecks did release pods
    assert skipped > 3  # and left a view with waiting pods as it was
    assert repeated > 10  # unchanged lists were delivered where the shortcut applies
