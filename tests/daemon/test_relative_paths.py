"""Relative paths: in the config file they are relative to the config file (as the kubelet reads
its own config file, and what a daemon started from / by systemd needs); on the command line they
are relative to the working directory (what a shell user expects). docs/cli.md "Where a node's
files are".

Method: the settings loader on every path-valued field of the `memstate:` section, then the real
`memstate run` started from another directory with a config file holding only relative paths,
and `memstate status` reading that node with relative flags.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from memstate.core.events import PodAdmitted
from memstate.node.settings import (
    ApiServerSettings,
    KubeletSettings,
    NriSettings,
    Settings,
    SettingsFile,
    config_directory,
    settings_from_object,
)
from tests.daemon.harness import Node, pod_manifest

SECTION = {
    "stateDir": "state",
    "manifestDir": "./pods",
    "cgroupSim": "tree/sim",
    "topologyFile": "../shared/topology.yaml",
    "kubeletCheckpoint": "kubelet/memory_manager_state",
    "kubeletConfigFile": "kubelet/config.yaml",
    "kubelet": {"tokenFile": "secrets/token", "caFile": "ca.pem", "certFile": "", "keyFile": None},
    "apiServer": {"kubeconfig": "kubeconfig"},
    "nri": {"socket": "nri.sock"},
}


def test_every_relative_path_in_the_section_is_relative_to_the_config_file(
    tmp_path: Path,
) -> None:
    config_dir = tmp_path / "etc"
    settings = settings_from_object(
        {**SECTION, "cgroupTree": "cg"},
        source=str(config_dir / "config.yaml"),
        base=Settings(),
        relative_to=config_dir,
    )
    assert settings.state_dir == config_dir / "state"
    assert settings.manifest_dir == config_dir / "pods"
    assert settings.cgroup_root == config_dir / "cg"
    assert settings.cgroup_sim == config_dir / "tree/sim"
    assert settings.topology_file == tmp_path / "etc/../shared/topology.yaml"
    assert settings.kubelet_checkpoint == config_dir / "kubelet/memory_manager_state"
    assert settings.kubelet_config_file == config_dir / "kubelet/config.yaml"
    assert settings.kubelet.token_file == str(config_dir / "secrets/token")
    assert settings.kubelet.ca_file == str(config_dir / "ca.pem")
    assert settings.kubelet.cert_file == ""  # "" and null mean "not set": they stay so
    assert settings.kubelet.key_file is None
    assert settings.api_server.kubeconfig == str(config_dir / "kubeconfig")
    assert settings.nri is not None and settings.nri.socket == str(config_dir / "nri.sock")
    # The deprecated spelling of cgroupTree too.
    old = settings_from_object(
        {"cgroupRoot": "cg"}, source="c.yaml", base=Settings(), relative_to=config_dir
    )
    assert old.cgroup_root == config_dir / "cg"


def test_absolute_paths_and_defaults_are_left_alone(tmp_path: Path) -> None:
    settings = settings_from_object(
        {"stateDir": "/var/lib/x", "kubelet": {}, "nri": {}},
        source="c.yaml",
        base=Settings(),
        relative_to=tmp_path,
    )
    assert settings.state_dir == Path("/var/lib/x")
    assert settings.kubelet.token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert settings.nri is not None and settings.nri.socket == "/var/run/nri/nri.sock"
    assert settings.manifest_dir == Settings().manifest_dir


def test_every_path_field_of_the_section_is_covered() -> None:
    """A path-valued field added later must be anchored too: every string field of the section
    (nested ones included) is either a path exercised above or named here as not a path."""
    not_paths = {"metricsAddress", "nodeName", "kubelet.url", "apiServer.context"}
    not_paths |= {"nri.pluginName", "nri.pluginIndex"}
    strings: set[str] = set()
    for field in msgspec.structs.fields(SettingsFile):
        nested = {"kubelet": KubeletSettings, "api_server": ApiServerSettings, "nri": NriSettings}
        if field.name in nested:
            strings |= {
                f"{field.encode_name}.{inner.encode_name}"
                for inner in msgspec.structs.fields(nested[field.name])
                if "str" in str(inner.type)
            }
        elif "str" in str(field.type) and "Literal" not in str(field.type):
            strings.add(field.encode_name)
    exercised = {
        f"{key}.{inner}"
        for key, value in SECTION.items()
        if isinstance(value, dict)
        for inner in value
    }
    exercised |= {key for key, value in SECTION.items() if not isinstance(value, dict)}
    assert strings - not_paths == exercised | {"cgroupTree", "cgroupRoot"}


def test_config_directory_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_directory(Path("conf/config.yaml")) == tmp_path / "conf"


def test_run_from_another_directory_finds_the_config_files_relative_paths(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    # The node's files, named relative to the config file (all in node.root).
    node.config["memstate"].update(
        stateDir="state", manifestDir="manifests", cgroupSim="cgroup", topologyFile="topology.yaml"
    )
    node.write_config()
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config_arg = str(Path("..") / node.root.name / "config.yaml")  # a flag: relative to the cwd
    node.start(cwd=elsewhere, config_arg=config_arg)
    node.wait_for(
        lambda records: any(
            isinstance(r.event, PodAdmitted) and r.event.uid == "pod-a" for r in records
        )
    )
    assert node.cgroup_file("kubepods", "memory.min") is not None
    assert list(elsewhere.iterdir()) == []  # nothing landed beside the working directory
    # The CLI: the config's paths relative to the config, the flags relative to the cwd.
    by_config = node.cli("status", "--config", config_arg, "-o", "json", cwd=elsewhere)
    assert by_config.returncode == 0, by_config.stderr
    assert '"pod-a"' in by_config.stdout
    by_flag = node.cli("status", "--state-dir", "state", "-o", "json", cwd=node.root)
    assert by_flag.returncode == 0, by_flag.stderr
    assert '"pod-a"' in by_flag.stdout
    assert node.terminate() == 0
