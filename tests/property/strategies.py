"""Hypothesis strategies for machines, configs and pods (through the real parsers)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from memstate.core.config import NodeConfig, config_from_object
from memstate.core.pod import Pod, pod_from_manifest
from memstate.core.topology import Topology, topology_from_object

MEMORY_SIZES = ["64Mi", "256Mi", "512Mi", "768Mi", "1Gi", "1536Mi", "2Gi", "3Gi", "5Gi"]
HUGEPAGE_SIZES = ["0", "2Mi", "16Mi", "64Mi", "256Mi"]


@st.composite
def topologies(draw: st.DrawFn, *, max_nodes: int = 8) -> Topology:
    count = draw(st.integers(1, max_nodes))
    with_hugepages = draw(st.booleans())
    nodes = []
    for node_id in range(count):
        node: dict[str, Any] = {
            "id": node_id,
            "memory": draw(st.sampled_from(["2Gi", "4Gi", "6Gi"])),
        }
        if with_hugepages:
            node["hugepages"] = {"2Mi": draw(st.sampled_from([0, 64, 256]))}
        nodes.append(node)
    return topology_from_object({"nodes": nodes})


@st.composite
def static_configs(
    draw: st.DrawFn, topology: Topology, *, allow_policy_none: bool = False
) -> NodeConfig:
    reserved_mi = 256
    total = reserved_mi * len(topology.nodes)
    policy = "Static"
    if allow_policy_none and draw(st.integers(0, 3)) == 0:
        policy = "None"
    return config_from_object(
        {
            "memoryManagerPolicy": policy,
            "topologyManagerPolicy": draw(
                st.sampled_from(["none", "best-effort", "restricted", "single-numa-node"])
            ),
            "topologyManagerScope": draw(st.sampled_from(["container", "pod"])),
            "memoryReservationPolicy": draw(st.sampled_from(["None", "TieredReservation"])),
            "cgroupDriver": draw(st.sampled_from(["cgroupfs", "systemd"])),
            "systemReserved": {"memory": f"{total}Mi"},
            "evictionHard": {"memory.available": "0"},
            "reservedMemory": [
                {"numaNode": n.id, "limits": {"memory": f"{reserved_mi}Mi"}} for n in topology.nodes
            ],
        }
    )


@st.composite
def containers(
    draw: st.DrawFn, name: str, *, guaranteed: bool, hugepages: bool, init: bool = False
) -> dict[str, Any]:
    memory = draw(st.sampled_from(MEMORY_SIZES))
    resources: dict[str, Any]
    if guaranteed:
        limits: dict[str, Any] = {"memory": memory, "cpu": "1"}
        if hugepages:
            size = draw(st.sampled_from(HUGEPAGE_SIZES))
            if size != "0":
                limits["hugepages-2Mi"] = size
        resources = {"limits": limits}
    else:
        shape = draw(st.sampled_from(["burstable", "besteffort", "limit-only-memory"]))
        if shape == "burstable":
            resources = {"requests": {"memory": memory}, "limits": {"memory": "6Gi"}}
        elif shape == "limit-only-memory":
            resources = {"limits": {"memory": memory}}
        else:
            resources = {}
    container: dict[str, Any] = {"name": name, "resources": resources}
    if init and draw(st.booleans()):
        container["restartPolicy"] = "Always"
    return container


@st.composite
def pods(draw: st.DrawFn, uid: str, *, hugepages: bool = True) -> Pod:
    guaranteed = draw(st.booleans()) or draw(st.booleans())  # three in four
    apps = [
        draw(containers(f"app{i}", guaranteed=guaranteed, hugepages=hugepages))
        for i in range(draw(st.integers(1, 2)))
    ]
    inits = [
        draw(containers(f"init{i}", guaranteed=guaranteed, hugepages=hugepages, init=True))
        for i in range(draw(st.integers(0, 2)))
    ]
    spec: dict[str, Any] = {"containers": apps}
    if inits:
        spec["initContainers"] = inits
    return pod_from_manifest(
        {"metadata": {"name": f"pod-{uid}", "uid": uid}, "spec": spec}, source=f"{uid}.yaml"
    )
