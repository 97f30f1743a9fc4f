"""The reconcile loop: scoped rounds after commits, periodic full resyncs, retries, cgroup hints."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from memstate.core.errors import HostError
from memstate.core.events import Event, PodCgroupRemoved
from memstate.node.context import DaemonContext
from memstate.node.journal import log_drift
from memstate.node.sources.kubelet import KubeletSource
from memstate.node.watching import Batch
from memstate.node.worker_threads import InlineWhileFast
from memstate.reconcile.reconciler import PreparedRound, ReconcileReport

# The daemon's log lines keep the name operators filter on, whichever module writes them.
logger = logging.getLogger("memstate.node.daemon")

FAILURE_NOTE_REPEAT_SECONDS = 600.0
# A scoped round over more paths than this (a burst's, a backlog of removals) goes to the worker
# thread whatever the last rounds took: its cost grows with its scope.
INLINE_ROUND_MAX_PATHS = 32


async def reconcile_once(daemon: DaemonContext) -> float | None:
    """One reconcile round; returns when the reconciler wants a retry (seconds) or None."""
    targets, changes = daemon.targets, daemon.targets_changes
    if targets is None or daemon.reconciler is None:
        return None
    scope, daemon._scope = daemon._scope, set()
    retiring = daemon.removals.paths
    if scope is not None and not scope and not retiring:
        return None
    reconciler = daemon.reconciler
    generation = daemon.targets_generation
    started = trio.current_time()
    arguments = {
        "retired_paths": sorted(retiring),
        "scope": None if scope is None else sorted(scope),
        "changes": changes,
    }
    # The CPU given up once before the round (sched_yield): the commit it follows has just woken
    # whoever waits for the decision (a reader of the journal, the runtime's answer), and on a
    # shared core the kernel lets the daemon run on through the round, milliseconds, before that
    # reader gets a turn (docs/reconciler.md, "Where a round runs"). One system call when
    # nothing else waits; outside the round's timing (`InlineWhileFast`).
    daemon.adapters.yield_cpu()
    inline = daemon.inline_rounds
    if (
        inline is None
        or not inline.available()
        or scope is None  # a full round: tens of milliseconds at 500 pods
        or len(scope) + len(retiring) > INLINE_ROUND_MAX_PATHS
        or daemon.shadow is not None  # every shadow round is a full one
    ):
        report = await daemon.run_io(
            functools.partial(reconciler.reconcile, targets, **arguments),  # type: ignore[attr-defined]
            limiter=daemon._cgroup_limiter,
        )
    else:
        report = await _round_on_the_loop(
            daemon,
            inline,
            functools.partial(reconciler.prepare, targets, **arguments),  # type: ignore[attr-defined]
            reconciler.complete,  # type: ignore[attr-defined]
        )
    if daemon.shadow is not None:
        daemon.shadow.cgroups_observed(report.differences)
    label = "full" if scope is None else "scoped"
    metrics = daemon.metrics
    metrics.reconcile_seconds_by(label).observe(trio.current_time() - started)
    for (file_name, result), count in sorted(report.counters.items()):
        metrics.cgroup_writes_by(file_name, result).inc(count)
    notes = notes_worth_recording(daemon, report.notes)
    drift = sum(1 for n in report.notes if n.kind == "cgroup_drift_corrected")
    if drift:
        daemon.metrics.drift_corrections.inc(drift)
    # Converged to the targets of this round, and those are still the published ones.
    daemon._converged = bool(report.converged) and generation == daemon.targets_generation
    daemon._pending_removals = len(report.pending_removals)
    # Removals seen finished become durable notes; the fold then drops them. A path the
    # state has since desired again, or already dropped, needs no note.
    current = daemon.removals.paths
    notes.extend(
        PodCgroupRemoved(path=path, uid=current[path]) for path in report.removed if path in current
    )
    daemon.readiness.converged = daemon._converged
    daemon.readiness.pending_removals = daemon._pending_removals
    daemon._publish()
    daemon.write_status_soon()
    if notes:
        await daemon.writer.submit(notes)
    retry: float | None = report.retry_after_seconds
    return retry


async def _round_on_the_loop(
    daemon: DaemonContext,
    inline: InlineWhileFast,
    prepare: Callable[[], PreparedRound],
    complete: Callable[[PreparedRound], ReconcileReport],
) -> ReconcileReport:
    """A scoped round on the event loop: a hand-off to the worker thread and back cost more CPU
    than an admission's round itself (docs/performance.md, "stop 23: the scoped round on the
    event loop"). Its writes go to the worker thread when they may wait on the kernel (a lowered
    limit reclaims inside the write: memstate.reconcile.blocking), and a slow half sends the
    next rounds there for a while (`InlineWhileFast`)."""
    async with daemon._cgroup_limiter:  # one round at a time, as in the worker thread
        prepared = inline.run(prepare)
        if prepared.may_block:
            # This task holds the limiter: the thread takes none of its own.
            report: ReconcileReport = await daemon.run_io(functools.partial(complete, prepared))
            return report
        return inline.run(functools.partial(complete, prepared))


def notes_worth_recording(daemon: DaemonContext, notes: Sequence[Event]) -> list[Event]:
    """Drift and orphans are always recorded; a repeated identical failure once per 10 min."""
    now = trio.current_time()
    kept: list[Event] = []
    for note in notes:
        if note.kind == "cgroup_write_failed":
            key = (
                getattr(note, "path", ""),
                getattr(note, "op", ""),
                getattr(note, "file", ""),
                int(getattr(note, "errno", 0)),
            )
            last = daemon._failure_notes.get(key)
            if last is not None and now - last < FAILURE_NOTE_REPEAT_SECONDS:
                continue
            daemon._failure_notes[key] = now
            logger.warning("cgroup: %s", getattr(note, "message", note))
        elif note.kind == "cgroup_drift_corrected":
            log_drift(
                logger,
                getattr(note, "path", ""),
                getattr(note, "file", ""),
                getattr(note, "found", ""),
                getattr(note, "expected", ""),
            )
        kept.append(note)
    return kept


async def reconcile_loop(daemon: DaemonContext) -> None:
    retry: float | None = None
    while True:
        daemon.heartbeat.beat("reconcile", daemon.settings.resync_seconds)
        timeout = (
            daemon.settings.resync_seconds
            if retry is None
            else min(retry, daemon.settings.resync_seconds)
        )
        woken = await daemon._reconcile_wake.wait(timeout)
        # An admission on its way goes first (memstate.node.admissions); what it commits and
        # what the watches report meanwhile joins this round's scope (taken in reconcile_once).
        await daemon.admissions.wait_idle()
        if not woken and retry is None:
            daemon._scope = None  # periodic full resync: the source of truth
        try:
            retry = await reconcile_once(daemon)
        except HostError as exc:
            logger.error("reconcile: %s", exc)
            retry = daemon.settings.resync_seconds


async def cgroup_watch_loop(daemon: DaemonContext) -> None:
    """Changes to the tree made by others trigger an early full resync."""
    from memstate.node.cgroup_watch import watch_cgroups

    def hint(path: str) -> None:
        # A hint names the cgroup that changed ("" for the whole tree): resync the managed
        # cgroup it belongs to early (a container cgroup the runtime made below a pod
        # cgroup belongs to that pod); anything else gets a full resync, which also finds
        # orphans. The periodic full resync stays the source of truth.
        managed = managed_cgroup_of(daemon, path) if path else None
        if managed is None:
            daemon._scope = None
        elif daemon._scope is not None:
            daemon._scope.add(managed)
        daemon._reconcile_wake.set()
        # A cgroup memstate does not manage appeared (the kubelet made a pod cgroup, or the
        # runtime a container's): poll /pods at once (rate-limited by the source). An
        # emptied cgroup may release a deleted pod.
        if path and managed != path:
            for source in daemon.sources:
                if isinstance(source, KubeletSource):
                    source.nudge()
        daemon._sources_wake.set()

    await watch_cgroups(
        daemon.settings.cgroup_sim or daemon.settings.cgroup_root,
        on_hint=hint,
        on_error=daemon.metrics.watch_failed("cgroups"),
        screen=echo_screen(daemon),
    )


def echo_screen(daemon: DaemonContext) -> Callable[[Batch], Awaitable[Batch]] | None:
    """The watch's screen that drops the echo of the rounds' own writes, judged in steps that
    let the event loop run between them, counting what it dropped (memstate.node.cgroup_echo);
    None when the reconciler's writes are not recorded."""
    own = daemon.own_writes
    if own is None:
        return None
    echoes = daemon.metrics.cgroup_watch_echoes

    async def screen(batch: Batch) -> Batch:
        before = own.echoes
        batch = await own.foreign_in_steps(batch)
        if own.echoes != before:
            echoes.inc(own.echoes - before)
        return batch

    return screen


def managed_cgroup_of(daemon: DaemonContext, path: str) -> str | None:
    """The nearest cgroup at or above `path` that the targets manage (None if none)."""
    # A look-up per ancestor, not a set of every managed path per hint: on a real node the
    # runtime's container cgroups give a hint per admission.
    parts = path.split("/")
    while parts:
        candidate = "/".join(parts)
        if daemon.manages_cgroup(candidate):
            return candidate
        parts.pop()
    return None
