"""Prometheus metrics over HTTP.

Two kinds of series:
- derived from the published state snapshot (pinning counters, node Memory QoS gauges, per-NUMA
  free bytes, last applied sequence): a custom collector reads the current immutable snapshot,
  so a scrape never sees a half-updated state (the daemon swaps one reference);
- operational counters and histograms the daemon updates as things happen (events appended,
  fsync durations, reconcile durations, cgroup writes, drift corrections, reload errors).

Names: the upstream kubelet names where dashboards exist
(`kubelet_memory_qos_node_memory_{min,low}_bytes`, and the pinning counters both as
`memory_manager_pinning_*_total` and with the kubelet's `kubelet_` prefix), `memstate_*` for the
rest. Upstream-named series carry upstream's stability prefix in their help text (`[ALPHA] `), as
the kubelet's component-base metrics do. Like the kubelet's, the upstream-named pinning counters
count from the start of this process; the totals over the whole event log (what the state holds)
are `memstate_memory_manager_pinning_{requests,errors}_total`. No pod UID labels (churny series);
per-pod history belongs to `memstate audit`. Served over HTTP by memstate.node.endpoint (on trio,
in the daemon's nursery), which binds to 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from memstate import __version__
from memstate.core.events import SCHEMA_VERSION
from memstate.core.state import REDUCER_VERSION, Counters, State
from memstate.core.targets import NodeTargets

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
# What component-base prepends to the help text of an ALPHA metric (all upstream ones used here).
UPSTREAM_STABILITY_PREFIX = "[ALPHA] "
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Snapshot:
    """What the collector reports; replaced as a whole, never mutated."""

    state: State = field(default_factory=State)
    targets: NodeTargets | None = None
    last_seq: int = 0
    converged: bool = False
    pending_removals: int = 0
    old_kernel_with_memory_high: str = ""  # kernel release when memory.high is used on < 5.9


class _StateCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # Without describe() a dedicated registry does no duplicate-name checking; families
        # without samples describe the names.
        return iter(self._families(Snapshot()))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._metrics.snapshot))

    def _families(self, snap: Snapshot) -> list[Metric]:
        state = snap.state
        families: list[Metric] = []
        baseline = self._metrics.process_baseline
        # (name prefix, help prefix, requests, errors): per process under the upstream names,
        # over the whole log under memstate's.
        counter_sets = [
            (
                prefix,
                UPSTREAM_STABILITY_PREFIX,
                state.counters.pinning_requests - baseline.pinning_requests,
                state.counters.pinning_errors - baseline.pinning_errors,
            )
            for prefix in ("", "kubelet_")
        ]
        counter_sets.append(
            ("memstate_", "", state.counters.pinning_requests, state.counters.pinning_errors)
        )
        for prefix, stability, request_count, error_count in counter_sets:
            requests = CounterMetricFamily(
                f"{prefix}memory_manager_pinning_requests",
                f"{stability}The number of memory pages allocations which required pinning.",
                value=max(request_count, 0),
            )
            errors = CounterMetricFamily(
                f"{prefix}memory_manager_pinning_errors",
                f"{stability}The number of memory pages allocations which required pinning "
                "that failed.",
                value=max(error_count, 0),
            )
            families += [requests, errors]
        targets = snap.targets
        families.append(
            GaugeMetricFamily(
                "kubelet_memory_qos_node_memory_min_bytes",
                UPSTREAM_STABILITY_PREFIX + "Total memory.min in bytes for Guaranteed pods",
                value=targets.node_memory_min_bytes if targets else 0,
            )
        )
        families.append(
            GaugeMetricFamily(
                "kubelet_memory_qos_node_memory_low_bytes",
                UPSTREAM_STABILITY_PREFIX + "Total memory.low in bytes for Burstable pods",
                value=targets.node_memory_low_bytes if targets else 0,
            )
        )
        families.append(
            GaugeMetricFamily(
                "memstate_last_applied_seq",
                "Sequence number of the last event applied to the published state.",
                value=snap.last_seq,
            )
        )
        free = GaugeMetricFamily(
            "memstate_numa_free_bytes",
            "Free bytes per NUMA node and resource (allocatable minus reserved).",
            labels=["numa_node", "resource"],
        )
        reserved = GaugeMetricFamily(
            "memstate_numa_reserved_bytes",
            "Bytes reserved for pinned pods per NUMA node and resource.",
            labels=["numa_node", "resource"],
        )
        for node in state.machine.nodes:
            for resource, table in sorted(node.memory_map.items()):
                free.add_metric([str(node.id), resource], table.free)
                reserved.add_metric([str(node.id), resource], table.reserved)
        families += [free, reserved]
        pods = GaugeMetricFamily(
            "memstate_pods",
            "Admitted pods by QoS class and status.",
            labels=["qos_class", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        for record in state.pods.values():
            key = (record.qos_class, record.status)
            counts[key] = counts.get(key, 0) + 1
        for (qos, status), count in sorted(counts.items()):
            pods.add_metric([qos, status], count)
        families.append(pods)
        families.append(
            GaugeMetricFamily(
                "memstate_rejected_pods",
                "Pods (or manifest files) whose latest admission was rejected.",
                value=len(state.rejections),
            )
        )
        families.append(
            GaugeMetricFamily(
                "memstate_reconcile_converged",
                "1 when the last reconcile left the cgroup tree equal to the targets.",
                value=1 if snap.converged else 0,
            )
        )
        families.append(
            GaugeMetricFamily(
                "memstate_reconcile_pending_removals",
                "Pod cgroups waiting to be removed (still populated, or failing).",
                value=snap.pending_removals,
            )
        )
        build = GaugeMetricFamily(
            "memstate_build_info",
            "memstate build: version, reducer and schema versions, Python.",
            labels=["version", "reducer_version", "schema_version", "python"],
        )
        build.add_metric(
            [__version__, str(REDUCER_VERSION), str(SCHEMA_VERSION), platform.python_version()], 1
        )
        families.append(build)
        old_kernel = GaugeMetricFamily(
            "memstate_memory_high_old_kernel_info",
            "memory.high is in use on a kernel older than 5.9 (risk of livelock at memory.high).",
            labels=["kernel_release"],
        )
        if snap.old_kernel_with_memory_high:
            old_kernel.add_metric([snap.old_kernel_with_memory_high], 1)
        families.append(old_kernel)
        return families


class LabelledChildren:
    """The children of one labelled metric, each looked up in prometheus-client once.

    `metric.labels(...)` takes a lock and builds a key on every call, several times the cost of
    the increment or observation itself; the daemon updates some series once per record or per
    reconcile round. Label values are given in the order of the metric's label names and must
    come from a small fixed set (a record kind, a cgroup file name), as every label of ours does.
    """

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        """The child for these label values (prometheus-client's, untyped)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The daemon's metrics: a dedicated registry, never the global one."""

    def __init__(self) -> None:
        # `*_created` series only add noise for a single long-lived process.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.snapshot = Snapshot()
        # The pinning counters of the recovered state: upstream's counters start at 0 with the
        # process, so the upstream-named series report the increase since then.
        self.process_baseline = Counters()
        self.events_appended = Counter(
            "memstate_events_appended",
            "Events appended to the log, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.fsync_seconds = Histogram(
            "memstate_log_fsync_duration_seconds",
            "Write plus fsync of one group-commit batch of the event log.",
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.batch_events = Histogram(
            "memstate_log_batch_events",
            "Events per group-commit batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "memstate_reconcile_duration_seconds",
            "Duration of one reconcile round (observe, plan, execute).",
            ["scope"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.cgroup_writes = Counter(
            "memstate_cgroup_writes",
            "Cgroup operations by file (or operation) and result.",
            ["file", "result"],
            registry=self.registry,
        )
        # The series updated per record or per round, by their label values.
        self.events_appended_by = LabelledChildren(self.events_appended)
        self.reconcile_seconds_by = LabelledChildren(self.reconcile_seconds)
        self.cgroup_writes_by = LabelledChildren(self.cgroup_writes)
        self.drift_corrections = Counter(
            "memstate_drift_corrections",
            "Cgroup values changed by someone else and corrected.",
            registry=self.registry,
        )
        self.config_reload_errors = Counter(
            "memstate_config_reload_errors",
            "Configuration reloads rejected (the previous configuration stays).",
            registry=self.registry,
        )
        self.log_append_errors = Counter(
            "memstate_log_append_errors",
            "Batches that could not be appended (disk full); nothing of them was acknowledged.",
            registry=self.registry,
        )
        self.rejection_events = Counter(
            "memstate_pod_rejection_events",
            "Kubernetes Events for rejected pods, by result (posted, failed, not_listed, dropped).",
            ["result"],
            registry=self.registry,
        )
        self.shadow_disagreements = Gauge(
            "memstate_shadow_disagreements",
            "Shadow mode: open disagreements with the kubelet, by what differs (numa_nodes, or "
            "the pod cgroup file).",
            ["kind"],
            registry=self.registry,
        )
        self.pod_source_in_sync = Gauge(
            "memstate_pod_source_in_sync",
            "1 while a pod source's view is current (last poll or list/watch succeeded).",
            ["source"],
            registry=self.registry,
        )
        self.pod_source_failures = Gauge(
            "memstate_pod_source_consecutive_failures",
            "Failed polls or connections of a pod source since its last success.",
            ["source"],
            registry=self.registry,
        )
        self.pod_source_last_success = Gauge(
            "memstate_pod_source_last_success_timestamp_seconds",
            "Unix time of a pod source's last successful poll or list/watch (0: never).",
            ["source"],
            registry=self.registry,
        )
        self.log_sealed_checks = Counter(
            "memstate_log_sealed_checks",
            "Background checks of sealed log segments against their seals after READY, by "
            "result (ok, damaged). Start-up reads sealed segments from their seal only.",
            ["result"],
            registry=self.registry,
        )
        self.watch_errors = Counter(
            "memstate_watch_errors",
            "Failures of a directory watch (manifests, config, cgroups), each retried with "
            "back-off; see the log for the error (an unexpected one with its traceback).",
            ["watch"],
            registry=self.registry,
        )
        self.cgroup_watch_echoes = Counter(
            "memstate_cgroup_watch_echoes",
            "Changes the cgroup watch reported that were memstate's own writes (the file still "
            "reads what memstate wrote, the cgroup it created or removed): no round scheduled.",
            registry=self.registry,
        )
        self.nri_connected = Gauge(
            "memstate_nri_connected",
            "1 while the NRI plugin is connected to the runtime (0 otherwise, or without `nri:`).",
            registry=self.registry,
        )
        self.nri_requests = Counter(
            "memstate_nri_requests",
            "Runtime requests the NRI plugin answered, by method and result (adjusted, "
            "unchanged, refused, unknown_pod: let through without a decision).",
            ["method", "result"],
            registry=self.registry,
        )
        self.nri_decision_seconds = Histogram(
            "memstate_nri_decision_duration_seconds",
            "From a RunPodSandbox/CreateContainer request to its answer, waiting for the pod's "
            "durable decision included (the runtime's deadline is 2 s).",
            ["method"],
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    def start_process(self, recovered: Counters) -> None:
        """Count the upstream-named pinning counters from `recovered` (the state at start-up)."""
        self.process_baseline = recovered

    def watch_failed(self, watch: str) -> Callable[[BaseException], None]:
        """The `on_error` callback of a watch loop: counts its failures under `watch`."""
        counter = self.watch_errors.labels(watch=watch)

        def count(_exc: BaseException) -> None:
            counter.inc()

        return count

    def publish(self, snapshot: Snapshot) -> None:
        """Make `snapshot` what scrapes see (one reference swap)."""
        self.snapshot = snapshot

    def render(self) -> bytes:
        """The exposition text (for tests and `memstate status --metrics`)."""
        return prometheus_client.generate_latest(self.registry)
