"""Properties of the Memory QoS target tree over random pod sets, policies and drivers.

Goal: whatever pods run (random requests and limits, every QoS class, regular init containers,
sidecars, overhead, hugepages, NUMA pins) and whatever the configuration (reservation policy,
gate, cgroup driver and root, Memory Manager policy, node-allocatable enforcement, page size),
`node_targets` yields a tree that satisfies `check_targets`, is ordered parents first, has unique
paths and exactly one cgroup per pod, maps back through `parse_cgroup_path`, and does not depend on
the order of the input pods. A second property bounds `memory_high` against exact arithmetic.

Method: pods are generated as manifest dicts and decoded with `pod_from_manifest`, so API
defaulting and validation apply as in production.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core import qos
from memstate.core.cgroup_paths import ParsedCgroup, parent_path, parse_cgroup_path, path_depth
from memstate.core.config import NodeConfig
from memstate.core.machine import Block
from memstate.core.numa_policy import ContainerAllocation, PodAllocation
from memstate.core.pod import Pod, pod_from_manifest, pod_request, qos_class
from memstate.core.qos import check_targets, memory_high, node_targets, pod_targets
from memstate.core.quantity import INT64_MAX
from memstate.core.topology import HugepagePool, NumaNode, Topology
from memstate.core.topology_hints import TopologyHint

Mi = 1024**2
Gi = 1024**3

# Mostly realistic sizes, sometimes unaligned, rarely absurd (to reach the int64 edges).
sizes = st.one_of(
    st.integers(0, 64 * Gi),
    st.integers(1, 4096).map(lambda n: n * Mi),
    st.integers(0, INT64_MAX),
)


@st.composite
def request_limit(draw: st.DrawFn, *, style: str, unit: str = "") -> tuple[Any, Any]:
    """A (request, limit) pair in manifest form for one resource; None = absent."""
    value_strategy = sizes if unit == "" else st.integers(1, 8000)

    def render(n: int) -> Any:
        return n if unit == "" else f"{n}m"

    if style == "G":
        value = draw(value_strategy.filter(lambda n: n > 0))
        return (render(value), render(value))
    if style == "BE":
        return (None, None)
    mode = draw(st.sampled_from(["none", "request", "limit", "both"]))
    if mode == "none":
        return (None, None)
    a = draw(value_strategy)
    if mode == "request":
        return (render(a), None)
    if mode == "limit":
        return (None, render(max(a, 1)))
    b = draw(value_strategy)
    low, high = sorted((a, b))
    return (render(low), render(max(high, 1)))


@st.composite
def container_manifest(
    draw: st.DrawFn, name: str, *, style: str, sidecar: bool, hugepages: bool
) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    memory = draw(request_limit(style=style))
    cpu = draw(request_limit(style=style, unit="m"))
    for resource, (request, limit) in (("memory", memory), ("cpu", cpu)):
        if request is not None:
            requests[resource] = request
        if limit is not None:
            limits[resource] = limit
    if hugepages and draw(st.booleans()):
        size = f"{2 * draw(st.integers(1, 16))}Mi"
        requests["hugepages-2Mi"] = size
        limits["hugepages-2Mi"] = size
    result: dict[str, Any] = {"name": name, "resources": {"requests": requests, "limits": limits}}
    if sidecar:
        result["restartPolicy"] = "Always"
    return result


@st.composite
def pod_manifest(draw: st.DrawFn, uid: str, *, hugepages: bool) -> Pod:
    style = draw(st.sampled_from(["G", "BE", "mixed", "mixed"]))
    init_kinds = draw(st.lists(st.booleans(), max_size=3))  # True = sidecar
    app_count = draw(st.integers(1, 3))
    init = [
        draw(container_manifest(f"i{i}", style=style, sidecar=side, hugepages=hugepages))
        for i, side in enumerate(init_kinds)
    ]
    apps = [
        draw(container_manifest(f"a{i}", style=style, sidecar=False, hugepages=hugepages))
        for i in range(app_count)
    ]
    spec: dict[str, Any] = {"containers": apps, "initContainers": init}
    if draw(st.booleans()):
        spec["overhead"] = {"memory": draw(st.integers(0, 256 * Mi))}
    return pod_from_manifest({"metadata": {"name": "p", "uid": uid}, "spec": spec})


uids = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?", fullmatch=True)


@st.composite
def scenario(
    draw: st.DrawFn,
) -> tuple[list[tuple[Pod, PodAllocation | None]], NodeConfig, Topology]:
    node_count = draw(st.integers(1, 3))
    with_hugepages = draw(st.booleans())
    pools = (HugepagePool(2 * Mi, 64),) if with_hugepages else ()
    topology = Topology(
        nodes=tuple(
            NumaNode(id=i, memory_bytes=16 * Gi, hugepages=pools) for i in range(node_count)
        ),
        page_size_bytes=draw(st.sampled_from([4096, 16384, 65536])),
        kernel_release=draw(st.sampled_from(["", "5.4.0-100-generic", "6.8.0"])),
    )
    gate = draw(st.booleans())
    config = NodeConfig(
        memory_manager_policy=draw(st.sampled_from(["None", "Static"])),
        memory_reservation_policy=draw(st.sampled_from(["None", "TieredReservation"])),
        memory_qos=gate,
        memory_throttling_factor=draw(
            st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)
        ),
        cgroup_driver=draw(st.sampled_from(["cgroupfs", "systemd"])),
        cgroup_root=draw(st.sampled_from([(), ("foo",), ("a", "b.c")])),
        enforce_node_allocatable=draw(st.sampled_from([("pods",), ()])),
        kube_reserved={"memory": draw(st.integers(0, 8 * Gi))},
    )
    pod_uids = draw(st.lists(uids, max_size=7, unique=True))
    pods: list[tuple[Pod, PodAllocation | None]] = []
    for uid in pod_uids:
        pod = draw(pod_manifest(uid, hugepages=with_hugepages))
        alloc = None
        if config.memory_manager_policy == "Static" and qos_class(pod) == "Guaranteed":
            nodes = draw(st.lists(st.integers(0, node_count - 1), unique=True, max_size=node_count))
            if nodes:
                mask = tuple(sorted(nodes))
                block = Block(numa_affinity=mask, type="memory", size=1)
                hint = TopologyHint(numa_affinity=mask, preferred=True)
                alloc = PodAllocation(
                    containers=(ContainerAllocation(name="a0", hint=hint, blocks=(block,)),),
                    takes=(),
                )
        pods.append((pod, alloc))
    return pods, config, topology


@settings(max_examples=200, deadline=None)
@given(data=scenario(), shuffle=st.randoms(use_true_random=False))
def test_target_tree_is_sound(
    data: tuple[list[tuple[Pod, PodAllocation | None]], NodeConfig, Topology],
    shuffle: Any,
) -> None:
    pods, config, topology = data
    targets = node_targets(pods, config, topology)

    assert check_targets(targets) == []

    paths = [c.path for c in targets.cgroups]
    assert len(paths) == len(set(paths)), "paths are unique"
    keys = [(path_depth(p), p) for p in paths]
    assert keys == sorted(keys), "parents first: by depth, then path"
    seen: set[str] = set()
    for path in paths:
        parent = parent_path(path)
        assert parent is None or parent in seen, f"{path} listed before its parent"
        seen.add(path)

    pod_cgroups = [c for c in targets.cgroups if c.level == "pod"]
    assert sorted(c.pod_uid for c in pod_cgroups) == sorted(p.uid for p, _ in pods)
    assert [p.uid for p in targets.pods] == sorted(p.uid for p, _ in pods)
    for pod, _ in pods:
        pt = targets.pod(pod.uid)
        assert pt.qos_class == qos_class(pod)
        assert parse_cgroup_path(pt.cgroup, config) == ParsedCgroup(
            level="pod", pod_uid=pod.uid, qos_class=pt.qos_class
        )
    for target in targets.cgroups:
        parsed = parse_cgroup_path(target.path, config)
        assert parsed is not None and parsed.level == target.level

    tiered = config.memory_qos and config.memory_reservation_policy == "TieredReservation"
    g_sum = sum(pod_request(p) for p, _ in pods if qos_class(p) == "Guaranteed")
    b_sum = sum(pod_request(p) for p, _ in pods if qos_class(p) == "Burstable")
    assert targets.node_memory_min_bytes == (g_sum if tiered else 0)
    assert targets.node_memory_low_bytes == (b_sum if tiered else 0)

    reordered = list(pods)
    shuffle.shuffle(reordered)
    assert node_targets(reordered, config, topology) == targets


@settings(max_examples=100, deadline=None)
@given(data=scenario())
def test_targets_remembered_by_pod_shape_are_the_pods_own(
    data: tuple[list[tuple[Pod, PodAllocation | None]], NodeConfig, Topology],
) -> None:
    """`pod_targets` remembers files by pod shape: a pod of a shape seen before, with any
    allocation, gets exactly (same bytes, same file order) what a fresh computation gives it."""
    pods, config, topology = data

    def fresh(pod: Pod, alloc: PodAllocation | None) -> bytes:
        qos._CONTEXT_MEMO[0] = None  # a new context: an empty shape memo
        return msgspec.msgpack.encode(pod_targets(pod, alloc, config, topology))

    remembered = qos._targets_context(config, topology)
    for index, (pod, _) in enumerate(pods):
        for other, (_, alloc) in enumerate(pods):
            twin = msgspec.structs.replace(pod, uid=f"twin-{index}-{other}")
            qos._CONTEXT_MEMO[0] = (config, topology, remembered)
            warm = msgspec.msgpack.encode(pod_targets(twin, alloc, config, topology))
            assert warm == fresh(twin, alloc)


@settings(max_examples=500, deadline=None)
@given(
    request_bytes=st.integers(0, 2**50),
    limit_bytes=st.one_of(st.just(0), st.integers(1, 2**50)),
    alloc_bytes=st.integers(0, 2**50),
    factor=st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False),
    page=st.sampled_from([4096, 16384, 65536, 2**20]),
)
def test_memory_high_is_within_a_page_of_exact_arithmetic(
    request_bytes: int, limit_bytes: int, alloc_bytes: int, factor: float, page: int
) -> None:
    """Doubles may differ from exact arithmetic by rounding, never by more than one page; the
    result is page aligned, above the request and at most the limit (or allocatable)."""
    if limit_bytes:
        request_bytes = min(request_bytes, limit_bytes)
    high = memory_high(request_bytes, limit_bytes, alloc_bytes, factor, page)
    ceiling = limit_bytes or alloc_bytes
    exact = request_bytes + Fraction(factor) * (ceiling - request_bytes)
    exact_high = math.floor(exact / page) * page
    if limit_bytes and request_bytes == limit_bytes:
        assert high is None
        return
    if high is None:
        # Not written: exact arithmetic agrees up to one page of rounding.
        assert exact_high <= request_bytes + page
        return
    assert high % page == 0
    assert request_bytes < high <= ceiling
    assert abs(high - exact_high) <= page
