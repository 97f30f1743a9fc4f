"""Daemon settings: where things are and how the shell behaves.

These never influence a decision (they are not recorded in the log): paths, the metrics address,
intervals, what to do with populated cgroups. They come from the `memstate:` section of the config
file and can be overridden on the command line:

```yaml
memstate:
  stateDir: /var/lib/memstate
  manifestDir: /etc/memstate/pods
  cgroupTree: /sys/fs/cgroup        # the cgroup v2 tree (or delegated subtree) memstate owns
  cgroupSim: null                   # a directory-backed simulated tree instead (demo, tests)
  topologyFile: null                # read sysfs unless set
  metricsAddress: 127.0.0.1:9473    # "off" disables the endpoint
  podRemoval: wait                  # or kill: cgroup.kill a removed pod that is still populated
  removeOrphans: false
  resyncSeconds: 30
  rescanSeconds: 30
  checkpointEvery: 1000
  checkpointsKeep: 3
  pruneLog: false                   # delete segments before the oldest kept checkpoint
  nodeName: null                    # default: the host name (derived static-pod UIDs, API watch)
  podSources: [manifests]           # any of manifests, kubelet, apiserver (docs/operations.md)
  kubelet:                          # only read when podSources has kubelet
    url: https://127.0.0.1:10250    # or http://127.0.0.1:10255 (read-only port)
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
    caFile: null                    # verify the kubelet's serving certificate with this CA
    certFile: null                  # client certificate instead of / besides a token
    keyFile: null
    insecureSkipTlsVerify: false
    pollSeconds: 5
  apiServer:                        # only read when podSources has apiserver
    kubeconfig: null                # null: the in-cluster service account
    context: null                   # kubeconfig context (default: its current-context)
    watchTimeoutSeconds: 300
    readTimeoutSeconds: 90
  ownership: standalone             # or beside-kubelet: the kubelet owns the pod cgroups
  mode: numa                        # numa (pin and protect), qos (Memory QoS only) or shadow
  kubeletConfigFile: null           # the kubelet's config.yaml: checked at start and reload
  kubeletCheckpoint: /var/lib/kubelet/memory_manager_state  # what shadow mode compares with
  nri: null                         # the NRI plugin (docs/operations.md "NRI"); off unless set
  # nri:
  #   socket: /var/run/nri/nri.sock
  #   pluginName: memstate
  #   pluginIndex: "50"
  #   unknownPodWaitSeconds: 1.0    # how long a creation waits for the pod source, then fail-open
```

`ownership`, `mode` and `kubeletConfigFile` say how memstate shares the node with a kubelet
(docs/operations.md, "Running beside the kubelet"; memstate.core.plan.profile,
memstate.node.kubelet_config). `ownership`, `mode`, `kubeletCheckpoint` and `nri` take effect at
start only (memstate.node.loops.config.apply_reloadable); the file `kubeletConfigFile` names is read
at start and on every reload.

Relative paths in the section (every path above, the nested ones included) are relative to the
directory of the config file, as the kubelet reads its own config file: a daemon started from /
by systemd finds the same files as one started from a shell. Paths given as command-line flags
or environment variables stay relative to the working directory (docs/cli.md).

`cgroupTree` is a directory of the cgroup v2 filesystem; the KubeletConfiguration's `cgroupRoot`
(top level of the same file) is a cgroup name *inside* that tree, as the kubelet reads it. Earlier
versions spelled `cgroupTree` as `cgroupRoot` too; that spelling is still accepted, with a
deprecation warning (`DEPRECATED_KEYS`).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from memstate.core.config import NodeConfig
from memstate.core.errors import ConfigError, echo
from memstate.core.plan.profile import Mode, Ownership
from memstate.core.quantity import format_bytes
from memstate.core.validation import convert_input

logger = logging.getLogger(__name__)

PATH_FIELDS = (
    "state_dir",
    "manifest_dir",
    "cgroup_root",
    "cgroup_sim",
    "topology_file",
    "kubelet_checkpoint",
    "kubelet_config_file",
)
# Old spelling in the `memstate:` section -> (the SettingsFile field that replaced it, its key).
DEPRECATED_KEYS = {"cgroup_root": ("cgroup_tree", "cgroupTree")}
# SettingsFile fields whose Settings attribute has another name.
_SETTINGS_ATTRIBUTE = {"cgroup_tree": "cgroup_root"}
MAX_PATH_CHARS = 4096  # PATH_MAX
MAX_INTERVAL_SECONDS = 86_400.0
MAX_CHECKPOINT_EVERY = 10**9
MAX_CHECKPOINTS_KEEP = 1000


PodSourceName = Literal["manifests", "kubelet", "apiserver"]


class KubeletSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """How to reach the kubelet's `/pods` (memstate.node.sources.kubelet)."""

    url: str = "https://127.0.0.1:10250"
    token_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_tls_verify: bool = False
    poll_seconds: float = 5.0


class ApiServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """How to reach the API server (memstate.node.sources.apiserver)."""

    kubeconfig: str | None = None  # None: the in-cluster service account
    context: str | None = None
    watch_timeout_seconds: int = 300
    read_timeout_seconds: float = 90.0


class NriSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """The NRI plugin (memstate.node.nri_decider): where the runtime's socket is, how memstate
    registers, and how long a creation may wait for the pod source before it is let through."""

    socket: str = "/var/run/nri/nri.sock"
    plugin_name: str = "memstate"
    plugin_index: str = "50"
    # Well below the runtime's 2 s request timeout (docs/operations.md "NRI"), fsync included.
    unknown_pod_wait_seconds: float = 1.0


class SettingsFile(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    state_dir: str | None = None
    manifest_dir: str | None = None
    cgroup_tree: str | None = None
    cgroup_root: str | None = None  # deprecated spelling of cgroup_tree
    cgroup_sim: str | None = None
    topology_file: str | None = None
    metrics_address: str | None = None
    pod_removal: Literal["wait", "kill"] | None = None
    remove_orphans: bool | None = None
    resync_seconds: float | None = None
    rescan_seconds: float | None = None
    checkpoint_every: int | None = None
    checkpoints_keep: int | None = None
    prune_log: bool | None = None
    node_name: str | None = None
    pod_sources: list[PodSourceName] | None = None
    kubelet: KubeletSettings | None = None
    api_server: ApiServerSettings | None = None
    nri: NriSettings | None = None
    ownership: Ownership | None = None
    mode: Mode | None = None
    kubelet_checkpoint: str | None = None
    kubelet_config_file: str | None = None


class Settings(msgspec.Struct, frozen=True):
    """Everything the daemon needs to know that is not a decision input."""

    state_dir: Path = Path("/var/lib/memstate")
    manifest_dir: Path = Path("/etc/memstate/pods")
    config_file: Path | None = None
    # `cgroupTree` in the file (not the KubeletConfiguration's cgroupRoot, see the module doc).
    cgroup_root: Path = Path("/sys/fs/cgroup")
    cgroup_sim: Path | None = None
    topology_file: Path | None = None
    metrics_address: str = "127.0.0.1:9473"
    pod_removal: Literal["wait", "kill"] = "wait"
    remove_orphans: bool = False
    resync_seconds: float = 30.0
    rescan_seconds: float = 30.0
    checkpoint_every: int = 1000
    checkpoints_keep: int = 3
    # Delete log segments wholly before the oldest kept checkpoint after each checkpoint. Off by
    # default: audit and replay need history.
    prune_log: bool = False
    node_name: str = ""  # "": the host name
    pod_sources: tuple[PodSourceName, ...] = ("manifests",)
    kubelet: KubeletSettings = KubeletSettings()
    api_server: ApiServerSettings = ApiServerSettings()
    nri: NriSettings | None = None  # None: no NRI plugin
    # Who owns the pod cgroups, and what memstate writes (memstate.core.plan.profile).
    ownership: Ownership = "standalone"
    # numa: pin and protect (today's behaviour); qos: Memory QoS values only, no cpuset.mems;
    # shadow: decide and record, write no cgroup file, compare with the kubelet.
    mode: Mode = "numa"
    # The kubelet's own KubeletConfiguration, checked at start (memstate.node.kubelet_config).
    kubelet_config_file: Path | None = None
    # The kubelet Memory Manager's checkpoint shadow mode compares with.
    kubelet_checkpoint: Path = Path("/var/lib/kubelet/memory_manager_state")

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_address != "off"

    def metrics_host_port(self) -> tuple[str, int]:
        """`host:port` split, IPv6 in brackets allowed."""
        host, sep, port = self.metrics_address.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5:
            raise ConfigError(
                f"metricsAddress {echo(self.metrics_address)} is not host:port",
                path="$.memstate.metricsAddress",
            )
        if int(port) > 65535:
            raise ConfigError(
                f"metricsAddress port {port} is outside 0..65535",
                path="$.memstate.metricsAddress",
            )
        return host.strip("[]") or "127.0.0.1", int(port)


def settings_from_object(
    obj: Any, *, source: str, base: Settings, relative_to: Path | None = None
) -> Settings:
    """Apply the `memstate:` section of a config file on top of `base`; `source` names the file.

    `relative_to` is the directory the section's relative paths are relative to: the config
    file's (`config_directory`), as the kubelet reads its own config file. None leaves them as
    written (relative to the working directory)."""
    if obj is None:
        return base
    try:
        raw = convert_input(obj, SettingsFile, source=source, error=ConfigError)
    except ConfigError as exc:  # paths are relative to the section: name it
        path = "$.memstate" + exc.path[1:] if exc.path.startswith("$") else "$.memstate"
        raise ConfigError(exc.message, source=source, path=path) from None
    if relative_to is not None:
        raw = _anchor_paths(raw, relative_to)
    for old_name, (new_name, new_key) in DEPRECATED_KEYS.items():
        old_value = getattr(raw, old_name)
        if old_value is None:
            continue
        old_key = _SETTINGS_FIELDS[old_name].encode_name
        if getattr(raw, new_name) is not None:
            raise ConfigError(
                f"both {new_key} and its deprecated spelling {old_key} are set: keep {new_key}",
                source=source,
                path=f"$.memstate.{old_key}",
            )
        logger.warning(
            "%s: memstate.%s is deprecated, spell it memstate.%s (the top-level cgroupRoot is "
            "the kubelet's, a cgroup name inside that tree)",
            source or "config",
            old_key,
            new_key,
        )
        raw = msgspec.structs.replace(raw, **{new_name: old_value, old_name: None})
    updates: dict[str, Any] = {}
    for name in _SETTINGS_FIELDS.values():  # fields() resolves type hints: ~10 ms a call
        value = getattr(raw, name.name)
        if value is None:
            continue
        attribute = _SETTINGS_ATTRIBUTE.get(name.name, name.name)
        if attribute in PATH_FIELDS:
            value = Path(value)
        elif attribute == "pod_sources":
            value = tuple(value)
        updates[attribute] = value
    settings = msgspec.structs.replace(base, **updates)
    validate_settings(settings, source=source)
    return settings


def config_directory(config_file: Path) -> Path:
    """The directory relative paths in `config_file` are relative to (absolute, so that they
    stay right whatever the working directory is when they are used)."""
    return config_file.absolute().parent


# Path-valued fields of the section, top level and nested: relative ones are relative to the
# config file (settings_from_object).
_FILE_PATH_FIELDS = (
    "state_dir",
    "manifest_dir",
    "cgroup_tree",
    "cgroup_root",
    "cgroup_sim",
    "topology_file",
    "kubelet_checkpoint",
    "kubelet_config_file",
)
_NESTED_PATH_FIELDS = {
    "kubelet": ("token_file", "ca_file", "cert_file", "key_file"),
    "api_server": ("kubeconfig",),
    "nri": ("socket",),
}


def _anchored(value: str | None, directory: Path) -> str | None:
    # "" and None mean "not set" (a kubelet source without a CA file): they stay so.
    if not value or Path(value).is_absolute():
        return value
    return str(directory / value)


def _anchor_paths(raw: SettingsFile, directory: Path) -> SettingsFile:
    """`raw` with every relative path made relative to `directory`."""
    updates: dict[str, Any] = {
        name: _anchored(getattr(raw, name), directory) for name in _FILE_PATH_FIELDS
    }
    for section, names in _NESTED_PATH_FIELDS.items():
        nested = getattr(raw, section)
        if nested is not None:
            changes = {name: _anchored(getattr(nested, name), directory) for name in names}
            updates[section] = msgspec.structs.replace(nested, **changes)
    return msgspec.structs.replace(raw, **updates)


def validate_settings(settings: Settings, *, source: str = "") -> None:
    """Reject settings that cannot work, naming the field."""
    for name in PATH_FIELDS:
        value = getattr(settings, name)
        text = "" if value is None else str(value)
        if len(text) > MAX_PATH_CHARS or "\0" in text:
            field = _SETTINGS_FIELDS[_FILE_FIELD.get(name, name)].encode_name
            raise ConfigError(
                f"{echo(text)} is not a usable path", source=source, path=f"$.memstate.{field}"
            )
    for name, seconds in (("resync", settings.resync_seconds), ("rescan", settings.rescan_seconds)):
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_INTERVAL_SECONDS):
            raise ConfigError(
                f"{name}Seconds {echo(seconds)} must be positive and at most "
                f"{MAX_INTERVAL_SECONDS:g}",
                source=source,
                path=f"$.memstate.{name}Seconds",
            )
    if not 1 <= settings.checkpoint_every <= MAX_CHECKPOINT_EVERY:
        raise ConfigError(
            f"checkpointEvery must be between 1 and {MAX_CHECKPOINT_EVERY}",
            source=source,
            path="$.memstate.checkpointEvery",
        )
    if not 1 <= settings.checkpoints_keep <= MAX_CHECKPOINTS_KEEP:
        raise ConfigError(
            f"checkpointsKeep must be between 1 and {MAX_CHECKPOINTS_KEEP}",
            source=source,
            path="$.memstate.checkpointsKeep",
        )
    if settings.metrics_enabled:
        settings.metrics_host_port()
    if not settings.pod_sources or len(set(settings.pod_sources)) != len(settings.pod_sources):
        raise ConfigError(
            "podSources must name at least one source, each once",
            source=source,
            path="$.memstate.podSources",
        )
    for field, seconds in (
        ("kubelet.pollSeconds", settings.kubelet.poll_seconds),
        ("apiServer.watchTimeoutSeconds", float(settings.api_server.watch_timeout_seconds)),
        ("apiServer.readTimeoutSeconds", settings.api_server.read_timeout_seconds),
    ):
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_INTERVAL_SECONDS):
            raise ConfigError(
                f"{field} {echo(seconds)} must be positive and at most {MAX_INTERVAL_SECONDS:g}",
                source=source,
                path=f"$.memstate.{field}",
            )
    if settings.nri is not None:
        _validate_nri(settings.nri, source=source)
        if settings.mode == "shadow":
            # An NRI adjustment is a write on memstate's behalf, and a refusal stops a pod.
            raise ConfigError(
                "mode shadow writes nothing and refuses nothing: remove the nri: section",
                source=source,
                path="$.memstate.nri",
            )


# The runtime's rules for external plugins (nri.md §2.1) and its default request timeout (§8.3).
_NRI_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_NRI_INDEX_RE = re.compile(r"[0-9]{2}")
NRI_REQUEST_TIMEOUT_SECONDS = 2.0


def _validate_nri(nri: NriSettings, *, source: str) -> None:
    if not nri.socket or len(nri.socket) > MAX_PATH_CHARS or "\0" in nri.socket:
        raise ConfigError(
            f"{echo(nri.socket)} is not a usable socket path",
            source=source,
            path="$.memstate.nri.socket",
        )
    if not _NRI_NAME_RE.fullmatch(nri.plugin_name):
        raise ConfigError(
            f"pluginName {echo(nri.plugin_name)} must be non-empty, from [A-Za-z0-9_.+-]",
            source=source,
            path="$.memstate.nri.pluginName",
        )
    if not _NRI_INDEX_RE.fullmatch(nri.plugin_index):
        raise ConfigError(
            f"pluginIndex {echo(nri.plugin_index)} must be two ASCII digits (a quoted string)",
            source=source,
            path="$.memstate.nri.pluginIndex",
        )
    wait = nri.unknown_pod_wait_seconds
    if not (math.isfinite(wait) and 0 <= wait < NRI_REQUEST_TIMEOUT_SECONDS):
        raise ConfigError(
            f"unknownPodWaitSeconds {echo(wait)} must be at least 0 and below the runtime's "
            f"{NRI_REQUEST_TIMEOUT_SECONDS:g} s request timeout",
            source=source,
            path="$.memstate.nri.unknownPodWaitSeconds",
        )


_SETTINGS_FIELDS = {f.name: f for f in msgspec.structs.fields(SettingsFile)}
_FILE_FIELD = {attribute: name for name, attribute in _SETTINGS_ATTRIBUTE.items()}


def describe_defaults(settings: Settings) -> str:
    """One line saying what a daemon started without a config file runs with."""
    config = NodeConfig()
    tree = settings.cgroup_sim or settings.cgroup_root
    return (
        "no config file (--config, $MEMSTATE_CONFIG or /etc/memstate/config.yaml): using the "
        f"kubelet's defaults memoryManagerPolicy {config.memory_manager_policy}, "
        f"topologyManagerPolicy {config.topology_manager_policy}, "
        f"memoryThrottlingFactor {config.memory_throttling_factor}, "
        f"memoryReservationPolicy {config.memory_reservation_policy}, "
        f"cgroupDriver {config.cgroup_driver}, cgroupRoot /{'/'.join(config.cgroup_root)}, "
        "evictionHard memory.available "
        f"{format_bytes(config.eviction_memory_bytes(0))}, and memstate's MemoryQoS "
        f"{'on' if config.memory_qos else 'off'}, stateDir {settings.state_dir}, "
        f"manifestDir {settings.manifest_dir}, "
        f"cgroupTree {tree}{' (simulated)' if settings.cgroup_sim else ''}, "
        f"metricsAddress {settings.metrics_address}"
    )
