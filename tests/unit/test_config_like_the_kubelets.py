"""Issue 14, item 5: config like the kubelet's.

Goal: a kubelet's own config file (kubeadm's, with the memory settings added) is accepted and
the fields memstate does not read are listed once; errors use upstream's wording and order; a
file of the wrong kind says so; unenforced `enforceNodeAllocatable` entries are refused by name;
memstate's own cgroup tree has its own key (the old spelling still works, with a warning); a
daemon without a config file says which defaults it uses.
Method: the real loaders on real files (a realistic kubeadm fixture), `caplog` for the warnings.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from memstate.core.config import config_from_object, validate_config_for_topology
from memstate.core.errors import ConfigError, ManifestError
from memstate.core.pod import pod_from_manifest
from memstate.node.inputs import load_config
from memstate.node.loops.config import load_settings_and_config
from memstate.node.settings import Settings, settings_from_object
from tests.factories import Mi, container, manifest, topology

KUBEADM = Path(__file__).parent.parent / "fixtures" / "config" / "kubeadm-kubelet-config.yaml"


def test_config_like_the_kubelets_full_kubeadm_file_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        config = load_config(KUBEADM)
    assert config.memory_manager_policy == "Static"
    assert config.topology_manager_policy == "single-numa-node"
    assert config.topology_manager_scope == "pod"
    assert config.cgroup_driver == "systemd"
    assert config.reserved(0, "memory") == 1124 * Mi
    assert config.memory_reservation_policy == "TieredReservation"
    validate_config_for_topology(config, topology("64Gi", "64Gi"))
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1, ignored  # listed once, in one line
    for field in ("authentication", "clusterDNS", "staticPodPath", "cpuManagerPolicy", "logging"):
        assert field in ignored[0]
    for field in ("memoryManagerPolicy", "reservedMemory", "kubeReserved"):
        assert field not in ignored[0]


def test_config_like_the_kubelets_typo_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="not a KubeletConfiguration field") as info:
        config_from_object({"memoryManagerPolcy": "Static"}, source="k.yaml")
    assert info.value.path == "$.memoryManagerPolcy"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("memoryManagerPolicy", "static", 'unknown policy: "static" (valid: None, Static)'),
        (
            "topologyManagerPolicy",
            "single",
            'unknown policy: "single" (valid: none, best-effort, restricted, single-numa-node)',
        ),
        ("topologyManagerScope", "node", 'unknown scope: "node" (valid: container, pod)'),
        ("cgroupDriver", "system", 'unknown cgroup driver: "system" (valid: cgroupfs, systemd)'),
    ],
)
def test_config_like_the_kubelets_unknown_values_use_upstream_wording(
    field: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_object({field: value}, source="k.yaml")
    assert info.value.path == f"$.{field}"
    assert message in str(info.value)
    assert "Invalid enum" not in str(info.value)


def test_config_like_the_kubelets_validation_order() -> None:
    """The kubelet validates the configuration (memoryThrottlingFactor...) before constructing
    the Memory Manager, which reports the unknown policy; topology checks come after both."""
    both = {"memoryManagerPolicy": "static", "memoryThrottlingFactor": 2}
    with pytest.raises(ConfigError, match="memoryThrottlingFactor"):
        config_from_object(both)
    with pytest.raises(ConfigError, match="unknown policy"):
        config_from_object({"memoryManagerPolicy": "static", "reservedMemory": []})


@pytest.mark.parametrize("kind", ["Deployment", "Pod"])
def test_config_like_the_kubelets_wrong_kind_of_config_says_so(kind: str) -> None:
    with pytest.raises(ConfigError, match=f"kind '{kind}' is not a KubeletConfiguration") as info:
        config_from_object({"kind": kind, "metadata": {"name": "x"}, "spec": {}}, source="c.yaml")
    assert info.value.path == "$.kind"


def test_config_like_the_kubelets_wrong_kind_of_manifest_says_so() -> None:
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "template": manifest("u1", [container("app", "1Gi")])},
    }
    with pytest.raises(ManifestError) as info:
        pod_from_manifest(deployment, source="pods/web.yaml")
    assert "kind 'Deployment' is not a Pod" in str(info.value)
    assert "containers" not in str(info.value)


def test_config_like_the_kubelets_unenforced_node_allocatable_entries_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_object({"enforceNodeAllocatable": ["pods", "system-reserved", "kube-reserved"]})
    assert info.value.path == "$.enforceNodeAllocatable"
    assert "kube-reserved, system-reserved not enforced by memstate" in str(info.value)
    assert config_from_object({"enforceNodeAllocatable": ["pods"]}).enforce_node_allocatable == (
        "pods",
    )


def test_config_like_the_kubelets_fields_that_would_change_decisions_are_refused() -> None:
    with pytest.raises(ConfigError, match="qosReserved is not supported"):
        config_from_object({"qosReserved": {"memory": "50%"}})
    with pytest.raises(ConfigError, match="mergeDefaultEvictionSettings is not supported"):
        config_from_object({"mergeDefaultEvictionSettings": True})
    config_from_object({"mergeDefaultEvictionSettings": False, "qosReserved": {}})


def test_config_like_the_kubelets_one_name_per_cgroup_root(
    caplog: pytest.LogCaptureFixture,
) -> None:
    new = settings_from_object({"cgroupTree": "/srv/cg"}, source="c.yaml", base=Settings())
    assert new.cgroup_root == Path("/srv/cg")
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        old = settings_from_object({"cgroupRoot": "/srv/cg"}, source="c.yaml", base=Settings())
    assert old == new
    assert any("memstate.cgroupRoot is deprecated" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="both cgroupTree and its deprecated spelling"):
        settings_from_object(
            {"cgroupTree": "/a", "cgroupRoot": "/b"}, source="c.yaml", base=Settings()
        )
    with pytest.raises(ConfigError) as info:
        settings_from_object({"cgroupTree": "/a\0"}, source="c.yaml", base=Settings())
    assert info.value.path == "$.memstate.cgroupTree"


ROOT = Path(__file__).resolve().parents[2]


def _bundled_configs() -> list[tuple[str, object]]:
    """Every config the project ships or starts a daemon with: the packaged one, the example
    node's, the simulation's, and each YAML block of the docs and README with a `memstate:`
    section (what operators copy)."""
    from tests.sim.world import CONFIG_YAML as SIM_CONFIG

    found: list[tuple[str, object]] = [
        ("packaging/config.yaml", yaml.safe_load((ROOT / "packaging" / "config.yaml").read_text())),
        ("tests/sim/world.py CONFIG_YAML", yaml.safe_load(SIM_CONFIG)),
    ]
    for path in sorted((ROOT / "memstate" / "examples").rglob("*.yaml")):
        found.append((str(path.relative_to(ROOT)), yaml.safe_load(path.read_text())))
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.S):
            try:
                document = yaml.safe_load(block)
            except yaml.YAMLError:
                continue  # a fragment with placeholders: not a config
            found.append((str(page.relative_to(ROOT)), document))
    return [
        (where, document)
        for where, document in found
        if isinstance(document, dict) and isinstance(document.get("memstate"), dict)
    ]


def test_config_like_the_kubelets_bundled_configs_use_the_new_name() -> None:
    configs = _bundled_configs()
    wheres = {where for where, _ in configs}
    assert {"packaging/config.yaml", "tests/sim/world.py CONFIG_YAML"} <= wheres
    old_spelling = [where for where, document in configs if "cgroupRoot" in document["memstate"]]
    assert old_spelling == []


def test_config_like_the_kubelets_run_without_config_names_its_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        _, config = load_settings_and_config(Settings(state_dir=Path("/srv/state")))
    assert config.memory_manager_policy == "None"
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("no config file")
    for fragment in (
        "memoryManagerPolicy None",
        "stateDir /srv/state",
        "cgroupTree /sys/fs/cgroup",
    ):
        assert fragment in line
