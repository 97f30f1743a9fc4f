"""The watchdog, the status file's deferred writes and the one-off check of sealed log segments."""

from __future__ import annotations

import logging
import math

import trio

from memstate.node.context import STATUS_INTERVAL_SECONDS, DaemonContext
from memstate.store.verify import check_sealed_bodies

# The daemon's log lines keep the name operators filter on, whichever module writes them.
logger = logging.getLogger("memstate.node.daemon")


async def watchdog_loop(daemon: DaemonContext) -> None:
    interval = daemon.notifier.watchdog_interval_seconds
    if interval is None:
        return
    while True:
        daemon.notifier.watchdog()
        await trio.sleep(interval)


async def status_loop(daemon: DaemonContext) -> None:
    """Write daemon-status.json when a write was left due (`DaemonContext.write_status_soon`):
    at the end of the interval after the last write, with what is current then."""
    while True:
        await daemon.status_wake.wait(math.inf)
        if daemon.status_due:
            await trio.sleep_until(daemon.status_written_at + STATUS_INTERVAL_SECONDS)
            if daemon.status_due:
                daemon._write_status()


async def sealed_segments_check(daemon: DaemonContext) -> None:
    """Check every sealed segment's body against its seal, once, after READY.

    Start-up checks sealed segments from their seal only (docs/event-log.md, "What
    start-up checks"); the state never depends on their bodies when a checkpoint after them
    was used. Damage found here is logged and counted, and the daemon keeps running: what
    it serves came from records that were checked. `memstate log verify --full` shows it.
    """
    problem = await trio.to_thread.run_sync(
        check_sealed_bodies, daemon.settings.state_dir, abandon_on_cancel=True
    )
    if problem is None:
        daemon.metrics.log_sealed_checks.labels(result="ok").inc()
        logger.info("sealed log segments match their seals")
        return
    daemon.metrics.log_sealed_checks.labels(result="damaged").inc()
    logger.error(
        "sealed log segment damaged: %s: offset %d: %s; run `memstate log verify --full`",
        problem.file,
        problem.offset,
        problem.message,
    )
