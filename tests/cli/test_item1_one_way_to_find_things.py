"""Issue 14, item 1: every command finds the config, the state directory and the cgroup tree the
same way (flag > environment > config file > default), and one tree has one daemon.

Method: a real demo node (`memstate demo --for 1`, a simulated tree), then each command run as a
real subprocess with the location given only by `--config`, only by `$MEMSTATE_CONFIG`, or by a
flag that must beat both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def memstate(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_") and k != "COLUMNS"
    }
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A demo node that ran once: state, manifests, simulated tree and config.yaml."""
    directory = tmp_path_factory.mktemp("node") / "demo"
    result = memstate("demo", "--metrics-port", "0", "--dir", str(directory), "--for", "1")
    assert result.returncode == 0, result.stderr
    yield directory


# Every read-only command that works on a node's state directory, with the arguments it needs.
STATE_COMMANDS: list[tuple[str, ...]] = [
    ("status",),
    ("log", "verify"),
    ("log", "dump"),
    ("log", "export"),  # JSON lines on stdout: its -o json reports a -f FILE
    ("log", "repair", "--truncate-torn-tail", "--dry-run"),
    ("log", "prune", "--dry-run"),
    ("audit", "export"),
    ("audit", "timeline"),
    ("audit", "rejections"),
    ("audit", "pod", "shop/db"),
    ("audit", "numa", "0"),
    ("plan",),
    ("diff",),
]


def as_json(command: tuple[str, ...]) -> tuple[str, ...]:
    return command if command[1:2] == ("export",) else (*command, "-o", "json")


# Commands that find a node's files and are tested elsewhere in this file or in item 2's.
ELSEWHERE = {
    "run": "test_item1_cgroup_root_flag_beats_cgroup_sim_in_config",
    "admit": "tests/cli/test_item2_newcomer_path.py (--config)",
    "remove": "tests/cli/test_item2_newcomer_path.py (--config)",
    "log import": "test_item1_writers_and_plot_find_the_state_dir_by_config",
    "audit plot": "test_item1_writers_and_plot_find_the_state_dir_by_config",
    "import kubelet-state": "tests/kubelet/test_import.py (--config)",
    "shadow report": "tests/kubelet/test_shadow.py (--config)",
}


def test_item1_every_command_with_a_config_is_covered() -> None:
    """A command added later with --config lands here or in ELSEWHERE (the walk of item 6)."""
    from tests.cli.test_item6_every_command import LEAVES, options_of

    located = {words for words, parser in LEAVES.items() if "--config" in options_of(parser)}
    covered = {
        " ".join(command[:2]) if " ".join(command[:2]) in LEAVES else command[0]
        for command in STATE_COMMANDS
    }
    assert located == covered | set(ELSEWHERE)


def test_item1_writers_and_plot_find_the_state_dir_by_config(node: Path, tmp_path: Path) -> None:
    config = str(node / "config.yaml")
    scenario = str(ROOT / "replay" / "memory-qos-tiered.jsonl")
    # The config's state directory already holds the demo's log: import refuses, naming it.
    imported = memstate("log", "import", scenario, env={"MEMSTATE_CONFIG": config})
    assert imported.returncode == 65
    assert f"{node / 'state'} already holds" in imported.stderr
    plotted = memstate("audit", "plot", "-f", str(tmp_path / "p.png"), "--config", config)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("command", STATE_COMMANDS, ids=" ".join)
def test_item1_config_flag_and_environment_find_the_state_dir(
    node: Path, command: tuple[str, ...]
) -> None:
    config = node / "config.yaml"
    by_flag = memstate(*as_json(command), "--config", str(config))
    assert by_flag.returncode == 0, by_flag.stderr
    by_env = memstate(*as_json(command), env={"MEMSTATE_CONFIG": str(config)})
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_flag.stdout or command[0] in ("status",)


@pytest.mark.parametrize("command", STATE_COMMANDS, ids=" ".join)
def test_item1_state_dir_flag_beats_environment_and_config(
    node: Path, command: tuple[str, ...], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = node / "config.yaml"
    # The flag names an empty directory: the command must look there, not at the config's.
    result = memstate(
        *as_json(command),
        "--state-dir",
        str(empty),
        env={"MEMSTATE_CONFIG": str(config), "MEMSTATE_STATE_DIR": str(node / "state")},
    )
    assert result.returncode != 0
    assert str(empty) in result.stderr
    assert "Traceback" not in result.stderr


def test_item1_environment_state_dir_beats_config(node: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = memstate(
        "status",
        "-o",
        "json",
        env={"MEMSTATE_CONFIG": str(node / "config.yaml"), "MEMSTATE_STATE_DIR": str(empty)},
    )
    assert result.returncode == 65  # a state directory with no log: operator input error
    assert f"{empty}: not a memstate state directory" in result.stderr


def test_item1_plan_and_diff_default_to_the_config_state_and_tree(node: Path) -> None:
    # No --state-dir and no --cgroup-sim: both come from the config, as for every other command.
    diff = memstate(
        "diff", "--exit-code", "-o", "json", env={"MEMSTATE_CONFIG": str(node / "config.yaml")}
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert json.loads(diff.stdout)["cgroup_root"] == str(node / "cgroup")


def test_item1_cgroup_root_flag_beats_cgroup_sim_in_config(node: Path, tmp_path: Path) -> None:
    other = tmp_path / "not-a-tree"
    other.mkdir()
    config = str(node / "config.yaml")
    diff = memstate("diff", "--config", config, "--cgroup-root", str(other), "-o", "json")
    # The flag's directory is observed (an empty real directory: every file missing), not the
    # config's converged cgroupSim tree.
    assert json.loads(diff.stdout)["cgroup_root"] == str(other), diff.stderr
    # `run --cgroup-root` does the same: a plain directory is not a cgroup v2 tree (exit 69),
    # where the config's cgroupSim alone would have started a daemon on the demo tree.
    run = memstate(
        "run", "--config", config, "--cgroup-root", str(other), "--metrics-address", "off"
    )
    assert run.returncode == 69, run.stderr
    assert f"{other} is not a cgroup v2 directory" in run.stderr


def test_item1_a_second_daemon_on_the_same_tree_is_refused(node: Path, tmp_path: Path) -> None:
    """Two daemons with different state directories and one tree: the second exits 75."""
    config = yaml.safe_load((node / "config.yaml").read_text())
    config["memstate"]["metricsAddress"] = "off"
    first_config = tmp_path / "first.yaml"
    first_config.write_text(yaml.safe_dump(config))
    config["memstate"]["stateDir"] = str(tmp_path / "other-state")
    second_config = tmp_path / "second.yaml"
    second_config.write_text(yaml.safe_dump(config))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    environment["PYTHONPATH"] = str(ROOT)
    first = subprocess.Popen(
        [sys.executable, "-m", "memstate", "run", "--config", str(first_config)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environment,
    )
    try:
        assert first.stderr is not None
        # Wait (no deadline of our own beyond the read) for the first daemon to be running.
        for line in first.stderr:
            if "converged" in line or "ready" in line.lower():
                break
        else:
            pytest.fail(f"the first daemon stopped: exit {first.wait()}")
        second = memstate("run", "--config", str(second_config))
        assert second.returncode == 75, second.stderr
        assert "Traceback" not in second.stderr
        assert str(node / "cgroup") in second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=120)
