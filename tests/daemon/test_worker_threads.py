"""The production hand-off to worker threads (`memstate.node.worker_threads.in_worker_thread`).

Goal: it keeps what the daemon's callers rely on from `trio.to_thread.run_sync`: the result and
the exception (with its traceback) come back to the caller; a call cancelled before it starts
never runs; a running call is never abandoned (the caller waits for it, then sees the
cancellation at its next checkpoint), which is what lets a shutdown wait for a log append; and a
limiter of one serialises the calls that share it, while calls under different limiters run at
once. Real threads, real blocking: each test waits on conditions, not on durations.
"""

from __future__ import annotations

import threading
import traceback

import pytest
import trio

from memstate.node.worker_threads import in_worker_thread

WAIT = 30.0  # generous: the machine may be loaded


def test_the_result_comes_back_from_another_thread() -> None:
    async def main() -> tuple[int, int]:
        ident = await in_worker_thread(threading.get_ident)
        return ident, await in_worker_thread(lambda: 6 * 7)

    ident, value = trio.run(main)
    assert ident != threading.get_ident()
    assert value == 42


def test_the_exception_is_the_callers_with_its_traceback() -> None:
    def fails() -> None:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        await in_worker_thread(fails)

    with pytest.raises(OSError, match="No space left") as caught:
        trio.run(main)
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "fails" in names


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    ran: list[str] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await in_worker_thread(lambda: ran.append("ran"))
        assert scope.cancelled_caught

    trio.run(main)
    assert ran == []


def test_a_running_call_is_waited_for_then_cancelled() -> None:
    started = threading.Event()
    release = threading.Event()
    finished: list[str] = []

    def blocking() -> str:
        started.set()
        if not release.wait(WAIT):
            raise TimeoutError("never released")
        finished.append("done")
        return "done"

    async def main() -> None:
        results: list[str] = []

        async def caller(scope_box: list[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                scope_box.append(scope)
                results.append(await in_worker_thread(blocking))
                await trio.lowlevel.checkpoint()  # where the pending cancellation lands
                results.append("not cancelled")

        box: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, box)
            while not started.is_set():
                await trio.sleep(0.01)
            box[0].cancel()
            # Cancelled, yet still waiting for the thread: nothing came back.
            await trio.sleep(0.05)
            assert results == [] and finished == []
            release.set()
        # The call's result arrived (not abandoned), then the cancellation took effect.
        assert results == ["done"]
        assert box[0].cancelled_caught

    trio.run(main)
    assert finished == ["done"]


def test_a_limiter_of_one_serialises_and_separate_limiters_do_not() -> None:
    lock = threading.Lock()
    running = 0
    most = 0
    both_running = threading.Barrier(2, timeout=WAIT)

    def counted() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            # Give another call every chance to overlap (a wait on a condition that never
            # comes true under a correct limiter, not a timing assumption).
            threading.Event().wait(0.02)
        finally:
            with lock:
                running -= 1

    async def main() -> None:
        shared = trio.CapacityLimiter(1)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(lambda: in_worker_thread(counted, limiter=shared))
        # Two limiters of one: both calls must be in their threads at once to pass the barrier.
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(
                    lambda: in_worker_thread(both_running.wait, limiter=trio.CapacityLimiter(1))
                )
        assert shared.borrowed_tokens == 0

    trio.run(main)
    assert most == 1


def test_the_limiter_is_released_after_an_exception() -> None:
    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        with pytest.raises(ZeroDivisionError):
            await in_worker_thread(lambda: 1 // 0, limiter=limiter)
        assert limiter.borrowed_tokens == 0
        assert await in_worker_thread(lambda: "next", limiter=limiter) == "next"

    trio.run(main)


def test_a_call_waiting_for_its_limiter_can_be_cancelled() -> None:
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: in_worker_thread(lambda: release.wait(WAIT), limiter=limiter)
            )
            while limiter.borrowed_tokens == 0:
                await trio.sleep(0.01)
            with trio.move_on_after(0.05) as scope:
                await in_worker_thread(lambda: ran.append("ran"), limiter=limiter)
            assert scope.cancelled_caught
            release.set()
        assert limiter.borrowed_tokens == 0

    trio.run(main)
    assert ran == []


def test_a_shutdown_waits_for_the_running_call() -> None:
    """The daemon's shutdown cancels its nursery; a log append in flight must complete."""
    started = threading.Event()
    release = threading.Event()
    completed: list[str] = []

    def append() -> None:
        started.set()
        if release.wait(WAIT):
            completed.append("appended")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: in_worker_thread(append, limiter=trio.CapacityLimiter(1)))
            while not started.is_set():
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
            threading.Thread(target=release.set).start()

    trio.run(main)
    assert completed == ["appended"]
