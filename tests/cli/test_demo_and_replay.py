"""The first README command and the scenario replay work from the command line.

Goal: `memstate demo` decides the bundled example node and `memstate replay` re-derives a
scenario, reporting the first divergence from recorded decisions with exit code 1. Method: run
the real console entry point in a subprocess and inspect its JSON output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from memstate.core.scenario import read_scenario, write_scenario
from memstate.history.replay import transitions

ROOT = Path(__file__).resolve().parents[2]


def memstate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_demo_restores_every_pod_after_the_restart() -> None:
    result = memstate("demo", "--simulate", "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    restored = [
        d for t in document["transitions"] for d in t["decisions"] if d.startswith("restored")
    ]
    assert len(restored) == 5
    pinned = {p["name"]: p["numa_nodes"] for p in document["pods"]}
    assert pinned == {"api": [0], "batch": [], "cache": [0], "db": [1], "web": []}
    kubepods = next(c for c in document["targets"]["cgroups"] if c["path"] == "kubepods")
    # TieredReservation: G (2 + 4 + 3 Gi) + B (512Mi) requests protected at the node level.
    assert kubepods["files"]["memory.min"] == str((9 * 1024 + 512) * 2**20)
    assert kubepods["files"]["memory.low"] == str(512 * 2**20)


def test_demo_table_names_the_next_step() -> None:
    result = memstate("demo", "--simulate", "-o", "table")
    assert result.returncode == 0, result.stderr
    assert "restored shop/db (Guaranteed, NUMA [1])" in result.stdout
    assert "memstate replay" in result.stdout


def test_demo_runs_the_daemon_on_a_simulated_tree_and_restarts_it(tmp_path: Path) -> None:
    node = tmp_path / "demo"
    first = memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "2")
    assert first.returncode == 0, first.stderr
    assert "Ready. What was decided:" in first.stdout
    assert "memstate status --state-dir" in first.stdout
    assert "/metrics" in first.stdout
    # The simulated tree holds what the targets say (TieredReservation: G + B requests).
    assert (node / "cgroup/kubepods/memory.min").read_text().strip() == str(
        (9 * 1024 + 512) * 2**20
    )
    second = memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "2")
    assert second.returncode == 0, second.stderr
    status = memstate("status", "--state-dir", str(node / "state"), "-o", "json")
    document = json.loads(status.stdout)
    assert len(document["pods"]) == 5
    from memstate.store.reader import LogReader

    kinds = [r.event.kind for r in LogReader(node / "state").read()]
    assert kinds.count("daemon_restarted") == 1
    restored = [
        r.event
        for r in LogReader(node / "state").read()
        if r.event.kind == "pod_admitted" and r.event.restored  # type: ignore[attr-defined]
    ]
    assert len(restored) == 5


def recorded_export(scenario: Path) -> list[str]:
    """A scenario turned into an export with recorded decisions, as the daemon would log it."""
    from memstate.core.events import SCHEMA_VERSION, Envelope

    envelopes = []
    for transition in transitions(read_scenario(scenario.read_text())):
        seq = len(envelopes) + 1
        envelopes.append(
            Envelope(
                seq=seq,
                ts_ns=transition.record.ts_ns,
                schema_v=SCHEMA_VERSION,
                event=transition.record.event,
                decisions=len(transition.derived),
            )
        )
        envelopes.extend(
            Envelope(seq=seq + i, ts_ns=transition.record.ts_ns, schema_v=SCHEMA_VERSION, event=d)
            for i, d in enumerate(transition.derived, start=1)
        )
    return write_scenario(envelopes).splitlines()


def test_replay_of_recorded_decisions_agrees(tmp_path: Path) -> None:
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(recorded_export(ROOT / "replay/restart-any-order.jsonl")) + "\n")
    result = memstate("replay", str(export), "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["divergence"] is None


def test_replay_reports_the_first_altered_decision(tmp_path: Path) -> None:
    lines = recorded_export(ROOT / "replay/restart-any-order.jsonl")
    # Alter the recorded decision about p2: claim it was pinned to NUMA node 0.
    index = next(
        i
        for i, line in enumerate(lines)
        if '"kind":"pod_admitted"' in line and '"uid":"p2"' in line
    )
    record = json.loads(lines[index])
    for take in record["event"]["allocation"]["takes"]:
        take["numa_node"] = 0
    lines[index] = json.dumps(record)
    export = tmp_path / "altered.jsonl"
    export.write_text("\n".join(lines) + "\n")
    result = memstate("replay", str(export), "-o", "json")
    assert result.returncode == 1
    divergence = json.loads(result.stdout)["divergence"]
    assert divergence["seq"] == record["seq"] - 1  # the input the altered decision belongs to
    assert divergence["event"] == "pod_admission_requested"
    assert "exceeds allocatable" in divergence["apply_error"]


def test_relative_times_parse_as_values(tmp_path: Path) -> None:
    """`--since -1h` (not only `--since=-1h`) works for log dump and audit."""
    from memstate.core.events import DaemonRestarted
    from memstate.store.writer import EventLog

    with EventLog.open(tmp_path, fsync=False) as log:
        log.append([(DaemonRestarted(), 0)], ts_ns=__import__("time").time_ns())
    for args in (
        ("log", "dump", "--state-dir", str(tmp_path), "--since", "-1h", "-o", "jsonl"),
        ("audit", "timeline", "--state-dir", str(tmp_path), "--since", "-1h", "-o", "jsonl"),
    ):
        result = memstate(*args)
        assert result.returncode == 0, (args, result.stderr)


def test_plan_and_diff_read_the_demo_tree(tmp_path: Path) -> None:
    node = tmp_path / "demo"
    assert memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "1").returncode == 0
    where = ("--state-dir", str(node / "state"), "--cgroup-sim", str(node / "cgroup"))
    converged = memstate("diff", *where, "--exit-code", "-o", "json")
    assert converged.returncode == 0, converged.stdout + converged.stderr
    # Someone lowers kubepods' protection by hand: diff shows it, plan would write it back.
    (node / "cgroup/kubepods/memory.min").write_text("0\n")
    drifted = memstate("diff", *where, "--exit-code", "-o", "json")
    assert drifted.returncode == 1
    rows = [r for r in json.loads(drifted.stdout)["rows"] if r["status"] != "equal"]
    assert [(r["path"], r["file"]) for r in rows] == [("kubepods", "memory.min")]
    plan = json.loads(memstate("plan", *where, "-o", "json").stdout)
    writes = [(op["path"], op["file"], op["value"]) for op in plan["operations"]]
    assert writes == [("kubepods", "memory.min", str((9 * 1024 + 512) * 2**20))]
