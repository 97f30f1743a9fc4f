"""A log writer to be killed: the subject of the SIGKILL crash test (tests/store/test_crash.py).

`write` mode is the daemon's append loop in miniature: open the log (recovering it), rebuild the
state with `recover_state`, record the truncation note if there was one, then append random
transactions forever, writing `ack <seq> <payload hex>` for every record *after* `append`
returned (the acknowledgement), with a checkpoint every few batches and now and then a large
batch. It never exits by itself.

`serve` mode is a fork server: it imports everything once, then forks one writer per request
read from stdin (`spawn`) and reaps it on request (`wait`). Each writer is a real process with
its own file descriptors and its own flock; the test SIGKILLs it by pid. Forking from a
pre-imported process keeps each crash iteration at milliseconds instead of an interpreter start,
so the normal test run can afford many kills.

    python -m tests.store.crash_writer write STATE_DIR SEED SEGMENT_BYTES ACK_FILE
    python -m tests.store.crash_writer serve
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
import traceback
from pathlib import Path

from memstate.core.codec import encode_envelope
from memstate.core.events import CgroupOrphanFound
from memstate.store.checkpoint import prune_checkpoints, write_checkpoint
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog
from tests.store.helpers import Node


def write(state_dir: Path, seed: int, segment_bytes: int, ack_fd: int) -> None:
    """Recover, then append and acknowledge batches until killed."""
    log = EventLog.open(state_dir, fsync=True, segment_bytes=segment_bytes)
    recovered = recover_state(state_dir)
    if recovered.last_seq != log.last_seq:
        raise AssertionError(f"recover_state ends at {recovered.last_seq}, log at {log.last_seq}")
    node = Node(seed, state=recovered.state, uid_prefix=f"s{seed}-")
    rng = random.Random(seed)
    batches = [] if recovered.state.config is not None else node.start()
    note = log.recovery.tail_truncated_event()
    if note is not None:
        batches.insert(0, [(note, None)])
    os.write(ack_fd, f"ready {log.last_seq}\n".encode())
    for count in itertools.count(1):
        if batches:
            batch = batches.pop(0)
        elif rng.random() < 0.05:
            # A larger batch (~20-60 KiB): a kill can land inside its write.
            batch = [(CgroupOrphanFound(path="/" + "p" * 400), None)] * rng.randint(50, 150)
        else:
            batch = node.group(rng.randint(1, 6))
        envelopes = log.append(batch, ts_ns=time.time_ns())
        lines = "".join(f"ack {e.seq} {encode_envelope(e).hex()}\n" for e in envelopes)
        os.write(ack_fd, lines.encode())
        if count % 8 == 0:
            # What the daemon does every N events: checkpoint at a transaction boundary.
            write_checkpoint(state_dir, node.state, seq=log.last_seq, chain_crc=log.chain_crc)
            prune_checkpoints(state_dir, keep=2)


def _child(args: list[str]) -> None:
    state_dir, seed, segment_bytes, ack_path = args
    ack_fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write(Path(state_dir), int(seed), int(segment_bytes), ack_fd)
    except BaseException:
        os.write(ack_fd, ("error " + traceback.format_exc().replace("\n", " | ") + "\n").encode())
        os._exit(1)


def serve() -> None:
    """Fork one writer per `spawn` line; reap one per `wait` line."""
    for line in sys.stdin:
        command, *args = line.rstrip("\n").split("\t")
        if command == "spawn":
            pid = os.fork()
            if pid == 0:
                sys.stdin.close()
                _child(args)
                os._exit(0)
            print(pid, flush=True)
        elif command == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(status, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        _child(sys.argv[2:])
