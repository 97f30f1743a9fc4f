"""Start-up: everything before READY=1 (the order is in memstate.node.daemon's docstring)."""

from __future__ import annotations

import logging
import os
import platform
import socket

import trio

from memstate import __version__
from memstate.core.config import NodeConfig
from memstate.core.errors import ConfigError, InvariantViolation
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
from memstate.node.adapters import OpenedLog, file_storage
from memstate.node.cgroup_echo import OwnWrites, RecordingCgroupFS
from memstate.node.cgroup_tree import TreeClaim
from memstate.node.context import DaemonContext
from memstate.node.endpoint import HttpEndpoint, status_routes
from memstate.node.inputs import load_topology
from memstate.node.loops.config import load_config_at_startup
from memstate.node.loops.converge import reconcile_once
from memstate.node.loops.pods import scan_manifests
from memstate.node.settings import Settings
from memstate.node.shadow import ShadowWatch
from memstate.node.sources.configure import network_sources, node_name_of
from memstate.node.sources.rejection_events import rejection_events_for
from memstate.node.stale import forget_vanished_rejections

# The daemon's log lines keep the name operators filter on, whichever module writes them.
logger = logging.getLogger("memstate.node.daemon")


async def start_up(daemon: DaemonContext) -> None:
    """Everything before READY=1 (see the module docstring for the order)."""
    opened = await recover(daemon)
    topology = observe_topology(daemon)
    config = load_config_at_startup(daemon, topology)
    settings = daemon.settings  # the config file's memstate: section under flags and env
    daemon.config_topology = topology
    daemon.manifests.node_name = node_name_of(daemon.settings)
    given = daemon.adapters.sources
    # ConfigError on bad credentials
    daemon.sources = list(given) if given is not None else list(network_sources(daemon.settings))
    daemon.rejection_events = rejection_events_for(
        daemon.sources,
        node_name=node_name_of(daemon.settings),
        wall_clock_ns=daemon.wall_clock_ns,
        shadow=daemon.settings.mode == "shadow",
        on_result=lambda result: daemon.metrics.rejection_events.labels(result=result).inc(),
    )
    open_reconciler(daemon, topology, config)
    await daemon.writer.submit(boot_events(daemon, opened, topology, config, settings))
    await readmit(daemon, settings)
    daemon.notifier.status("reconciling the cgroup tree")
    daemon._scope = None
    await reconcile_once(daemon)
    if settings.metrics_enabled and daemon.adapters.host_loops:
        await serve_metrics(daemon, settings)
    daemon.readiness.recovered = True
    pods = len(daemon.state.pods)
    logger.info("ready: %d pods, seq %d", pods, daemon.last_seq)
    daemon.ready.set()
    # The status file first: whoever sees READY=1 finds it saying ready, with the bound address.
    daemon._write_status()
    daemon.notifier.ready(f"{pods} pods, seq {daemon.last_seq}")


async def recover(daemon: DaemonContext) -> OpenedLog:
    """Open the log storage and hand the recovered state to the writer."""
    settings = daemon.settings
    daemon.notifier.status("recovering the event log")
    make_storage = daemon.adapters.storage or file_storage(
        settings.state_dir,
        fsync=daemon.fsync,
        checkpoints_keep=settings.checkpoints_keep,
        prune_log=settings.prune_log,
    )
    storage = make_storage()
    opened = await daemon.run_io(storage.open, limiter=daemon.writer.limiter)
    daemon.storage = storage
    recovered = opened.recovered
    for warning in recovered.warnings:
        logger.warning("checkpoint: %s", warning)
    daemon.metrics.start_process(recovered.state.counters)
    daemon.writer.attach(
        opened.log,
        daemon._write_checkpoint,
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
    return opened


def boot_events(
    daemon: DaemonContext,
    opened: OpenedLog,
    topology: Topology,
    config: NodeConfig,
    settings: Settings,
) -> list[Event]:
    """What this start records: a truncated tail, the start, a restart, what changed."""
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
            boot_id=daemon.adapters.boot_id(),
            kernel_release=os.uname().release,
        )
    )
    if opened.log.last_seq > 0:
        boot.append(DaemonRestarted())
    if topology != daemon.state.observed_topology:
        boot.append(TopologyObserved(topology=topology, source=topology_source(daemon)))
    if config != daemon.state.observed_config:
        boot.append(ConfigLoaded(config=config, source=str(settings.config_file or "")))
    return boot


async def readmit(daemon: DaemonContext, settings: Settings) -> None:
    """Readmit the pods the manifest directory holds; close readmission unless other pod
    sources are configured (then it closes once each has synced: loops.pods.sources_loop)."""
    daemon.notifier.status("readmitting pods")
    await scan_manifests(daemon)
    if daemon.state.readmission_open and not daemon.sources:
        forget = forget_vanished_rejections(daemon.state, settings.manifest_dir)
        await daemon.writer.submit([*forget, ReadmissionCompleted()])
    for warning in daemon.targets.warnings if daemon.targets is not None else ():
        if "5.9" not in warning:  # that one is logged with more detail by _publish
            logger.warning("targets: %s", warning)


async def serve_metrics(daemon: DaemonContext, settings: Settings) -> None:
    """Start the HTTP endpoint (/metrics, /healthz, /readyz) in the root nursery."""
    if daemon._nursery is None:
        raise InvariantViolation("the HTTP endpoint needs main()'s nursery")
    host, port = settings.metrics_host_port()
    endpoint = HttpEndpoint(
        status_routes(daemon.metrics.render, daemon.heartbeat, daemon.readiness)
    )
    try:
        bound = await daemon._nursery.start(endpoint.serve, host, port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}",
            source=str(settings.config_file or ""),
            path="$.memstate.metricsAddress",
        ) from None
    port = bound[0][1] if bound else port
    # With port 0 the kernel picks one: the journal line and daemon-status.json (`memstate
    # status`) are where an operator or a test finds it.
    daemon.metrics_bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    logger.info("metrics on http://%s/metrics", daemon.metrics_bound)


def topology_source(daemon: DaemonContext) -> str:
    return str(daemon.settings.topology_file or "/sys/devices/system/node")


def observe_topology(daemon: DaemonContext) -> Topology:
    if daemon.adapters.topology is not None:
        return daemon.adapters.topology
    if daemon.settings.topology_file is not None:
        return load_topology(daemon.settings.topology_file)
    from memstate.host.sysfs import observe_topology

    return observe_topology()


def open_reconciler(daemon: DaemonContext, topology: Topology, config: NodeConfig) -> None:
    from memstate.core.plan.profile import WriteProfile
    from memstate.node.cgroup_tree import open_cgroup_fs
    from memstate.reconcile.reconciler import Reconciler, ReconcilerOptions

    fs = daemon.adapters.cgroup_fs
    if fs is None:
        fs = open_cgroup_fs(daemon.settings, topology, config)
        # One daemon per tree (exit 75 for a second one), whatever its state directory. An
        # injected tree (the simulation's) is the caller's to share.
        daemon._tree_claim = TreeClaim.acquire(
            daemon.settings.cgroup_sim or daemon.settings.cgroup_root
        )
    if daemon.settings.mode == "shadow":
        daemon.shadow = ShadowWatch(daemon.settings.kubelet_checkpoint)
    clock = trio.lowlevel.current_clock().current_time  # usable from a worker thread
    if daemon.adapters.host_loops and daemon.shadow is None:
        # The cgroup watch runs: remember what the rounds do, so their echo schedules nothing.
        daemon.own_writes = OwnWrites(
            daemon.settings.cgroup_sim or daemon.settings.cgroup_root,
            page_size_bytes=topology.page_size_bytes,
            clock=clock,
        )
        fs = RecordingCgroupFS(fs, daemon.own_writes)
    daemon.reconciler = Reconciler(
        fs,
        page_size_bytes=topology.page_size_bytes,
        clock=clock,
        options=ReconcilerOptions(
            pod_removal=daemon.settings.pod_removal,
            remove_orphans=daemon.settings.remove_orphans,
            shadow=daemon.shadow is not None,
        ),
        profile=WriteProfile(ownership=daemon.settings.ownership, mode=daemon.settings.mode),
    )
