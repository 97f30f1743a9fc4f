"""The config file: read at start-up, reloaded when it changes or on SIGHUP."""

from __future__ import annotations

import functools
import hashlib
import logging

import msgspec
import trio

from memstate.core.config import NodeConfig, validate_config_for_topology
from memstate.core.errors import ConfigError, InputError
from memstate.core.events import ConfigLoaded, ConfigRejected
from memstate.core.topology import Topology
from memstate.node.context import DaemonContext
from memstate.node.inputs import config_from_document, read_document
from memstate.node.settings import Settings, describe_defaults, settings_from_object
from memstate.node.watching import watch_directory

# The daemon's log lines keep the name operators filter on, whichever module writes them.
logger = logging.getLogger("memstate.node.daemon")


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


def load_config(daemon: DaemonContext, topology: Topology) -> NodeConfig:
    settings, config = load_settings_and_config(daemon.settings)  # ConfigError if unreadable
    if daemon.settings.config_file is not None:
        try:
            data = daemon.settings.config_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read: {exc.strerror}", source=str(daemon.settings.config_file)
            ) from None
        daemon._config_digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    daemon.settings = with_overrides(daemon, settings)
    validate_config_for_topology(config, topology, source=str(settings.config_file or ""))
    return config


def with_overrides(daemon: DaemonContext, settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, **daemon.cli_overrides)


async def config_loop(daemon: DaemonContext) -> None:
    path = daemon.settings.config_file
    async with trio.open_nursery() as nursery:
        if path is not None and daemon.adapters.host_loops:
            # A change is a hint (the loop reloads); failures are logged, counted and retried.
            nursery.start_soon(
                functools.partial(
                    watch_directory,
                    path.parent,
                    daemon._config_wake.set,
                    only_name=path.name,
                    on_error=daemon.metrics.watch_failed("config"),
                )
            )
        while True:
            if await daemon._config_wake.wait(3600.0):
                await reload_config(daemon)


async def reload_config(daemon: DaemonContext) -> None:
    """Load the config file again; a valid change becomes an event, an invalid one does not."""
    path = daemon.settings.config_file
    if path is None:
        return
    # A change of the file and a SIGHUP often arrive together: one edit, one decision.
    try:
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        digest = ""
    if digest and digest == daemon._config_digest:
        logger.info("config reload: %s is unchanged", path)
        return
    daemon._config_digest = digest
    topology = daemon.state.topology or daemon.config_topology
    try:
        settings, config = load_settings_and_config(daemon.settings)
        if topology is not None:
            validate_config_for_topology(config, topology, source=str(path))
    except InputError as exc:
        daemon.metrics.config_reload_errors.inc()
        logger.error("config reload rejected, keeping the previous config: %s", exc)
        await daemon.submit([ConfigRejected(source=str(path), error=exc.describe())])
        return
    apply_reloadable(daemon, with_overrides(daemon, settings))
    if config != daemon.state.observed_config:
        logger.info("config reloaded from %s", path)
        await daemon.submit([ConfigLoaded(config=config, source=str(path))])
    else:
        logger.info("config reloaded from %s: no change", path)


def apply_reloadable(daemon: DaemonContext, settings: Settings) -> None:
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
        if getattr(settings, name) != getattr(daemon.settings, name):
            logger.warning("config: %s changes only take effect after a restart", name)
    keep = {name: getattr(daemon.settings, name) for name in fixed}
    daemon.settings = msgspec.structs.replace(settings, **keep)
    if daemon.reconciler is not None:
        from memstate.reconcile.reconciler import ReconcilerOptions

        daemon.reconciler.options = ReconcilerOptions(  # type: ignore[attr-defined]
            pod_removal=daemon.settings.pod_removal, remove_orphans=daemon.settings.remove_orphans
        )
