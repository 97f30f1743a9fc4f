"""The kubelet's own config file beside memstate: read leniently, and refused when the two would
fight over the same cgroup files (memstate.core.beside_kubelet, memstate.node.kubelet_config).

Goal: a full kubeadm file is accepted whatever else it holds (its other fields listed once as
ignored); each fighting combination — the kubelet's MemoryQoS gate on while memstate writes
Memory QoS files (modes qos and numa), its Memory Manager Static while memstate pins, another
cgroupDriver or cgroupRoot, cgroupsPerQOS off beside the kubelet — is refused with a
`ConfigError` (exit 78) naming the kubelet's file and every field involved; shadow mode accepts
them all; beside the kubelet the cgroup naming memstate's config does not set is the kubelet's.
Method: real YAML files through the daemon's reader (`with_kubelet_config`), real `Settings`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from memstate.core.beside_kubelet import KubeletSide, check_beside_kubelet
from memstate.core.config import NodeConfig, config_from_object
from memstate.core.errors import EXIT_CONFIG, ConfigError
from memstate.node.kubelet_config import with_kubelet_config
from memstate.node.settings import Settings

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
FITTING = FIXTURES / "kubeadm-kubelet-beside-memstate.yaml"
FIGHTING = FIXTURES / "kubeadm-kubelet-config.yaml"  # MemoryQoS on, Memory Manager Static

# memstate's own config: Static (it pins), TieredReservation, no naming fields.
MEMSTATE: dict[str, Any] = {
    "memoryManagerPolicy": "Static",
    "systemReserved": {"memory": "2Gi"},
    "evictionHard": {"memory.available": "0"},
    "reservedMemory": [{"numaNode": 0, "limits": {"memory": "2Gi"}}],
    "memoryReservationPolicy": "TieredReservation",
}


def settings(kubelet_file: Path, **fields: Any) -> Settings:
    return Settings(kubelet_config_file=kubelet_file, **fields)


def check(kubelet_file: Path, memstate: dict[str, Any] | None = None, **fields: Any) -> NodeConfig:
    document = dict(MEMSTATE if memstate is None else memstate)
    return with_kubelet_config(
        settings(kubelet_file, **fields), config_from_object(document), document
    )


def kubelet_file(tmp_path: Path, **changes: Any) -> Path:
    """The fitting kubeadm file with `changes` (None deletes a field)."""
    document = yaml.safe_load(FITTING.read_text())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    path = tmp_path / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def refused(kubelet: Path, memstate: dict[str, Any] | None = None, **fields: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        check(kubelet, memstate, **fields)
    error = caught.value
    assert error.exit_code == EXIT_CONFIG
    assert error.source == str(kubelet)
    return error


@pytest.mark.parametrize("ownership", ["standalone", "beside-kubelet"])
def test_a_full_kubeadm_file_that_fits_is_accepted(
    ownership: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        config = check(
            FITTING, {**MEMSTATE, "cgroupDriver": "systemd"}, ownership=ownership, mode="numa"
        )
    assert config.cgroup_driver == "systemd"
    ignored = [r.getMessage() for r in caplog.records if "not read by memstate" in r.getMessage()]
    assert len(ignored) == 1
    for field in ("authentication", "kubeReservedCgroup", "someFieldFromAFutureKubelet"):
        assert field in ignored[0]


@pytest.mark.parametrize("mode", ["qos", "numa"])
def test_the_kubelets_memory_qos_gate_fights_memstates_memory_qos(
    tmp_path: Path, mode: str
) -> None:
    kubelet = kubelet_file(tmp_path, featureGates={"MemoryQoS": True})
    error = refused(kubelet, ownership="beside-kubelet", mode=mode)
    assert error.path == "$.featureGates.MemoryQoS"
    assert "featureGates.MemoryQoS is true" in error.message and f"mode {mode}" in error.message


def test_the_kubelets_static_memory_manager_fights_memstates_pinning(tmp_path: Path) -> None:
    kubelet = kubelet_file(tmp_path, memoryManagerPolicy="Static")
    error = refused(kubelet, ownership="beside-kubelet", mode="numa")
    assert error.path == "$.memoryManagerPolicy"
    assert "memoryManagerPolicy is Static" in error.message and "mode numa" in error.message
    # memstate not pinning (mode qos, or its own policy None) leaves the kubelet's pinning alone.
    check(kubelet, ownership="beside-kubelet", mode="qos")
    check(
        kubelet,
        {**MEMSTATE, "memoryManagerPolicy": "None", "reservedMemory": []},
        ownership="beside-kubelet",
        mode="numa",
    )


def test_another_cgroup_driver_or_root_fights(tmp_path: Path) -> None:
    kubelet = kubelet_file(tmp_path, cgroupRoot="/tenant.slice")
    # memstate's config sets its own naming, different from the kubelet's: both named.
    error = refused(
        kubelet,
        {**MEMSTATE, "cgroupDriver": "cgroupfs", "cgroupRoot": "/"},
        ownership="beside-kubelet",
        mode="qos",
    )
    assert error.path == "$.cgroupDriver, $.cgroupRoot"
    assert "cgroupDriver is systemd in the kubelet's config but cgroupfs" in error.message
    assert "cgroupRoot is /tenant" in error.message
    # Standalone never adopts the kubelet's naming: memstate's default cgroupfs fights too.
    error = refused(kubelet_file(tmp_path), ownership="standalone", mode="qos")
    assert error.path == "$.cgroupDriver"


def test_every_fight_is_named_at_once(tmp_path: Path) -> None:
    error = refused(
        FIGHTING, {**MEMSTATE, "cgroupDriver": "cgroupfs"}, ownership="beside-kubelet", mode="numa"
    )
    assert error.path == "$.featureGates.MemoryQoS, $.memoryManagerPolicy, $.cgroupDriver"
    assert str(FIGHTING) in str(error)


def test_no_qos_cgroups_beside_the_kubelet_is_refused(tmp_path: Path) -> None:
    kubelet = kubelet_file(tmp_path, cgroupsPerQOS=False)
    assert refused(kubelet, ownership="beside-kubelet", mode="qos").path == "$.cgroupsPerQOS"


def test_shadow_accepts_every_combination_and_still_takes_the_kubelets_naming() -> None:
    config = check(FIGHTING, ownership="beside-kubelet", mode="shadow")
    assert config.cgroup_driver == "systemd"
    config = check(
        FIGHTING, {**MEMSTATE, "cgroupDriver": "cgroupfs"}, ownership="standalone", mode="shadow"
    )
    assert config.cgroup_driver == "cgroupfs"  # set by memstate: kept, not refused


def test_beside_the_kubelet_the_unset_naming_is_the_kubelets(tmp_path: Path) -> None:
    kubelet = kubelet_file(tmp_path, cgroupRoot="/tenant.slice")
    config = check(kubelet, ownership="beside-kubelet", mode="numa")
    assert (config.cgroup_driver, config.cgroup_root) == ("systemd", ("tenant",))
    # Everything else is memstate's own.
    assert config.memory_manager_policy == "Static"
    assert config.memory_reservation_policy == "TieredReservation"


def test_a_kubelet_file_memstate_cannot_read_names_the_file_and_field(tmp_path: Path) -> None:
    bad = kubelet_file(tmp_path, cgroupDriver="systemdd")
    error = refused(bad, ownership="beside-kubelet", mode="qos")
    assert error.path == "$.cgroupDriver" and "systemdd" in error.message
    not_kubelet = tmp_path / "pod.yaml"
    not_kubelet.write_text("kind: Pod\napiVersion: v1\n")
    assert refused(not_kubelet, ownership="beside-kubelet", mode="qos").path == "$.kind"
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read"):
        check(missing, ownership="beside-kubelet", mode="qos")


def test_no_kubelet_file_is_no_check(caplog: pytest.LogCaptureFixture) -> None:
    document = dict(MEMSTATE)
    with caplog.at_level(logging.WARNING):
        config = with_kubelet_config(
            Settings(ownership="beside-kubelet"), config_from_object(document), document
        )
    assert config == config_from_object(document)
    assert "without kubeletConfigFile" in caplog.text


def test_the_check_is_pure() -> None:
    """Same inputs, same answer, inputs untouched (the daemon calls it on every reload)."""
    kubelet = KubeletSide(cgroup_driver="systemd")
    config = config_from_object(MEMSTATE)
    frozen = msgspec.json.encode(config)
    first = check_beside_kubelet(
        kubelet,
        config,
        ownership="beside-kubelet",
        mode="qos",
        config_sets=(),
        kubelet_source="k",
    )
    again = check_beside_kubelet(
        kubelet,
        config,
        ownership="beside-kubelet",
        mode="qos",
        config_sets=(),
        kubelet_source="k",
    )
    assert first == again and first.cgroup_driver == "systemd"
    assert msgspec.json.encode(config) == frozen


def test_ownership_and_mode_settings_are_checked_by_name() -> None:
    from memstate.node.settings import settings_from_object

    settings = settings_from_object(
        {"ownership": "beside-kubelet", "mode": "qos", "kubeletConfigFile": "/k.yaml"},
        source="c.yaml",
        base=Settings(),
    )
    assert (settings.ownership, settings.mode) == ("beside-kubelet", "qos")
    assert settings.kubelet_config_file == Path("/k.yaml")
    assert (Settings().ownership, Settings().mode) == ("standalone", "numa")
    for field, value in (("ownership", "besides-kubelet"), ("mode", "NUMA")):
        with pytest.raises(ConfigError) as caught:
            settings_from_object({field: value}, source="c.yaml", base=Settings())
        assert caught.value.path == f"$.memstate.{field}"
