"""Input validation at the boundary: quantities, pod manifests, node config and topology.

Goal: every accepted value is converted exactly (Kubernetes rounding, API defaulting), and every
rejected one names the field path and says why. Method: table-driven cases through the public
parsers.
"""

from __future__ import annotations

from typing import Any

import pytest

from memstate.core.config import config_from_object, validate_config_for_topology
from memstate.core.errors import ConfigError, ManifestError, QuantityError, TopologyError
from memstate.core.pod import (
    BEST_EFFORT,
    BURSTABLE,
    GUARANTEED,
    pod_from_manifest,
    pod_limit,
    pod_numa_requests,
    pod_request,
    qos_class,
    spec_hash,
)
from memstate.core.quantity import format_bytes, parse_bytes, parse_millis
from memstate.core.topology import topology_from_object, topology_from_sysfs
from tests.factories import Gi, Mi, container, manifest, static_config, topology

# --- quantities -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512Mi", 512 * Mi),
        ("1Gi", Gi),
        ("1.5G", 1_500_000_000),
        ("100M", 100_000_000),
        ("1e9", 1_000_000_000),
        ("1E9", 1_000_000_000),
        ("0.5Gi", 512 * Mi),
        ("123", 123),
        (1024, 1024),
        (1.5, 2),  # rounds up, like Quantity.Value()
        ("500m", 1),
        ("1k", 1000),
        ("1Ki", 1024),
        ("1.", 1),
        (".5Ki", 512),
        ("+4Ki", 4096),
        ("1e-3", 1),
        ("7Ei", 7 * 2**60),
        ("0", 0),
    ],
)
def test_byte_quantities(text: str | int | float, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("500m", 500), ("1", 1000), ("0.5", 500), ("2.0005", 2001), ("100u", 1), (2, 2000)],
)
def test_cpu_quantities(text: str | int, expected: int) -> None:
    assert parse_millis(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not a Kubernetes quantity"),
        ("garbage", "not a Kubernetes quantity"),
        ("1 Gi", "not a Kubernetes quantity"),
        ("1GiB", "not a Kubernetes quantity"),
        ("Mi", "not a Kubernetes quantity"),
        ("-1", "negative"),
        ("-1Gi", "negative"),
        ("8Ei", "absurdly large"),
        ("1e99", "out of range"),
        ("9" * 70, "longer than"),
        (True, "boolean"),
        (float("inf"), "finite"),
    ],
)
def test_bad_quantities(text: Any, fragment: str) -> None:
    with pytest.raises(QuantityError, match=fragment) as info:
        parse_bytes(text, path="$.x")
    assert info.value.path == "$.x"


def test_format_bytes_prefers_exact_binary_suffixes() -> None:
    assert format_bytes(5220 * Mi) == "5220Mi"
    assert format_bytes(3 * Gi) == "3Gi"
    assert format_bytes(1_000_000_000) == "1000000000"
    assert format_bytes(0) == "0"


# --- pod manifests --------------------------------------------------------------------------------


def test_manifest_keeps_only_what_matters_and_ignores_other_fields() -> None:
    obj = manifest("u-1", [container("app", "1Gi")])
    obj["spec"]["nodeName"] = "n1"
    obj["spec"]["containers"][0]["image"] = "nginx"
    obj["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    obj["metadata"]["labels"] = {"a": "b"}
    pod = pod_from_manifest(obj, source="p.yaml")
    assert pod.uid == "u-1"
    assert pod.containers[0].requests == {"cpu": 1000, "memory": Gi}
    assert pod.containers[0].limits == {"cpu": 1000, "memory": Gi}


def test_limit_only_defaults_the_request() -> None:
    obj = manifest(
        "u-1",
        [{"name": "app", "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}],
    )
    pod = pod_from_manifest(obj)
    assert pod.containers[0].requests == {"cpu": 1000, "memory": Gi}
    assert qos_class(pod) == GUARANTEED


def test_containers_are_in_execution_order_with_sidecars_marked() -> None:
    obj = manifest(
        "u-1",
        [container("app", "1Gi")],
        init=[container("setup", "1Gi"), container("proxy", "1Gi", restart_policy="Always")],
    )
    pod = pod_from_manifest(obj)
    assert [(c.name, c.kind) for c in pod.containers] == [
        ("setup", "init"),
        ("proxy", "sidecar"),
        ("app", "app"),
    ]


def test_hugepage_names_are_canonical() -> None:
    obj = manifest("u-1", [container("app", "1Gi", hugepages={"hugepages-2048Ki": "4Mi"})])
    pod = pod_from_manifest(obj)
    assert pod.containers[0].requests["hugepages-2Mi"] == 4 * Mi


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda m: m["metadata"].pop("uid"), "$.metadata", "uid"),
        (lambda m: m["metadata"].update(uid="../x"), "$.metadata.uid", "cgroup path"),
        (lambda m: m["metadata"].update(uid="a_b"), "$.metadata.uid", "cgroup path"),
        (lambda m: m["metadata"].update(uid=""), "$.metadata.uid", "cgroup path"),
        (lambda m: m["metadata"].update(name="Web"), "$.metadata.name", "DNS-1123"),
        (lambda m: m["metadata"].update(namespace="a.b"), "$.metadata.namespace", "DNS-1123"),
        (
            lambda m: m["spec"]["containers"][0]["resources"]["requests"].update(memory="-1Gi"),
            "$.spec.containers[0].resources.requests.memory",
            "negative",
        ),
        (
            lambda m: m["spec"]["containers"][0]["resources"]["limits"].update(memory="9Ei"),
            "$.spec.containers[0].resources.limits.memory",
            "absurdly large",
        ),
        (
            lambda m: m["spec"]["containers"][0]["resources"]["limits"].update(memory="512Mi"),
            "$.spec.containers[0].resources.requests.memory",
            "less than or equal to limit",
        ),
        (
            lambda m: m["spec"]["containers"][0].update(name=7),
            "$.spec.containers[0].name",
            "Expected `str`",
        ),
        (
            lambda m: m["spec"]["containers"][0].update(restartPolicy="Always"),
            "$.spec.containers[0].restartPolicy",
            "only be set on init",
        ),
        (lambda m: m["spec"].update(containers=[]), "$.spec.containers", "at least one"),
        (
            lambda m: m["spec"].update(resources={"limits": {"ephemeral-storage": "1Gi"}}),
            "$.spec.resources.limits.ephemeral-storage",
            "not supported at pod level",
        ),
        (lambda m: m.update(kind="Deployment"), "$.kind", "is not a Pod"),
        (
            lambda m: m["spec"]["containers"].append(container("app", "1Gi")),
            "$.spec",
            "used twice",
        ),
        (
            lambda m: m["spec"]["containers"][0]["resources"]["requests"].update(
                {"hugepages-2Mi": "2Mi"}
            ),
            "$.spec.containers[0].resources.requests.hugepages-2Mi",
            "must be set in limits",
        ),
    ],
)
def test_manifest_errors_name_file_and_field(mutate: Any, path: str, fragment: str) -> None:
    obj = manifest("u-1", [container("app", "1Gi")])
    mutate(obj)
    with pytest.raises(ManifestError) as info:
        pod_from_manifest(obj, source="pods/web.yaml")
    assert info.value.source == "pods/web.yaml"
    assert info.value.path == path
    assert fragment in info.value.message
    assert str(info.value).startswith("pods/web.yaml: ")


def test_non_mapping_manifest_is_an_error() -> None:
    with pytest.raises(ManifestError, match="mapping"):
        pod_from_manifest(["not", "a", "pod"], source="x.yaml")


def test_spec_hash_is_stable_and_spec_sensitive() -> None:
    a = pod_from_manifest(manifest("u-1", [container("app", "1Gi")]))
    b = pod_from_manifest(manifest("u-1", [container("app", "1Gi")]))
    c = pod_from_manifest(manifest("u-1", [container("app", "2Gi")]))
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)


# --- QoS classes and sums -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "init", "expected"),
    [
        ([container("a", "1Gi")], [], GUARANTEED),
        ([container("a", None, None)], [], BEST_EFFORT),
        ([container("a", "1Gi", limit_memory="2Gi")], [], BURSTABLE),
        ([container("a", "1Gi", guaranteed=False)], [], BURSTABLE),
        # memory only, no cpu: not Guaranteed
        ([container("a", "1Gi", cpu=None)], [], BURSTABLE),
        # a BE init container next to a G app container makes the pod Burstable
        ([container("a", "1Gi")], [container("i", None, None)], BURSTABLE),
        ([container("a", "1Gi"), container("b", None, None)], [], BURSTABLE),
        ([container("a", None, None)], [container("i", None, None)], BEST_EFFORT),
        # hugepages do not count for the class
        ([container("a", None, None, hugepages={"hugepages-2Mi": "2Mi"})], [], BEST_EFFORT),
        # a zero quantity counts as unset
        ([container("a", "0", "0")], [], BEST_EFFORT),
    ],
)
def test_qos_class(containers: list[Any], init: list[Any], expected: str) -> None:
    assert qos_class(pod_from_manifest(manifest("u", containers, init=init))) == expected


def test_pod_request_with_init_sidecars_and_overhead() -> None:
    obj = manifest(
        "u",
        [container("app1", "1Gi"), container("app2", "2Gi")],
        init=[
            container("init1", "2Gi"),
            container("proxy", "512Mi", restart_policy="Always"),
            container("init2", "3Gi"),
        ],
        overhead={"memory": "100Mi"},
    )
    pod = pod_from_manifest(obj)
    # app = 1 + 2 + 0.5 (sidecar) = 3.5Gi; init2 = 3Gi + 0.5Gi sidecar before it = 3.5Gi;
    # init1 = 2Gi. max = 3.5Gi, plus overhead.
    assert pod_request(pod) == 3 * Gi + 512 * Mi + 100 * Mi
    assert pod_limit(pod) == 3 * Gi + 512 * Mi + 100 * Mi
    # The Memory Manager's pod-scope request ignores overhead.
    assert pod_numa_requests(pod) == {"memory": 3 * Gi + 512 * Mi}


def test_pod_limit_needs_every_container_to_declare_one() -> None:
    obj = manifest("u", [container("a", "1Gi", limit_memory="2Gi"), container("b", None, None)])
    assert pod_limit(pod_from_manifest(obj)) is None


# --- topology -------------------------------------------------------------------------------------


def test_topology_file_round_trip() -> None:
    topo = topology("16Gi", "16Gi", hugepages={"2Mi": 512, "1Gi": 2})
    assert topo.node_ids == (0, 1)
    assert topo.resources == ("memory", "hugepages-2Mi", "hugepages-1Gi")
    assert topo.nodes[0].hugepage_bytes(2 * Mi) == Gi
    assert topo.capacity_bytes == 32 * Gi


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"nodes": []}, "at least one"),
        ({"nodes": [{"id": 0, "memory": "1Gi"}, {"id": 0, "memory": "1Gi"}]}, "unique"),
        ({"nodes": [{"id": 64, "memory": "1Gi"}]}, "outside"),
        ({"nodes": [{"id": 0, "memory": "1Gi", "hugepages": {"1Gi": 2}}]}, "exceed"),
        ({"nodes": [{"id": 0, "memory": "1Gi", "hugepages": {"3Mi": 1}}]}, "power of two"),
        ({"nodes": [{"id": 0, "memory": "lots"}]}, "not a Kubernetes quantity"),
        ({"nodes": [{"id": 0, "memory": "1Gi", "colour": "red"}]}, "unknown field"),
        ({"nodes": [{"id": 0, "memory": "1Gi"}], "pageSize": 1000}, "page size"),
    ],
)
def test_topology_errors(obj: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TopologyError, match=fragment) as info:
        topology_from_object(obj, source="topo.yaml")
    assert info.value.source == "topo.yaml"


def test_topology_from_sysfs_text() -> None:
    files = {
        "node0/meminfo": "Node 0 MemTotal:        3630880 kB\nNode 0 MemFree: 1 kB\n",
        "node0/distance": "10 20\n",
        "node0/hugepages/hugepages-2048kB/nr_hugepages": "4\n",
        "node0/hugepages/hugepages-1048576kB/nr_hugepages": "0\n",
        "node1/meminfo": "Node 1 MemTotal:        4096 kB\n",
        "node1/distance": "20 10\n",
        "online": "0-1\n",
    }
    topo = topology_from_sysfs(files, page_size_bytes=4096, kernel_release="6.18.0")
    assert topo.node_ids == (0, 1)
    assert topo.nodes[0].memory_bytes == 3630880 * 1024
    assert topo.nodes[0].distances == (10, 20)
    assert topo.hugepage_sizes == (2 * Mi, Gi)
    assert topo.nodes[0].hugepage_bytes(2 * Mi) == 8 * Mi
    assert topo.nodes[1].hugepages == ()


def test_sysfs_without_memtotal_is_an_error() -> None:
    with pytest.raises(TopologyError, match="MemTotal"):
        topology_from_sysfs({"node0/meminfo": "nothing\n"}, page_size_bytes=4096)


# --- config ---------------------------------------------------------------------------------------


def test_config_defaults_are_the_kubelets() -> None:
    config = config_from_object({})
    assert config.memory_manager_policy == "None"
    assert config.topology_manager_policy == "none"
    assert config.memory_throttling_factor == 0.9
    assert config.eviction_memory_bytes(10 * Gi) == 100 * Mi
    assert config.cgroup_root == ()
    assert config.enforce_node_allocatable == ("pods",)


def test_documented_reservation_example_validates() -> None:
    # kube-reserved 4Gi + system-reserved 1Gi + eviction 100Mi = 5220Mi = 3Gi + 2148Mi
    config = config_from_object(
        {
            "memoryManagerPolicy": "Static",
            "kubeReserved": {"memory": "4Gi", "cpu": "1"},
            "systemReserved": {"memory": "1Gi"},
            "reservedMemory": [
                {"numaNode": 0, "limits": {"memory": "3Gi"}},
                {"numaNode": 1, "limits": {"memory": "2148Mi"}},
            ],
        }
    )
    validate_config_for_topology(config, topology("64Gi", "64Gi"))
    assert config.reserved(1, "memory") == 2148 * Mi


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        ({"memoryManagerPolcy": "Static"}, "", "unknown field"),
        ({"memoryManagerPolicy": "static"}, "$.memoryManagerPolicy", 'unknown policy: "static"'),
        ({"memoryThrottlingFactor": 0}, "$.memoryThrottlingFactor", "greater than 0"),
        ({"memoryThrottlingFactor": 1.5}, "$.memoryThrottlingFactor", "less than or equal"),
        (
            {"memoryReservationPolicy": "TieredReservation", "featureGates": {"MemoryQoS": False}},
            "$.memoryReservationPolicy",
            "feature gate",
        ),
        (
            {
                "reservedMemory": [
                    {"numaNode": 0, "limits": {"memory": "1Gi"}},
                    {"numaNode": 0, "limits": {"memory": "1Gi"}},
                ]
            },
            "$.reservedMemory[1].limits.memory",
            "duplicate",
        ),
        (
            {"reservedMemory": [{"numaNode": 0, "limits": {"cpu": "1"}}]},
            "$.reservedMemory[0].limits.cpu",
            "accept memory and hugepages",
        ),
        ({"cgroupRoot": "relative"}, "$.cgroupRoot", "absolute"),
        ({"cgroupRoot": "/a/../b"}, "$.cgroupRoot", "component"),
        ({"cgroupRoot": "/a_b"}, "$.cgroupRoot", "component"),
        ({"cgroupsPerQOS": False}, "$.cgroupsPerQOS", "not supported"),
        ({"evictionHard": {"memory.available": "lots"}}, "$.evictionHard", "quantity"),
    ],
)
def test_config_errors(obj: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_object(obj, source="kubelet.yaml")
    assert info.value.source == "kubelet.yaml"
    assert info.value.path.startswith(path)
    assert fragment in str(info.value)


def test_systemd_cgroup_root_forms() -> None:
    assert config_from_object({"cgroupRoot": "/foo/bar"}).cgroup_root == ("foo", "bar")
    systemd = config_from_object({"cgroupDriver": "systemd", "cgroupRoot": "/foo.slice"})
    assert systemd.cgroup_root == ("foo",)
    nested = config_from_object(
        {"cgroupDriver": "systemd", "cgroupRoot": "/foo.slice/foo-bar.slice"}
    )
    assert nested.cgroup_root == ("foo", "bar")
    with pytest.raises(ConfigError, match="slice path"):
        config_from_object({"cgroupDriver": "systemd", "cgroupRoot": "/foo.slice/bar.slice"})


@pytest.mark.parametrize(
    ("reserved", "topo_nodes", "fragment"),
    [
        # reservation on a node the machine lacks
        (["1Gi", "1Gi", "1Gi"], ("4Gi", "4Gi"), "references a NUMA node 2"),
        # reservation larger than the node
        (["5Gi", "1Gi"], ("4Gi", "4Gi"), "exceed the node's memory"),
        # no memory reserved at all
        (["0", "0"], ("4Gi", "4Gi"), "specify the system reserved memory"),
    ],
)
def test_config_against_topology(
    reserved: list[str], topo_nodes: tuple[str, ...], fragment: str
) -> None:
    config = static_config(reserved)
    with pytest.raises(ConfigError, match=fragment):
        validate_config_for_topology(config, topology(*topo_nodes))


def test_node_allocatable_sum_rule_message_uses_kubernetes_notation() -> None:
    config = config_from_object(
        {
            "memoryManagerPolicy": "Static",
            "kubeReserved": {"memory": "4Gi"},
            "systemReserved": {"memory": "1Gi"},
            "reservedMemory": [
                {"numaNode": 0, "limits": {"memory": "3Gi"}},
                {"numaNode": 1, "limits": {"memory": "2Gi"}},
            ],
        }
    )
    with pytest.raises(ConfigError) as info:
        validate_config_for_topology(config, topology("64Gi", "64Gi"))
    assert 'the total amount "5Gi" of type "memory" is not equal to the value "5220Mi"' in str(
        info.value
    )


def test_hugepage_reservation_must_match_node_allocatable() -> None:
    config = static_config(["1Gi", "1Gi"], hugepage_reservations={0: {"hugepages-2Mi": "4Mi"}})
    validate_config_for_topology(config, topology("8Gi", "8Gi", hugepages={"2Mi": 4}))
    too_big = static_config(["1Gi", "1Gi"], hugepage_reservations={0: {"hugepages-2Mi": "16Mi"}})
    with pytest.raises(ConfigError, match="exceeds the node's pool"):
        validate_config_for_topology(too_big, topology("8Gi", "8Gi", hugepages={"2Mi": 4}))


def test_eviction_percentage() -> None:
    config = config_from_object({"evictionHard": {"memory.available": "10%"}})
    assert config.eviction_memory_bytes(10 * Gi) == Gi


def test_static_policy_refuses_more_than_eight_nodes() -> None:
    nodes = ["4Gi"] * 9
    config = static_config(["1Gi"] * 9)
    with pytest.raises(ConfigError, match="at most 8 NUMA nodes"):
        validate_config_for_topology(config, topology(*nodes))


def test_fidelity_static_checks_node_allocatable_sum_before_reserved_memory_positive() -> None:
    """Upstream sums first: no reservedMemory under the default eviction threshold gets the sum
    error, not "you should specify the system reserved memory"."""
    config = config_from_object({"memoryManagerPolicy": "Static"})
    with pytest.raises(ConfigError) as info:
        validate_config_for_topology(config, topology("4Gi", "4Gi"))
    message = str(info.value)
    assert 'the total amount "0" of type "memory" is not equal to the value "100Mi"' in message
    assert "specify the system reserved memory" not in message
    # With nothing to sum (no eviction threshold, no reservations) the "> 0" check still speaks.
    config = config_from_object({"memoryManagerPolicy": "Static", "evictionHard": {}})
    with pytest.raises(ConfigError, match="specify the system reserved memory"):
        validate_config_for_topology(config, topology("4Gi", "4Gi"))
