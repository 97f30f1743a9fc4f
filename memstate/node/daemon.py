"""`memstate run`: the long-lived node daemon.

Theory of operation
-------------------
One trio root nursery. Every change of the world becomes an input event; one *writer* task owns
the state: it takes queued inputs, asks the reducer to `decide` on each (against the state after
the previous ones), appends each input with its decisions in one group-commit batch (one fsync for
the whole batch, in a worker thread with its own `CapacityLimiter(1)`), and only then applies them,
publishes the new state and wakes the reconciler. The append and the state update form one
shielded section: a SIGTERM arriving mid-fsync waits for it, so the state in memory always matches
the log's last record and its chain CRC (which the final checkpoint records).

The daemon is composed of parts: the state they share (memstate.node.context), the writer
(memstate.node.writer), start-up (memstate.node.startup) and the loops (memstate.node.loops);
`Daemon` wires them: `run` starts the writer, then start-up, then the loops.

Start-up order (docs/operations.md): lock the state directory and recover the log (EventLog.open:
torn tails are cut, anything worse refuses with exit 65); rebuild the state from the newest valid
checkpoint plus the tail; observe the topology (sysfs or a topology file); load and validate the
config (exit 78 if it does not fit the machine, or, with `kubeletConfigFile`, would fight the
kubelet's: memstate.node.kubelet_config); record what changed (`daemon_started`,
`daemon_restarted` when there is history, `topology_observed`, `config_loaded`); readmit the pods
found in the manifest directory, in whatever order it lists them, and close readmission; reconcile
the whole tree; then tell systemd READY=1.

Then, concurrently: the manifest directory (watched with inotify; watch events are hints, a
periodic full rescan is the truth), the kubelet and API-server pod sources when configured (all
sources feed one tracker, memstate.node.sources; with such sources, readmission closes once each
has synced), the config file and SIGHUP (reload: a valid config becomes an
event, an invalid one is rejected, counted and logged, the old one stays), the reconcile loop
(after every commit for the cgroups the decisions touched, a full resync periodically and when the
cgroup tree changes behind memstate's back, retries when the reconciler asks), the watchdog, the
HTTP endpoint (memstate.node.endpoint: /metrics reading an immutable snapshot, /healthz from the
loops' heartbeat, /readyz from the readiness the daemon keeps; trio tasks in the root nursery),
with `nri:` the NRI plugin (memstate.node.nri_decider: answers from committed decisions only),
with `mode: shadow` the comparison with the kubelet (memstate.node.shadow), and with the API-server
source a Kubernetes Event per rejection (memstate.node.sources.rejection_events).
SIGTERM/SIGINT stop everything, finish the in-flight append, write a final checkpoint and exit 0.

Failures: a log that cannot be written (fsync error) stops the daemon with exit 74 — decisions that
cannot be recorded must not be acted on. A full disk fails the batch (nothing acknowledged), is
counted and logged, and the inputs are tried again at the next rescan.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from memstate.core.errors import MemstateError
from memstate.node.collector import young_generation
from memstate.node.context import DaemonContext
from memstate.node.loops.config import config_loop
from memstate.node.loops.converge import cgroup_watch_loop, reconcile_loop
from memstate.node.loops.pods import manifest_loop, sources_loop
from memstate.node.loops.upkeep import sealed_segments_check, status_loop, watchdog_loop
from memstate.node.nri_decider import run_nri
from memstate.node.shadow import run_shadow
from memstate.node.sources.rejection_events import run_rejection_events
from memstate.node.startup import start_up

logger = logging.getLogger("memstate.node.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0


class Daemon(DaemonContext):
    """The node daemon. `trio.run(Daemon(settings).main)`, or `run_daemon(settings)`."""

    # --- main ----------------------------------------------------------------------------------

    async def main(self) -> None:
        """Run until SIGTERM/SIGINT; raises MemstateError subclasses for fatal conditions."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            try:
                await self.run(signals)
            finally:
                await self.shutdown()

    async def run(self, signals: AsyncIterator[int] | None = None) -> None:
        """Start up, then run every loop until cancelled; no final checkpoint (`shutdown`).

        The simulation calls this directly and cancels it to crash the daemon."""
        # Fewer young-generation collections while it runs (memstate.node.collector).
        with young_generation():
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if signals is not None:
                    nursery.start_soon(self._signal_loop, signals, nursery.cancel_scope)
                # The writer runs first: start-up's events take the same path as all others.
                await nursery.start(self.writer.run)
                await start_up(self)
                if self.on_ready is not None:
                    self.on_ready(self)
                for loop in self.loops():
                    nursery.start_soon(loop)
                if self.stop_after_seconds is not None:
                    nursery.start_soon(_stop_after, self.stop_after_seconds, nursery.cancel_scope)

    def loops(self) -> list[Callable[[], Any]]:
        """The tasks that run after READY (add a loop here)."""
        loops: list[Callable[[], Any]] = [
            functools.partial(manifest_loop, self),
            functools.partial(sources_loop, self),
            functools.partial(config_loop, self),
            functools.partial(reconcile_loop, self),
            functools.partial(watchdog_loop, self),
            functools.partial(run_nri, self),
            functools.partial(run_shadow, self),
            functools.partial(run_rejection_events, self),
        ]
        if self.adapters.host_loops:
            loops += [
                functools.partial(cgroup_watch_loop, self),
                functools.partial(status_loop, self),
                functools.partial(sealed_segments_check, self),
            ]
        return loops

    async def _signal_loop(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                logger.info("SIGHUP: reloading the config")
                self._config_wake.set()
                continue
            logger.info("%s: shutting down", signal.Signals(signum).name)
            if self.reconciler is not None:  # a round in a worker thread stops at once
                self.reconciler.interrupt()  # type: ignore[attr-defined]
            scope.cancel()
            return

    async def shutdown(self) -> None:
        if self._tree_claim is not None:
            self._tree_claim.release()
        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE_SECONDS):
            self.notifier.stopping()
            if self.storage is not None:
                try:
                    await self.writer.checkpoint()
                finally:
                    storage, self.storage = self.storage, None
                    await self.run_io(storage.close, limiter=self.writer.limiter)


async def _stop_after(seconds: float, scope: trio.CancelScope) -> None:
    await trio.sleep(seconds)
    logger.info("stopping after %g s as asked", seconds)
    scope.cancel()


def run_daemon(daemon: Daemon) -> None:
    """Run the daemon; a fatal MemstateError is re-raised unwrapped (for the exit code)."""
    try:
        trio.run(daemon.main)
    except* MemstateError as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[MemstateError]) -> MemstateError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    raise RuntimeError("empty exception group")  # pragma: no cover
