"""Pod-level resources (`spec.resources`, KEP-2837; kubelet-node.md §9, memory-qos.md §2).

Method: pods are built from manifest dicts with `pod_from_manifest` (defaulting and validation
apply); QoS class, request/limit, the Memory Manager's decision and the targets are compared with
values derived by hand in the comments. Pods without pod-level resources must encode exactly as
before (the state hash of existing logs depends on it).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from memstate.core.config import NodeConfig
from memstate.core.errors import ManifestError
from memstate.core.numa_policy import pins
from memstate.core.pod import (
    Pod,
    PodResources,
    pod_from_manifest,
    pod_limit,
    pod_limits_total,
    pod_request,
    qos_class,
    spec_hash,
)
from memstate.core.qos import check_targets, node_targets, pod_targets
from memstate.core.topology import NumaNode, Topology

Mi = 1024**2
Gi = 1024**3
STATIC_TIERED = NodeConfig(
    memory_manager_policy="Static", memory_reservation_policy="TieredReservation"
)
TOPOLOGY = Topology(
    nodes=(NumaNode(id=0, memory_bytes=16 * Gi), NumaNode(id=1, memory_bytes=16 * Gi)),
    page_size_bytes=4096,
    kernel_release="6.8.0-45-generic",
)


def resources(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> Any:
    out: dict[str, Any] = {}
    if requests is not None:
        out["requests"] = requests
    if limits is not None:
        out["limits"] = limits
    return out


def make_pod(
    pod_resources: Any | None,
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    uid: str = "p1",
) -> Pod:
    spec: dict[str, Any] = {"containers": containers}
    if pod_resources is not None:
        spec["resources"] = pod_resources
    if init:
        spec["initContainers"] = init
    return pod_from_manifest({"metadata": {"name": uid, "uid": uid}, "spec": spec})


def ctr(
    name: str, requests: dict[str, str] | None = None, limits: dict[str, str] | None = None
) -> dict[str, Any]:
    """A container manifest with the given requests and limits."""
    return {"name": name, "resources": resources(requests, limits)}


@pytest.mark.parametrize(
    ("pod_resources", "containers", "expected"),
    [
        # Limits for cpu and memory, requests defaulted to them: Guaranteed, whatever the
        # containers say (alone they would be BestEffort).
        (resources(limits={"cpu": "1", "memory": "1Gi"}), [ctr("a")], "Guaranteed"),
        # Memory only: a Guaranteed pod needs both limits.
        (resources(limits={"memory": "1Gi"}), [ctr("a")], "Burstable"),
        # Requests below limits.
        (
            resources({"cpu": "1", "memory": "512Mi"}, {"cpu": "1", "memory": "1Gi"}),
            [ctr("a")],
            "Burstable",
        ),
        # Containers alone would be Guaranteed; the pod level says Burstable.
        (
            resources({"memory": "2Gi"}),
            [ctr("a", limits={"cpu": "1", "memory": "1Gi"})],
            "Burstable",
        ),
        # Only zero quantities: unset, the containers decide (Guaranteed).
        (
            resources(limits={"memory": "0"}),
            [ctr("a", limits={"cpu": "1", "memory": "1Gi"})],
            "Guaranteed",
        ),
    ],
)
def test_qos_class_comes_from_pod_level_values(
    pod_resources: Any, containers: list[dict[str, Any]], expected: str
) -> None:
    assert qos_class(make_pod(pod_resources, containers)) == expected


def test_request_and_limit_are_replaced_per_resource() -> None:
    pod = make_pod(
        resources({"memory": "3Gi"}, {"memory": "4Gi", "hugepages-2Mi": "4Mi"}),
        [ctr("app", {"memory": "1Gi"}), ctr("huge", limits={"hugepages-2Mi": "2Mi"})],
        init=[ctr("setup", {"memory": "2Gi"})],
    )
    assert pod.pod_level == PodResources(
        requests={"memory": 3 * Gi, "hugepages-2Mi": 4 * Mi},
        limits={"memory": 4 * Gi, "hugepages-2Mi": 4 * Mi},
    )
    assert pod_request(pod) == 3 * Gi  # the containers' aggregate is max(1Gi, 2Gi) = 2Gi
    assert pod_limit(pod) == 4 * Gi  # no container declares all limits, the pod level does
    assert pod_limits_total(pod, "hugepages-2Mi") == 4 * Mi  # containers: 2Mi
    assert pod_request(pod, "cpu") == 0  # not at pod level: the containers' (none)


def test_cpu_only_pod_level_leaves_memory_to_the_containers() -> None:
    pod = make_pod(resources(limits={"cpu": "1"}), [ctr("a", {"memory": "1Gi"}, {"memory": "2Gi"})])
    assert pod_request(pod) == 1 * Gi
    assert pod_limit(pod) == 2 * Gi


@pytest.mark.parametrize(
    ("pod_resources", "containers", "path", "fragment"),
    [
        (
            resources({"memory": "1Gi"}),
            [ctr("a", {"memory": "2Gi"})],
            "$.spec.resources.requests.memory",
            "below the aggregate container request 2147483648",
        ),
        (
            resources(limits={"memory": "1Gi"}),
            [ctr("a", limits={"memory": "2Gi"})],
            "$.spec.resources.limits.memory",
            "below container a's limit",
        ),
        (
            resources({"memory": "2Gi"}, {"memory": "1Gi"}),
            [ctr("a")],
            "$.spec.resources.requests.memory",
            "must be less than or equal to limit",
        ),
        (
            resources(limits={"nvidia.com/gpu": "1"}),
            [ctr("a")],
            "$.spec.resources.limits.nvidia.com/gpu",
            "not supported at pod level",
        ),
        (
            resources(limits={"memory": "-1Gi"}),
            [ctr("a")],
            "$.spec.resources.limits.memory",
            "negative",
        ),
    ],
)
def test_invalid_pod_level_resources_are_manifest_errors(
    pod_resources: Any, containers: list[dict[str, Any]], path: str, fragment: str
) -> None:
    with pytest.raises(ManifestError) as info:
        pod_from_manifest(
            {
                "metadata": {"name": "p", "uid": "p1"},
                "spec": {"containers": containers, "resources": pod_resources},
            },
            source="pods/p.yaml",
        )
    assert info.value.path == path
    assert fragment in info.value.message
    assert info.value.source == "pods/p.yaml"


def test_pods_without_pod_level_resources_encode_as_before() -> None:
    plain = make_pod(None, [ctr("a", limits={"cpu": "1", "memory": "1Gi"})])
    empty = make_pod(resources(), [ctr("a", limits={"cpu": "1", "memory": "1Gi"})])
    assert plain.pod_level is None and empty.pod_level is None
    for pod in (plain, empty):
        fields = msgspec.msgpack.decode(msgspec.msgpack.encode(pod))
        assert sorted(fields) == ["containers", "name", "namespace", "overhead", "uid"]
    assert spec_hash(plain) == spec_hash(empty)
    with_level = make_pod(
        resources(limits={"cpu": "1", "memory": "1Gi"}),
        [ctr("a", limits={"cpu": "1", "memory": "1Gi"})],
    )
    assert spec_hash(with_level) != spec_hash(plain)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(with_level), type=Pod)
    assert decoded == with_level


def test_the_memory_manager_skips_pod_level_pods() -> None:
    classic = make_pod(None, [ctr("a", limits={"cpu": "1", "memory": "1Gi"})])
    pod_level = make_pod(resources(limits={"cpu": "1", "memory": "1Gi"}), [ctr("a")])
    assert qos_class(pod_level) == "Guaranteed"
    assert pins(classic, STATIC_TIERED)
    assert not pins(pod_level, STATIC_TIERED)


def test_targets_follow_pod_level_values() -> None:
    # Guaranteed at pod level, 2Gi; app requests 512Mi with no limit, so memory.max and the L of
    # memory.high are the pod-level 2Gi: floor((512Mi + 0.9 × 1.5Gi) / 4096) × 4096 = 1986420736.
    pod = make_pod(
        resources(limits={"cpu": "2", "memory": "2Gi"}), [ctr("app", {"memory": "512Mi"})]
    )
    targets = pod_targets(pod, None, STATIC_TIERED, TOPOLOGY)
    assert targets.qos_class == "Guaranteed"
    assert targets.cgroup == "kubepods/podp1"
    assert targets.files["memory.min"] == str(2 * Gi)
    assert targets.files["memory.max"] == str(2 * Gi)
    assert targets.files["cpuset.mems"] == ""
    (app,) = targets.containers
    assert app.files == {
        "memory.min": str(512 * Mi),
        "memory.low": "0",
        "memory.high": "1986420736",
        "memory.max": str(2 * Gi),
    }
    burstable = make_pod(
        resources({"memory": "3Gi"}, {"memory": "4Gi"}),
        [ctr("app", {"memory": "1Gi"}, {"memory": "1Gi"})],
        uid="p2",
    )
    tree = node_targets([(pod, None), (burstable, None)], STATIC_TIERED, TOPOLOGY)
    assert check_targets(tree) == []
    assert tree.cgroup("kubepods").files["memory.min"] == str(5 * Gi)  # G 2Gi + B 3Gi
    assert tree.cgroup("kubepods/burstable").files["memory.low"] == str(3 * Gi)
    assert tree.cgroup("kubepods/burstable/podp2").files["memory.low"] == str(3 * Gi)
    assert tree.node_memory_min_bytes == 2 * Gi
    assert tree.node_memory_low_bytes == 3 * Gi
