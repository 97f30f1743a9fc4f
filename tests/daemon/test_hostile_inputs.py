"""The real daemon meets hostile input files: it refuses them and stays up.

Goal: a manifest that used to kill `memstate run` (issue 10) is a `manifest_invalid` naming the
file while other pods keep being decided; a config reload with such a value is refused and the
old config stays (journal line, `memstate_config_reload_errors_total`); at start a bad config
exits 78 and a bad topology 65, with file and field and no traceback. Method: `harness.Node`
runs `python -m memstate run` as a subprocess on a temporary node; SIGHUP asks for the reload.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from memstate.core.events import ConfigLoaded, ConfigRejected, Envelope, ManifestInvalid
from tests.daemon.harness import ROOT, Node, pod_manifest
from tests.daemon.test_e2e import admitted

pytestmark = pytest.mark.slow

HOSTILE_MANIFESTS = {
    "nested.yaml": "[" * 1000,
    "nested.json": '{"a":' * 1000,
    "int.yaml": "metadata: {uid: !!int 1e999}\n",
    "digits.yaml": "metadata: {uid: " + "9" * 5000 + "}\n",
    "surrogate.json": '{"metadata": {"uid": "\\ud800"}}',
}


def invalid_sources(records: list[Envelope]) -> set[str]:
    return {Path(r.event.source).name for r in records if isinstance(r.event, ManifestInvalid)}


def test_hostile_manifests_are_rejected_and_the_daemon_keeps_deciding(
    make_node: Any,
) -> None:
    node: Node = make_node()
    # Already there at start (the case that used to make systemd restart it forever)...
    node.drop("nested.yaml", HOSTILE_MANIFESTS["nested.yaml"])
    node.start()
    # ... and arriving while it runs, next to a good pod.
    for name, text in HOSTILE_MANIFESTS.items():
        if name != "nested.yaml":
            node.drop(name, text)
    node.drop("good.yaml", pod_manifest("good", "1Gi"))
    records = node.wait_for(
        lambda rs: invalid_sources(rs) >= set(HOSTILE_MANIFESTS) and admitted("good")(rs)
    )
    errors = {
        Path(r.event.source).name: r.event.error
        for r in records
        if isinstance(r.event, ManifestInvalid)
    }
    assert "nested deeper than 100 levels" in errors["nested.json"]
    assert "invalid int '1e999'" in errors["int.yaml"]
    assert all(len(error) < 400 for error in errors.values())
    assert node.alive()
    assert node.terminate() == 0
    assert "Traceback" not in node.stderr()


def test_config_reload_with_bad_value_keeps_old_config(make_node: Any) -> None:
    node: Node = make_node()
    node.start()
    good = dict(node.config)
    for index, bad in enumerate(
        [
            "memoryThrottlingFactor: !!int 1e999\n",
            "reservedMemory: " + "[" * 1000 + "\n",
            "systemReserved: {memory: " + "9" * 5000 + "}\n",
        ]
    ):
        node.config_file.write_text(with_raw_line(good, bad.strip()))
        node.signal(signal.SIGHUP)
        node.wait_for(
            lambda rs, n=index + 1: sum(isinstance(r.event, ConfigRejected) for r in rs) == n
        )
        assert node.alive()
        assert node.metric("memstate_config_reload_errors_total") == index + 1
    loaded = [r for r in node.records() if isinstance(r.event, ConfigLoaded)]
    assert len(loaded) == 1  # the one from start-up: the old config stays
    assert "config reload rejected, keeping the previous config" in node.stderr()
    node.drop("after.yaml", pod_manifest("after", "1Gi"))
    node.wait_for(admitted("after"))
    assert node.terminate() == 0
    assert "Traceback" not in node.stderr()


def with_raw_line(config: dict[str, Any], line: str) -> str:
    """The config as YAML with one top-level key replaced by a raw (hostile) YAML line."""
    key = line.split(":", 1)[0]
    return yaml.safe_dump({k: v for k, v in config.items() if k != key}) + line + "\n"


def run_once(node: Node) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memstate", "run", "--config", str(node.config_file)],
        capture_output=True,
        text=True,
        cwd=node.root,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("memoryThrottlingFactor: !!int 1e999", "invalid int '1e999'"),
        ("reservedMemory: " + "[" * 1000, "nest"),
        ("kubeReserved: {memory: " + "9" * 5000 + "}", "integer '999"),
        ("evictionHard: {memory.available: 1e999999999%}", "$.evictionHard"),
    ],
)
def test_start_with_bad_config_exits_78(make_node: Any, extra: str, field: str) -> None:
    node: Node = make_node()
    node.config_file.write_text(with_raw_line(node.config, extra))
    result = run_once(node)
    assert result.returncode == 78, result.stderr
    assert str(node.config_file) in result.stderr and field in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("topology", "field"),
    [
        (
            f"nodes:\n- {{id: 0, memory: 8Gi, distances: [10, {-(2**70)}]}}\n"
            "- {id: 1, memory: 8Gi, distances: [20, 10]}\n",
            "$.nodes[0].distances[1]",
        ),
        ("nodes: " + "[" * 1000, "nest"),  # libyaml or memstate: either says "nesting"
        ("nodes: [{id: 0, memory: 8Gi, hugepages: {2Mi: !!int 1e999}}]", "line 1"),
    ],
)
def test_start_with_bad_topology_exits_65(make_node: Any, topology: str, field: str) -> None:
    node: Node = make_node()
    node.topology_file.write_text(topology)
    result = run_once(node)
    assert result.returncode == 65, result.stderr
    assert str(node.topology_file) in result.stderr and field in result.stderr
    assert "Traceback" not in result.stderr
