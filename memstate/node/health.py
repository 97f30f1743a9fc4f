"""What `/healthz` and `/readyz` answer: the daemon's heartbeat and its readiness.

Liveness (`Heartbeat`): the process is alive and its loops are turning. Each periodic loop beats
every time it goes round, saying how long it may take until the next beat (its period); a loop
whose last beat is older than twice its period plus `HEARTBEAT_GRACE_SECONDS` is overdue — stuck
in a scan or a cgroup write that never returns. That the endpoint answers at all shows that the
trio loop runs. The clock is injected (monotonic seconds), so tests drive it.

Readiness (`Readiness`): the log is recovered and the pods readmitted, the cgroup tree has
converged to the targets, and every pod source is in sync. Not ready is not unhealthy: a node
whose tree has not converged (a removed pod's processes still running) is alive and should not be
restarted, but is not done either. Both give a one-line reason when they fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

HEARTBEAT_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class _Beat:
    at: float
    every_seconds: float


class Heartbeat:
    """When each loop last went round, against a monotonic `clock` (seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, _Beat] = {}

    def beat(self, loop: str, every_seconds: float) -> None:
        """`loop` went round now and will again within `every_seconds`."""
        self._beats[loop] = _Beat(self._clock(), every_seconds)

    def overdue(self) -> str | None:
        """A one-line reason naming the first overdue loop, or None when all are turning."""
        now = self._clock()
        for loop, beat in sorted(self._beats.items()):
            allowed = 2 * beat.every_seconds + HEARTBEAT_GRACE_SECONDS
            if now - beat.at > allowed:
                return (
                    f"the {loop} loop last went round {now - beat.at:.0f} s ago "
                    f"(expected every {beat.every_seconds:g} s)"
                )
        return None


@dataclass
class Readiness:
    """Set by the daemon as it goes; `reason()` is None when ready."""

    recovered: bool = False
    converged: bool = False
    pending_removals: int = 0
    # source name -> why it is out of sync ("" or absent: in sync)
    sources: dict[str, str] = field(default_factory=dict)

    def source_in_sync(self, source: str) -> None:
        """`source` was read successfully."""
        self.sources[source] = ""

    def source_failed(self, source: str, reason: str) -> None:
        """`source` could not be read; `reason` says why (one line)."""
        self.sources[source] = reason

    def reason(self) -> str | None:
        """A one-line reason for not being ready, or None."""
        if not self.recovered:
            return "starting: the event log is being recovered and the pods readmitted"
        for source, problem in sorted(self.sources.items()):
            if problem:
                return f"source {source} is out of sync: {_one_line(problem)}"
        if not self.converged:
            if self.pending_removals:
                return (
                    f"the cgroup tree has not converged ({self.pending_removals} pod cgroups "
                    "waiting to be removed)"
                )
            return "the cgroup tree has not converged to the targets"
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
