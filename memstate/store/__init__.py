"""Durable storage: the event log, checkpoints, start-up recovery and offline repair.

Synchronous, trio-free, `os` only; the daemon calls it through `trio.to_thread.run_sync` with a
`CapacityLimiter(1)` of its own. Layout of a state directory:

    <state_dir>/LOCK                    flock of the single writer (readers take no lock)
    <state_dir>/log/%020d.evlog         segments, named by their first seq
    <state_dir>/log/ORIGIN              only after pruning: where the log now starts
    <state_dir>/snap/%020d.snap         checkpoints, named by the seq they include

On-disk formats and the recovery policy: docs/event-log.md.
"""

from memstate.store.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    oldest_checkpoint_seq,
    prune_checkpoints,
    write_checkpoint,
)
from memstate.store.inspection import inspect_log
from memstate.store.problems import LogProblem, RecoveryReport, SegmentInfo
from memstate.store.reader import LogReader, RawRecord
from memstate.store.recovery import Recovered, recover_state
from memstate.store.scan import MAX_BATCH_RECORDS
from memstate.store.verify import VerifyReport, check_sealed_bodies, verify
from memstate.store.writer import DEFAULT_SEGMENT_BYTES, EventLog

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_BATCH_RECORDS",
    "Checkpoint",
    "EventLog",
    "LogProblem",
    "LogReader",
    "RawRecord",
    "Recovered",
    "RecoveryReport",
    "SegmentInfo",
    "VerifyReport",
    "check_sealed_bodies",
    "inspect_log",
    "list_checkpoints",
    "load_checkpoint",
    "oldest_checkpoint_seq",
    "prune_checkpoints",
    "recover_state",
    "verify",
    "write_checkpoint",
]
