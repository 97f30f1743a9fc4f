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

Start-up order (docs/operations.md): lock the state directory and recover the log (EventLog.open:
torn tails are cut, anything worse refuses with exit 65); rebuild the state from the newest valid
checkpoint plus the tail; observe the topology (sysfs or a topology file); load and validate the
config (exit 78 if it does not fit the machine); record what changed (`daemon_started`,
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
and with `nri:` the NRI plugin (memstate.node.nri_decider: answers from committed decisions only).
SIGTERM/SIGINT stop everything, finish the in-flight append, write a final checkpoint and exit 0.

Failures: a log that cannot be written (fsync error) stops the daemon with exit 74 — decisions that
cannot be recorded must not be acted on. A full disk fails the batch (nothing acknowledged), is
counted and logged, and the inputs are tried again at the next rescan.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from memstate import __version__
from memstate.core.config import NodeConfig
from memstate.core.errors import ConfigError, InvariantViolation, MemstateError
from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    DaemonStarted,
    Event,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.state import REDUCER_VERSION
from memstate.core.topology import Topology
from memstate.node.adapters import Adapters, file_storage
from memstate.node.cgroup_tree import TreeClaim
from memstate.node.context import DaemonContext
from memstate.node.endpoint import HttpEndpoint, status_routes
from memstate.node.inputs import load_topology
from memstate.node.loops.config import config_loop, load_config
from memstate.node.loops.converge import cgroup_watch_loop, reconcile_loop, reconcile_once
from memstate.node.loops.pods import manifest_loop, scan_manifests, sources_loop
from memstate.node.loops.upkeep import sealed_segments_check, watchdog_loop
from memstate.node.nri_decider import run_nri
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from memstate.node.sources.configure import network_sources, node_name_of
from memstate.node.stale import forget_vanished_rejections

logger = logging.getLogger("memstate.node.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0


class Daemon(DaemonContext):
    """The node daemon. `trio.run(Daemon(settings).main)`, or `run_daemon(settings)`."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        cli_overrides: dict[str, object] | None = None,
        fsync: bool = True,
        on_ready: Callable[[Daemon], None] | None = None,
        stop_after_seconds: float | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        super().__init__(
            settings,
            notifier=notifier,
            cli_overrides=cli_overrides,
            fsync=fsync,
            adapters=adapters,
        )
        self.on_ready = on_ready
        self.stop_after_seconds = stop_after_seconds

    # --- start-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Everything before READY=1 (see the module docstring for the order)."""
        settings = self.settings
        self.notifier.status("recovering the event log")
        make_storage = self.adapters.storage or file_storage(
            settings.state_dir,
            fsync=self.fsync,
            checkpoints_keep=settings.checkpoints_keep,
            prune_log=settings.prune_log,
        )
        storage = make_storage()
        opened = await self.run_io(storage.open, limiter=self.writer.limiter)
        self.storage = storage
        recovered = opened.recovered
        had_history = opened.log.last_seq > 0
        for warning in recovered.warnings:
            logger.warning("checkpoint: %s", warning)
        self.metrics.start_process(recovered.state.counters)
        self.writer.attach(
            opened.log,
            self._write_checkpoint,
            state=recovered.state,
            removals=recovered.removals,
            last_seq=recovered.last_seq,
            checkpoint_seq=recovered.checkpoint_seq or 0,
        )
        if recovered.removals:
            paths = sorted(recovered.removals.paths)
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            logger.info(
                "%d retired pod cgroups still to remove: %s%s",
                len(paths),
                ", ".join(paths[:5]),
                more,
            )
        logger.info(
            "recovered seq %d (checkpoint %s, %d records decoded)",
            recovered.last_seq,
            recovered.checkpoint_seq,
            recovered.decoded_events,
        )
        topology = self._observe_topology()
        config = load_config(self, topology)
        self.config_topology = topology
        self.manifests.node_name = node_name_of(self.settings)
        given = self.adapters.sources
        # ConfigError on bad credentials
        self.sources = list(given) if given is not None else list(network_sources(self.settings))
        self._open_reconciler(topology, config)

        boot: list[Event] = []
        truncated = opened.truncated
        if truncated is not None:
            logger.warning(
                "log tail truncated: %s at offset %d, %d bytes dropped (copy kept at %s)",
                truncated.segment,
                truncated.offset,
                truncated.bytes_dropped,
                truncated.broken_copy,
            )
            boot.append(truncated)
        boot.append(
            DaemonStarted(
                memstate_version=__version__,
                reducer_version=REDUCER_VERSION,
                python=platform.python_version(),
                hostname=socket.gethostname(),
                boot_id=self.adapters.boot_id(),
                kernel_release=os.uname().release,
            )
        )
        if had_history:
            boot.append(DaemonRestarted())
        if topology != self.state.observed_topology:
            boot.append(TopologyObserved(topology=topology, source=self._topology_source()))
        if config != self.state.observed_config:
            boot.append(ConfigLoaded(config=config, source=str(settings.config_file or "")))
        await self.writer.submit(boot)

        self.notifier.status("readmitting pods")
        await scan_manifests(self)
        if self.state.readmission_open and not self.sources:
            forget = forget_vanished_rejections(self.state, settings.manifest_dir)
            await self.writer.submit([*forget, ReadmissionCompleted()])
        # With kubelet/API-server sources, readmission closes once each has synced (sources_loop).
        for warning in self.targets.warnings if self.targets is not None else ():
            if "5.9" not in warning:  # that one is logged with more detail by _publish
                logger.warning("targets: %s", warning)
        self.notifier.status("reconciling the cgroup tree")
        self._scope = None
        await reconcile_once(self)
        if settings.metrics_enabled and self.adapters.host_loops:
            if self._nursery is None:
                raise InvariantViolation("the HTTP endpoint needs main()'s nursery")
            host, port = settings.metrics_host_port()
            endpoint = HttpEndpoint(
                status_routes(self.metrics.render, self.heartbeat, self.readiness)
            )
            try:
                await self._nursery.start(endpoint.serve, host, port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {host}:{port}: {exc.strerror}",
                    source=str(settings.config_file or ""),
                    path="$.memstate.metricsAddress",
                ) from None
            logger.info("metrics on http://%s:%d/metrics", host, port)
        self.readiness.recovered = True
        pods = len(self.state.pods)
        self.notifier.ready(f"{pods} pods, seq {self.last_seq}")
        logger.info("ready: %d pods, seq %d", pods, self.last_seq)
        self.ready.set()
        self._write_status()
        if self.on_ready is not None:
            self.on_ready(self)

    def _topology_source(self) -> str:
        return str(self.settings.topology_file or "/sys/devices/system/node")

    def _observe_topology(self) -> Topology:
        if self.adapters.topology is not None:
            return self.adapters.topology
        if self.settings.topology_file is not None:
            return load_topology(self.settings.topology_file)
        from memstate.host.sysfs import observe_topology

        return observe_topology()

    def _open_reconciler(self, topology: Topology, config: NodeConfig) -> None:
        from memstate.node.cgroup_tree import open_cgroup_fs
        from memstate.reconcile.reconciler import Reconciler, ReconcilerOptions

        fs = self.adapters.cgroup_fs
        if fs is None:
            fs = open_cgroup_fs(self.settings, topology, config)
            # One daemon per tree (exit 75 for a second one), whatever its state directory. An
            # injected tree (the simulation's) is the caller's to share.
            self._tree_claim = TreeClaim.acquire(
                self.settings.cgroup_sim or self.settings.cgroup_root
            )
        self.reconciler = Reconciler(
            fs,
            page_size_bytes=topology.page_size_bytes,
            clock=trio.lowlevel.current_clock().current_time,  # usable from a worker thread
            options=ReconcilerOptions(
                pod_removal=self.settings.pod_removal,
                remove_orphans=self.settings.remove_orphans,
            ),
        )

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
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if signals is not None:
                nursery.start_soon(self._signal_loop, signals, nursery.cancel_scope)
            # The writer runs first: start-up's events take the same path as all others.
            await nursery.start(self.writer.run)
            await self.start()
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
        ]
        if self.adapters.host_loops:
            loops += [
                functools.partial(cgroup_watch_loop, self),
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
