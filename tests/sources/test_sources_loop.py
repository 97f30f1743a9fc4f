"""The sources loop (memstate.node.loops.pods.sources_loop) beside a network source.

Goal: an idle node's loop does not wake every second for nothing: it rechecks the tracker and
publishes source health when a source's health changes, on a cgroup hint, and every second only
while the tracker is not settled (a deleted pod waits for its cgroup to empty); a pod released
that way is released within a second of its cgroup emptying, as before. Method: the real loop,
`SourceFeed` and `PodTracker` over a stand-in daemon and source, trio's `MockClock` (autojump):
simulated seconds, no waiting.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

from memstate.core.events import Event, PodRemovalRequested
from memstate.node.context import SOURCES_RECHECK_SECONDS, Wakeup
from memstate.node.loops.pods import sources_loop
from memstate.node.metrics import Metrics
from memstate.node.sources.feed import Deliver, SourceFeed
from memstate.node.sources.observation import ObservedPod, SourceHealth, SourceName
from memstate.node.sources.tracker import PodTracker
from tests.sources.test_tracker import observed

UIDS = [f"0b6c2f7e-2222-4a3b-9c1d-{index:012d}" for index in range(3)]


class CountingTracker(PodTracker):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rechecks = 0

    def recheck(self) -> list[Event]:
        self.rechecks += 1
        return super().recheck()


class PollingSource:
    """A kubelet-like source: the same pods every `interval` seconds (the same objects, as the
    kubelet source gives for an unchanged answer), health recorded after each poll."""

    name: SourceName = "kubelet"

    def __init__(self, pods: list[ObservedPod], interval: float = 5.0) -> None:
        self.pods = pods
        self.interval = interval
        self.health = SourceHealth(self.name)
        self.polls = 0

    async def run(self, deliver: Deliver) -> None:
        while True:
            await deliver(list(self.pods))
            self.polls += 1
            self.health.succeeded(len(self.pods))
            await trio.sleep(self.interval)


class StandInDaemon:
    """What `sources_loop` uses of the daemon."""

    def __init__(self, tracker: PodTracker, source: PollingSource) -> None:
        self.events: list[Event] = []
        self.tracker = tracker
        self._sources_wake = Wakeup()
        self.feed = SourceFeed(
            tracker,
            self._record,
            on_unsettled=functools.partial(self._sources_wake.due_within, SOURCES_RECHECK_SECONDS),
        )
        self.sources = [source]
        self.state = type("State", (), {"readmission_open": False})()
        self.settings = type("Settings", (), {"manifest_dir": Path("/nonexistent")})()
        self.metrics = Metrics()
        self.status_writes = 0

    async def _record(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def _write_status(self) -> None:
        self.status_writes += 1


async def test_an_idle_node_rechecks_when_health_changes_not_every_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = CountingTracker(cgroup_gone=lambda uid: True)
    source = PollingSource([observed(uid, f"kubelet:default/{uid}") for uid in UIDS])
    daemon = StandInDaemon(tracker, source)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sources_loop, daemon)
        await trio.sleep(60.5)
        nursery.cancel_scope.cancel()
    assert source.polls == 13  # at 0, 5, …, 60 s
    assert [getattr(e, "kind", "") for e in daemon.events] == ["pod_admission_requested"] * 3
    # One recheck and one publication when the loop starts and after each poll's health
    # change; none in between (every second: 60 more).
    assert tracker.rechecks == 1 + source.polls
    assert daemon.status_writes == 1 + source.polls


async def test_a_deleted_pod_is_rechecked_every_second_until_its_cgroup_empties(
    autojump_clock: trio.testing.MockClock,
) -> None:
    populated = set(UIDS)
    tracker = CountingTracker(cgroup_gone=lambda uid: uid not in populated)
    pods = [observed(uid, f"kubelet:default/{uid}") for uid in UIDS]
    # Polls far apart: what wakes the loop between them is the tracker, not a health change.
    source = PollingSource(pods, interval=math.inf)
    daemon = StandInDaemon(tracker, source)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sources_loop, daemon)
        await trio.sleep(10)
        assert tracker.settled
        before = tracker.rechecks
        # The pod is deleted (the source stops listing it, its health unchanged, as a watch
        # event keeps the pod count): the accepted view waits for its cgroup.
        await daemon.feed.deliver("kubelet", pods[1:])
        assert not tracker.settled
        # Not at once: an admission by the delta path unsettles the tracker too, and a recheck
        # each would be a full evaluation per admission; within a second, then each second.
        await trio.sleep(0.99)
        assert tracker.rechecks == before
        await trio.sleep(10.5 - 0.99)
        assert tracker.rechecks - before == 10
        assert not any(isinstance(e, PodRemovalRequested) for e in daemon.events)
        populated.discard(UIDS[0])
        emptied = trio.current_time()
        while not any(isinstance(e, PodRemovalRequested) for e in daemon.events):
            await trio.sleep(0.01)
        assert trio.current_time() - emptied <= 1.0
        assert tracker.settled
        after = tracker.rechecks
        await trio.sleep(30)
        assert tracker.rechecks == after  # settled again: no more rechecks
        nursery.cancel_scope.cancel()
    removals = [e for e in daemon.events if isinstance(e, PodRemovalRequested)]
    assert [e.uid for e in removals] == [UIDS[0]]


async def test_a_hint_rechecks_a_settled_tracker(autojump_clock: trio.testing.MockClock) -> None:
    tracker = CountingTracker(cgroup_gone=lambda uid: True)
    source = PollingSource([observed(UIDS[0], "kubelet:default/a")], interval=math.inf)
    daemon = StandInDaemon(tracker, source)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sources_loop, daemon)
        await trio.sleep(10)
        before = tracker.rechecks
        daemon._sources_wake.set()  # what a cgroup hint does
        await trio.sleep(10)
        assert tracker.rechecks == before + 1
        nursery.cancel_scope.cancel()


def test_health_reports_each_change_and_only_changes() -> None:
    changes: list[str] = []
    health = SourceHealth("apiserver", on_change=lambda: changes.append("x"))
    health.succeeded(3)
    health.counted(3)  # a watch event that leaves the count as it was
    health.counted(4)
    health.failed("down")
    assert len(changes) == 3 and health.pods == 4 and not health.in_sync


def test_a_tracker_is_settled_when_a_recheck_would_find_nothing() -> None:
    populated = {UIDS[0]}
    tracker = PodTracker(cgroup_gone=lambda uid: uid not in populated)
    assert not tracker.settled  # nothing evaluated yet
    pods = [observed(uid, f"kubelet:default/{uid}") for uid in UIDS]
    tracker.update("kubelet", pods)
    tracker.accept()
    assert tracker.settled
    tracker.update("kubelet", pods[1:])  # deleted, its cgroup populated: it waits
    assert tracker.settled  # staged, not accepted
    tracker.accept()
    assert not tracker.settled
    populated.clear()
    assert [type(e) for e in tracker.recheck()] == [PodRemovalRequested]
    tracker.accept()
    assert tracker.settled


async def test_due_within_shortens_a_wait_without_waking_it_now(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wake = Wakeup()
    results: list[tuple[bool, float]] = []

    async def waiter() -> None:
        woken = await wake.wait(math.inf)
        results.append((woken, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        asked = trio.current_time()
        wake.due_within(1.0)
        wake.due_within(3.0)  # a later bound does not push it back
        await trio.sleep(0.5)
        assert results == []
    assert results == [(False, asked + 1.0)]
    wake.due_within(1.0)  # nobody waits: nothing to shorten, and the next wait is not cut
    with trio.move_on_after(10) as scope:
        await wake.wait(math.inf)
    assert scope.cancelled_caught
