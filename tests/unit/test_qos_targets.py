"""Memory QoS targets (memory-qos.md §2–§6, decisions §12): formulas, every level, both policies.

Method: pods are built from manifest dicts with `pod_from_manifest` (so API defaulting applies),
targets computed with `pod_targets` / `node_targets`, and compared with values taken from the
spec's tables or derived by hand in the comments. `check_targets` is exercised on sound trees
and on trees with deliberately injected violations.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from memstate.core.config import NodeConfig, allocatable_bytes
from memstate.core.errors import InvariantViolation
from memstate.core.machine import Block
from memstate.core.numa_policy import ContainerAllocation, PodAllocation
from memstate.core.pod import Pod, pod_from_manifest, qos_class
from memstate.core.qos import (
    check_targets,
    format_node_list,
    kernel_version,
    memory_high,
    node_targets,
    pod_targets,
    subtree_controllers,
)
from memstate.core.targets import ContainerTargets, NodeTargets, PodTargets
from memstate.core.topology import HugepagePool, NumaNode, Topology
from memstate.core.topology_hints import TopologyHint

Ki = 1024
Mi = 1024**2
Gi = 1024**3

TIERED = NodeConfig(memory_reservation_policy="TieredReservation")
NONE = NodeConfig(memory_reservation_policy="None")
GATE_OFF = NodeConfig(memory_qos=False)
# 32 GiB machine, no reservations: alloc = capacity = 32Gi, as in the §4.1 worked values.
TOPOLOGY = Topology(
    nodes=(NumaNode(id=0, memory_bytes=16 * Gi), NumaNode(id=1, memory_bytes=16 * Gi)),
    page_size_bytes=4096,
    kernel_release="6.8.0-45-generic",
)


def container(
    name: str,
    *,
    memory: tuple[str | None, str | None] = (None, None),
    cpu: tuple[str | None, str | None] = (None, None),
    hugepages: dict[str, str] | None = None,
    sidecar: bool = False,
) -> dict[str, Any]:
    """A container manifest: (request, limit) pairs for memory and cpu, None = absent."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for resource, (request, limit) in (("memory", memory), ("cpu", cpu)):
        if request is not None:
            requests[resource] = request
        if limit is not None:
            limits[resource] = limit
    for resource, size in (hugepages or {}).items():
        requests[resource] = size
        limits[resource] = size
    result: dict[str, Any] = {"name": name, "resources": {"requests": requests, "limits": limits}}
    if sidecar:
        result["restartPolicy"] = "Always"
    return result


def make_pod(
    uid: str,
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    overhead: dict[str, str] | None = None,
) -> Pod:
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = init
    if overhead:
        spec["overhead"] = overhead
    return pod_from_manifest({"metadata": {"name": uid, "uid": uid}, "spec": spec})


def guaranteed(uid: str, memory: str = "512Mi") -> Pod:
    return make_pod(uid, [container("app", memory=(memory, memory), cpu=("1", "1"))])


def burstable(uid: str, request: str = "1Gi", limit: str | None = "2Gi") -> Pod:
    return make_pod(uid, [container("app", memory=(request, limit))])


def best_effort(uid: str) -> Pod:
    return make_pod(uid, [container("app")])


def ctr_files(targets: PodTargets, name: str) -> dict[str, str]:
    for c in targets.containers:
        if c.name == name:
            return c.files
    raise KeyError(name)


# --- §4.1 memory.high -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "ceiling_bytes", "factor", "expected"),
    [
        # The worked-values table of §4.1 (page 4096). "(alloc 32Gi)" rows have no limit.
        (128 * Mi, 256 * Mi, 0.9, 255012864),
        (256 * Mi, 512 * Mi, 0.9, 510025728),
        (256 * Mi, 512 * Mi, 1.0, 536870912),
        (64 * Mi, 512 * Mi, 0.9, 489893888),
        (480 * Mi, 512 * Mi, 0.9, 533512192),
        (256 * Mi, 1 * Gi, 0.9, 993210368),
        (64 * Mi, 256 * Mi, 0.9, 248299520),
        (100 * Mi, 200 * Mi, 0.9, 199229440),
        # request = 512Mi - 100 B: high = 536866816 < request, not written.
        (512 * Mi - 100, 512 * Mi, 0.9, None),
    ],
)
def test_memory_high_worked_values_with_limit(
    request_bytes: int, ceiling_bytes: int, factor: float, expected: int | None
) -> None:
    assert memory_high(request_bytes, ceiling_bytes, 32 * Gi, factor, 4096) == expected


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (128 * Mi, 30937186304),
        # BestEffort: memstate decision §12.1 (KEP value), not v1.36.0's "unset".
        (0, 30923763712),
    ],
)
def test_memory_high_without_limit_uses_allocatable(request_bytes: int, expected: int) -> None:
    assert memory_high(request_bytes, 0, 32 * Gi, 0.9, 4096) == expected


@pytest.mark.parametrize("request_mib", range(0, 1001, 100))
def test_memory_high_kep_table(request_mib: int) -> None:
    """KEP table: page 1 MiB, limit 1000Mi, factor 0.9 → 900, 910, …, 990 Mi; the last row
    (request == limit) is not written."""
    result = memory_high(request_mib * Mi, 1000 * Mi, 32 * Gi, 0.9, 1 * Mi)
    if request_mib == 1000:
        assert result is None
    else:
        assert result == (900 + request_mib // 10) * Mi


def test_memory_high_factor_one_writes_the_limit() -> None:
    """No "skip when high >= limit" rule: factor 1.0 gives floor(limit/page)·page, written."""
    assert memory_high(100 * Mi, 300 * Mi, 32 * Gi, 1.0, 4096) == 300 * Mi
    # A limit that is not page aligned is rounded down.
    assert memory_high(100 * Mi, 300 * Mi + 5, 32 * Gi, 1.0, 4096) == 300 * Mi


def test_memory_high_skips_request_equal_limit_only_when_positive() -> None:
    assert memory_high(256 * Mi, 256 * Mi, 32 * Gi, 0.9, 4096) is None
    # 0 == 0 is not a skip (memstate decision §12.1).
    assert memory_high(0, 0, 32 * Gi, 0.9, 4096) == 30923763712


def test_memory_high_without_limit_or_allocatable_is_not_written() -> None:
    assert memory_high(0, 0, 0, 0.9, 4096) is None
    assert memory_high(64 * Mi, 0, 0, 0.9, 4096) is None


def test_memory_high_with_request_above_allocatable_is_not_written() -> None:
    assert memory_high(40 * Gi, 0, 32 * Gi, 0.9, 4096) is None


@pytest.mark.parametrize(
    ("request_bytes", "limit_bytes", "expected"),
    [
        # 64 KiB pages (arm64). 128Mi + 0.9·128Mi = 255013273.6 → 3891.2 pages → 3891·65536.
        (128 * Mi, 256 * Mi, 3891 * 64 * Ki),
        # BestEffort on 32Gi: 0.9·32Gi = 30923764531.2 → 471859.2 pages → 471859·65536.
        (0, 0, 471859 * 64 * Ki),
        # 480Mi + 0.9·32Mi = 533515468.8 → 8140.8 pages → 8140·65536 = 533463040 > 480Mi.
        (480 * Mi, 512 * Mi, 8140 * 64 * Ki),
        # 512Mi − 32Ki: high rounds down to 8191 pages = 512Mi − 64Ki < request → not written.
        (512 * Mi - 32 * Ki, 512 * Mi, None),
    ],
)
def test_memory_high_with_64k_pages(
    request_bytes: int, limit_bytes: int, expected: int | None
) -> None:
    assert memory_high(request_bytes, limit_bytes, 32 * Gi, 0.9, 64 * Ki) == expected


def test_memory_high_never_exceeds_the_limit_for_absurd_values() -> None:
    """Above 2^53 the double of the limit can round up past it; the clamp keeps high <= limit."""
    limit = 2**60 - 1  # float(limit) == 2**60, one byte above the limit
    high = memory_high(1, limit, 32 * Gi, 1.0, 4096)
    assert high is not None
    assert high <= limit
    assert high % 4096 == 0
    assert high == (limit // 4096) * 4096


@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, 0, 0.9, 4096),
        (0, -1, 0, 0.9, 4096),
        (0, 0, 0, 0.0, 4096),
        (0, 0, 0, 1.5, 4096),
        (0, 0, 0, 0.9, 0),
    ],
)
def test_memory_high_rejects_impossible_inputs(args: tuple[int, int, int, float, int]) -> None:
    with pytest.raises(InvariantViolation):
        memory_high(*args)


# --- §2 QoS classes and placement -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "init", "expected"),
    [
        ([container("a", memory=("1Gi", "1Gi"), cpu=("1", "1"))], [], "Guaranteed"),
        # Limit-only containers are defaulted to request = limit → Guaranteed.
        ([container("a", memory=(None, "1Gi"), cpu=(None, "1"))], [], "Guaranteed"),
        ([container("a", memory=("1Gi", "2Gi"))], [], "Burstable"),
        ([container("a", memory=("1Gi", "1Gi"))], [], "Burstable"),  # cpu missing
        ([container("a", cpu=("100m", "200m"))], [], "Burstable"),
        ([container("a")], [], "BestEffort"),
        # Hugepages do not count for the class.
        ([container("a", hugepages={"hugepages-2Mi": "4Mi"})], [], "BestEffort"),
        # An init container without resources next to a G app container → Burstable.
        (
            [container("a", memory=("1Gi", "1Gi"), cpu=("1", "1"))],
            [container("i")],
            "Burstable",
        ),
        (
            [container("a", memory=("1Gi", "1Gi"), cpu=("1", "1"))],
            [container("s", memory=("64Mi", "64Mi"), cpu=("100m", "100m"), sidecar=True)],
            "Guaranteed",
        ),
        ([container("a")], [container("i")], "BestEffort"),
        ([container("a")], [container("i", memory=("64Mi", None))], "Burstable"),
        # Mixing G and BE app containers → Burstable.
        ([container("a", memory=("1Gi", "1Gi"), cpu=("1", "1")), container("b")], [], "Burstable"),
    ],
)
def test_qos_class_and_pod_cgroup_placement(
    containers: list[dict[str, Any]], init: list[dict[str, Any]], expected: str
) -> None:
    pod = make_pod("p1", containers, init)
    assert qos_class(pod) == expected
    targets = pod_targets(pod, None, NONE, TOPOLOGY)
    assert targets.qos_class == expected
    where = {
        "Guaranteed": "kubepods/podp1",
        "Burstable": "kubepods/burstable/podp1",
        "BestEffort": "kubepods/besteffort/podp1",
    }
    assert targets.cgroup == where[expected]


# --- §2 pod_request: init containers, sidecars, overhead ------------------------------------------


@pytest.mark.parametrize(
    ("init", "apps", "overhead", "expected_bytes"),
    [
        # app sum only: 300Mi + 200Mi.
        ([], [("300Mi", "1Gi"), ("200Mi", "1Gi")], None, 500 * Mi),
        # a big regular init container dominates: max(200Mi, 1Gi).
        ([("i", "1Gi", "2Gi", False)], [("200Mi", "1Gi")], None, 1 * Gi),
        # sidecar s (100Mi) before init i2 (250Mi): init peak 350Mi; steady 200Mi + 100Mi.
        (
            [
                ("i1", "300Mi", "1Gi", False),
                ("s", "100Mi", "1Gi", True),
                ("i2", "250Mi", "1Gi", False),
            ],
            [("200Mi", "1Gi")],
            None,
            350 * Mi,
        ),
        # a sidecar declared after the init container does not add to that init's peak.
        (
            [("i1", "300Mi", "1Gi", False), ("s", "100Mi", "1Gi", True)],
            [("150Mi", "1Gi")],
            None,
            300 * Mi,
        ),
        # overhead is added on top.
        ([], [("200Mi", "1Gi")], {"memory": "10Mi"}, 210 * Mi),
        (
            [
                ("i1", "300Mi", "1Gi", False),
                ("s", "100Mi", "1Gi", True),
                ("i2", "250Mi", "1Gi", False),
            ],
            [("200Mi", "1Gi")],
            {"memory": "10Mi"},
            360 * Mi,
        ),
    ],
)
def test_pod_protection_uses_the_effective_request(
    init: list[tuple[str, str, str, bool]],
    apps: list[tuple[str, str]],
    overhead: dict[str, str] | None,
    expected_bytes: int,
) -> None:
    """Burstable pods (request < limit) get memory.low = pod_request; check the sums via it."""
    init_manifests = [
        container(name, memory=(req, lim), sidecar=side) for name, req, lim, side in init
    ]
    app_manifests = [container(f"a{i}", memory=rl) for i, rl in enumerate(apps)]
    pod = make_pod("p1", app_manifests, init_manifests, overhead)
    targets = pod_targets(pod, None, TIERED, TOPOLOGY)
    assert targets.qos_class == "Burstable"
    assert targets.files["memory.low"] == str(expected_bytes)
    assert targets.files["memory.min"] == "0"


def test_guaranteed_pod_min_includes_init_and_overhead() -> None:
    g = {"cpu": ("1", "1")}
    pod = make_pod(
        "g1",
        [container("a", memory=("256Mi", "256Mi"), **g)],  # type: ignore[arg-type]
        [container("i", memory=("1Gi", "1Gi"), **g)],  # type: ignore[arg-type]
        {"memory": "20Mi"},
    )
    targets = pod_targets(pod, None, TIERED, TOPOLOGY)
    assert targets.qos_class == "Guaranteed"
    assert targets.files["memory.min"] == str(1 * Gi + 20 * Mi)
    assert targets.files["memory.low"] == "0"
    # Pod limit: the same shape with limits, plus overhead.
    assert targets.files["memory.max"] == str(1 * Gi + 20 * Mi)


# --- §3 pod memory.max ----------------------------------------------------------------------------


def test_pod_memory_max_needs_every_container_limit() -> None:
    with_all = make_pod(
        "p1",
        [container("a", memory=("100Mi", "300Mi")), container("b", memory=("100Mi", "200Mi"))],
        overhead={"memory": "5Mi"},
    )
    assert pod_targets(with_all, None, NONE, TOPOLOGY).files["memory.max"] == str(505 * Mi)
    missing = make_pod(
        "p2", [container("a", memory=("100Mi", "300Mi")), container("b", memory=("100Mi", None))]
    )
    assert pod_targets(missing, None, NONE, TOPOLOGY).files["memory.max"] == "max"
    init_missing = make_pod(
        "p3", [container("a", memory=("100Mi", "300Mi"))], [container("i", memory=("1Mi", None))]
    )
    assert pod_targets(init_missing, None, NONE, TOPOLOGY).files["memory.max"] == "max"


def test_byte_counts_beyond_int64_render_as_max() -> None:
    """Two 7Ei limits sum past 2^63: the kernel would saturate (or fail to parse) — "max"."""
    pod = make_pod(
        "p1", [container("a", memory=("1Gi", "7Ei")), container("b", memory=("1Gi", "7Ei"))]
    )
    targets = pod_targets(pod, None, NONE, TOPOLOGY)
    assert targets.files["memory.max"] == "max"
    assert ctr_files(targets, "a")["memory.max"] == str(7 * 2**60)


# --- §3.2 / §3.3 container rows -------------------------------------------------------------------

ALLOC_HIGH_BE = "30923763712"  # 0.9 × 32Gi, page floor


@pytest.mark.parametrize(
    ("config", "pod", "expected"),
    [
        # policy None
        (
            NONE,
            guaranteed("g1", "512Mi"),
            {
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": "max",
                "memory.max": str(512 * Mi),
            },
        ),
        (
            NONE,
            burstable("b1", "128Mi", "256Mi"),
            {
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": "255012864",
                "memory.max": str(256 * Mi),
            },
        ),
        (
            NONE,
            burstable("b2", "128Mi", None),
            {
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": "30937186304",
                "memory.max": "max",
            },
        ),
        (
            NONE,
            best_effort("e1"),
            {
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": ALLOC_HIGH_BE,
                "memory.max": "max",
            },
        ),
        # TieredReservation
        (
            TIERED,
            guaranteed("g1", "512Mi"),
            {
                "memory.min": str(512 * Mi),
                "memory.low": "0",
                "memory.high": "max",
                "memory.max": str(512 * Mi),
            },
        ),
        (
            TIERED,
            burstable("b1", "128Mi", "256Mi"),
            {
                "memory.min": "0",
                "memory.low": str(128 * Mi),
                "memory.high": "255012864",
                "memory.max": str(256 * Mi),
            },
        ),
        (
            TIERED,
            burstable("b2", "128Mi", None),
            {
                "memory.min": "0",
                "memory.low": str(128 * Mi),
                "memory.high": "30937186304",
                "memory.max": "max",
            },
        ),
        (
            TIERED,
            best_effort("e1"),
            {
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": ALLOC_HIGH_BE,
                "memory.max": "max",
            },
        ),
        # gate off: only memory.max
        (GATE_OFF, guaranteed("g1", "512Mi"), {"memory.max": str(512 * Mi)}),
        (GATE_OFF, burstable("b1", "128Mi", "256Mi"), {"memory.max": str(256 * Mi)}),
        (GATE_OFF, best_effort("e1"), {"memory.max": "max"}),
    ],
)
def test_container_rows(config: NodeConfig, pod: Pod, expected: dict[str, str]) -> None:
    targets = pod_targets(pod, None, config, TOPOLOGY)
    assert ctr_files(targets, "app") == expected


def test_upstream_e2e_burstable_pod_with_request_equal_limit() -> None:
    """§3.3: min vs low follows the pod class; the high skip is per container."""
    pod = make_pod("b1", [container("c", memory=("128Mi", "128Mi"), cpu=("100m", "200m"))])
    targets = pod_targets(pod, None, TIERED, TOPOLOGY)
    assert targets.qos_class == "Burstable"
    files = ctr_files(targets, "c")
    assert files["memory.low"] == "134217728"
    assert files["memory.min"] == "0"
    assert files["memory.high"] == "max"


def test_container_without_memory_in_a_burstable_pod_gets_high_on_allocatable() -> None:
    pod = make_pod("b1", [container("a", memory=("1Gi", "2Gi")), container("b", cpu=("1", None))])
    files = ctr_files(pod_targets(pod, None, TIERED, TOPOLOGY), "b")
    assert files == {
        "memory.min": "0",
        "memory.low": "0",
        "memory.high": ALLOC_HIGH_BE,
        "memory.max": "max",
    }


def test_init_and_sidecar_containers_get_the_same_treatment() -> None:
    pod = make_pod(
        "b1",
        [container("a", memory=("128Mi", "256Mi"))],
        [
            container("i", memory=("64Mi", "256Mi")),
            container("s", memory=("100Mi", "200Mi"), sidecar=True),
        ],
    )
    targets = pod_targets(pod, None, TIERED, TOPOLOGY)
    assert [(c.name, c.kind) for c in targets.containers] == [
        ("i", "init"),
        ("s", "sidecar"),
        ("a", "app"),
    ]
    assert ctr_files(targets, "i") == {
        "memory.min": "0",
        "memory.low": str(64 * Mi),
        "memory.high": "248299520",
        "memory.max": str(256 * Mi),
    }
    assert ctr_files(targets, "s")["memory.high"] == "199229440"
    assert ctr_files(targets, "s")["memory.low"] == str(100 * Mi)


def test_container_high_uses_allocatable_not_capacity() -> None:
    """alloc = capacity − kube-reserved − system-reserved (eviction threshold not subtracted)."""
    config = NodeConfig(kube_reserved={"memory": 1 * Gi}, system_reserved={"memory": 1 * Gi})
    assert allocatable_bytes(config, TOPOLOGY) == 30 * Gi
    files = ctr_files(pod_targets(best_effort("e1"), None, config, TOPOLOGY), "app")
    # 0.9 × 30Gi = 28991029248 exactly (a page multiple).
    assert files["memory.high"] == "28991029248"


def test_container_high_with_64k_pages() -> None:
    topology = msgspec.structs.replace(TOPOLOGY, page_size_bytes=64 * Ki)
    targets = pod_targets(burstable("b1", "128Mi", "256Mi"), None, NONE, topology)
    assert ctr_files(targets, "app")["memory.high"] == str(3891 * 64 * Ki)


# --- §3 pod rows, both policies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "pod", "expected"),
    [
        (
            NONE,
            guaranteed("g1"),
            {
                "memory.min": "0",
                "memory.low": "0",
                "memory.high": "max",
                "memory.max": str(512 * Mi),
            },
        ),
        (
            NONE,
            burstable("b1"),
            {"memory.min": "0", "memory.low": "0", "memory.high": "max", "memory.max": str(2 * Gi)},
        ),
        (
            NONE,
            best_effort("e1"),
            {"memory.min": "0", "memory.low": "0", "memory.high": "max", "memory.max": "max"},
        ),
        (
            TIERED,
            guaranteed("g1"),
            {
                "memory.min": str(512 * Mi),
                "memory.low": "0",
                "memory.high": "max",
                "memory.max": str(512 * Mi),
            },
        ),
        (
            TIERED,
            burstable("b1"),
            {
                "memory.min": "0",
                "memory.low": str(1 * Gi),
                "memory.high": "max",
                "memory.max": str(2 * Gi),
            },
        ),
        (
            TIERED,
            burstable("b2", "1Gi", None),
            {
                "memory.min": "0",
                "memory.low": str(1 * Gi),
                "memory.high": "max",
                "memory.max": "max",
            },
        ),
        (
            TIERED,
            best_effort("e1"),
            {"memory.min": "0", "memory.low": "0", "memory.high": "max", "memory.max": "max"},
        ),
        (GATE_OFF, guaranteed("g1"), {"memory.max": str(512 * Mi)}),
        (GATE_OFF, best_effort("e1"), {"memory.max": "max"}),
    ],
)
def test_pod_rows(config: NodeConfig, pod: Pod, expected: dict[str, str]) -> None:
    assert pod_targets(pod, None, config, TOPOLOGY).files == expected


def test_burstable_pod_without_memory_requests_gets_zero_low() -> None:
    pod = make_pod("b1", [container("a", cpu=("100m", None))])
    assert pod_targets(pod, None, TIERED, TOPOLOGY).files["memory.low"] == "0"


# --- §3 node and QoS rows -------------------------------------------------------------------------

PODS = [
    (guaranteed("g1", "512Mi"), None),
    (guaranteed("g2", "1Gi"), None),
    (burstable("b1", "1Gi", "2Gi"), None),
    (burstable("b2", "512Mi", None), None),
    (best_effort("e1"), None),
]
G_SUM = 512 * Mi + 1 * Gi
B_SUM = 1 * Gi + 512 * Mi


def files_by_path(targets: NodeTargets) -> dict[str, dict[str, str]]:
    return {c.path: c.files for c in targets.cgroups}


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_qos_levels_under_tiered_reservation(driver: str) -> None:
    config = msgspec.structs.replace(TIERED, cgroup_driver=driver)
    targets = node_targets(PODS, config, TOPOLOGY)
    names = {
        "cgroupfs": ("kubepods", "kubepods/burstable", "kubepods/besteffort"),
        "systemd": (
            "kubepods.slice",
            "kubepods.slice/kubepods-burstable.slice",
            "kubepods.slice/kubepods-besteffort.slice",
        ),
    }[driver]
    files = files_by_path(targets)
    assert files[names[0]] == {
        "memory.min": str(G_SUM + B_SUM),
        "memory.low": str(B_SUM),  # memstate decision §12.2
        "memory.high": "max",
        "memory.max": str(32 * Gi),
    }
    assert files[names[1]] == {
        "memory.min": "0",  # written explicitly (§11.9)
        "memory.low": str(B_SUM),
        "memory.high": "max",
        "memory.max": "max",
    }
    assert files[names[2]] == {
        "memory.min": "0",
        "memory.low": "0",
        "memory.high": "max",
        "memory.max": "max",
    }
    assert files[""] == {}
    assert targets.node_memory_min_bytes == G_SUM
    assert targets.node_memory_low_bytes == B_SUM
    assert check_targets(targets) == []


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_qos_levels_under_policy_none(driver: str) -> None:
    config = msgspec.structs.replace(NONE, cgroup_driver=driver)
    targets = node_targets(PODS, config, TOPOLOGY)
    zero = {"memory.min": "0", "memory.low": "0", "memory.high": "max"}
    by_level = {c.level: c for c in targets.cgroups if c.level in ("node",)}
    assert by_level["node"].files == {**zero, "memory.max": str(32 * Gi)}
    for target in targets.cgroups:
        if target.level == "qos":
            assert target.files == {**zero, "memory.max": "max"}
        if target.level == "pod":
            assert target.files["memory.min"] == "0"
            assert target.files["memory.low"] == "0"
    assert targets.node_memory_min_bytes == 0
    assert targets.node_memory_low_bytes == 0
    assert check_targets(targets) == []


def test_gate_off_manages_only_memory_max() -> None:
    targets = node_targets(PODS, GATE_OFF, TOPOLOGY)
    files = files_by_path(targets)
    assert files["kubepods"] == {"memory.max": str(32 * Gi)}
    assert files["kubepods/burstable"] == {"memory.max": "max"}
    assert files["kubepods/besteffort"] == {"memory.max": "max"}
    for target in targets.cgroups:
        assert not {"memory.min", "memory.low", "memory.high"} & set(target.files)
    for pod in targets.pods:
        for c in pod.containers:
            assert set(c.files) == {"memory.max"}
    assert (targets.node_memory_min_bytes, targets.node_memory_low_bytes) == (0, 0)
    assert check_targets(targets) == []


def test_tiered_without_the_gate_is_treated_as_gate_off() -> None:
    """Config validation rejects this combination; a hand-built config must not half-apply it."""
    config = NodeConfig(memory_qos=False, memory_reservation_policy="TieredReservation")
    assert node_targets(PODS, config, TOPOLOGY) == node_targets(PODS, GATE_OFF, TOPOLOGY)


@pytest.mark.parametrize(
    ("enforce", "expected"),
    [
        (("pods",), 30 * Gi),
        (("kube-reserved", "pods"), 30 * Gi),
        ((), 32 * Gi),
        (("none",), 32 * Gi),
    ],
)
def test_kubepods_max_is_allocatable_only_when_pods_are_enforced(
    enforce: tuple[str, ...], expected: int
) -> None:
    config = NodeConfig(
        enforce_node_allocatable=enforce,
        kube_reserved={"memory": 1 * Gi},
        system_reserved={"memory": 1 * Gi},
    )
    targets = node_targets([], config, TOPOLOGY)
    assert targets.cgroup("kubepods").files["memory.max"] == str(expected)


# --- cpuset.mems ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "text"),
    [
        ((), ""),
        ((0,), "0"),
        ((0, 1), "0-1"),
        ((0, 2), "0,2"),
        ((0, 1, 2, 5), "0-2,5"),
        ((3, 1, 2, 7, 8, 10), "1-3,7-8,10"),
        ((1, 1), "1"),
    ],
)
def test_node_list_format(nodes: tuple[int, ...], text: str) -> None:
    assert format_node_list(nodes) == text


def test_node_list_rejects_negative_ids() -> None:
    with pytest.raises(InvariantViolation):
        format_node_list([-1, 0])


def allocation(nodes: tuple[int, ...], size: int = 512 * Mi) -> PodAllocation:
    hint = TopologyHint(numa_affinity=nodes, preferred=True)
    block = Block(numa_affinity=nodes, type="memory", size=size)
    return PodAllocation(
        containers=(ContainerAllocation(name="app", hint=hint, blocks=(block,)),), takes=()
    )


def test_cpuset_mems_only_with_the_static_policy() -> None:
    static = NodeConfig(memory_manager_policy="Static")
    pinned = pod_targets(guaranteed("g1"), allocation((0, 1)), static, TOPOLOGY)
    assert pinned.files["cpuset.mems"] == "0-1"
    single = pod_targets(guaranteed("g1"), allocation((1,)), static, TOPOLOGY)
    assert single.files["cpuset.mems"] == "1"
    unpinned = pod_targets(burstable("b1"), None, static, TOPOLOGY)
    assert unpinned.files["cpuset.mems"] == ""  # inherit
    none_policy = pod_targets(guaranteed("g1"), allocation((0,)), NONE, TOPOLOGY)
    assert "cpuset.mems" not in none_policy.files


# --- hugetlb --------------------------------------------------------------------------------------

HUGE_TOPOLOGY = Topology(
    nodes=(
        NumaNode(
            id=0,
            memory_bytes=32 * Gi,
            hugepages=(HugepagePool(2 * Mi, 512), HugepagePool(1 * Gi, 4)),
        ),
    ),
)


def test_hugetlb_limits_per_topology_size() -> None:
    pod = make_pod(
        "g1",
        [
            container(
                "a", memory=("1Gi", "1Gi"), cpu=("1", "1"), hugepages={"hugepages-2Mi": "8Mi"}
            ),
            container(
                "b", memory=("1Gi", "1Gi"), cpu=("1", "1"), hugepages={"hugepages-2Mi": "4Mi"}
            ),
        ],
        overhead={"hugepages-2Mi": "2Mi"},
    )
    files = pod_targets(pod, None, NONE, HUGE_TOPOLOGY).files
    assert files["hugetlb.2MB.max"] == str(14 * Mi)
    # A size the pod did not request: 0, the pod cannot use it (as the kubelet does).
    assert files["hugetlb.1GB.max"] == "0"
    assert [k for k in files if k.startswith("hugetlb.")] == ["hugetlb.2MB.max", "hugetlb.1GB.max"]


def test_hugetlb_follows_init_container_rules() -> None:
    """Hugepage limits aggregate like memory: max(steady, init peak)."""
    pod = make_pod(
        "b1",
        [container("a", memory=("1Gi", None), hugepages={"hugepages-1Gi": "1Gi"})],
        [container("i", hugepages={"hugepages-1Gi": "2Gi"})],
    )
    files = pod_targets(pod, None, NONE, HUGE_TOPOLOGY).files
    assert files["hugetlb.1GB.max"] == str(2 * Gi)
    assert files["hugetlb.2MB.max"] == "0"


def test_hugetlb_not_managed_without_hugepage_sizes_or_on_qos_levels() -> None:
    assert not any(
        k.startswith("hugetlb.") for k in pod_targets(best_effort("e"), None, NONE, TOPOLOGY).files
    )
    targets = node_targets([(best_effort("e"), None)], NONE, HUGE_TOPOLOGY)
    for target in targets.cgroups:
        has_hugetlb = any(k.startswith("hugetlb.") for k in target.files)
        assert has_hugetlb == (target.level == "pod")


# --- controllers and tree shape -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "topology", "expected"),
    [
        (NONE, TOPOLOGY, ("memory",)),
        (NodeConfig(memory_manager_policy="Static"), TOPOLOGY, ("cpuset", "memory")),
        (NONE, HUGE_TOPOLOGY, ("hugetlb", "memory")),
        (
            NodeConfig(memory_manager_policy="Static"),
            HUGE_TOPOLOGY,
            ("cpuset", "hugetlb", "memory"),
        ),
        (GATE_OFF, TOPOLOGY, ("memory",)),
    ],
)
def test_controllers_enabled_top_down(
    config: NodeConfig, topology: Topology, expected: tuple[str, ...]
) -> None:
    assert subtree_controllers(config, topology) == expected
    targets = node_targets([(guaranteed("g1"), None)], config, topology)
    for target in targets.cgroups:
        assert target.controllers == (() if target.level == "pod" else expected)


@pytest.mark.parametrize(
    ("driver", "root", "expected"),
    [
        ("cgroupfs", (), [("", "root"), ("kubepods", "node")]),
        ("cgroupfs", ("foo",), [("", "root"), ("foo", "root"), ("foo/kubepods", "node")]),
        (
            "systemd",
            ("foo",),
            [("", "root"), ("foo.slice", "root"), ("foo.slice/foo-kubepods.slice", "node")],
        ),
    ],
)
def test_cgroup_root_ancestors_are_targets(
    driver: str, root: tuple[str, ...], expected: list[tuple[str, str]]
) -> None:
    config = NodeConfig(cgroup_driver=driver, cgroup_root=root)  # type: ignore[arg-type]
    targets = node_targets([], config, TOPOLOGY)
    head = [(c.path, c.level) for c in targets.cgroups[: len(expected)]]
    assert head == expected
    for path, _ in expected[:-1]:
        assert targets.cgroup(path).files == {}
        assert targets.cgroup(path).controllers == ("memory",)


def test_tree_is_parents_first_and_pods_sorted_by_uid() -> None:
    targets = node_targets(list(reversed(PODS)), TIERED, TOPOLOGY)
    assert [p.uid for p in targets.pods] == sorted(p.uid for p, _ in PODS)
    paths = [c.path for c in targets.cgroups]
    keys = [(0 if p == "" else p.count("/") + 1, p) for p in paths]
    assert keys == sorted(keys)
    assert targets == node_targets(PODS, TIERED, TOPOLOGY)
    pod_cgroups = [c for c in targets.cgroups if c.level == "pod"]
    assert sorted(c.pod_uid for c in pod_cgroups) == sorted(p.uid for p, _ in PODS)
    for pod in targets.pods:
        assert targets.cgroup(pod.cgroup).files == pod.files


def test_same_uid_twice_is_an_invariant_violation() -> None:
    with pytest.raises(InvariantViolation):
        node_targets([(guaranteed("x"), None), (burstable("x"), None)], TIERED, TOPOLOGY)


def test_empty_node() -> None:
    targets = node_targets([], TIERED, TOPOLOGY)
    assert targets.pods == ()
    assert targets.cgroup("kubepods").files["memory.min"] == "0"
    assert targets.cgroup("kubepods/burstable").files["memory.low"] == "0"
    assert targets.warnings == ()
    assert check_targets(targets) == []


# --- warnings -------------------------------------------------------------------------------------


def test_overcommitted_protection_is_warned() -> None:
    """Static pods / shrinking allocatable can push G+B above kubepods memory.max (§5.4)."""
    config = msgspec.structs.replace(TIERED, kube_reserved={"memory": 30 * Gi})  # alloc 2Gi
    pods = [(guaranteed("g1", "1Gi"), None), (burstable("b1", "2Gi", None), None)]
    targets = node_targets(pods, config, TOPOLOGY)
    assert len(targets.warnings) == 1
    assert "kubepods memory.min" in targets.warnings[0]
    assert "memory.max" in targets.warnings[0]
    assert str(3 * Gi) in targets.warnings[0]
    # Not an invariant violation: ordering cannot fix it, it is reported instead.
    assert check_targets(targets) == []
    # Under policy None the same pods protect nothing: no warning.
    relaxed = msgspec.structs.replace(config, memory_reservation_policy="None")
    assert node_targets(pods, relaxed, TOPOLOGY).warnings == ()


def test_protection_above_allocatable_without_pods_enforcement_is_warned() -> None:
    config = msgspec.structs.replace(
        TIERED, kube_reserved={"memory": 30 * Gi}, enforce_node_allocatable=()
    )
    targets = node_targets([(burstable("b1", "3Gi", None), None)], config, TOPOLOGY)
    assert len(targets.warnings) == 1
    assert "allocatable" in targets.warnings[0]


@pytest.mark.parametrize(
    ("release", "warned"),
    [
        ("5.4.0-100-generic", True),
        ("4.19.0", True),
        ("5.9.0", False),
        ("6.1.0-13-amd64", False),
        ("", False),
    ],
)
def test_old_kernel_warning(release: str, warned: bool) -> None:
    topology = msgspec.structs.replace(TOPOLOGY, kernel_release=release)
    targets = node_targets([(burstable("b1"), None)], NONE, topology)
    assert any("5.9" in w for w in targets.warnings) == warned
    # Gate off: no memory.high anywhere, nothing to warn about.
    assert node_targets([(burstable("b1"), None)], GATE_OFF, topology).warnings == ()


def test_old_kernel_without_throttled_containers_is_quiet() -> None:
    topology = msgspec.structs.replace(TOPOLOGY, kernel_release="5.4.0")
    targets = node_targets([(guaranteed("g1"), None)], NONE, topology)
    assert targets.warnings == ()


@pytest.mark.parametrize(
    ("release", "version"),
    [("5.4.0-100-generic", (5, 4)), ("6.10", (6, 10)), ("", None), ("linux", None)],
)
def test_kernel_version(release: str, version: tuple[int, int] | None) -> None:
    assert kernel_version(release) == version


def test_unmanaged_cgroup_root_protection_is_warned() -> None:
    config = msgspec.structs.replace(TIERED, cgroup_root=("foo",))
    targets = node_targets([(guaranteed("g1"), None)], config, TOPOLOGY)
    assert any("cgroupRoot foo" in w for w in targets.warnings)
    assert node_targets([], config, TOPOLOGY).warnings == ()


# --- check_targets on broken trees ----------------------------------------------------------------


def replace_cgroup(targets: NodeTargets, path: str, **files: str) -> NodeTargets:
    cgroups = tuple(
        msgspec.structs.replace(
            c, files={**c.files, **{k.replace("_", "."): v for k, v in files.items()}}
        )
        if c.path == path
        else c
        for c in targets.cgroups
    )
    return msgspec.structs.replace(targets, cgroups=cgroups)


def sound() -> NodeTargets:
    targets = node_targets(PODS, TIERED, TOPOLOGY)
    assert check_targets(targets) == []
    return targets


def test_check_finds_kubepods_min_below_guaranteed_pods() -> None:
    broken = replace_cgroup(sound(), "kubepods", memory_min=str(G_SUM - 1))
    assert any("kubepods: memory.min" in v for v in check_targets(broken))


def test_check_finds_kubepods_low_below_burstable_low() -> None:
    broken = replace_cgroup(sound(), "kubepods", memory_low=str(B_SUM - 4096))
    assert any("kubepods: memory.low" in v for v in check_targets(broken))


def test_check_finds_burstable_low_below_its_pods() -> None:
    broken = replace_cgroup(sound(), "kubepods/burstable", memory_low="0")
    found = check_targets(broken)
    assert any("kubepods/burstable: memory.low" in v for v in found)


def test_check_finds_disordered_pod_files() -> None:
    targets = sound()
    pod = targets.pod("b1")
    bad_files = {**pod.files, "memory.high": "4096"}
    bad_pod = msgspec.structs.replace(pod, files=bad_files)
    broken = replace_cgroup(targets, pod.cgroup, memory_high="4096")
    broken = msgspec.structs.replace(
        broken, pods=tuple(bad_pod if p.uid == "b1" else p for p in broken.pods)
    )
    found = check_targets(broken)
    assert any("memory.low" in v and "above memory.high" in v for v in found)


def test_check_finds_pod_protection_below_running_containers() -> None:
    """A pod's min must cover every group of containers that run together."""
    containers = (
        ContainerTargets(name="i", kind="init", files={"memory.min": str(300 * Mi)}),
        ContainerTargets(name="s", kind="sidecar", files={"memory.min": str(100 * Mi)}),
        ContainerTargets(name="j", kind="init", files={"memory.min": str(250 * Mi)}),
        ContainerTargets(name="a", kind="app", files={"memory.min": str(200 * Mi)}),
    )
    targets = sound()
    pod = targets.pod("g1")
    for pod_min, violated in ((350 * Mi, False), (350 * Mi - 1, True), (300 * Mi, True)):
        files = {**pod.files, "memory.min": str(pod_min)}
        changed = msgspec.structs.replace(pod, files=files, containers=containers)
        broken = replace_cgroup(targets, pod.cgroup, memory_min=str(pod_min))
        broken = msgspec.structs.replace(
            broken, pods=tuple(changed if p.uid == "g1" else p for p in broken.pods)
        )
        found = [v for v in check_targets(broken) if "running together" in v]
        assert bool(found) == violated, (pod_min, found)


def test_check_finds_container_high_above_max() -> None:
    targets = sound()
    bad = ContainerTargets(
        name="app", files={"memory.high": str(3 * Gi), "memory.max": str(2 * Gi)}
    )
    broken = msgspec.structs.replace(
        targets,
        pods=tuple(
            msgspec.structs.replace(p, containers=(bad,)) if p.uid == "b1" else p
            for p in targets.pods
        ),
    )
    assert any("container app: memory.high" in v for v in check_targets(broken))


def test_check_finds_shape_problems() -> None:
    targets = sound()
    # child before parent
    swapped = msgspec.structs.replace(targets, cgroups=tuple(reversed(targets.cgroups)))
    assert any("not preceded by its parent" in v for v in check_targets(swapped))
    # duplicate path
    dup = msgspec.structs.replace(targets, cgroups=(*targets.cgroups, targets.cgroups[-1]))
    assert any("listed 2 times" in v for v in check_targets(dup))
    # a pod without its cgroup
    missing = msgspec.structs.replace(
        targets, cgroups=tuple(c for c in targets.cgroups if c.pod_uid != "e1")
    )
    assert any("pod e1" in v for v in check_targets(missing))
    # a pod cgroup nobody asked for
    orphan = msgspec.structs.replace(targets, pods=tuple(p for p in targets.pods if p.uid != "e1"))
    assert any("unknown pod 'e1'" in v for v in check_targets(orphan))
    # garbage in a memory file
    garbage = replace_cgroup(targets, targets.pod("g1").cgroup, memory_max="1G")
    assert any("not a byte count" in v for v in check_targets(garbage))


def test_uncovered_parents_is_the_one_statement_of_the_protection_check() -> None:
    from memstate.core.cgroup_values import uncovered_parents

    values: dict[str, float | None] = {"a": 10, "a/x": 6, "a/y": 5, "b": None, "b/z": 1, "c": 3}
    tree = {"a": ["a/x", "a/y"], "b": ["b/z"], "c": ["c/w"]}
    found = list(uncovered_parents(["a", "b", "c"], tree.__getitem__, values.get))
    # a: 10 < 6 + 5; b: not checked (no value); c: a child without a value counts as 0.
    assert found == [("a", 10, 11)]
    assert list(uncovered_parents(["a"], tree.__getitem__, lambda p: float("inf"))) == []
