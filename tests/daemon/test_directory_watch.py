"""The daemon's directory watches (manifest directory, config file): inotify under trio.

Goal: a change in the directory reaches the callback, a file counts once its writer closes it, a
directory removed and created again (even with no chance for the watch to run in between) is
watched again, cancellation is immediate, and a failing watch is loud (logged, reported) and
retried. Method: `watch_directory` runs in a nursery and
counts its callbacks; the test changes real files in a temporary directory and waits (boundedly)
for the count. Timeouts are hang guards, never assertions about speed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from memstate.host.inotify import IN_CREATE
from memstate.node import watching
from memstate.node.watching import Batch, WatchEnd, WatchRetry, watch_directory

HANG_GUARD_SECONDS = 10.0


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def until(condition: Callable[[], bool]) -> bool:
    with trio.move_on_after(HANG_GUARD_SECONDS):
        while not condition():
            await trio.sleep(0.01)
        return True
    return condition()


async def until_more(changes: Counter, than: int) -> bool:
    return await until(lambda: changes.count > than)


async def until_watching(directory: Path, changes: Counter) -> None:
    """A probe file renamed in, again and again until seen: the watch is in place."""
    for attempt in range(int(HANG_GUARD_SECONDS / 0.2)):
        before = changes.count
        (directory / f".probe{attempt}.tmp").write_text("x")
        (directory / f".probe{attempt}.tmp").rename(directory / f"probe{attempt}")
        with trio.move_on_after(0.2):
            await until_more(changes, before)
        if changes.count > before:
            return
    raise AssertionError("the watch never reported the probe")


async def test_written_renamed_and_deleted_files_are_changes(tmp_path: Path) -> None:
    changes = Counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_directory(tmp_path, changes))
        (tmp_path / "b.tmp").write_text("b")
        # Once the probe is reported, every earlier event has been too (events come in order).
        await until_watching(tmp_path, changes)
        # Each of these makes one batch of events, hence one change.
        for act in (
            lambda: (tmp_path / "a.yaml").write_text("a"),  # created, written, closed
            lambda: (tmp_path / "b.tmp").rename(tmp_path / "b.yaml"),
            (tmp_path / "a.yaml").unlink,
        ):
            before = changes.count
            act()
            assert await until_more(changes, before)
            assert changes.count == before + 1
        nursery.cancel_scope.cancel()


async def test_started_returns_once_the_watch_is_in_place(tmp_path: Path) -> None:
    """`nursery.start` returns when the watch is set up, so a change made right after it (what
    the manifest loop's first scan may just have missed listing) is reported, with no probe
    first. Fails when the watch is only scheduled (`start_soon`) or announced too early."""
    changes = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_directory, tmp_path, changes)
        (tmp_path / "pod.yaml").write_text("a")  # no checkpoint between the start and the write
        assert await until_more(changes, 0)
        nursery.cancel_scope.cancel()


async def test_started_does_not_wait_for_a_missing_directory(tmp_path: Path) -> None:
    """A missing directory is waited for in the background: `nursery.start` returns at once
    (the loop scans meanwhile), and the directory's arrival is a change (the restart's)."""
    missing = tmp_path / "later"
    changes = Counter()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await nursery.start(
                functools.partial(watch_directory, missing, changes, missing_poll_seconds=0.05)
            )
        missing.mkdir()
        assert await until_more(changes, 0)
        nursery.cancel_scope.cancel()


async def test_only_the_named_file_counts(tmp_path: Path) -> None:
    changes = Counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_directory(tmp_path, changes, only_name="config.yaml"))
        # Wait until the watch is in place: the named file written until it is reported.
        for _ in range(int(HANG_GUARD_SECONDS / 0.2)):
            (tmp_path / "config.yaml").write_text("x")
            with trio.move_on_after(0.2):
                await until(lambda: changes.count > 0)
            if changes.count:
                break
        assert changes.count > 0
        # Other files, then the named one: only the last write makes a change. (The other
        # files' events are queued first, so if they counted, the count would show it.)
        before = changes.count
        for index in range(20):
            (tmp_path / f"other{index}.log").write_text("noise")
        (tmp_path / "config.yaml").write_text("y")
        assert await until(lambda: changes.count > before)
        # Events arrive in order: had the other files counted, they would have counted first.
        assert changes.count == before + 1
        nursery.cancel_scope.cancel()


async def test_directory_replaced_at_once_is_watched_again(tmp_path: Path) -> None:
    directory = tmp_path / "pods"
    directory.mkdir()
    changes = Counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_directory(directory, changes, missing_poll_seconds=0.02))
        await until_watching(directory, changes)
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()
        directory.mkdir()  # no chance for the watch to run in between
        await until_watching(directory, changes)
        nursery.cancel_scope.cancel()


async def test_cancellation_is_immediate(tmp_path: Path) -> None:
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watch_directory(tmp_path, Counter()))
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()


async def test_an_unexpected_error_is_logged_reported_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the loop (here: the callback raising) is not swallowed: ERROR with the
    traceback, `on_error`, then the watch comes back and reports changes again."""
    calls = Counter()
    errors: list[BaseException] = []

    def on_change() -> None:
        calls()
        if calls.count == 1:
            raise RuntimeError("planted bug in the callback")

    caplog.set_level(logging.WARNING, logger="memstate.node.watching")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: watch_directory(tmp_path, on_change, retry_seconds=0.01, on_error=errors.append)
        )
        await until_watching(tmp_path, calls)
        assert await until(lambda: bool(errors))
        # Back after the failure: the restarted watch reports changes again.
        await until_watching(tmp_path, calls)
        nursery.cancel_scope.cancel()
    assert [type(e) for e in errors] == [RuntimeError]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "failed unexpectedly" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[1] is errors[0]


def test_retry_backs_off_and_shows_the_traceback_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[BaseException] = []
    retry = WatchRetry("watch on /x", base_seconds=1.0, max_seconds=5.0, on_error=seen.append)
    caplog.set_level(logging.WARNING, logger="memstate.node.watching")
    delays = [retry.failed(ValueError(f"bug {n}")) for n in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1
    assert all(r.levelno == logging.ERROR for r in caplog.records)
    retry.established()
    caplog.clear()
    assert retry.failed(OSError(28, "No space left on device")) == 1.0
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert len(seen) == 6


async def test_a_long_queue_is_read_in_steps_into_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What queued up while the watch did not run (600 creations, ~19 KB of events) is read in
    steps of `READ_STEP_BYTES` with the event loop running between them (another task gets
    turns), and still arrives as one batch, every change in order."""
    calls: list[int] = []  # the other task's turns so far, at each read of the queue
    turns: list[None] = []
    original = watching._Tree.read

    def read(tree: watching._Tree, max_bytes: int) -> tuple[Batch, WatchEnd | None, bool]:
        calls.append(len(turns))
        return original(tree, max_bytes)

    monkeypatch.setattr(watching._Tree, "read", read)
    batches: list[Batch] = []
    started = trio.Event()

    async def other_task() -> None:
        while True:
            turns.append(None)
            await trio.lowlevel.checkpoint()

    names = [f"f{index:04d}" for index in range(600)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                watching.watch,
                tmp_path,
                batches.append,
                mask=IN_CREATE,
                recursive=False,
                on_started=started.set,
            )
        )
        await started.wait()
        for name in names:  # no checkpoint: all of it queues before the watch reads
            (tmp_path / name).touch()
        nursery.start_soon(other_task)
        assert await until(lambda: bool(batches))
        nursery.cancel_scope.cancel()
    assert [Path(change.path).name for batch in batches for change in batch.changes] == names
    assert len(batches) == 1
    assert len(calls) >= 3  # 19 KB in steps of 1 KiB
    # The other task ran between the steps (trio may run it before or after the watch within
    # one pass of the event loop: not necessarily between every two reads).
    assert calls[-1] > calls[0] and calls == sorted(calls), calls
