"""`with_container_targets`: which observed directories under pod cgroups become container
targets, with which files (pure; memstate.core.plan.containers).

Method: targets from `node_targets` for a Burstable pod with two containers; observed trees are
built by hand, so each rule (listed vs observed, naming, gate off, order) is checked in isolation.
"""

from __future__ import annotations

from memstate.core.config import NodeConfig
from memstate.core.plan import ObservedCgroup, ObservedTree
from memstate.core.plan.containers import CONTAINER_FILES, with_container_targets
from memstate.core.pod import pod_from_manifest
from memstate.core.qos import node_targets
from memstate.core.targets import NodeTargets
from memstate.core.topology import NumaNode, Topology

ID = "c0" * 32
TOPOLOGY = Topology(nodes=(NumaNode(id=0, memory_bytes=8 << 30),), page_size_bytes=4096)
POD = pod_from_manifest(
    {
        "metadata": {"name": "b", "uid": "b1"},
        "spec": {
            "containers": [
                {"name": "app", "resources": {"requests": {"memory": "1Gi"}}},
                {"name": "side", "resources": {"limits": {"memory": "256Mi"}}},
            ]
        },
    }
)


def targets(config: NodeConfig | None = None) -> NodeTargets:
    chosen = config or NodeConfig(memory_reservation_policy="TieredReservation")
    return node_targets([(POD, None)], chosen, TOPOLOGY)


def observed(children: tuple[str, ...], existing: tuple[str, ...]) -> ObservedTree:
    pod = "kubepods/burstable/podb1"
    cgroups = {pod: ObservedCgroup(children=children)}
    cgroups.update({f"{pod}/{name}": ObservedCgroup() for name in existing})
    return ObservedTree(cgroups=cgroups)


def containers(result: NodeTargets) -> dict[str, dict[str, str]]:
    return {t.path: t.files for t in result.cgroups if t.level == "container"}


def test_only_observed_known_containers_become_targets_after_every_other_cgroup() -> None:
    base = targets()
    tree = observed(("app", ID, "pause", "side"), ("app", ID, "pause"))
    result = with_container_targets(base, tree, {"b1": {ID: "side"}})
    app = {c.name: c for c in base.pod("b1").containers}["app"].files
    assert containers(result) == {
        "kubepods/burstable/podb1/app": {f: app[f] for f in CONTAINER_FILES},
        f"kubepods/burstable/podb1/{ID}": {
            f: {c.name: c for c in base.pod("b1").containers}["side"].files[f]
            for f in CONTAINER_FILES
        },
    }  # "side" is listed but was not observed; "pause" is no container
    assert result.cgroups[: len(base.cgroups)] == base.cgroups
    assert result.pods == base.pods
    listed = with_container_targets(base, tree, {"b1": {ID: "side"}}, listed_is_enough=True)
    assert "kubepods/burstable/podb1/side" in containers(listed)


def test_an_unknown_id_or_a_missing_pod_cgroup_adds_nothing() -> None:
    base = targets()
    assert with_container_targets(base, observed((ID,), (ID,))) is base
    assert with_container_targets(base, ObservedTree()) is base


def test_with_the_memory_qos_gate_off_containers_get_nothing() -> None:
    base = targets(NodeConfig(memory_qos=False))
    assert with_container_targets(base, observed(("app",), ("app",))) is base
