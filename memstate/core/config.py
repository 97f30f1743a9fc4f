"""Node configuration, spelled with KubeletConfiguration field names.

Operators already know `memoryManagerPolicy`, `reservedMemory`, `memoryThrottlingFactor`... so the
config file uses exactly those names (camelCase), and a kubelet's own config file (a kubeadm
`KubeletConfiguration`) can be used as is: the upstream fields memstate has no use for
(`authentication`, `clusterDNS`, `staticPodPath`...) are accepted and listed by `ignored_fields`,
which the shell reports once per load. A field that is not a KubeletConfiguration field at all is
still an error, so that a typo such as `memoryManagerPolcy` is not a silently ignored line. A few
upstream fields would change what memstate decides if they were honoured; those are refused when
set (`UNSUPPORTED_FIELDS`).

Checks run in upstream's order (memory-manager.md §1.4, §9): the config's own values at load
(`unknown policy: "static"`, with the valid values), then against the machine: reservations on
existing NUMA nodes, the Node Allocatable sums, reserved memory > 0.

Two layers:
- `KubeletConfigFile` mirrors the file (quantities as written, camelCase); `normalise_config`
  turns it into a `NodeConfig` (snake_case, byte counts) with structural validation.
- `validate_config_for_topology` checks what needs the machine: reservations on existing NUMA
  nodes, the Node Allocatable sum rule of the Static policy, reservations that would not fit.

Only a `NodeConfig` that passed both is recorded in a `config_loaded` event. Daemon-only options
(paths, metrics address) are not part of it: they never influence a decision.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Literal, cast

import msgspec

from memstate.core.errors import ConfigError, InputError, echo
from memstate.core.quantity import QuantityInput, format_bytes, parse_bytes
from memstate.core.topology import (
    MAX_NUMA_NODE_ID,
    MEMORY,
    Topology,
    canonical_resource_name,
    hugepage_resource_name,
    is_hugepage_resource,
)
from memstate.core.validation import convert_input, reraise_as

MemoryManagerPolicy = Literal["None", "Static"]
TopologyManagerPolicy = Literal["none", "best-effort", "restricted", "single-numa-node"]
TopologyManagerScope = Literal["container", "pod"]
MemoryReservationPolicy = Literal["None", "TieredReservation"]
CgroupDriver = Literal["cgroupfs", "systemd"]

MAX_NUMA_NODES_STATIC = 8  # the Topology Manager's default max-allowable-numa-nodes
DEFAULT_EVICTION_MEMORY_AVAILABLE = "100Mi"
CGROUP_ROOT_COMPONENT_RE = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*")
_PERCENT_RE = re.compile(r"(?=\.?[0-9])[0-9]{0,3}(?:\.[0-9]{0,6})?")
_MAX_CGROUP_ROOT_CHARS = 4096  # PATH_MAX
_MAX_CGROUP_COMPONENT_CHARS = 255  # NAME_MAX


# The fields of KubeletConfiguration (kubelet.config.k8s.io/v1beta1, up to v1.36) that memstate
# does not read: accepted, and listed as ignored.
UPSTREAM_IGNORED_FIELDS = frozenset(
    {
        "address",
        "allowedUnsafeSysctls",
        "authentication",
        "authorization",
        "clusterDNS",
        "clusterDomain",
        "configMapAndSecretChangeDetectionStrategy",
        "containerLogMaxFiles",
        "containerLogMaxSize",
        "containerLogMaxWorkers",
        "containerLogMonitorInterval",
        "containerRuntimeEndpoint",
        "contentType",
        "cpuCFSQuota",
        "cpuCFSQuotaPeriod",
        "cpuManagerPolicy",
        "cpuManagerPolicyOptions",
        "cpuManagerReconcilePeriod",
        "crashLoopBackOff",
        "enableControllerAttachDetach",
        "enableContentionProfiling",
        "enableDebugFlagsHandler",
        "enableDebuggingHandlers",
        "enableProfilingHandler",
        "enableServer",
        "enableSystemLogHandler",
        "enableSystemLogQuery",
        "eventBurst",
        "eventRecordQPS",
        "evictionMaxPodGracePeriod",
        "evictionMinimumReclaim",
        "evictionPressureTransitionPeriod",
        "evictionSoft",
        "evictionSoftGracePeriod",
        "failCgroupV1",
        "failSwapOn",
        "fileCheckFrequency",
        "hairpinMode",
        "healthzBindAddress",
        "healthzPort",
        "httpCheckFrequency",
        "imageGCHighThresholdPercent",
        "imageGCLowThresholdPercent",
        "imageMaximumGCAge",
        "imageMinimumGCAge",
        "imagePullCredentialsVerificationPolicy",
        "imageServiceEndpoint",
        "iptablesDropBit",
        "iptablesMasqueradeBit",
        "kernelMemcgNotification",
        "kubeAPIBurst",
        "kubeAPIQPS",
        "kubeReservedCgroup",
        "kubeletCgroups",
        "localStorageCapacityIsolation",
        "logging",
        "makeIPTablesUtilChains",
        "maxOpenFiles",
        "maxParallelImagePulls",
        "maxPods",
        "memorySwap",
        "nodeLeaseDurationSeconds",
        "nodeStatusMaxImages",
        "nodeStatusReportFrequency",
        "nodeStatusUpdateFrequency",
        "oomScoreAdj",
        "podCIDR",
        "podLogsDir",
        "podPidsLimit",
        "podsPerCore",
        "port",
        "preloadedImagesVerificationAllowlist",
        "protectKernelDefaults",
        "providerID",
        "readOnlyPort",
        "registerNode",
        "registerWithTaints",
        "registryBurst",
        "registryPullQPS",
        "reservedSystemCPUs",
        "resolvConf",
        "rotateCertificates",
        "runOnce",
        "runtimeRequestTimeout",
        "seccompDefault",
        "serializeImagePulls",
        "serverTLSBootstrap",
        "showHiddenMetricsForVersion",
        "shutdownGracePeriod",
        "shutdownGracePeriodByPodPriority",
        "shutdownGracePeriodCriticalPods",
        "singleProcessOOMKill",
        "staticPodPath",
        "staticPodURL",
        "staticPodURLHeader",
        "streamingConnectionIdleTimeout",
        "syncFrequency",
        "systemCgroups",
        "systemReservedCgroup",
        "tlsCertFile",
        "tlsCipherSuites",
        "tlsMinVersion",
        "tlsPrivateKeyFile",
        "tracing",
        "userNamespaces",
        "volumePluginDir",
        "volumeStatsAggPeriod",
    }
)
# Upstream fields that would change memstate's decisions: refused unless they hold the value
# memstate implements (docs/deviations.md).
UNSUPPORTED_FIELDS: dict[str, tuple[object, str]] = {
    "qosReserved": ({}, "QOSReserved memory limits on the QoS cgroups are not supported"),
    "mergeDefaultEvictionSettings": (
        False,
        "memstate reads evictionHard without merging the defaults into it",
    ),
}
# enforceNodeAllocatable entries whose cgroups memstate does not manage.
UNENFORCED_LEVELS = ("kube-reserved", "system-reserved")
# Upstream's wording for an unknown value of an enumerated field, and the valid values.
_ENUM_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "memoryManagerPolicy": ("policy", ("None", "Static")),
    "topologyManagerPolicy": ("policy", ("none", "best-effort", "restricted", "single-numa-node")),
    "topologyManagerScope": ("scope", ("container", "pod")),
    "memoryReservationPolicy": ("memoryReservationPolicy", ("None", "TieredReservation")),
    "cgroupDriver": ("cgroup driver", ("cgroupfs", "systemd")),
}


class ReservedMemoryFile(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    numa_node: int
    limits: dict[str, QuantityInput]


class KubeletConfigFile(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """The subset of KubeletConfiguration memstate reads; defaults are the kubelet's."""

    api_version: str = "kubelet.config.k8s.io/v1beta1"
    kind: str = "KubeletConfiguration"
    # Enumerations are plain strings here: `normalise_config` checks them in upstream's order
    # and words the error as upstream does.
    memory_manager_policy: str = "None"
    topology_manager_policy: str = "none"
    topology_manager_scope: str = "container"
    topology_manager_policy_options: dict[str, str] = {}
    reserved_memory: list[ReservedMemoryFile] = []
    system_reserved: dict[str, QuantityInput] = {}
    kube_reserved: dict[str, QuantityInput] = {}
    eviction_hard: dict[str, str] | None = None
    memory_throttling_factor: float = 0.9
    memory_reservation_policy: str = "None"
    cgroup_driver: str = "cgroupfs"
    cgroup_root: str = "/"
    cgroups_per_qos: bool = msgspec.field(name="cgroupsPerQOS", default=True)
    enforce_node_allocatable: list[str] = msgspec.field(default_factory=lambda: ["pods"])
    feature_gates: dict[str, bool] = {}


class ReservedMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`size_bytes` of `resource` reserved for the system on one NUMA node."""

    numa_node: int
    resource: str
    size_bytes: int


class NodeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The normalised configuration every decision is made under (recorded in the log)."""

    memory_manager_policy: MemoryManagerPolicy = "None"
    topology_manager_policy: TopologyManagerPolicy = "none"
    topology_manager_scope: TopologyManagerScope = "container"
    prefer_closest_numa_nodes: bool = False
    reserved_memory: tuple[ReservedMemory, ...] = ()
    system_reserved: dict[str, int] = {}
    kube_reserved: dict[str, int] = {}
    # `memory.available` of evictionHard: bytes ("104857600") or a percentage ("10%").
    eviction_memory_available: str = "104857600"
    memory_throttling_factor: float = 0.9
    memory_reservation_policy: MemoryReservationPolicy = "None"
    memory_qos: bool = True
    cgroup_driver: CgroupDriver = "cgroupfs"
    cgroup_root: tuple[str, ...] = ()
    enforce_node_allocatable: tuple[str, ...] = ("pods",)

    def reserved(self, numa_node: int, resource: str) -> int:
        """Bytes of `resource` reserved on `numa_node` by `reservedMemory` (0 when absent)."""
        for entry in self.reserved_memory:
            if entry.numa_node == numa_node and entry.resource == resource:
                return entry.size_bytes
        return 0

    def eviction_memory_bytes(self, capacity_bytes: int) -> int:
        """The hard-eviction `memory.available` threshold in bytes for a machine capacity."""
        value = self.eviction_memory_available
        if value.endswith("%"):
            return int(Fraction(value[:-1]) * capacity_bytes / 100)
        return int(value)


_READ_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(KubeletConfigFile))


def ignored_fields(obj: Any) -> list[str]:
    """The upstream KubeletConfiguration fields of `obj` that memstate does not read, sorted."""
    if not isinstance(obj, dict):
        return []
    return sorted(k for k in obj if isinstance(k, str) and k in UPSTREAM_IGNORED_FIELDS)


def config_from_object(obj: Any, *, source: str = "") -> NodeConfig:
    """Decode a KubeletConfiguration-shaped object (from YAML/JSON) into a `NodeConfig`.

    Upstream fields memstate does not read are dropped here (see `ignored_fields`)."""
    if obj is None:
        obj = {}
    if isinstance(obj, dict):
        obj = _check_top_level(obj, source)
    raw = convert_input(obj, KubeletConfigFile, source=source, error=ConfigError)
    try:
        return normalise_config(raw)
    except ConfigError as exc:
        raise exc.with_source(source) from None
    except InputError as exc:
        raise reraise_as(exc, ConfigError, source=source) from None


def _check_top_level(obj: dict[Any, Any], source: str) -> dict[Any, Any]:
    """The checks that must speak before a type check would: the kind, upstream's wording for
    unknown policies, unsupported and unknown fields. Returns the fields memstate reads."""
    kind = obj.get("kind", "KubeletConfiguration")
    if kind != "KubeletConfiguration":
        # Before the field check: a Pod or a Deployment would otherwise be "unknown field".
        raise ConfigError(
            f"kind {echo(kind)} is not a KubeletConfiguration: this file is not a kubelet config",
            source=source,
            path="$.kind",
        )
    for key, (default, reason) in UNSUPPORTED_FIELDS.items():
        if key in obj and obj[key] not in (default, None):
            raise ConfigError(f"{key} is not supported: {reason}", source=source, path=f"$.{key}")
    for key in obj:
        if key not in _READ_FIELDS and key not in UPSTREAM_IGNORED_FIELDS:
            if key in UNSUPPORTED_FIELDS:
                continue
            raise ConfigError(
                f"unknown field {echo(key)}: not a KubeletConfiguration field",
                source=source,
                path=f"$.{echo(key, quote=False)}",
            )
    return {k: v for k, v in obj.items() if k in _READ_FIELDS}


def _known(value: str, field: str) -> str:
    """`value` if `field` (a key of `_ENUM_FIELDS`) allows it, else upstream's "unknown" error."""
    what, valid = _ENUM_FIELDS[field]
    if value not in valid:
        raise ConfigError(
            f'unknown {what}: "{echo(value, quote=False)}" (valid: {", ".join(valid)})',
            path=f"$.{field}",
        )
    return value


def normalise_config(raw: KubeletConfigFile) -> NodeConfig:
    """Structural validation and unit conversion; raises `ConfigError` naming the field.

    The kubelet validates its configuration before it constructs the Memory Manager, which is
    where an unknown `memoryManagerPolicy` is found: that check comes last here too.
    """
    if raw.kind != "KubeletConfiguration":
        raise ConfigError(f"kind must be KubeletConfiguration, got {echo(raw.kind)}", path="$.kind")
    topology_policy = cast(
        TopologyManagerPolicy, _known(raw.topology_manager_policy, "topologyManagerPolicy")
    )
    topology_scope = cast(
        TopologyManagerScope, _known(raw.topology_manager_scope, "topologyManagerScope")
    )
    cgroup_driver = cast(CgroupDriver, _known(raw.cgroup_driver, "cgroupDriver"))
    reservation_policy = cast(
        MemoryReservationPolicy, _known(raw.memory_reservation_policy, "memoryReservationPolicy")
    )
    if not raw.cgroups_per_qos:
        raise ConfigError(
            "cgroupsPerQOS=false is not supported: memstate manages the QoS-level cgroups",
            path="$.cgroupsPerQOS",
        )
    factor = raw.memory_throttling_factor
    if not 0.0 < factor <= 1.0:
        raise ConfigError(
            f"memoryThrottlingFactor {factor} must be greater than 0 and less than or equal to 1.0",
            path="$.memoryThrottlingFactor",
        )
    memory_qos = raw.feature_gates.get("MemoryQoS", True)
    if reservation_policy == "TieredReservation" and not memory_qos:
        raise ConfigError(
            "memoryReservationPolicy TieredReservation requires the MemoryQoS feature gate",
            path="$.memoryReservationPolicy",
        )
    options = dict(raw.topology_manager_policy_options)
    prefer_closest = options.pop("prefer-closest-numa-nodes", "false")
    if prefer_closest not in ("true", "false"):
        raise ConfigError(
            f"prefer-closest-numa-nodes must be 'true' or 'false', got {echo(prefer_closest)}",
            path="$.topologyManagerPolicyOptions",
        )
    if options:
        raise ConfigError(
            f"unsupported topologyManagerPolicyOptions: {', '.join(sorted(options))}",
            path="$.topologyManagerPolicyOptions",
        )
    for index, level in enumerate(raw.enforce_node_allocatable):
        if level not in ("pods", "none", *UNENFORCED_LEVELS):
            raise ConfigError(
                f"unknown enforceNodeAllocatable entry {echo(level)} "
                "(valid: pods, kube-reserved, system-reserved, none)",
                path=f"$.enforceNodeAllocatable[{index}]",
            )
    unenforced = [level for level in UNENFORCED_LEVELS if level in raw.enforce_node_allocatable]
    if unenforced:
        # Accepting them would claim a limit nobody writes: memstate manages the pods' tree only.
        raise ConfigError(
            f"enforceNodeAllocatable: {', '.join(unenforced)} not enforced by memstate (it "
            "manages only the pods' cgroups: kubepods and below); keep pods (or none) and leave "
            "the kube-/system-reserved cgroups to the kubelet or systemd",
            path="$.enforceNodeAllocatable",
        )
    reserved_memory = _normalise_reserved_memory(raw.reserved_memory)
    system_reserved = _memory_resources(raw.system_reserved, "$.systemReserved")
    kube_reserved = _memory_resources(raw.kube_reserved, "$.kubeReserved")
    eviction_memory_available = _eviction_memory_available(raw.eviction_hard)
    cgroup_root = parse_cgroup_root(raw.cgroup_root, cgroup_driver)
    memory_policy = cast(
        MemoryManagerPolicy, _known(raw.memory_manager_policy, "memoryManagerPolicy")
    )
    return NodeConfig(
        memory_manager_policy=memory_policy,
        topology_manager_policy=topology_policy,
        topology_manager_scope=topology_scope,
        prefer_closest_numa_nodes=prefer_closest == "true",
        reserved_memory=reserved_memory,
        system_reserved=system_reserved,
        kube_reserved=kube_reserved,
        eviction_memory_available=eviction_memory_available,
        memory_throttling_factor=factor,
        memory_reservation_policy=reservation_policy,
        memory_qos=memory_qos,
        cgroup_driver=cgroup_driver,
        cgroup_root=cgroup_root,
        enforce_node_allocatable=tuple(sorted(set(raw.enforce_node_allocatable))),
    )


def _normalise_reserved_memory(entries: list[ReservedMemoryFile]) -> tuple[ReservedMemory, ...]:
    seen: set[tuple[int, str]] = set()
    result = []
    for index, entry in enumerate(entries):
        where = f"$.reservedMemory[{index}]"
        if not 0 <= entry.numa_node <= MAX_NUMA_NODE_ID:
            raise ConfigError(
                f"numaNode {echo(entry.numa_node)} is outside 0..{MAX_NUMA_NODE_ID}",
                path=where + ".numaNode",
            )
        for name, value in sorted(entry.limits.items()):
            path = f"{where}.limits.{name}"
            if name != MEMORY and not is_hugepage_resource(name):
                raise ConfigError(
                    f"reservedMemory limits accept memory and hugepages-<size>, not {echo(name)}",
                    path=path,
                )
            resource = canonical_resource_name(name, path=path)
            key = (entry.numa_node, resource)
            if key in seen:
                # The kubelet sums duplicates in one check and keeps the last in another.
                raise ConfigError(
                    f"duplicate reservation of {resource} on NUMA node {entry.numa_node}",
                    path=path,
                )
            seen.add(key)
            result.append(ReservedMemory(entry.numa_node, resource, parse_bytes(value, path=path)))
    return tuple(sorted(result, key=lambda r: (r.numa_node, r.resource)))


def _memory_resources(values: dict[str, QuantityInput], where: str) -> dict[str, int]:
    """Keep `memory` and `hugepages-*` (the ones Node Allocatable checks); validate the rest."""
    result: dict[str, int] = {}
    for name, value in sorted(values.items()):
        path = f"{where}.{name}"
        size = parse_bytes(value, path=path)
        if name == MEMORY or is_hugepage_resource(name):
            result[canonical_resource_name(name, path=path)] = size
    return result


def _eviction_memory_available(eviction_hard: dict[str, str] | None) -> str:
    # Without evictionHard the kubelet's default applies; once evictionHard is given, unspecified
    # signals are not defaulted (mergeDefaultEvictionSettings=false), so memory.available is 0.
    if eviction_hard is None:
        text = DEFAULT_EVICTION_MEMORY_AVAILABLE
    else:
        text = eviction_hard.get("memory.available", "0")
    path = "$.evictionHard['memory.available']"
    if text.endswith("%"):
        # Not Fraction() on the raw text: "1e999999999%" would compute 10**999999999.
        if not _PERCENT_RE.fullmatch(text[:-1]):
            raise ConfigError(f"malformed percentage {echo(text)}", path=path)
        percent = Fraction(text[:-1])
        if not 0 <= percent <= 100:
            raise ConfigError(f"percentage {echo(text)} is outside 0..100", path=path)
        return f"{percent}%"
    return str(parse_bytes(text, path=path))


def parse_cgroup_root(text: str, driver: str) -> tuple[str, ...]:
    """`cgroupRoot` as name components: ``/`` → (); ``/foo/bar`` or ``/foo.slice/foo-bar.slice``
    → ("foo", "bar"). Components are restricted so that no path can escape or be ambiguous."""
    path = "$.cgroupRoot"
    if not text.startswith("/"):
        raise ConfigError(f"cgroupRoot {echo(text)} must be absolute", path=path)
    if len(text) > _MAX_CGROUP_ROOT_CHARS:
        raise ConfigError(
            f"cgroupRoot is longer than {_MAX_CGROUP_ROOT_CHARS} characters", path=path
        )
    parts = [p for p in text.split("/") if p]
    if driver == "systemd" and parts and all(p.endswith(".slice") for p in parts):
        components = parts[-1][: -len(".slice")].split("-")
        expected = ["-".join(components[: i + 1]) + ".slice" for i in range(len(components))]
        if parts != expected:
            raise ConfigError(f"cgroupRoot {echo(text)} is not a systemd slice path", path=path)
        parts = components
    for part in parts:
        if len(part) > _MAX_CGROUP_COMPONENT_CHARS or not CGROUP_ROOT_COMPONENT_RE.fullmatch(part):
            raise ConfigError(
                f"cgroupRoot component {echo(part)} may only hold letters, digits and inner dots "
                f"(at most {_MAX_CGROUP_COMPONENT_CHARS})",
                path=path,
            )
    return tuple(parts)


def node_allocatable_reservation(config: NodeConfig, capacity_bytes: int) -> dict[str, int]:
    """kube-reserved + system-reserved (+ the hard-eviction threshold for memory) per resource."""
    totals: dict[str, int] = {}
    for source in (config.kube_reserved, config.system_reserved):
        for resource, size in source.items():
            totals[resource] = totals.get(resource, 0) + size
    totals[MEMORY] = totals.get(MEMORY, 0) + config.eviction_memory_bytes(capacity_bytes)
    return totals


def allocatable_bytes(config: NodeConfig, topology: Topology) -> int:
    """Node allocatable memory for Memory QoS: capacity − kube-reserved − system-reserved.

    The hard-eviction threshold is *not* subtracted: the kubelet hands this same figure to the
    QoS manager (memory-qos.md §1).
    """
    reserved = config.kube_reserved.get(MEMORY, 0) + config.system_reserved.get(MEMORY, 0)
    return max(topology.capacity_bytes - reserved, 0)


def validate_config_for_topology(
    config: NodeConfig, topology: Topology, *, source: str = ""
) -> None:
    """The checks that need the machine. Raises `ConfigError` with the amounts involved."""

    def fail(message: str, path: str = "$.reservedMemory") -> ConfigError:
        return ConfigError(message, source=source, path=path)

    node_ids = set(topology.node_ids)
    resources = set(topology.resources)
    for entry in config.reserved_memory:
        if entry.numa_node not in node_ids:
            raise fail(
                f"the reserved memory configuration references a NUMA node {entry.numa_node} "
                "that does not exist on this machine"
            )
        if entry.resource not in resources:
            raise fail(
                f"reservedMemory reserves {entry.resource} on NUMA node {entry.numa_node}, "
                "but the machine has no such hugepage size"
            )
    for node in topology.nodes:
        hugepages_total = sum(p.total_bytes for p in node.hugepages)
        memory_reserved = config.reserved(node.id, MEMORY)
        if memory_reserved + hugepages_total > node.memory_bytes:
            raise fail(
                f"NUMA node {node.id}: reserved memory {format_bytes(memory_reserved)} plus "
                f"hugepages {format_bytes(hugepages_total)} exceed the node's memory "
                f"{format_bytes(node.memory_bytes)}"
            )
        for pool in node.hugepages:
            name = hugepage_resource_name(pool.page_size_bytes)
            if config.reserved(node.id, name) > pool.total_bytes:
                raise fail(
                    f"NUMA node {node.id}: reserved {name} "
                    f"{format_bytes(config.reserved(node.id, name))} exceeds the node's pool "
                    f"{format_bytes(pool.total_bytes)}"
                )
    if config.memory_manager_policy != "Static":
        return
    if len(topology.nodes) > MAX_NUMA_NODES_STATIC:
        raise fail(
            f"the Static policy supports at most {MAX_NUMA_NODES_STATIC} NUMA nodes (hint "
            f"enumeration is 2^N); this machine has {len(topology.nodes)}",
            "$.memoryManagerPolicy",
        )
    # Upstream's order (memory-manager.md §1.4): the Node Allocatable sums first, then "> 0", so
    # one misconfiguration gets the kubelet's error.
    expected = node_allocatable_reservation(config, topology.capacity_bytes)
    reserved_types = {e.resource for e in config.reserved_memory} | set(expected)
    for resource in sorted(reserved_types):
        total = sum(e.size_bytes for e in config.reserved_memory if e.resource == resource)
        want = expected.get(resource, 0)
        if total != want:
            raise fail(
                f'the total amount "{format_bytes(total)}" of type "{resource}" is not equal to '
                f'the value "{format_bytes(want)}" determined by Node Allocatable feature '
                "(kubeReserved + systemReserved + evictionHard memory.available)"
            )
    memory_total = sum(e.size_bytes for e in config.reserved_memory if e.resource == MEMORY)
    if memory_total <= 0:
        raise fail("[memorymanager] you should specify the system reserved memory")
