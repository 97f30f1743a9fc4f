"""Everything the daemon touches outside the process, injected.

`Adapters()` is production: the wall clock, worker threads for file I/O, the log in the state
directory, the cgroup tree and topology of the settings, sd_notify from the environment, inotify
watches and the status file. The deterministic simulation (tests/sim) replaces each with an
in-memory one and runs the daemon under trio's `MockClock` in one thread.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memstate.core.events import LogTailTruncated
from memstate.core.invariants import check_invariants
from memstate.core.removals import PendingRemovals
from memstate.core.state import State
from memstate.core.topology import Topology
from memstate.host.cgroupfs import CgroupFS
from memstate.node.sdnotify import Notifier
from memstate.node.sources.configure import NetworkSource
from memstate.node.sources.observation import ObservedPod
from memstate.node.worker_threads import in_worker_thread
from memstate.node.writer import LogAppender, RunIO
from memstate.store.recovery import Recovered

logger = logging.getLogger("memstate.node.adapters")


@dataclass(frozen=True)
class OpenedLog:
    """A recovered log, ready for appends, and the state rebuilt from it."""

    log: LogAppender
    recovered: Recovered
    truncated: LogTailTruncated | None  # a torn tail cut at open, to be recorded


class LogStorage(Protocol):
    """The durable log and its checkpoints (files in the state directory in production)."""

    def open(self) -> OpenedLog:
        """Recover the log (cut a torn tail) and rebuild the state; raises MemstateError."""
        ...

    def write_checkpoint(
        self, state: State, seq: int, chain_crc: int, removals: PendingRemovals
    ) -> None:
        """Write a checkpoint of `state` at `seq` (and prune what it makes redundant)."""
        ...

    def close(self) -> None:
        """Close the log (final fsync); the storage is not used afterwards."""
        ...


class FileLogStorage:
    """The event log and checkpoints under `state_dir` (memstate.store)."""

    def __init__(
        self, state_dir: Path, *, fsync: bool, checkpoints_keep: int, prune_log: bool
    ) -> None:
        self.state_dir = state_dir
        self.fsync = fsync
        self.checkpoints_keep = checkpoints_keep
        self.prune_log = prune_log
        self._log: object | None = None

    def open(self) -> OpenedLog:
        from memstate.store.recovery import recover_state
        from memstate.store.writer import EventLog

        log = EventLog.open(self.state_dir, fsync=self.fsync)
        self._log = log
        recovered = recover_state(self.state_dir)
        return OpenedLog(log, recovered, log.recovery.tail_truncated_event())

    def write_checkpoint(
        self, state: State, seq: int, chain_crc: int, removals: PendingRemovals
    ) -> None:
        from memstate.store.checkpoint import (
            oldest_checkpoint_seq,
            prune_checkpoints,
            write_checkpoint,
        )
        from memstate.store.writer import EventLog

        check_invariants(state)
        write_checkpoint(self.state_dir, state, seq=seq, chain_crc=chain_crc, removals=removals)
        prune_checkpoints(self.state_dir, self.checkpoints_keep)
        log = self._log
        if self.prune_log and isinstance(log, EventLog):
            oldest = oldest_checkpoint_seq(self.state_dir)
            if oldest is not None:
                for name in log.prune_segments(through_seq=oldest):
                    logger.info("pruned log segment %s (before checkpoint %d)", name, oldest)

    def close(self) -> None:
        from memstate.store.writer import EventLog

        log, self._log = self._log, None
        if isinstance(log, EventLog):
            log.close()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Adapters:
    """The daemon's outside world; the defaults are production. See the module docstring.

    `None` fields are derived from the settings at start-up: `storage` the state directory,
    `cgroup_fs` the cgroup root (or cgroupSim tree), `topology` sysfs (or the topology file),
    `sources` the kubelet/API-server sources named in podSources, `read_manifests` the
    manifest directory. `yield_cpu` gives the CPU up once (before a reconcile round:
    memstate.node.loops.converge). `host_loops` runs the
    watchers that need the real host (inotify on the manifest directory, the config file and
    the cgroup tree; the sealed-segment check) and writes the status file.
    """

    wall_clock_ns: Callable[[], int] = time.time_ns
    run_io: RunIO = in_worker_thread
    # A scoped reconcile round may run on the event loop instead of `run_io` while rounds are
    # fast (memstate.node.loops.converge); a test that holds rounds in its `run_io` turns it off.
    inline_rounds: bool = True
    yield_cpu: Callable[[], None] = os.sched_yield
    storage: Callable[[], LogStorage] | None = None
    cgroup_fs: CgroupFS | None = None
    topology: Topology | None = None
    sources: Sequence[NetworkSource] | None = None
    read_manifests: Callable[[], Sequence[ObservedPod]] | None = None
    notifier: Notifier | None = None
    host_loops: bool = True
    boot_id: Callable[[], str] = _boot_id


def file_storage(
    state_dir: Path, *, fsync: bool, checkpoints_keep: int, prune_log: bool
) -> Callable[[], LogStorage]:
    """A factory for the production storage (for `Adapters.storage`)."""
    return functools.partial(
        FileLogStorage,
        state_dir,
        fsync=fsync,
        checkpoints_keep=checkpoints_keep,
        prune_log=prune_log,
    )
