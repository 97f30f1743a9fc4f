"""The writer's `submit` and the feed's `deliver` take no schedule point of their own on an
uncontended path (a free channel slot, a free lock), and keep what callers rely on: a cancelled
call queues and updates nothing, each is still a checkpoint, a full channel or a held lock is
waited for, and deliveries stay one at a time."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from memstate.core.events import Event, ManifestInvalid
from memstate.node.sources.feed import SourceFeed
from memstate.node.sources.tracker import PodTracker
from memstate.node.worker_threads import InlineWhileFast
from memstate.node.writer import INLINE_APPEND_RECORDS
from tests.daemon.test_writer_metrics import memory_writer
from tests.sources.test_tracker import observed


def _invalid(index: int) -> Event:
    return ManifestInvalid(source=f"/m/{index}.yaml", error="bad", pod_source="manifests")


async def test_a_cancelled_submit_queues_nothing() -> None:
    writer, _ = memory_writer()
    with trio.CancelScope() as scope:
        scope.cancel()
        await writer.submit([_invalid(0)])
    assert scope.cancelled_caught
    with pytest.raises(trio.WouldBlock):
        writer._receive.receive_nowait()


async def test_submit_is_a_checkpoint_and_waits_for_a_full_channel() -> None:
    writer, log = memory_writer()
    submitted = 80  # more than the channel holds (64): the last ones wait for room
    async with trio.open_nursery() as nursery:
        for index in range(submitted):
            nursery.start_soon(writer.submit, [_invalid(index)])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer.run)
        with trio.testing.assert_checkpoints():
            await writer.submit([_invalid(submitted)])
        nursery.cancel_scope.cancel()
    inputs = [e.event for e in log.records if e.decisions is not None]
    assert sorted(getattr(event, "source", "") for event in inputs) == sorted(
        getattr(_invalid(index), "source", "") for index in range(submitted + 1)
    )


class _Recorder:
    """A submit that records when each batch starts and ends, and blocks until released."""

    def __init__(self) -> None:
        self.trace: list[str] = []
        self.release = trio.Event()

    async def submit(self, events: Sequence[Event]) -> None:
        self.trace.append(f"start {len(events)}")
        await self.release.wait()
        self.trace.append("end")


async def test_an_empty_delivery_is_a_checkpoint_and_a_cancelled_one_updates_nothing() -> None:
    recorder = _Recorder()
    tracker = PodTracker()
    feed = SourceFeed(tracker, recorder.submit)
    with trio.testing.assert_checkpoints():
        assert await feed.deliver("manifests", []) == []
    with trio.CancelScope() as scope:
        scope.cancel()
        await feed.deliver("manifests", [observed("u1", "/m/a.yaml")])
    assert scope.cancelled_caught
    assert tracker.pending_view() is None and recorder.trace == []


async def test_deliveries_wait_for_the_lock() -> None:
    recorder = _Recorder()
    feed = SourceFeed(PodTracker(), recorder.submit)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.deliver, "manifests", [observed("u1", "/m/a.yaml")])
        await trio.testing.wait_all_tasks_blocked()
        pods = [observed("u1", "/m/a.yaml"), observed("u2", "/m/b.yaml")]
        nursery.start_soon(feed.deliver, "manifests", pods)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.trace == ["start 1"]  # the second waits for the first's lock
        recorder.release.set()
    assert recorder.trace == ["start 1", "end", "start 1", "end"]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_inline_runs_stop_for_the_pause_after_a_slow_call() -> None:
    clock = _Clock()
    inline = InlineWhileFast(slow_seconds=0.01, pause_seconds=60.0, clock=clock)
    assert inline.available() and inline.run(lambda: 7) == 7
    assert inline.available()  # took no time

    def slow() -> None:
        clock.now += 0.02

    inline.run(slow)
    assert not inline.available()
    clock.now += 59.9
    assert not inline.available()
    clock.now += 0.2
    assert inline.available()

    def failing() -> None:
        clock.now += 0.02
        raise OSError("EIO")

    with pytest.raises(OSError):
        inline.run(failing)
    assert not inline.available()  # a slow failure pauses too


async def test_the_append_runs_on_the_event_loop_while_inline_runs_are_available() -> None:
    handed: list[object] = []

    async def recording(fn, *, limiter=None):  # type: ignore[no-untyped-def]
        async with limiter:  # as the worker thread's hand-off waits for it
            handed.append(fn)
            return fn()

    clock = _Clock()
    writer, log = memory_writer()
    writer.run_io = recording
    writer.inline = InlineWhileFast(slow_seconds=0.01, pause_seconds=60.0, clock=clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.submit([_invalid(0)])
        assert handed == [] and len(log.records) == 2  # appended here, durable on return
        # A large batch (a start-up's, a burst's) goes to the thread: its size would make it slow.
        await writer.submit([_invalid(100 + index) for index in range(INLINE_APPEND_RECORDS)])
        assert len(handed) == 1 and len(log.records) == 2 + 2 * INLINE_APPEND_RECORDS
        handed.clear()
        appended = len(log.records)
        clock.now = -1e9  # as if the last append had been slow: paused
        writer.inline._paused_until = 0.0
        await writer.submit([_invalid(1)])
        assert len(handed) == 1 and len(log.records) == appended + 2
        clock.now = 100.0
        # Another log operation holds the limiter (in a thread): the append waits for it there.
        borrower = object()
        writer.limiter.acquire_on_behalf_of_nowait(borrower)
        nursery.start_soon(writer.submit, [_invalid(2)])
        await trio.testing.wait_all_tasks_blocked()
        assert len(log.records) == appended + 2
        writer.limiter.release_on_behalf_of(borrower)
        await trio.testing.wait_all_tasks_blocked()
        assert len(handed) == 2 and len(log.records) == appended + 4
        nursery.cancel_scope.cancel()


async def test_a_cancelled_writer_finishes_its_threaded_append_and_checkpoint() -> None:
    # The commit's awaits (the worker thread's append, a checkpoint) are shielded: cancelled
    # during either, the writer waits for it and applies and publishes what it appended.
    released = trio.Event()
    handed: list[str] = []

    async def slow_thread(fn, *, limiter=None):  # type: ignore[no-untyped-def]
        handed.append(getattr(fn, "func", fn).__name__)
        await released.wait()
        return fn()

    writer, log = memory_writer()
    writer.run_io = slow_thread
    published: list[int] = []
    writer.on_commit = lambda decisions, applied: published.append(len(applied))
    checkpoints: list[int] = []
    writer.write_checkpoint = lambda state, seq, crc, removals: checkpoints.append(seq)
    writer.checkpoint_every = lambda: 1
    writing = trio.CancelScope()

    async def write() -> None:
        with writing:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                nursery.start_soon(writer.submit, [_invalid(0)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert handed == ["append"]
        writing.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert log.records == [] and published == []  # still waiting for the thread
        released.set()
    # The append, its publication and the checkpoint it made due all happened.
    assert handed == ["append", "<lambda>"] and len(log.records) == 2
    assert published == [2] and writer.last_seq == 2 and checkpoints == [2]
