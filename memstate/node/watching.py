"""A watchfiles watch that trio can cancel promptly.

`watchfiles.awatch` waits for changes in a worker thread; cancelling the awaiting task does not
stop that thread, which then sits out its own timeout before the task can finish (seconds at
shutdown). `watch` passes a stop event that is set the moment the enclosing scope is cancelled,
so the thread returns within one `step`. Changes are delivered to a callback rather than yielded,
because a trio nursery cannot stay open across the yields of an async generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Set
from pathlib import Path

import anyio
import trio
import watchfiles

# How long the watch thread waits for changes before checking the stop event and yielding an
# empty batch (which also lets callers notice a watched root that went away).
WATCH_TIMEOUT_MS = 1000

Batch = Set[tuple[watchfiles.Change, str]]


async def watch(
    path: Path,
    on_batch: Callable[[Batch], bool | None],
    *,
    watch_filter: Callable[[watchfiles.Change, str], bool] | None,
    debounce_ms: int,
    step_ms: int,
    recursive: bool,
) -> None:
    """Call `on_batch` with every batch of changes under `path` (an empty one after each quiet
    `WATCH_TIMEOUT_MS`) until cancelled, or until `on_batch` returns False."""
    stop = anyio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_when_cancelled, stop)
        batches_iterator = watchfiles.awatch(
            path,
            watch_filter=watch_filter,
            debounce=debounce_ms,
            step=step_ms,
            stop_event=stop,
            rust_timeout=WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            force_polling=False,
            recursive=recursive,
            ignore_permission_denied=True,
        )
        try:
            async with contextlib.aclosing(batches_iterator) as batches:
                async for batch in batches:
                    if on_batch(batch) is False:
                        return
        finally:
            stop.set()
            nursery.cancel_scope.cancel()


async def _set_when_cancelled(stop: anyio.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()
