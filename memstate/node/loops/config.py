"""The config file: read at start-up, reloaded when it changes or on SIGHUP."""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import msgspec
import trio

from memstate.core.config import NodeConfig, validate_config_for_topology
from memstate.core.errors import ConfigError, InputError
from memstate.core.events import ConfigLoaded, ConfigRejected
from memstate.core.topology import Topology
from memstate.node.context import DaemonContext
from memstate.node.inputs import (
    UNSETTLED_INPUT_SECONDS,
    config_from_document,
    parse_document,
    read_input,
)
from memstate.node.kubelet_config import with_kubelet_config
from memstate.node.settings import (
    Settings,
    config_directory,
    describe_defaults,
    settings_from_object,
)
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
    return settings_and_config_from(base, read_input(base.config_file, ConfigError))


def settings_and_config_from(base: Settings, data: bytes) -> tuple[Settings, NodeConfig]:
    """Both parts of the config file from the same bytes (`base.config_file`'s)."""
    source = str(base.config_file)
    document = parse_document(data, source=source, error=ConfigError)
    section = document.get("memstate") if isinstance(document, dict) else None
    relative_to = None if base.config_file is None else config_directory(base.config_file)
    settings = settings_from_object(section, source=source, base=base, relative_to=relative_to)
    config = config_from_document(document, source=source)
    return settings, with_kubelet_config(settings, config, document)


def config_digest(data: bytes) -> str:
    """What tells one version of the config file from another (a reload of the same bytes is
    one decision, not two)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load_config_at_startup(daemon: DaemonContext, topology: Topology) -> NodeConfig:
    """Start-up's load: settings, config and digest from one read (ConfigError if unreadable or
    invalid, or if the config does not fit `topology`)."""
    path = daemon.settings.config_file
    if path is None:
        settings, config = load_settings_and_config(daemon.settings)
    else:
        data = read_input(path, ConfigError)
        daemon._config_digest = config_digest(data)
        settings, config = settings_and_config_from(daemon.settings, data)
    # The state and manifest directories are in use already (the log was recovered and the
    # manifest directory opened with the settings the daemon was given, which the command
    # resolved from the same file, the flags and the environment): the daemon's settings keep
    # saying where they are.
    in_use = daemon.settings
    daemon.settings = msgspec.structs.replace(
        with_overrides(daemon, settings),
        state_dir=in_use.state_dir,
        manifest_dir=in_use.manifest_dir,
    )
    validate_config_for_topology(config, topology, source=str(settings.config_file or ""))
    return config


def with_overrides(daemon: DaemonContext, settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, **daemon.cli_overrides)


async def config_loop(daemon: DaemonContext) -> None:
    path = daemon.settings.config_file
    async with trio.open_nursery() as nursery:
        if path is not None and daemon.adapters.host_loops:
            # A change is a hint (the loop reloads); failures are logged, counted and retried.
            # Awaited: an edit after the loop starts is not missed while the watch is set up.
            await nursery.start(
                functools.partial(
                    watch_directory,
                    path.parent,
                    daemon._config_wake.set,
                    only_name=path.name,
                    on_error=daemon.metrics.watch_failed("config"),
                )
            )
            # An edit between start-up's read and the watch being in place is never reported:
            # compare once, now that the next one will be.
            if _changed_since_loaded(daemon, path):
                daemon._config_wake.set()
        while True:
            if await daemon._config_wake.wait(3600.0):
                await reload_config(daemon)


def _changed_since_loaded(daemon: DaemonContext, path: Path) -> bool:
    """The file no longer holds what was last loaded (or cannot be read: the reload says why)."""
    try:
        data = read_input(path, ConfigError)
    except InputError:
        return True
    return config_digest(data) != daemon._config_digest


# How long a config file that does not load must stay unchanged before it is rejected (a reload
# already pending, a SIGHUP or an earlier change, can read it while it is being written).
REJECT_QUIET_SECONDS = UNSETTLED_INPUT_SECONDS


async def reload_config(daemon: DaemonContext) -> None:
    """Load the config file again; a valid change becomes an event, an invalid one does not.
    A file that does not load is rejected once it has stayed unchanged for
    `REJECT_QUIET_SECONDS` (it may be in the middle of being written)."""
    path = daemon.settings.config_file
    if path is None:
        return
    while True:
        error: InputError
        try:
            data = read_input(path, ConfigError)
        except InputError as exc:
            digest, error = "", exc
        else:
            # A change of the file and a SIGHUP often arrive together: one edit, one decision.
            digest = config_digest(data)
            if digest == daemon._config_digest:
                logger.info("config reload: %s is unchanged", path)
                return
            topology = daemon.state.topology or daemon.config_topology
            try:
                settings, config = settings_and_config_from(daemon.settings, data)
                if topology is not None:
                    validate_config_for_topology(config, topology, source=str(path))
            except InputError as exc:
                error = exc
            else:
                daemon._config_digest = digest
                apply_reloadable(daemon, with_overrides(daemon, settings))
                if config != daemon.state.observed_config:
                    logger.info("config reloaded from %s", path)
                    await daemon.submit([ConfigLoaded(config=config, source=str(path))])
                else:
                    logger.info("config reloaded from %s: no change", path)
                return
        if await daemon._config_wake.wait(REJECT_QUIET_SECONDS):
            continue  # written again (or another SIGHUP) meanwhile: this read may have been torn
        # An unreadable file has no digest: the same bytes readable again are a change.
        daemon._config_digest = digest
        await _reject(daemon, error)
        return


async def _reject(daemon: DaemonContext, exc: InputError) -> None:
    daemon.metrics.config_reload_errors.inc()
    logger.error("config reload rejected, keeping the previous config: %s", exc)
    source = str(daemon.settings.config_file)
    await daemon.submit([ConfigRejected(source=source, error=exc.describe())])


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
        "mode",
        "ownership",
        "kubelet_checkpoint",
    )
    for name in fixed:
        if getattr(settings, name) != getattr(daemon.settings, name):
            logger.warning("config: %s changes only take effect after a restart", name)
    keep = {name: getattr(daemon.settings, name) for name in fixed}
    daemon.settings = msgspec.structs.replace(settings, **keep)
    if daemon.reconciler is not None:
        from memstate.reconcile.reconciler import ReconcilerOptions

        daemon.reconciler.options = ReconcilerOptions(  # type: ignore[attr-defined]
            pod_removal=daemon.settings.pod_removal,
            remove_orphans=daemon.settings.remove_orphans,
            shadow=daemon.shadow is not None,
        )
