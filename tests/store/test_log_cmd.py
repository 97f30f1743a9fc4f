"""`memstate log …` end to end through `memstate.cli.main`: output, filters, exit codes.

Method: real logs in temporary state directories; commands run in-process with captured output.
Expected records come from what the writer acknowledged, not from the command under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from memstate.cli.main import main
from memstate.core.events import Envelope
from memstate.core.scenario import envelope_to_object, read_scenario
from memstate.history.replay import replay_state
from memstate.store.fsio import DirLock
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from tests.store.helpers import BASE_TS_NS, build_log, set_mark, standard_batches

REPLAY = Path(__file__).resolve().parents[2] / "replay"


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, list[Envelope]]:
    state_dir = tmp_path / "state"
    written = build_log(state_dir, standard_batches(30, seed=4, per_batch=2), segment_bytes=2048)
    return state_dir, written


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def objects(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expected(envelopes: list[Envelope]) -> list[dict[str, object]]:
    return [json.loads(msgspec.json.encode(envelope_to_object(e))) for e in envelopes]


def test_verify_ok(capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]) -> None:
    state_dir, written = logged
    code, out, _ = run(capsys, "log", "verify", "--state-dir", str(state_dir), "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["ok"] and document["records"] == len(written)
    assert document["last_seq"] == written[-1].seq and document["tail"] is None
    code, out, _ = run(capsys, "log", "verify", "--state-dir", str(state_dir), "-o", "table")
    assert code == 0 and "status" in out and "ok" in out


def test_verify_reports_damage_with_exit_65(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, _ = logged
    record = next(r for r in LogReader(state_dir).read_raw() if r.seq == 12)
    path = state_dir / "log" / record.segment
    data = bytearray(path.read_bytes())
    data[record.offset + 20] ^= 1
    path.write_bytes(bytes(data))
    code, out, err = run(capsys, "log", "verify", "--state-dir", str(state_dir), "-o", "json")
    assert code == 65
    assert json.loads(out)["problem"]["offset"] == record.offset
    assert record.segment in err and f"offset {record.offset}" in err and "seq 12" in err
    assert "memstate log repair --point-in-time" in err


def test_verify_reports_a_torn_tail_but_exits_0(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, written = logged
    last = max((state_dir / "log").glob("*.evlog"))
    # A crash while the last batch was written: its records are not acknowledged yet.
    set_mark(last, written[-3].seq)
    last.write_bytes(last.read_bytes()[:-5])
    code, out, _ = run(capsys, "log", "verify", "--state-dir", str(state_dir), "-o", "json")
    assert code == 0
    assert json.loads(out)["tail"]["kind"] in ("torn_tail", "incomplete_transaction")


def test_dump_without_filters_is_the_export_form(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, written = logged
    code, out, _ = run(capsys, "log", "dump", "--state-dir", str(state_dir))
    assert code == 0
    assert objects(out) == expected(written)  # not a TTY: JSON lines
    code, out, _ = run(capsys, "log", "dump", "--state-dir", str(state_dir), "-o", "json")
    assert json.loads(out) == expected(written)
    code, out, _ = run(capsys, "log", "dump", "--state-dir", str(state_dir), "-o", "table")
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "KIND", "POD", "DETAIL"]
    assert len(lines) == 1 + len(written)
    assert "2026-01-01T00:00:00.000Z" in lines[1]


def test_dump_filters(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, written = logged
    base = ["log", "dump", "--state-dir", str(state_dir)]
    _, out, _ = run(capsys, *base, "--from-seq", "5", "--to-seq", "9")
    assert objects(out) == expected([e for e in written if 5 <= e.seq <= 9])
    _, out, _ = run(capsys, *base, "--kind", "pod_admitted,pod_removed")
    assert objects(out) == expected(
        [e for e in written if e.event.kind in ("pod_admitted", "pod_removed")]
    )
    # 2026-01-01T00:00:05Z .. 00:00:08Z: batches 5..8 (one second apart)
    _, out, _ = run(capsys, *base, "--since", "2026-01-01T00:00:05Z", "--until", "@1767225608")
    assert objects(out) == expected(
        [e for e in written if BASE_TS_NS + 5 * 10**9 <= e.ts_ns <= BASE_TS_NS + 8 * 10**9]
    )


def test_dump_by_pod_uid_and_by_name(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, written = logged
    removed = next(e for e in written if e.event.kind == "pod_removed")
    uid = removed.event.uid  # type: ignore[union-attr]
    about = [
        e
        for e in written
        if getattr(e.event, "uid", None) == uid
        or (getattr(getattr(e.event, "pod", None), "uid", None) == uid)
    ]
    assert {e.event.kind for e in about} >= {
        "pod_admission_requested",
        "pod_admitted",
        "pod_removed",
    }
    base = ["log", "dump", "--state-dir", str(state_dir)]
    _, out, _ = run(capsys, *base, "--pod", uid)
    assert objects(out) == expected(about)
    pod = next(e.event.pod for e in about if e.event.kind == "pod_admitted")  # type: ignore[union-attr]
    _, out, _ = run(capsys, *base, "--pod", f"{pod.namespace}/{pod.name}")
    assert objects(out) == expected(about)  # the removal carries only the UID and still matches
    _, out, _ = run(
        capsys, *base, "--pod", f"{pod.namespace}/{pod.name}", "--from-seq", str(removed.seq)
    )
    assert objects(out) == expected([removed])


def test_bad_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, _ = logged
    for extra in (["--kind", "no_such_kind"], ["--since", "yesterday"], ["--from-seq", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["log", "dump", "--state-dir", str(state_dir), *extra])
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_state_dir_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    logged: tuple[Path, list[Envelope]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state_dir, written = logged
    monkeypatch.setenv("MEMSTATE_STATE_DIR", str(state_dir))
    code, out, _ = run(capsys, "log", "dump", "--to-seq", "3")
    assert code == 0 and objects(out) == expected(written[:3])
    monkeypatch.setenv("MEMSTATE_STATE_DIR", str(state_dir.parent / "nowhere"))
    code, _, err = run(capsys, "log", "verify")
    assert code == 65 and "no such state directory" in err


def test_repair_command(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, written = logged
    last = max((state_dir / "log").glob("*.evlog"))
    last.write_bytes(last.read_bytes() + bytes(64))  # a torn tail: zeros after the last frame
    base = ["log", "repair", "--state-dir", str(state_dir)]
    lock = DirLock.acquire(state_dir, purpose="a test standing in for a running daemon")
    try:
        code, _, err = run(capsys, *base, "--truncate-torn-tail")
        assert code == 75 and "locked" in err
    finally:
        lock.release()
    code, out, _ = run(capsys, *base, "--truncate-torn-tail", "--dry-run", "-o", "table")
    assert code == 0 and "dry run" in out and "truncate_segment" in out
    assert last.read_bytes().endswith(bytes(64))
    code, out, _ = run(capsys, *base, "--truncate-torn-tail", "-o", "json")
    assert code == 0
    report = json.loads(out)
    assert report["actions"][0]["action"] == "truncate_segment"
    assert report["actions"][0]["bytes_dropped"] == 64
    assert list(LogReader(state_dir).read()) == written
    code, out, _ = run(capsys, *base, "--point-in-time", "-o", "table")
    assert code == 0 and "nothing to repair" in out
    assert written[2].decisions == 1  # seq 3 is config_loaded; seq 4 its decision
    code, out, _ = run(capsys, *base, "--truncate-after-seq", "3", "-o", "table")
    assert code == 0 and "kept seq 2 and before" in out  # never half a transaction
    assert list(LogReader(state_dir).read()) == written[:2]


@pytest.mark.parametrize("scenario", sorted(REPLAY.glob("*.jsonl")), ids=lambda p: p.stem)
def test_import_export_round_trip_of_the_replay_corpus(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scenario: Path
) -> None:
    source = read_scenario(scenario.read_text(), source=str(scenario))
    state_dir = tmp_path / "state"
    code, _, err = run(capsys, "log", "import", str(scenario), "--state-dir", str(state_dir))
    assert code == 0 and f"imported {len(source)} records" in err
    assert list(LogReader(state_dir).read()) == source
    exported = tmp_path / "export.jsonl"
    code, _, _ = run(capsys, "log", "export", "--state-dir", str(state_dir), "-f", str(exported))
    assert code == 0
    assert read_scenario(exported.read_text(), source="export") == source
    # Importing the export into a fresh directory gives byte-identical records.
    again = tmp_path / "again"
    code, _, _ = run(capsys, "log", "import", str(exported), "--state-dir", str(again))
    assert code == 0
    first = [r.payload for r in LogReader(state_dir).read_raw()]
    assert [r.payload for r in LogReader(again).read_raw()] == first
    # Start-up on an imported scenario derives the decisions the replay engine derives.
    assert recover_state(state_dir).state == replay_state(source)


def test_import_refuses_a_non_empty_log_unless_appending(
    capsys: pytest.CaptureFixture[str], logged: tuple[Path, list[Envelope]]
) -> None:
    state_dir, written = logged
    scenario = REPLAY / "not-readmitted.jsonl"
    code, _, err = run(capsys, "log", "import", str(scenario), "--state-dir", str(state_dir))
    assert code == 65 and "--append" in err
    code, _, _ = run(
        capsys, "log", "import", str(scenario), "--state-dir", str(state_dir), "--append"
    )
    assert code == 0
    records = list(LogReader(state_dir).read())
    added = read_scenario(scenario.read_text(), source="x")
    assert [e.seq for e in records] == list(range(1, len(written) + len(added) + 1))
    assert [e.event for e in records[len(written) :]] == [e.event for e in added]


def test_prune_deletes_segments_before_the_oldest_checkpoint(tmp_path: Path) -> None:
    """`memstate log prune`: explicit, offline, only whole segments before the oldest valid
    checkpoint; start-up and verify still work afterwards; --dry-run changes nothing."""
    import subprocess
    import sys

    from memstate.core.events import DaemonRestarted
    from memstate.core.state import state_hash
    from memstate.store.checkpoint import write_checkpoint
    from memstate.store.scan import list_segments
    from memstate.store.writer import EventLog

    with EventLog.open(tmp_path, fsync=False, segment_bytes=4096) as log:
        for _ in range(300):
            log.append([(DaemonRestarted(), 0)], ts_ns=1)
        middle = log.last_seq // 2
    full = recover_state(tmp_path).state
    at_middle = replay_state(LogReader(tmp_path).read(1, middle))
    write_checkpoint(tmp_path, at_middle, seq=middle, chain_crc=_chain_at(tmp_path, middle))
    before = [path.name for _, path in list_segments(tmp_path / "log")]
    assert len(before) > 3

    def prune(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "memstate",
                "log",
                "prune",
                "--state-dir",
                str(tmp_path),
                "-o",
                "table",
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    dry = prune("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout
    assert [p.name for _, p in list_segments(tmp_path / "log")] == before
    done = prune()
    assert done.returncode == 0, done.stderr
    after = [path.name for _, path in list_segments(tmp_path / "log")]
    assert 0 < len(after) < len(before)
    assert set(after) <= set(before)
    # Everything after the checkpoint is still there and start-up agrees with the full replay.
    recovered = recover_state(tmp_path)
    assert recovered.checkpoint_seq == middle
    assert state_hash(recovered.state) == state_hash(full)
    verify = subprocess.run(
        [sys.executable, "-m", "memstate", "log", "verify", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # While a writer holds the lock, prune refuses with 75.
    with EventLog.open(tmp_path, fsync=False):
        assert prune().returncode == 75


def _chain_at(state_dir: Path, seq: int) -> int:
    crc = LogReader(state_dir).chain_crc_at(seq)
    assert crc is not None
    return crc
