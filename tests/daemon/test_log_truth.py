"""One truth about the log: the real `memstate log verify` and the real `memstate run` agree.

Reproduces issue 10's report: stop the daemon, `truncate -s -8` the last segment. Before the fix
`log verify` said ok (exit 0) while `memstate run` refused (65); and a cut exactly at a record
boundary of acknowledged records, with no checkpoint over them, was not detected at all. Here
both refuse with 65 and the same message (file, offset, seq) naming the missing acknowledged
records. A sample of other damage goes through both real processes too (the exhaustive sweep is
in-process: tests/store/test_damage.py); where the log is accepted, the daemon reaches READY and
records what it cut as `log_tail_truncated`, with a `.broken` copy.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from memstate.core.events import LogTailTruncated
from memstate.store.checkpoint import list_checkpoints
from memstate.store.format import MARK_SLOT_BYTES, mark_slot_offset
from memstate.store.reader import LogReader
from tests.daemon.harness import ROOT, Node, pod_manifest
from tests.daemon.test_e2e import admitted


def verify_cli(node: Node) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "memstate", "log", "verify", "--state-dir", str(node.state_dir)],
        cwd=node.root,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr


def run_daemon(node: Node) -> tuple[int | None, str]:
    """Start the real daemon; (exit code, stderr) if it refuses, (None, "") once READY."""
    before = len(node.stderr())
    node.start(wait_ready=False)
    assert node.process is not None
    try:
        node.wait_ready()
    except AssertionError:
        code = node.process.wait(timeout=60)
        node.process = None
        return code, node.stderr()[before:]
    return None, ""


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("memstate: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def stopped(make_node: Callable[..., Node]) -> Node:
    """A node whose daemon admitted two pods and was stopped cleanly (SIGTERM, exit 0)."""
    node = make_node()
    node.start()
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi"))
    node.drop("b.yaml", pod_manifest("pod-b", "1Gi"))
    node.wait_for(admitted("pod-a"))
    node.wait_for(admitted("pod-b"))
    assert node.terminate() == 0
    return node


def last_segment(node: Node) -> Path:
    return max((node.state_dir / "log").glob("*.evlog"))


def both_refuse_alike(node: Node, *, expect: str) -> str:
    code, verify_err = verify_cli(node)
    run_code, run_err = run_daemon(node)
    assert (code, run_code) == (65, 65), (verify_err, run_err)
    line = error_line(verify_err)
    assert line == error_line(run_err)
    assert expect in line, line
    return line


def test_truncate_8_bytes_after_a_clean_stop_is_refused_by_verify_and_start_up(
    stopped: Node,
) -> None:
    segment = last_segment(stopped)
    os.truncate(segment, segment.stat().st_size - 8)  # truncate -s -8
    line = both_refuse_alike(stopped, expect="acknowledged")
    assert segment.name in line and "missing" in line


def test_cut_at_a_record_boundary_of_acknowledged_records_is_detected(stopped: Node) -> None:
    # No checkpoint over the cut records: only the acknowledged mark can tell.
    for _, path in list_checkpoints(stopped.state_dir):
        path.unlink()
    records = list(LogReader(stopped.state_dir).read_raw())
    last = records[-1]
    segment = stopped.state_dir / "log" / last.segment
    os.truncate(segment, last.offset)  # exactly at the start of the last record
    # The last record is a decision: its transaction goes with it, and all of it is named.
    line = both_refuse_alike(stopped, expect=f"..{last.seq} are missing")
    assert "acknowledged records" in line and line.count("memstate log repair") == 1


def test_a_torn_tail_of_unacknowledged_bytes_is_cut_by_both_alike(stopped: Node) -> None:
    # What a crash during an append leaves: bytes after the last acknowledged record.
    segment = last_segment(stopped)
    records = list(LogReader(stopped.state_dir).read_raw())
    before = len(records)
    with segment.open("ab") as file:
        # The head of the next frame and part of its payload: the rest never landed.
        file.write(struct.pack("<IIQ", 0x1234, 200, records[-1].seq + 1) + b"\x91" * 50)
    code, err = verify_cli(stopped)
    assert code == 0, err
    run_code, run_err = run_daemon(stopped)
    assert run_code is None, run_err
    notes = [r for r in stopped.records() if isinstance(r.event, LogTailTruncated)]
    assert len(notes) == 1 and Path(notes[0].event.broken_copy).exists()
    assert len(stopped.records()) > before
    assert stopped.terminate() == 0


def test_damaged_mark_slot_and_mid_log_flip(stopped: Node) -> None:
    segment = last_segment(stopped)
    data = bytearray(segment.read_bytes())
    # One mark slot damaged (a torn mark write looks the same): both accept.
    slot = mark_slot_offset(0)
    data[slot + 3] ^= 0x10
    segment.write_bytes(bytes(data))
    code, err = verify_cli(stopped)
    assert code == 0, err
    run_code, run_err = run_daemon(stopped)
    assert run_code is None, run_err
    assert stopped.terminate() == 0
    # A flipped bit in an acknowledged record's payload, before the last one: both refuse.
    for _, path in list_checkpoints(stopped.state_dir):
        path.unlink()  # start-up then reads every record
    records = list(LogReader(stopped.state_dir).read_raw())
    target = records[len(records) // 2]
    path = stopped.state_dir / "log" / target.segment
    data = bytearray(path.read_bytes())
    data[target.offset + 16 + MARK_SLOT_BYTES // 8] ^= 0x01
    path.write_bytes(bytes(data))
    both_refuse_alike(stopped, expect=f"offset {target.offset}")
