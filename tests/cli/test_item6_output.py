"""Issue 14, item 6: output for people and programs — `-o json` on `remove` and `log prune`,
`-q` quiet everywhere (`replay -q -o json` is a summary), `log prune --dry-run` beside a running
daemon (no lock).

Method: real subprocesses on real state directories; the lock held by a real `EventLog` writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from memstate.core.events import DaemonRestarted
from memstate.history.replay import replay_state
from memstate.store.checkpoint import write_checkpoint
from memstate.store.reader import LogReader
from memstate.store.scan import list_segments
from memstate.store.writer import EventLog

ROOT = Path(__file__).resolve().parents[2]


def memstate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )


def test_item6_replay_quiet_json_is_the_summary_only() -> None:
    scenario = str(ROOT / "replay" / "memory-qos-tiered.jsonl")
    full = json.loads(memstate("replay", scenario, "-o", "json").stdout)
    quiet = memstate("replay", scenario, "-q", "-o", "json")
    assert quiet.returncode == 0, quiet.stderr
    summary = json.loads(quiet.stdout)
    assert "state" in full and "pods" in full
    assert not {"state", "pods", "numa"} & summary.keys()
    assert summary["state_hash"] == full["state_hash"]
    assert len(quiet.stdout) < len(json.dumps(full)) / 2


def test_item6_log_prune_dry_run_needs_no_lock_and_speaks_json(tmp_path: Path) -> None:
    from tests.store.test_log_cmd import _chain_at

    with EventLog.open(tmp_path, fsync=False, segment_bytes=4096) as log:
        for _ in range(300):
            log.append([(DaemonRestarted(), 0)], ts_ns=1)
        middle = log.last_seq // 2
    at_middle = replay_state(LogReader(tmp_path).read(1, middle))
    write_checkpoint(tmp_path, at_middle, seq=middle, chain_crc=_chain_at(tmp_path, middle))
    before = [path.name for _, path in list_segments(tmp_path / "log")]
    with EventLog.open(tmp_path, fsync=False, segment_bytes=4096):  # the "daemon" holds the lock
        dry = memstate("log", "prune", "--state-dir", str(tmp_path), "--dry-run", "-o", "json")
        assert dry.returncode == 0, dry.stderr
        document = json.loads(dry.stdout)
        assert document["dry_run"] is True and document["checkpoint_seq"] == middle
        assert document["segments"] and set(document["segments"]) < set(before)
        real = memstate("log", "prune", "--state-dir", str(tmp_path), "-o", "json")
        assert real.returncode == 75, real.stderr
    assert [path.name for _, path in list_segments(tmp_path / "log")] == before
    done = memstate("log", "prune", "--state-dir", str(tmp_path), "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    after = {path.name for _, path in list_segments(tmp_path / "log")}
    assert after == set(before) - set(document["segments"])


def test_item6_status_table_shows_qos_cgroups_and_container_memory_high(tmp_path: Path) -> None:
    node = tmp_path / "demo"
    assert memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "1").returncode == 0
    state = str(node / "state")
    table = memstate("status", "--state-dir", state, "-o", "table", "--wide")
    assert table.returncode == 0, table.stderr
    document = json.loads(memstate("status", "--state-dir", state, "-o", "json").stdout)
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line.strip()}
    for target in document["targets"]["cgroups"]:
        if target["level"] == "qos":
            assert rows[target["path"]][1] == "qos"
            assert rows[target["path"]][4] == target["files"]["memory.high"]
    for pod in document["pods"]:
        for container in pod["containers"]:
            path = f"{pod['cgroup']}/{container['name']}"
            assert rows[path][1] == "container", table.stdout
    # The Burstable container's throttling point (memory.high) is the one below its limit.
    web = next(p for p in document["pods"] if p["name"] == "web")
    assert rows[f"{web['cgroup']}/nginx"][4] not in ("max", "-")


def test_item6_audit_draws_progress_on_a_terminal_and_erases_it(tmp_path: Path) -> None:
    """`audit` reads every record: on a terminal it shows how far it is (stderr only), and
    erases the bar before the answer; piped, stderr stays empty."""
    import pty

    with EventLog.open(tmp_path, fsync=False) as log:
        for _ in range(20):
            log.append([(DaemonRestarted(), 0)] * 1000, ts_ns=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "memstate", "audit", "timeline", "--state-dir"]
    command += [str(tmp_path), "-o", "json"]
    main, terminal = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, cwd=ROOT, env=env)
    os.close(terminal)
    stdout, _ = process.communicate(timeout=300)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.returncode == 0
    assert len(json.loads(stdout)) == 20_000
    assert b"audit [" in shown and b"/20000" in shown
    assert shown.endswith(b"\r\x1b[K")
    piped = memstate("audit", "timeline", "--state-dir", str(tmp_path), "-o", "json")
    assert piped.returncode == 0 and piped.stderr == ""
