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

import errno
import functools
import hashlib
import logging
import os
import platform
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from memstate import __version__
from memstate.core.config import NodeConfig, validate_config_for_topology
from memstate.core.errors import (
    ConfigError,
    HostError,
    InputError,
    InvariantViolation,
    MemstateError,
)
from memstate.core.events import (
    ConfigLoaded,
    ConfigRejected,
    DaemonRestarted,
    DaemonStarted,
    Event,
    NodeReconfigured,
    PodAdmitted,
    PodCgroupRemoved,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.qos import (
    MEMORY_HIGH_SAFE_KERNEL,
    kernel_version,
)
from memstate.core.removals import PendingRemovals
from memstate.core.state import REDUCER_VERSION, State
from memstate.core.state_targets import TargetsTracker
from memstate.core.targets import NodeTargets
from memstate.core.topology import Topology
from memstate.host.cgroupfs import is_populated
from memstate.node.adapters import Adapters, LogStorage, file_storage
from memstate.node.cgroup_tree import TreeClaim
from memstate.node.endpoint import HttpEndpoint, status_routes
from memstate.node.health import Heartbeat, Readiness
from memstate.node.inputs import config_from_document, load_topology, read_document
from memstate.node.journal import log_drift
from memstate.node.manifests import ManifestDirectory
from memstate.node.metrics import Metrics, Snapshot
from memstate.node.nri_decider import NriService, run_nri
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings, describe_defaults, settings_from_object
from memstate.node.sources.configure import network_sources, node_name_of
from memstate.node.sources.feed import SourceFeed
from memstate.node.sources.kubelet import KubeletSource
from memstate.node.sources.tracker import PodTracker
from memstate.node.stale import forget_vanished_rejections
from memstate.node.writer import Writer
from memstate.store.verify import check_sealed_bodies

logger = logging.getLogger("memstate.node.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0
FAILURE_NOTE_REPEAT_SECONDS = 600.0
SOURCE_HEALTH_SECONDS = 1.0


class Wakeup:
    """A level-triggered wake-up: `set()` any number of times, `wait()` returns once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait until set or `timeout` passes; True if it was set. Resets it."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        woken = self._event.is_set()
        self._event = trio.Event()
        return woken


def load_settings_and_config(
    base: Settings,
) -> tuple[Settings, NodeConfig]:
    """Read the config file (KubeletConfiguration fields plus a `memstate:` section)."""
    if base.config_file is None:
        logger.warning("%s", describe_defaults(base))
        return base, NodeConfig()
    path = base.config_file
    document = read_document(path, ConfigError)  # once: both parts come from the same bytes
    section = document.get("memstate") if isinstance(document, dict) else None
    settings = settings_from_object(section, source=str(path), base=base)
    return settings, config_from_document(document, source=str(path))


class Daemon:
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
        self.adapters = adapters if adapters is not None else Adapters()
        self.settings = settings
        self.on_ready = on_ready
        self.stop_after_seconds = stop_after_seconds
        self.cli_overrides = dict(cli_overrides or {})
        self.notifier = notifier or self.adapters.notifier or Notifier.from_environment()
        self.fsync = fsync
        self.metrics = Metrics()
        self.wall_clock_ns = self.adapters.wall_clock_ns
        self.run_io = self.adapters.run_io
        # The one path every event takes, before and after READY (memstate.node.writer).
        self.writer = Writer(
            metrics=self.metrics,
            wall_clock_ns=self.wall_clock_ns,
            run_io=self.run_io,
            on_commit=self._note_effects,
            checkpoint_every=lambda: self.settings.checkpoint_every,
        )
        self.storage: LogStorage | None = None
        self.targets: NodeTargets | None = None
        # Every pod source feeds one tracker (memstate.node.sources): one set of diffing rules.
        self.tracker = PodTracker(cgroup_gone=self._pod_cgroup_gone, holder_of=self._holder_of)
        self.feed = SourceFeed(self.tracker, self._record)
        self.manifests = ManifestDirectory(settings.manifest_dir, tracker=self.tracker)
        self.sources: list[Any] = []  # NetworkSource, or the simulation's stand-ins
        self._sources_wake = Wakeup()
        self.config_topology: Topology | None = None
        self._cgroup_limiter = trio.CapacityLimiter(1)
        self._reconcile_wake = Wakeup()
        self._manifest_wake = Wakeup()
        self._config_wake = Wakeup()
        self._scope: set[str] | None = set()  # None: the next round is a full resync
        self._failure_notes: dict[tuple[str, str, str, int], float] = {}
        self._config_digest = ""
        self._targets = TargetsTracker()  # the state's NodeTargets, each pod's computed once
        self._warned_old_kernel = False
        self._converged = False
        self._pending_removals = 0
        self.heartbeat = Heartbeat()
        self.readiness = Readiness()
        self._nursery: trio.Nursery | None = None  # the root nursery, for the HTTP endpoint
        self.reconciler: object | None = None
        self._tree_claim: TreeClaim | None = None
        self.ready = trio.Event()
        self.nri: NriService | None = None  # set by run_nri when `nri:` is configured

    # The writer owns the state, the pending removals (retired pod cgroups still to remove,
    # folded from the log with the state and handed whole to every reconcile round) and the seq.
    @property
    def state(self) -> State:
        """The state after the last durable record."""
        return self.writer.state

    @state.setter
    def state(self, state: State) -> None:
        self.writer.state = state

    @property
    def removals(self) -> PendingRemovals:
        """Retired pod cgroups still to remove."""
        return self.writer.removals

    @property
    def last_seq(self) -> int:
        """The seq of the last durable record."""
        return self.writer.last_seq

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
        config = self._load_config(topology)
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
        await self._scan_manifests()
        if self.state.readmission_open and not self.sources:
            forget = forget_vanished_rejections(self.state, settings.manifest_dir)
            await self.writer.submit([*forget, ReadmissionCompleted()])
        # With kubelet/API-server sources, readmission closes once each has synced (sources_loop).
        for warning in self.targets.warnings if self.targets is not None else ():
            if "5.9" not in warning:  # that one is logged with more detail by _publish
                logger.warning("targets: %s", warning)
        self.notifier.status("reconciling the cgroup tree")
        self._scope = None
        await self._reconcile_once()
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

    def _load_config(self, topology: Topology) -> NodeConfig:
        settings, config = load_settings_and_config(self.settings)  # ConfigError if unreadable
        if self.settings.config_file is not None:
            try:
                data = self.settings.config_file.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read: {exc.strerror}", source=str(self.settings.config_file)
                ) from None
            self._config_digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        self.settings = self._with_overrides(settings)
        validate_config_for_topology(config, topology, source=str(settings.config_file or ""))
        return config

    def _with_overrides(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(settings, **self.cli_overrides)

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

    # --- the writer's effects -------------------------------------------------------------------

    async def submit(self, events: Sequence[Event]) -> None:
        """Have `events` decided and recorded (memstate.node.writer); returns once durable."""
        await self.writer.submit(events)

    def _note_effects(self, decisions: Sequence[Event]) -> None:
        """Publish the new state and tell the reconciler what changed (the cgroups of retired
        pods are in `self.removals`, which every round covers)."""
        self.targets = self._targets.update(self.state, decisions)
        full = any(isinstance(d, NodeReconfigured) for d in decisions)
        for decision in decisions:
            if (
                isinstance(decision, PodAdmitted)
                and self.targets is not None
                and self._scope is not None
            ):
                self._scope.add(self.targets.pod(decision.uid).cgroup)
        if full:
            self._scope = None
        self._publish()
        if self.nri is not None:
            self.nri.decider.state_changed()  # wakes NRI requests waiting for a decision
        if decisions:
            self._reconcile_wake.set()

    def _write_status(self) -> None:
        """`<state_dir>/daemon-status.json` for `memstate status` (advisory, not durable)."""
        if not self.adapters.host_loops:
            return
        document = {
            "pid": os.getpid(),
            "version": __version__,
            "ready": self.ready.is_set(),
            "seq": self.last_seq,
            "converged": self._converged,
            "pending_removals": self._pending_removals,
            "metrics_address": self.settings.metrics_address,
            "manifest_dir": str(self.settings.manifest_dir),
            "cgroup_tree": str(self.settings.cgroup_sim or self.settings.cgroup_root),
            "pod_sources": list(self.settings.pod_sources),
            "pod_source_health": [source.health.as_dict() for source in self.sources],
            "nri": self.nri.as_dict() if self.nri is not None else None,
            "updated_ts_ns": self.wall_clock_ns(),
        }
        path = self.settings.state_dir / "daemon-status.json"
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            temporary.write_bytes(msgspec.json.encode(document))
            temporary.replace(path)
        except OSError as exc:
            logger.debug("cannot write %s: %s", path, exc)

    def _old_kernel_with_memory_high(self) -> str:
        """The kernel release when memory.high is in use on a kernel older than 5.9, else ""."""
        topology, targets = self.state.topology, self.targets
        if topology is None or targets is None:
            return ""
        version = kernel_version(topology.kernel_release)
        if version is None or version >= MEMORY_HIGH_SAFE_KERNEL:
            return ""
        in_use = any(
            c.files.get("memory.high", "max") != "max" for p in targets.pods for c in p.containers
        )
        return topology.kernel_release if in_use else ""

    def _publish(self) -> None:
        old_kernel = self._old_kernel_with_memory_high()
        if old_kernel and not self._warned_old_kernel:
            self._warned_old_kernel = True
            logger.warning(
                "memory.high is in use on kernel %s, older than 5.9: allocations faster than "
                "reclaim can stall at memory.high (the livelock that kept Memory QoS in alpha); "
                "use a 5.9 or newer kernel",
                old_kernel,
            )
        self.metrics.publish(
            Snapshot(
                state=self.state,
                targets=self.targets,
                last_seq=self.last_seq,
                converged=self._converged,
                pending_removals=self._pending_removals,
                old_kernel_with_memory_high=old_kernel,
            )
        )

    def _write_checkpoint(
        self, state: State, seq: int, chain_crc: int, removals: PendingRemovals
    ) -> None:
        """The writer's checkpoint writer: the storage's, once it is open."""
        if self.storage is None:
            raise InvariantViolation("a checkpoint before the log was opened")
        self.storage.write_checkpoint(state, seq, chain_crc, removals)

    # --- sources -------------------------------------------------------------------------------

    async def _record(self, events: Sequence[Event]) -> None:
        """Make source events durable (through the writer, before and after READY)."""
        await self.writer.submit(events)

    async def _scan_manifests(self) -> None:
        if "manifests" not in self.settings.pod_sources:
            return
        read = self.adapters.read_manifests or self.manifests.read
        pods = await self.run_io(read)
        await self.feed.deliver("manifests", pods)

    def _holder_of(self, uid: str) -> str | None:
        """Where the running (or deferred) pod `uid` came from: that locator keeps its UID
        against any other declaring it, also right after a restart (memstate.node.sources)."""
        record = self.state.pods.get(uid)
        if record is not None:
            return record.source
        waiting = self.state.deferred.get(uid)
        return waiting.source if waiting is not None else None

    def _pod_cgroup_gone(self, uid: str) -> bool:
        """No process is left in the pod's cgroup (it is gone, or empty): a terminating or
        deleted pod may be released. Asked by the tracker; reads one cgroup.events file."""
        if self.targets is None or self.reconciler is None:
            return True
        try:
            path = self.targets.pod(uid).cgroup
        except KeyError:
            return True
        try:
            return not is_populated(self.reconciler.fs, path)  # type: ignore[attr-defined]
        except HostError as exc:
            return exc.errno == errno.ENOENT

    async def sources_loop(self) -> None:
        """Run the kubelet/API-server sources; close readmission once each has synced."""
        if not self.sources:
            return
        async with trio.open_nursery() as nursery:
            for source in self.sources:
                nursery.start_soon(source.run, self.feed.deliverer(source.name))
            waited = 0.0
            while self.state.readmission_open:
                unsynced = [s.name for s in self.sources if s.health.last_success_unix is None]
                if not unsynced:
                    forget = forget_vanished_rejections(self.state, self.settings.manifest_dir)
                    await self.submit([*forget, ReadmissionCompleted()])
                    break
                if waited and waited % 60.0 == 0:
                    logger.warning(
                        "readmission stays open until every pod source has synced; waiting for %s",
                        ", ".join(unsynced),
                    )
                await trio.sleep(0.5)
                waited += 0.5
            health = None
            while True:
                # Deleted pods are released when their cgroup empties: ask again on cgroup hints
                # and every second (an in-memory diff); publish source health when it changes.
                await self._sources_wake.wait(SOURCE_HEALTH_SECONDS)
                try:
                    await self.feed.recheck()
                except MemstateError as exc:
                    logger.error("pod sources: %s", exc)
                current = [tuple(s.health.as_dict().values()) for s in self.sources]
                if current != health:
                    health = current
                    self._publish_sources()
                    self._write_status()

    def _publish_sources(self) -> None:
        for source in self.sources:
            h = source.health
            self.metrics.pod_source_in_sync.labels(source=h.name).set(1 if h.in_sync else 0)
            self.metrics.pod_source_failures.labels(source=h.name).set(h.consecutive_failures)
            self.metrics.pod_source_last_success.labels(source=h.name).set(h.last_success_unix or 0)

    async def manifest_loop(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.adapters.host_loops and self.adapters.read_manifests is None:
                nursery.start_soon(
                    _watch,
                    self.settings.manifest_dir,
                    self._manifest_wake.set,
                    None,
                    self.metrics.watch_failed("manifests"),
                )
            while True:
                try:
                    await self._scan_manifests()
                except MemstateError as exc:
                    logger.error("manifest scan: %s", exc)
                    self.readiness.source_failed("manifests", str(exc))
                else:
                    self.readiness.source_in_sync("manifests")
                self.heartbeat.beat("manifests", self.settings.rescan_seconds)
                await self._manifest_wake.wait(self.settings.rescan_seconds)

    async def config_loop(self) -> None:
        path = self.settings.config_file
        async with trio.open_nursery() as nursery:
            if path is not None and self.adapters.host_loops:
                nursery.start_soon(
                    _watch,
                    path.parent,
                    self._config_wake.set,
                    path.name,
                    self.metrics.watch_failed("config"),
                )
            while True:
                if await self._config_wake.wait(3600.0):
                    await self.reload_config()

    async def reload_config(self) -> None:
        """Load the config file again; a valid change becomes an event, an invalid one does not."""
        path = self.settings.config_file
        if path is None:
            return
        # A change of the file and a SIGHUP often arrive together: one edit, one decision.
        try:
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        except OSError:
            digest = ""
        if digest and digest == self._config_digest:
            logger.info("config reload: %s is unchanged", path)
            return
        self._config_digest = digest
        topology = self.state.topology or self.config_topology
        try:
            settings, config = load_settings_and_config(self.settings)
            if topology is not None:
                validate_config_for_topology(config, topology, source=str(path))
        except InputError as exc:
            self.metrics.config_reload_errors.inc()
            logger.error("config reload rejected, keeping the previous config: %s", exc)
            await self.submit([ConfigRejected(source=str(path), error=exc.describe())])
            return
        self._apply_reloadable(self._with_overrides(settings))
        if config != self.state.observed_config:
            logger.info("config reloaded from %s", path)
            await self.submit([ConfigLoaded(config=config, source=str(path))])
        else:
            logger.info("config reloaded from %s: no change", path)

    def _apply_reloadable(self, settings: Settings) -> None:
        fixed = (
            "state_dir",
            "manifest_dir",
            "cgroup_root",
            "cgroup_sim",
            "topology_file",
            "node_name",
            "pod_sources",
            "kubelet",
            "api_server",
            "nri",
        )
        for name in fixed:
            if getattr(settings, name) != getattr(self.settings, name):
                logger.warning("config: %s changes only take effect after a restart", name)
        keep = {name: getattr(self.settings, name) for name in fixed}
        self.settings = msgspec.structs.replace(settings, **keep)
        if self.reconciler is not None:
            from memstate.reconcile.reconciler import ReconcilerOptions

            self.reconciler.options = ReconcilerOptions(  # type: ignore[attr-defined]
                pod_removal=self.settings.pod_removal, remove_orphans=self.settings.remove_orphans
            )

    # --- reconcile -----------------------------------------------------------------------------

    async def _reconcile_once(self) -> float | None:
        """One reconcile round; returns when the reconciler wants a retry (seconds) or None."""
        targets = self.targets
        if targets is None or self.reconciler is None:
            return None
        scope, self._scope = self._scope, set()
        retiring = self.removals.paths
        if scope is not None and not scope and not retiring:
            return None
        reconciler = self.reconciler
        started = trio.current_time()
        report = await self.run_io(
            functools.partial(
                reconciler.reconcile,  # type: ignore[attr-defined]
                targets,
                retired_paths=sorted(retiring),
                scope=None if scope is None else sorted(scope),
            ),
            limiter=self._cgroup_limiter,
        )
        label = "full" if scope is None else "scoped"
        self.metrics.reconcile_seconds.labels(scope=label).observe(trio.current_time() - started)
        for (file_name, result), count in sorted(report.counters.items()):
            self.metrics.cgroup_writes.labels(file=file_name, result=result).inc(count)
        notes = self._notes_worth_recording(report.notes)
        drift = sum(1 for n in report.notes if n.kind == "cgroup_drift_corrected")
        if drift:
            self.metrics.drift_corrections.inc(drift)
        self._converged = bool(report.converged)
        self._pending_removals = len(report.pending_removals)
        # Removals seen finished become durable notes; the fold then drops them. A path the
        # state has since desired again, or already dropped, needs no note.
        current = self.removals.paths
        notes.extend(
            PodCgroupRemoved(path=path, uid=current[path])
            for path in report.removed
            if path in current
        )
        self.readiness.converged = self._converged
        self.readiness.pending_removals = self._pending_removals
        self._publish()
        self._write_status()
        if notes:
            await self.writer.submit(notes)
        retry: float | None = report.retry_after_seconds
        return retry

    def _notes_worth_recording(self, notes: Sequence[Event]) -> list[Event]:
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
                last = self._failure_notes.get(key)
                if last is not None and now - last < FAILURE_NOTE_REPEAT_SECONDS:
                    continue
                self._failure_notes[key] = now
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

    async def reconcile_loop(self) -> None:
        retry: float | None = None
        while True:
            self.heartbeat.beat("reconcile", self.settings.resync_seconds)
            timeout = (
                self.settings.resync_seconds
                if retry is None
                else min(retry, self.settings.resync_seconds)
            )
            woken = await self._reconcile_wake.wait(timeout)
            if not woken and retry is None:
                self._scope = None  # periodic full resync: the source of truth
            try:
                retry = await self._reconcile_once()
            except HostError as exc:
                logger.error("reconcile: %s", exc)
                retry = self.settings.resync_seconds

    async def cgroup_watch_loop(self) -> None:
        """Changes to the tree made by others trigger an early full resync."""
        from memstate.node.cgroup_watch import watch_cgroups

        def hint(path: str) -> None:
            # A hint names the cgroup that changed ("" for the whole tree): resync the managed
            # cgroup it belongs to early (a container cgroup the runtime made below a pod
            # cgroup belongs to that pod); anything else gets a full resync, which also finds
            # orphans. The periodic full resync stays the source of truth.
            managed = self._managed_cgroup_of(path) if path else None
            if managed is None:
                self._scope = None
            elif self._scope is not None:
                self._scope.add(managed)
            self._reconcile_wake.set()
            # A cgroup memstate does not manage appeared (the kubelet made a pod cgroup, or the
            # runtime a container's): poll /pods at once (rate-limited by the source). An
            # emptied cgroup may release a deleted pod.
            if path and managed != path:
                for source in self.sources:
                    if isinstance(source, KubeletSource):
                        source.nudge()
            self._sources_wake.set()

        await watch_cgroups(
            self.settings.cgroup_sim or self.settings.cgroup_root,
            on_hint=hint,
            on_error=self.metrics.watch_failed("cgroups"),
        )

    def _managed_cgroup_of(self, path: str) -> str | None:
        """The nearest cgroup at or above `path` that the targets manage (None if none)."""
        if self.targets is None:
            return None
        managed = {target.path for target in self.targets.cgroups}
        parts = path.split("/")
        while parts:
            candidate = "/".join(parts)
            if candidate in managed:
                return candidate
            parts.pop()
        return None

    async def watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_seconds
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    async def sealed_segments_check(self) -> None:
        """Check every sealed segment's body against its seal, once, after READY.

        Start-up checks sealed segments from their seal only (docs/event-log.md, "What
        start-up checks"); the state never depends on their bodies when a checkpoint after them
        was used. Damage found here is logged and counted, and the daemon keeps running: what
        it serves came from records that were checked. `memstate log verify --full` shows it.
        """
        problem = await trio.to_thread.run_sync(
            check_sealed_bodies, self.settings.state_dir, abandon_on_cancel=True
        )
        if problem is None:
            self.metrics.log_sealed_checks.labels(result="ok").inc()
            logger.info("sealed log segments match their seals")
            return
        self.metrics.log_sealed_checks.labels(result="damaged").inc()
        logger.error(
            "sealed log segment damaged: %s: offset %d: %s; run `memstate log verify --full`",
            problem.file,
            problem.offset,
            problem.message,
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
            self.manifest_loop,
            self.sources_loop,
            self.config_loop,
            self.reconcile_loop,
            self.watchdog_loop,
            functools.partial(run_nri, self),
        ]
        if self.adapters.host_loops:
            loops += [self.cgroup_watch_loop, self.sealed_segments_check]
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


async def _watch(
    path: Path,
    on_change: Callable[[], None],
    only_name: str | None,
    on_error: Callable[[BaseException], None],
) -> None:
    """Call `on_change` on changes in `path` (a hint; callers rescan). Waits for `path`.
    Failures are logged, passed to `on_error` and retried (memstate.node.watching)."""
    from memstate.node.watching import watch_directory

    await watch_directory(path, on_change, only_name=only_name, on_error=on_error)


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
