"""`memstate replay`, `replay bisect` and `replay anonymise` from the command line.

Goal: the commands print what docs/replay.md shows — the divergent event, both decisions, the
state diff, exit 1 — and the state at a seq or time; the progress bar appears on terminals only.
Method: the real entry point (`memstate.cli.main`) in-process, so a test-only reducer
alteration installed with monkeypatch is the one the command runs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from memstate.cli.main import main
from memstate.core.events import Envelope
from memstate.present.progress import Progress
from memstate.store.checkpoint import list_checkpoints
from tests.replay.recording import (
    BASE_TS_NS,
    churn_inputs,
    fill_highest_first,
    input_seq,
    record_log,
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Envelope], int]:
    state_dir = tmp_path_factory.mktemp("cli")
    written = record_log(state_dir, churn_inputs(120, triggers=(80,)), checkpoint_every=20)
    return state_dir, written, input_seq(written, "zz-000080")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_replay_of_a_sound_log(
    recorded: tuple[Path, list[Envelope], int], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, written, _ = recorded
    code, out = run(capsys, "replay", str(state_dir), "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["divergence"] is None
    assert document["records"] == len(written)
    assert document["checkpoints_verified"] == [s for s, _ in list_checkpoints(state_dir)]
    assert "transitions" not in document  # not listed for a state directory unless --list
    code, out = run(capsys, "replay", str(state_dir), "-o", "table")
    assert code == 0
    assert f"{len(written)} records replayed" in out


def test_replay_reports_the_divergence_in_json_and_table(
    recorded: tuple[Path, list[Envelope], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state_dir, _, first = recorded
    fill_highest_first(monkeypatch)
    code, out = run(capsys, "replay", str(state_dir), "-o", "json")
    assert code == 1
    divergence = json.loads(out)["divergence"]
    assert (divergence["kind"], divergence["seq"]) == ("decisions", first)
    assert divergence["event"] == "pod_admission_requested"
    assert divergence["recorded"] == ["admitted ops/trigger-80 (Guaranteed, NUMA [0])"]
    assert divergence["derived"] == ["admitted ops/trigger-80 (Guaranteed, NUMA [1])"]
    assert divergence["recorded_events"][0]["event"]["allocation"]["takes"][0]["numa_node"] == 0
    assert divergence["versions"]["recorded"] == "memstate 0.1.0 (reducer 1)"
    fields = {(d["subject"], d["field"]) for d in divergence["state_diff"]}
    assert ("NUMA 1", "memory.reserved") in fields
    code, out = run(capsys, "replay", str(state_dir), "-o", "table")
    assert code == 1
    assert f"DIVERGENCE (decisions) at seq {first}" in out
    assert "recorded  admitted ops/trigger-80 (Guaranteed, NUMA [0])" in out
    assert "derived   admitted ops/trigger-80 (Guaranteed, NUMA [1])" in out
    assert "memory.reserved: 0 → 64Mi (+64Mi)" in out


def test_state_at_a_seq_and_at_a_time(
    recorded: tuple[Path, list[Envelope], int], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, written, _ = recorded
    checkpoint_seq = list_checkpoints(state_dir)[1][0]
    code, out = run(capsys, "replay", str(state_dir), "--to-seq", str(checkpoint_seq), "-o", "json")
    assert code == 0
    assert json.loads(out)["state_seq"] == checkpoint_seq
    # Input 30 is stamped BASE + 30 s = 2026-03-01T02:00:30Z.
    code, out = run(capsys, "replay", str(state_dir), "--at", "2026-03-01T02:00:30Z", "-o", "json")
    assert code == 0
    document = json.loads(out)
    at_ns = BASE_TS_NS + 30 * 10**9
    assert document["state_seq"] == max(e.seq for e in written if e.ts_ns <= at_ns)
    assert document["state"]["numa"][0]["resources"]["memory"]["reserved"] > 0
    code, out = run(capsys, "replay", str(state_dir), "--to-seq", "40", "-o", "table")
    assert "state after seq" in out and "NUMA  RESOURCE" in out


def test_bisect_and_anonymise_from_the_command_line(
    recorded: tuple[Path, list[Envelope], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    state_dir, _, first = recorded
    with monkeypatch.context() as patch:
        fill_highest_first(patch)
        code, out = run(capsys, "replay", "bisect", str(state_dir), "-o", "json")
        assert code == 1
        document = json.loads(out)
        assert document["divergence"]["seq"] == first
        assert document["runs"] == {
            "log": str(state_dir),
            "reference": f"this build's reference run of {state_dir}",
        }
        code, out = run(capsys, "replay", "bisect", str(state_dir), "-o", "table")
        assert code == 1 and f"DIVERGENCE (decisions) at seq {first}" in out
    code, out = run(capsys, "replay", "bisect", str(state_dir), "--against", str(state_dir))
    assert code == 0
    copy, mapping = tmp_path / "copy.jsonl", tmp_path / "map.json"
    code, _ = run(
        capsys, "replay", "anonymise", str(state_dir), str(copy), "--mapping", str(mapping)
    )
    assert code == 0
    assert json.loads(mapping.read_text())["uids"]["zz-000080"].startswith("pod-")
    code, out = run(capsys, "replay", str(copy), "-o", "json", "--no-list")
    assert code == 0 and json.loads(out)["divergence"] is None


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["replay"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "memstate replay bisect PATH" in out and "--to-seq" in out
    assert main(["replay", str(tmp_path)]) == 65  # a directory without log/
    assert "not a state directory" in capsys.readouterr().err


def test_the_progress_bar_draws_on_terminals_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    ticks = iter([0.0, 0.1, 0.3, 0.35, 0.9])
    terminal = Terminal()
    with Progress(100, label="replay", stream=terminal, clock=lambda: next(ticks)) as bar:
        bar.update(10)  # 0.1 s: too soon
        assert terminal.getvalue() == ""
        bar.update(50)  # 0.3 s: drawn
        assert "[###############---------------] 50/100" in terminal.getvalue()
        bar.update(60)  # 0.35 s: throttled
        assert "60/100" not in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\x1b[K")  # erased at the end
    pipe = io.StringIO()
    with Progress(100, label="replay", stream=pipe, interval_seconds=0) as bar:
        bar.update(100)
    assert pipe.getvalue() == ""
