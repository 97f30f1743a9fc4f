"""The production `RunIO` (memstate.node.writer.in_worker_thread) behaves as trio's own.

It runs the call in another thread, holds the limiter for the call, returns the call's result
or raises its exception, and a caller cancelled while the call runs waits for it (the call
cannot be abandoned: the log's append must finish before the state moves on), then sees the
cancellation.
"""

from __future__ import annotations

import threading

import pytest
import trio

from memstate.node.writer import in_worker_thread


def test_the_call_runs_in_another_thread_under_the_limiter() -> None:
    limiter = trio.CapacityLimiter(1)
    seen: list[tuple[int, int]] = []

    def call() -> str:
        seen.append((threading.get_ident(), limiter.borrowed_tokens))
        return "done"

    async def main() -> str:
        return await in_worker_thread(call, limiter=limiter)

    assert trio.run(main) == "done"
    assert seen[0][0] != threading.get_ident()
    assert seen[0][1] == 1
    assert limiter.borrowed_tokens == 0


def test_the_calls_exception_reaches_the_caller() -> None:
    def call() -> None:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        await in_worker_thread(call)

    with pytest.raises(OSError, match="No space left"):
        trio.run(main)


def test_a_cancelled_caller_waits_for_the_call_then_sees_the_cancellation() -> None:
    started = threading.Event()
    release = threading.Event()
    finished: list[str] = []

    def call() -> str:
        started.set()
        release.wait(timeout=60)
        finished.append("call")
        return "result"

    async def main() -> None:
        scope = trio.CancelScope()

        async def caller() -> None:
            with scope:
                assert await in_worker_thread(call) == "result"
                finished.append("caller")
                await trio.sleep(0)  # the next checkpoint delivers the cancellation
                finished.append("not reached")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.to_thread.run_sync(started.wait, 60)
            scope.cancel()
            await trio.sleep(0.05)  # the caller is still waiting for the call
            assert finished == []
            release.set()
        assert scope.cancelled_caught

    trio.run(main)
    assert finished == ["call", "caller"]


def test_a_caller_cancelled_before_the_call_does_not_start_it() -> None:
    calls: list[str] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await in_worker_thread(lambda: calls.append("call"))

    trio.run(main)
    assert calls == []
