"""`memstate plan` and `memstate diff`.

Method: the CLI is run end to end (`memstate.cli.main`) on real directories. RealCgroupFS needs
a directory tree whose interface files it can read, and this host's cgroup2 has no memory
controller, so the "live tree" is a temporary directory into which a SimCgroupFS tree was
copied file by file (`materialise`): the files hold exactly what the kernel model prints, and
the command reads them through the same adapter it uses on /sys/fs/cgroup. The plan printed
must equal the planner's plan for the simulated tree, and the directory must be byte-for-byte
unchanged afterwards (read-only). The desired state comes from a scenario, or from a state
directory written by `memstate log import` and recovered with the store's start-up code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memstate.cli.commands.plan_cmd import ReadOnlyCgroupFS
from memstate.cli.main import main
from memstate.core.errors import InvariantViolation
from memstate.core.plan import plan_operations
from memstate.core.scenario import read_scenario
from memstate.core.state_targets import state_targets
from memstate.history.replay import replay_state
from memstate.reconcile.reconciler import Reconciler, observe_tree
from tests.reconcile.helpers import PAGE, directory_contents, materialise, new_sim

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "replay" / "memory-qos-tiered.jsonl"


def scenario_targets():  # type: ignore[no-untyped-def]
    state = replay_state(read_scenario(SCENARIO.read_text(), source=str(SCENARIO)))
    targets = state_targets(state)
    assert targets is not None
    return targets


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_plan_of_an_empty_tree_matches_the_planner_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = new_sim()
    materialise(sim, tmp_path)
    before = directory_contents(tmp_path)
    code, out = run(
        capsys, "plan", "--scenario", str(SCENARIO), "--cgroup-root", str(tmp_path), "-o", "json"
    )
    assert code == 0
    document = json.loads(out)
    targets = scenario_targets()
    expected = plan_operations(targets, observe_tree(sim, targets)[0], page_size_bytes=PAGE)
    assert [
        (o["phase"], o["kind"], o["path"], o["file"], o["value"]) for o in document["operations"]
    ] == [(o.phase, o.kind, o.path, o.file or None, o.value or None) for o in expected.operations]
    assert document["summary"]["operations"] == len(expected.operations) > 0
    assert document["cgroup_root"] == str(tmp_path)
    assert document["read_errors"] == []
    assert directory_contents(tmp_path) == before  # read-only


def test_plan_of_a_converged_tree_is_empty_and_exit_code_tells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = new_sim()
    targets = scenario_targets()
    assert Reconciler(sim, page_size_bytes=PAGE).reconcile(targets).converged
    materialise(sim, tmp_path / "converged")
    code, out = run(
        capsys,
        "plan",
        "--scenario",
        str(SCENARIO),
        "--cgroup-root",
        str(tmp_path / "converged"),
        "--exit-code",
        "-o",
        "table",
    )
    assert (code, out.strip().splitlines()[-1]) == (0, "nothing to do")
    sim.write("kubepods", "memory.min", "0")
    materialise(sim, tmp_path / "drifted")
    code, out = run(
        capsys,
        "plan",
        "--scenario",
        str(SCENARIO),
        "--cgroup-root",
        str(tmp_path / "drifted"),
        "--exit-code",
        "-o",
        "table",
    )
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["#", "PHASE", "OP", "CGROUP", "FILE", "VALUE", "WAS", "REQUIRES"]
    assert lines[1].split() == [
        "0",
        "raise",
        "write",
        "kubepods",
        "memory.min",
        targets.cgroup("kubepods").files["memory.min"],
        "0",
        "-",
    ]
    assert lines[-1] == "1 operations (0 create, 1 raise, 0 remove, 0 lower)"


def test_plan_shows_retired_and_orphan_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = new_sim()
    targets = scenario_targets()
    assert Reconciler(sim, page_size_bytes=PAGE).reconcile(targets).converged
    sim.mkdir("kubepods/burstable/podold1")
    sim.mkdir("kubepods/podold2")
    sim.spawn("kubepods/podold2")
    materialise(sim, tmp_path)
    code, out = run(
        capsys,
        "plan",
        "--scenario",
        str(SCENARIO),
        "--cgroup-root",
        str(tmp_path),
        "--retired",
        "old1",
        "--retired",
        "old2",
        "--pod-removal",
        "kill",
        "-o",
        "json",
    )
    assert code == 0
    document = json.loads(out)
    assert {(r["path"], r["kind"], r["action"]) for r in document["removals"]} == {
        ("kubepods/burstable/podold1", "retired", "remove"),
        ("kubepods/podold2", "retired", "kill"),
    }
    kinds = [(o["kind"], o["path"]) for o in document["operations"] if o["phase"] == "remove"]
    assert kinds == [  # holders in tree order: kubepods, then its QoS cgroups
        ("kill", "kubepods/podold2"),
        ("rmdir", "kubepods/podold2"),
        ("rmdir", "kubepods/burstable/podold1"),
    ]
    code, out = run(
        capsys, "plan", "--scenario", str(SCENARIO), "--cgroup-root", str(tmp_path), "-o", "table"
    )
    assert "orphan pod cgroup kubepods/podold2 (populated): keep" in out


def test_diff_lists_every_managed_file_and_only_differences_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = new_sim()
    targets = scenario_targets()
    assert Reconciler(sim, page_size_bytes=PAGE).reconcile(targets).converged
    sim.write("kubepods/podg1", "memory.max", "1000000000")  # someone else's value
    materialise(sim, tmp_path)
    code, out = run(
        capsys, "diff", "--scenario", str(SCENARIO), "--cgroup-root", str(tmp_path), "-o", "json"
    )
    assert code == 0
    rows = json.loads(out)["rows"]
    managed = sum(len(t.files) + bool(t.controllers) for t in targets.cgroups)
    assert len(rows) == managed
    (different,) = [r for r in rows if r["status"] != "equal"]
    assert (different["path"], different["file"], different["observed"]) == (
        "kubepods/podg1",
        "memory.max",
        "999997440",
    )
    assert different["desired"] == targets.cgroup("kubepods/podg1").files["memory.max"]
    code, out = run(
        capsys,
        "diff",
        "--scenario",
        str(SCENARIO),
        "--cgroup-root",
        str(tmp_path),
        "--only-differences",
        "--exit-code",
        "-o",
        "table",
    )
    assert code == 1
    assert out.splitlines()[1].split() == [
        "kubepods/podg1",
        "memory.max",
        "536870912",
        "999997440",
        "differs",
    ]


def test_state_dir_is_recovered_like_the_daemon_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    assert main(["log", "import", str(SCENARIO), "--state-dir", str(state_dir)]) == 0
    capsys.readouterr()
    sim = new_sim()
    materialise(sim, tmp_path / "tree")
    monkeypatch.setenv("MEMSTATE_CGROUP_ROOT", str(tmp_path / "tree"))
    code, from_state = run(capsys, "plan", "--state-dir", str(state_dir), "-o", "json")
    assert code == 0
    code, from_scenario = run(capsys, "plan", "--scenario", str(SCENARIO), "-o", "json")
    assert json.loads(from_state)["operations"] == json.loads(from_scenario)["operations"]
    assert json.loads(from_state)["cgroup_root"] == str(tmp_path / "tree")


def test_errors_map_to_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code = main(["plan", "--scenario", str(SCENARIO), "--cgroup-root", str(tmp_path / "nope")])
    assert code == 69  # EX_UNAVAILABLE: no cgroup tree there
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing decided yet\n")
    assert main(["diff", "--scenario", str(empty), "--cgroup-root", str(tmp_path)]) == 1
    assert "no topology and config" in capsys.readouterr().err
    # Without --state-dir the state directory is found as every command finds it (docs/cli.md):
    # here $MEMSTATE_STATE_DIR, which names nothing.
    monkeypatch.delenv("MEMSTATE_CONFIG", raising=False)
    monkeypatch.setenv("MEMSTATE_STATE_DIR", str(tmp_path / "no-state"))
    assert main(["plan", "--cgroup-root", str(tmp_path)]) == 65
    assert f"{tmp_path / 'no-state'}: no such state directory" in capsys.readouterr().err


def test_the_commands_cannot_write() -> None:
    fs = ReadOnlyCgroupFS(new_sim())
    assert fs.exists("")
    for attempt in (
        lambda: fs.write("", "cgroup.subtree_control", "+memory"),
        lambda: fs.mkdir("x"),
        lambda: fs.rmdir("x"),
    ):
        with pytest.raises(InvariantViolation):
            attempt()


def test_plan_and_diff_follow_the_configs_ownership(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `ownership: beside-kubelet` in the config, `memstate plan` on a tree the kubelet has
    not populated creates nothing and lists what it waits for; `diff` shows only memstate's
    files."""
    sim = new_sim()
    materialise(sim, tmp_path / "tree")
    config = tmp_path / "config.yaml"
    config.write_text("memstate:\n  ownership: beside-kubelet\n  mode: qos\n")
    code, out = run(
        capsys,
        "plan",
        "--config",
        str(config),
        "--scenario",
        str(SCENARIO),
        "--cgroup-root",
        str(tmp_path / "tree"),
        "-o",
        "json",
    )
    assert code == 0
    document = json.loads(out)
    targets = scenario_targets()
    assert document["operations"] == []
    assert set(document["awaiting"]) == {t.path for t in targets.cgroups if t.path}
    code, out = run(
        capsys,
        "diff",
        "--config",
        str(config),
        "--scenario",
        str(SCENARIO),
        "--cgroup-root",
        str(tmp_path / "tree"),
        "-o",
        "json",
    )
    files = {row["file"] for row in json.loads(out)["rows"]}
    assert files and files <= {"memory.min", "memory.low", "memory.high"}, files
