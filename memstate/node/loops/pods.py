"""The pod sources' loops: the manifest directory, the kubelet and API-server sources."""

from __future__ import annotations

import functools
import logging
import math

import trio

from memstate.core.errors import MemstateError
from memstate.core.events import ReadmissionCompleted
from memstate.node.context import SOURCES_RECHECK_SECONDS, DaemonContext
from memstate.node.stale import forget_vanished_rejections
from memstate.node.watching import watch_directory

# The daemon's log lines keep the name operators filter on, whichever module writes them.
logger = logging.getLogger("memstate.node.daemon")

SOURCE_HEALTH_SECONDS = SOURCES_RECHECK_SECONDS
UNSETTLED_MARGIN_SECONDS = 0.05


async def scan_manifests(daemon: DaemonContext) -> None:
    if "manifests" not in daemon.settings.pod_sources:
        return
    if daemon.adapters.read_manifests is not None:
        pods = await daemon.run_io(daemon.adapters.read_manifests)
        await daemon.feed.deliver("manifests", pods)
        return
    # The directory's account of what changed lets the tracker skip a pass over every pod. A
    # small hinted read (an admission's one file) runs here: handing it to a worker thread and
    # back costs more CPU than reading it; anything larger, or a slow directory, goes there.
    read = daemon.manifests.read_changes_inline()
    if read is None:
        read = await daemon.run_io(daemon.manifests.read_changes)
    pods, changes = read
    await daemon.feed.deliver("manifests", pods, changes=changes)


async def sources_loop(daemon: DaemonContext) -> None:
    """Run the kubelet/API-server sources; close readmission once each has synced."""
    if not daemon.sources:
        return
    async with trio.open_nursery() as nursery:
        for source in daemon.sources:
            nursery.start_soon(source.run, daemon.feed.deliverer(source.name))
        waited = 0.0
        while daemon.state.readmission_open:
            unsynced = [s.name for s in daemon.sources if s.health.last_success_unix is None]
            if not unsynced:
                forget = forget_vanished_rejections(daemon.state, daemon.settings.manifest_dir)
                await daemon.submit([*forget, ReadmissionCompleted()])
                break
            if waited and waited % 60.0 == 0:
                logger.warning(
                    "readmission stays open until every pod source has synced; waiting for %s",
                    ", ".join(unsynced),
                )
            await trio.sleep(0.5)
            waited += 0.5
        for source in daemon.sources:
            source.health.on_change = daemon._sources_wake.set
        health = None
        while True:
            try:
                await daemon.feed.recheck()
            except MemstateError as exc:
                logger.error("pod sources: %s", exc)
            current = [tuple(s.health.as_dict().values()) for s in daemon.sources]
            if current != health:
                health = current
                publish_sources(daemon)
                daemon._write_status()
            # Deleted pods are released when their cgroup empties: ask again on cgroup hints,
            # and every second while the tracker is not settled (a pod waits for its cgroup, or
            # its view needs the full evaluation); a settled tracker's recheck finds nothing, so
            # an idle node sleeps until a hint, a change of a source's health (published then)
            # or, within a second, a view that unsettles it (the feed's `on_unsettled`).
            settled = daemon.tracker.settled
            await daemon._sources_wake.wait(math.inf if settled else SOURCE_HEALTH_SECONDS)


def publish_sources(daemon: DaemonContext) -> None:
    for source in daemon.sources:
        h = source.health
        daemon.metrics.pod_source_in_sync.labels(source=h.name).set(1 if h.in_sync else 0)
        daemon.metrics.pod_source_failures.labels(source=h.name).set(h.consecutive_failures)
        daemon.metrics.pod_source_last_success.labels(source=h.name).set(h.last_success_unix or 0)


async def manifest_loop(daemon: DaemonContext) -> None:
    async with trio.open_nursery() as nursery:
        if daemon.adapters.host_loops and daemon.adapters.read_manifests is None:
            # A change is a hint (the loop rescans); failures are logged, counted and retried.
            # In place before the first scan: a file written after that scan listed the
            # directory is hinted, not left to the periodic rescan.
            await nursery.start(
                functools.partial(
                    watch_directory,
                    daemon.settings.manifest_dir,
                    daemon._manifest_wake.set,
                    only_name=None,
                    on_error=daemon.metrics.watch_failed("manifests"),
                    on_names=daemon.manifests.hint,  # a scan reads only what the watch reported
                )
            )
        while True:
            daemon.manifests.full_rescan_seconds = daemon.settings.rescan_seconds
            try:
                # Reconcile rounds wait for the scan and the commit of what it found.
                with daemon.admissions.scanning():
                    await scan_manifests(daemon)
            except MemstateError as exc:
                logger.error("manifest scan: %s", exc)
                daemon.readiness.source_failed("manifests", str(exc))
            else:
                daemon.readiness.source_in_sync("manifests")
            daemon.heartbeat.beat("manifests", daemon.settings.rescan_seconds)
            # A file that does not parse or validate is reported once it has stayed unchanged
            # for a while (memstate.node.manifests, "In-place writes"): read it again then,
            # even if nothing else happens. It is hinted, so that read looks at it alone.
            due = daemon.manifests.unsettled_due_in()
            timeout = daemon.settings.rescan_seconds
            if due is not None:
                # A little past the due time, so the read finds it due (the directory's clock is
                # not trio's); never a busy loop.
                timeout = min(timeout, max(due, 0.0) + UNSETTLED_MARGIN_SECONDS)
            await daemon._manifest_wake.wait(timeout)
