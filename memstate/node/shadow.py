"""Shadow mode in the daemon (`mode: shadow`): compare memstate's decisions with the kubelet's.

Every decision is made and recorded as in any mode; the reconciler runs with
`ReconcilerOptions(shadow=True)`, which observes and plans but writes, creates and removes
nothing, and reports the pod cgroup values that differ from memstate's targets
(`ShadowWatch.cgroups_observed`, called after each round). This loop adds the kubelet Memory
Manager's checkpoint: re-read when its file changes (checked every `STAT_SECONDS`) and at least
every `resyncSeconds`. Each comparison turns into `shadow_disagreement` notes only where
something started, changed or ended (memstate.core.shadow), each also a journal line and the
`memstate_shadow_disagreements{kind}` gauge; `memstate shadow report` lists the open ones.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from memstate.core.errors import InputError
from memstate.core.events import Event, ShadowDisagreement
from memstate.core.kubelet_checkpoint import KubeletCheckpoint
from memstate.core.shadow import (
    CHECKPOINT_SUBJECTS,
    Key,
    Values,
    changes,
    checkpoint_view,
    fold,
    open_disagreements,
)
from memstate.core.state import State
from memstate.node.kubelet_state import read_checkpoint
from memstate.node.metrics import Metrics
from memstate.node.settings import Settings
from memstate.node.writer import RunIO
from memstate.reconcile.reconciler import SHADOW_FILES, FileDifference

logger = logging.getLogger(__name__)

STAT_SECONDS = 2.0  # how often the checkpoint file's identity is looked at
CGROUP_SUBJECTS = frozenset(SHADOW_FILES)


class ShadowWatch:
    """The comparison's memory: what was recorded, the latest checkpoint and cgroup views."""

    def __init__(self, checkpoint_path: Path) -> None:
        self.checkpoint_path = checkpoint_path
        self.recorded: dict[Key, Values] = {}
        self.checkpoint: KubeletCheckpoint | None = None
        self._cgroups: dict[Key, Values] | None = None
        self._identity: tuple[int, int, int] | None = None
        self._read_problem = ""
        self.wake = trio.Event()

    def seed(self, notes: Iterable[ShadowDisagreement]) -> None:
        """Start from the disagreements the log holds open (so a restart repeats none)."""
        fold(self.recorded, notes)

    def cgroups_observed(self, differences: Sequence[FileDifference]) -> None:
        """The pod cgroup files that differ after a shadow reconcile round."""
        self._cgroups = {
            (d.uid, d.file): Values(memstate=d.target, kubelet=d.found, where=d.path)
            for d in differences
        }
        self.wake.set()

    def checkpoint_changed(self) -> bool:
        """Whether the file's identity (inode, size, mtime) changed since the last read."""
        try:
            info = os.stat(self.checkpoint_path)
        except OSError:
            return self._identity is not None
        return (info.st_ino, info.st_size, info.st_mtime_ns) != self._identity

    def read_checkpoint(self) -> None:
        """Read the checkpoint (blocking); a problem is logged once and the last view kept."""
        try:
            info = os.stat(self.checkpoint_path)
            identity = (info.st_ino, info.st_size, info.st_mtime_ns)
            checkpoint = read_checkpoint(self.checkpoint_path)
        except (OSError, InputError) as exc:
            problem = str(exc)
            if problem != self._read_problem:
                logger.warning("shadow: kubelet checkpoint not compared: %s", problem)
            self._read_problem = problem
            self._identity = None
            return
        if self._read_problem:
            logger.info("shadow: kubelet checkpoint %s readable again", self.checkpoint_path)
        self._read_problem = ""
        self._identity = identity
        self.checkpoint = checkpoint

    def compare(self, state: State) -> list[ShadowDisagreement]:
        """The notes for what changed since the last comparison; `recorded` is updated."""
        notes: list[ShadowDisagreement] = []
        if self.checkpoint is not None:
            view = checkpoint_view(state, self.checkpoint, str(self.checkpoint_path))
            notes += changes(self.recorded, view, CHECKPOINT_SUBJECTS)
        if self._cgroups is not None:
            # A pod memstate no longer holds has no targets to compare with: its cgroup rows end.
            notes += changes(self.recorded, self._cgroups, CGROUP_SUBJECTS)
        fold(self.recorded, notes)
        return notes

    def counts(self) -> Counter[str]:
        """Open disagreements by subject (the gauge's `kind`)."""
        return Counter(subject for _, subject in self.recorded)


class ShadowHost(Protocol):
    """What the shadow loop uses of the daemon (memstate.node.daemon.Daemon)."""

    settings: Settings
    metrics: Metrics
    run_io: RunIO
    shadow: ShadowWatch | None

    @property
    def state(self) -> State: ...

    async def submit(self, events: Sequence[Event]) -> None: ...


async def run_shadow(daemon: ShadowHost) -> None:
    """The daemon's shadow loop; returns at once unless `mode: shadow`."""
    watch = daemon.shadow
    if watch is None:
        return
    state_dir = daemon.settings.state_dir

    def recorded_notes() -> list[ShadowDisagreement]:
        from memstate.store.reader import LogReader

        rows = open_disagreements(LogReader(state_dir).read())
        return [
            ShadowDisagreement(
                uid=r.uid, subject=r.subject, memstate=r.memstate, kubelet=r.kubelet, where=r.where
            )
            for r in rows
        ]

    if (state_dir / "log").is_dir():
        watch.seed(await daemon.run_io(recorded_notes))
    last_read = -float("inf")
    while True:
        now = trio.current_time()
        if watch.checkpoint_changed() or now - last_read >= daemon.settings.resync_seconds:
            await daemon.run_io(watch.read_checkpoint)
            last_read = now
        notes = watch.compare(daemon.state)
        for note in notes:
            _journal(note)
        _publish(daemon, watch)
        if notes:
            events: list[Event] = list(notes)
            await daemon.submit(events)
        watch.wake = trio.Event()
        with trio.move_on_after(STAT_SECONDS):
            await watch.wake.wait()


def _journal(note: ShadowDisagreement) -> None:
    if note.resolved:
        logger.info(
            "shadow: pod %s %s: memstate and the kubelet agree again", note.uid, note.subject
        )
        return
    logger.warning(
        "shadow: pod %s %s: memstate %s, kubelet %s (%s)",
        note.uid,
        note.subject,
        note.memstate,
        note.kubelet,
        note.where,
    )


def _publish(daemon: ShadowHost, watch: ShadowWatch) -> None:
    counts = watch.counts()
    gauge = daemon.metrics.shadow_disagreements
    for kind in sorted({*CHECKPOINT_SUBJECTS, *CGROUP_SUBJECTS, *counts}):
        gauge.labels(kind=kind).set(counts.get(kind, 0))
