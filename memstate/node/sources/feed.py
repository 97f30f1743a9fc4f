"""Serialises every source's observations through one `PodTracker` into the writer.

Sources run concurrently (one trio task each); the tracker's update → commit → accept protocol
needs them one at a time, so `SourceFeed.deliver` holds a lock across it. `submit` makes events
durable (the daemon's writer); when it raises, nothing is accepted and the next delivery asks
again. `on_container_ids` hears of every change of the runtime container ids the sources report
(memstate.node.sources.tracker): the ids and the pods whose ids changed. `on_unsettled` hears
when an accepted view leaves the tracker unsettled that was settled (`PodTracker.settled`): the
sources loop rechecks periodically only while it is not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from memstate.core.events import Event
from memstate.node.sources.observation import ObservedPod, SourceName
from memstate.node.sources.tracker import PodTracker

Submit = Callable[[Sequence[Event]], Awaitable[None]]
ContainerIds = Callable[[dict[str, dict[str, str]], frozenset[str]], None]
Deliver = Callable[[Sequence[ObservedPod]], Awaitable[None]]


class SourceFeed:
    """One tracker, one lock, one way into the event log."""

    def __init__(
        self,
        tracker: PodTracker,
        submit: Submit,
        *,
        on_container_ids: ContainerIds | None = None,
        on_unsettled: Callable[[], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self._submit = submit
        self._on_container_ids = on_container_ids
        self._on_unsettled = on_unsettled
        self._lock = trio.Lock()

    async def deliver(
        self,
        source_name: SourceName,
        pods: Sequence[ObservedPod],
        *,
        changes: Mapping[str, ObservedPod | None] | None = None,
    ) -> list[Event]:
        """`source_name` sees exactly `pods` now: record what changed. Returns the events.

        `changes`: the source's account of what changed (see `PodTracker.update`)."""
        await self._acquire()
        try:
            events = self.tracker.update(source_name, pods, changes=changes)
            if events:
                await self._submit(events)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._accept()
            return events
        finally:
            self._lock.release()

    async def _acquire(self) -> None:
        """Take the lock; without a schedule point of its own when it is free (the usual case:
        `deliver` then has its checkpoint in `submit`, or after the update when there is nothing
        to submit, and an extra one cost a pass of the event loop per admission)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    def _accept(self) -> None:
        settled = self.tracker.settled
        self.tracker.accept()
        if settled and not self.tracker.settled and self._on_unsettled is not None:
            self._on_unsettled()
        changed = self.tracker.ids_changed
        if changed and self._on_container_ids is not None:
            self._on_container_ids(self.tracker.container_ids(), changed)

    async def recheck(self) -> list[Event]:
        """Release deleted pods whose cgroup is gone now (call on cgroup hints and periodically)."""
        async with self._lock:
            events = self.tracker.recheck()
            if events:
                await self._submit(events)
            self._accept()
            return events

    def deliverer(self, source_name: SourceName) -> Deliver:
        """`deliver` bound to one source, for the source's `run`."""

        async def deliver(pods: Sequence[ObservedPod]) -> None:
            await self.deliver(source_name, pods)

        return deliver
