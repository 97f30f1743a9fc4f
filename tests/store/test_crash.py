"""SIGKILL crash test: acknowledged records survive, byte for byte, across real process kills.

Goal: prove the write path's promise — `append` returns only after the batch is durable, and
recovery loses nothing it returned — against real processes killed at random moments (mid-write,
between write and fsync, mid-rotation, during recovery itself).

Method: a fork server (tests/store/crash_writer.py, started with `sys.executable`) forks one
writer process per iteration. The writer recovers the log, rebuilds its state from the newest
checkpoint, then appends random transactions (checkpointing as it goes), writing
`ack <seq> <payload hex>` after each `append` returns. After a random delay the test SIGKILLs
it — usually once it is writing, sometimes while it is still recovering — then runs recovery on
a *copy* of the state directory with the real writer and checks that recovery succeeded, that
sequence numbers are contiguous, and that every acknowledged record is present with identical
bytes. The original is left as the kill left it, so the next writer recovers it itself (and may
be killed doing so). At the end, start-up recovery must rebuild the same state as an
independent replay of the whole log.

MEMSTATE_CRASH_ITERATIONS (default 50) raises the number of kills for soak runs.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from memstate.core.events import LogTailTruncated
from memstate.history.replay import replay_state
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = int(os.environ.get("MEMSTATE_CRASH_ITERATIONS", "50"))


class ForkServer:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.store.crash_writer", "serve"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def request(self, *fields: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\t".join(fields) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        assert ready, "fork server did not answer"
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def wait_for(ack_path: Path, start: int, marker: str) -> None:
    """Wait until the writer's output since `start` holds `marker` ("ready ", "ack ")."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = ack_path.read_bytes()[start:].decode(errors="replace")
        if "error " in text:
            raise AssertionError(f"writer failed: {text}")
        if marker in text:
            return
        time.sleep(0.001)
    raise AssertionError(f"writer never wrote {marker.strip()!r}")


def parse_acks(text: str) -> dict[int, str]:
    acks = {}
    for line in text.split("\n")[:-1]:  # the last piece may be a line cut by the kill
        if line.startswith("error "):
            raise AssertionError(f"writer failed: {line}")
        if line.startswith("ack "):
            _, seq, payload = line.split(" ")
            acks[int(seq)] = payload
    return acks


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20260301)
    state_dir = tmp_path / "state"
    ack_path = tmp_path / "acks.txt"
    ack_path.write_bytes(b"")
    acknowledged: dict[int, str] = {}
    truncations = 0
    writing_kills = 0
    server = ForkServer()
    try:
        for iteration in range(ITERATIONS):
            start = ack_path.stat().st_size
            pid = int(
                server.request("spawn", str(state_dir), str(iteration), "65536", str(ack_path))
            )
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0, 0.004))  # during open / recovery / recover_state
            else:
                # Kill it once it is writing: its first acknowledgement is in, then a random
                # moment later (on a loaded machine a fixed delay after "ready" may see none).
                wait_for(ack_path, start, "ready ")
                wait_for(ack_path, start, "ack ")
                writing_kills += 1
                time.sleep(rng.uniform(0, 0.02))
            os.kill(pid, signal.SIGKILL)
            status = int(server.request("wait", str(pid)))
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            new = parse_acks(ack_path.read_bytes()[start:].decode())
            assert not set(new) & set(acknowledged), "a seq was acknowledged twice"
            acknowledged.update(new)

            check_dir = tmp_path / "check"
            shutil.copytree(state_dir, check_dir)
            with EventLog.open(check_dir) as log:  # recovery must succeed
                truncations += log.recovery.truncated
                last_seq = log.last_seq
            stored = {r.seq: r.payload for r in LogReader(check_dir).read_raw()}
            shutil.rmtree(check_dir)
            assert list(stored) == list(range(1, last_seq + 1)), "sequence numbers not contiguous"
            for seq, payload_hex in acknowledged.items():
                assert seq in stored, f"acknowledged seq {seq} lost (iteration {iteration})"
                assert stored[seq].hex() == payload_hex, f"seq {seq} changed"
    finally:
        server.close()
    with EventLog.open(state_dir):
        pass
    envelopes = list(LogReader(state_dir).read())
    recovered = recover_state(state_dir)
    assert recovered.state == replay_state(envelopes)
    notes = sum(isinstance(e.event, LogTailTruncated) for e in envelopes)
    print(
        f"\n{ITERATIONS} kills, {len(acknowledged)} acknowledged records checked, "
        f"{len(envelopes)} records in the log, {truncations} torn tails recovered "
        f"({notes} recorded as notes), start-up from checkpoint {recovered.checkpoint_seq}"
    )
    # The writer really got to write between kills: every kill while writing followed an ack.
    assert writing_kills > ITERATIONS // 2
    assert len(acknowledged) >= writing_kills
