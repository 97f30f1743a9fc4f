"""The production `RunIO`: a blocking call handed to one of trio's cached worker threads.

`trio.to_thread.run_sync` does more per call than the daemon needs: it names the OS thread twice
through ctypes (`pthread_setname_np`, before and after the call), formats a thread name, copies
the caller's contextvars, registers the thread for `trio.from_thread`, and takes the limiter with
an extra scheduler round trip. At 500 resident pods an admission made three hand-offs (the
manifest read, the log append, the reconcile round; a small hinted manifest read and, while it
is fast, the log append now run on the event loop, so one remains), and that overhead was a
measurable share of its CPU
(docs/performance.md, "Admission at 500 resident pods"). `in_worker_thread` keeps what
the callers rely on and drops the rest:

- a call cancelled before it starts (or while waiting for its limiter) raises `trio.Cancelled`
  and never runs; once running it is not abandoned: the caller waits for it to finish (the log
  append and the reconcile round must not be left running behind a shutdown), and a pending
  cancellation is delivered at the caller's next checkpoint;
- its return value, or its exception (with traceback), is the caller's;
- `limiter` (trio's default thread limiter when None) bounds how many run at once: one per
  resource serialises the log operations (`Writer.limiter`) and the reconcile rounds;
- the function runs outside trio: no `trio.from_thread`, and not in the caller's contextvars;
  the call is not counted by `trio.testing.wait_all_threads_completed`.

The threads are trio's own cache (`trio.lowlevel.start_thread_soon`, reused, daemonic); the
result comes back through the run's `TrioToken`, the one thread-safe way into a trio run.

A hand-off is two wake-ups across threads (a futex for the worker, the wake-up socket for the
event loop) and the interpreter lock changing hands: at 500 resident pods it cost more CPU than
the log append it carried (docs/performance.md, "stop 21: the admission path outside the
round"). `InlineWhileFast` runs such a call on the event loop itself while it stays fast, and
hands it over again for a while once it was slow: the writer uses it for the log append.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

_T = TypeVar("_T")


def _not_abortable(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
    # A running call is never abandoned: the cancellation waits for its result.
    return trio.lowlevel.Abort.FAILED


async def in_worker_thread(
    fn: Callable[[], _T], *, limiter: trio.CapacityLimiter | None = None
) -> _T:
    """Run the blocking `fn()` in a worker thread and return its result (or raise its
    exception); see the module docstring for cancellation and `limiter`."""
    await trio.lowlevel.checkpoint_if_cancelled()
    if limiter is None:
        limiter = trio.to_thread.current_default_thread_limiter()
    borrower = object()  # one per call: a task may hold other tokens of the same limiter
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
    try:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[_T]) -> None:
            # In the worker thread. The run cannot have finished while the task waits, but a
            # failure here must not kill the thread cache's worker.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(fn, deliver)
        # Rescheduled with fn's outcome: returns its value or raises its exception.
        value: _T = await trio.lowlevel.wait_task_rescheduled(_not_abortable)
        return value
    finally:
        limiter.release_on_behalf_of(borrower)


class InlineWhileFast:
    """Whether a short blocking call may run on the event loop instead of a worker thread.

    The caller asks `available()` and then runs the call with `run(fn)` (or hands it to its
    worker thread otherwise). A call that took longer than `slow_seconds` (by `clock`) sends the
    next ones to the thread for `pause_seconds`: a slow disk blocks the event loop once per
    pause at most, not on every call. The call itself is unchanged (same system calls, same
    errors); only the thread it runs on differs.
    """

    def __init__(
        self,
        *,
        slow_seconds: float,
        pause_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slow_seconds = slow_seconds
        self.pause_seconds = pause_seconds
        self.clock = clock
        self._paused_until = float("-inf")

    def available(self) -> bool:
        """No call was slow in the last `pause_seconds`."""
        return self.clock() >= self._paused_until

    def run(self, fn: Callable[[], _T]) -> _T:
        """`fn()` here and now (blocking the caller), timed: a slow one pauses the inline
        runs."""
        started = self.clock()
        try:
            return fn()
        finally:
            ended = self.clock()
            if ended - started > self.slow_seconds:
                self._paused_until = ended + self.pause_seconds
