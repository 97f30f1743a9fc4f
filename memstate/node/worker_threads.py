"""The production `RunIO`: a blocking call handed to one of trio's cached worker threads.

`trio.to_thread.run_sync` does more per call than the daemon needs: it names the OS thread twice
through ctypes (`pthread_setname_np`, before and after the call), formats a thread name, copies
the caller's contextvars, registers the thread for `trio.from_thread`, and takes the limiter with
an extra scheduler round trip. At 500 resident pods an admission made three hand-offs (the
manifest read, the log append, the reconcile round; a small hinted manifest read now runs on the
event loop, so two remain), and that overhead was a measurable share of its CPU
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
"""

from __future__ import annotations

import contextlib
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
