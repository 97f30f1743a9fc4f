"""Event material for the store tests: real transactions made by the real reducer.

`Node` plays the daemon's part: it asks `step` for the decisions an input implies and hands the
input plus its decisions to the log as one batch, the way the daemon does. Notes and a mix of pod
churn give records of varied sizes, so framing, padding and segment rotation are exercised.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from crc32c import crc32c

from memstate.core.events import (
    CgroupOrphanFound,
    ConfigLoaded,
    DaemonStarted,
    Envelope,
    Event,
    PodAdmissionRequested,
    PodRemovalRequested,
    TopologyObserved,
)
from memstate.core.reducer import step
from memstate.core.state import REDUCER_VERSION, State
from memstate.store.format import (
    MARK_SLOT_BYTES,
    Mark,
    SegmentHeader,
    decode_segment_header,
    encode_mark,
    iter_frames,
    mark_slot_offset,
)
from memstate.store.writer import EventLog
from tests import factories

Batch = list[tuple[Event, int | None]]
BASE_TS_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


class Node:
    """A deterministic stand-in for the daemon's decide-then-append loop."""

    def __init__(self, seed: int = 0, *, state: State | None = None, uid_prefix: str = "") -> None:
        self.state = state if state is not None else State()
        self.rng = random.Random(seed)
        self.running: list[str] = sorted(self.state.pods)
        self.counter = 0
        self.uid_prefix = uid_prefix

    def transaction(self, event: Event) -> Batch:
        """The input and its decisions as one batch; the state moves on."""
        transition = step(self.state, event)
        self.state = transition.state
        return [(event, len(transition.decisions))] + [(d, None) for d in transition.decisions]

    def start(self) -> list[Batch]:
        """Daemon start, topology and config: the node becomes ready to admit."""
        return [
            self.transaction(
                DaemonStarted(memstate_version="0.1.0", reducer_version=REDUCER_VERSION)
            ),
            self.transaction(TopologyObserved(topology=factories.topology("8Gi", "8Gi"))),
            self.transaction(ConfigLoaded(config=factories.static_config(["512Mi", "512Mi"]))),
        ]

    def churn(self) -> Batch:
        """One random transaction: admit a pod, remove one, or a note (no decisions)."""
        choice = self.rng.random()
        if choice < 0.5 or not self.running:
            self.counter += 1
            uid = f"{self.uid_prefix}uid-{self.counter:05d}"
            size = self.rng.choice(["64Mi", "128Mi", "256Mi", "1Gi"])
            batch = self.transaction(
                PodAdmissionRequested(
                    pod=factories.pod(uid, size, name=f"pod-{self.counter}", namespace="team-a"),
                    source=f"/etc/kubernetes/manifests/pod-{self.counter}.yaml",
                )
            )
            if any(e.kind == "pod_admitted" for e, _ in batch):
                self.running.append(uid)
            return batch
        if choice < 0.8:
            uid = self.running.pop(self.rng.randrange(len(self.running)))
            return self.transaction(PodRemovalRequested(uid=uid))
        path = "/sys/fs/cgroup/kubepods.slice/" + "x" * self.rng.randrange(1, 200)
        return [(CgroupOrphanFound(path=path), None)]

    def group(self, transactions: int) -> Batch:
        """Several transactions in one batch (what group commit hands the log)."""
        batch: Batch = []
        for _ in range(transactions):
            batch.extend(self.churn())
        return batch


def build_log(
    state_dir: Path,
    batches: Sequence[Batch],
    *,
    segment_bytes: int = 4096,
    fsync: bool = False,
    last_batch_acknowledged: bool = True,
) -> list[Envelope]:
    """Append `batches` (one append each) and return every envelope written.

    With `last_batch_acknowledged=False` the log looks as if the process died while writing
    the last batch, after its bytes reached the file but before its mark: the segment's mark
    says the batch before it is the last acknowledged one. That is the log a crash leaves, and
    the only kind whose damaged tail recovery may cut (docs/event-log.md, "Acknowledged mark").
    """
    written: list[Envelope] = []
    with EventLog.open(state_dir, fsync=fsync, segment_bytes=segment_bytes) as log:
        for index, batch in enumerate(batches):
            before = log.last_seq
            written.extend(log.append(batch, ts_ns=BASE_TS_NS + index * 10**9))
        segment = log.segment_path
    if not last_batch_acknowledged:
        set_mark(segment, before)
    return written


def set_mark(segment: Path, acked_seq: int) -> None:
    """Overwrite both mark slots of a segment (format 2) to say `acked_seq`, unsealed.

    Written with the format's primitives, not the writer's: tests model what a crash or a
    person leaves on disk."""
    data = bytearray(segment.read_bytes())
    header = decode_segment_header(bytes(data))
    assert isinstance(header, SegmentHeader) and header.mark is not None
    # Where record `acked_seq` ends, the chain CRC there and the CRC of the frames before it.
    end, chain = header.frames_start, header.prev_chain_crc
    if acked_seq >= header.base_seq:
        for frame in iter_frames(bytes(data), header.frames_start, header.base_seq, chain):
            if frame[1] == acked_seq:
                end, chain = frame[4], frame[5]
                break
        else:
            raise AssertionError(f"seq {acked_seq} is not in {segment.name}")
    body_crc = crc32c(bytes(data[header.frames_start : end]))
    for generation in (header.mark.generation + 1, header.mark.generation + 2):
        mark = Mark(acked_seq, chain, generation, body_end=end, body_crc=body_crc)
        offset = mark_slot_offset(generation)
        data[offset : offset + MARK_SLOT_BYTES] = encode_mark(mark)
    segment.write_bytes(bytes(data))


def standard_batches(transactions: int, *, seed: int = 0, per_batch: int = 1) -> list[Batch]:
    """Node start plus `transactions` random transactions, `per_batch` to a batch."""
    node = Node(seed)
    batches = node.start()
    remaining = transactions
    while remaining > 0:
        take = min(per_batch, remaining)
        batches.append(node.group(take))
        remaining -= take
    return batches
