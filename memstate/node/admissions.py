"""Admissions in flight, and reconcile rounds that wait for them.

An admission is latency-bound (the runtime or the kubelet waits for its decision to be durable);
a reconcile round is not (the node converges a few milliseconds later). In one process they
compete: a round runs in a worker thread and holds the interpreter (the GIL) for most of its
planning, and every step of an admission on the event loop (hearing the manifest watch, handing
the read to a thread, taking its result back, the append's hand-off) then waits for its turn;
admissions whose manifest arrived while a round ran took twice as long from the manifest to the
fsync of their decision (docs/performance.md, "stop 20: admission latency"). So a round does not
*start* while a pod source's change is on its way to a decision: the reconcile loop waits
(`wait_idle`) until the manifest directory has no change pending and no scan running, at most
`MAX_ROUND_DEFER_SECONDS` (a scan that hangs, or an endless stream of changes, delays rounds,
never stops them). Rounds coalesce meanwhile: the scopes the commit and the watches add are taken
by the one round that starts once the admission is through. A round already running when a
manifest arrives is not interrupted (it cannot be); it is short on a real cgroupfs. Only the
manifest directory is followed here; the kubelet, API-server and NRI paths are not (yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

# The longest a round waits for admissions in flight before it starts anyway.
MAX_ROUND_DEFER_SECONDS = 0.2


class AdmissionsInFlight:
    """Whether a pod source's change may be on its way to a decision (see the module docstring).

    `pending()` says a change was signalled and no scan has taken it yet (the manifest loop's
    wake-up is set); `scanning()` is held by the manifest loop around a scan and its delivery
    (which returns once the decisions it caused are durable).
    """

    def __init__(self, pending: Callable[[], bool]) -> None:
        self._pending = pending
        self._scans = 0
        self._finished = trio.Event()

    @contextmanager
    def scanning(self) -> Iterator[None]:
        """Held around one scan of a pod source and the commit of what it found."""
        self._scans += 1
        try:
            yield
        finally:
            self._scans -= 1
            self._finished.set()
            self._finished = trio.Event()

    def busy(self) -> bool:
        """A change is pending or being scanned and committed."""
        return self._scans > 0 or self._pending()

    async def wait_idle(self, timeout: float = MAX_ROUND_DEFER_SECONDS) -> bool:
        """Wait until nothing is in flight, at most `timeout` seconds; True if idle."""
        if not self.busy():
            # The usual case for a round after the scan's end: no cancel scope and deadline to
            # make and drop (the loop below would not wait either).
            return True
        with trio.move_on_after(timeout):
            while self.busy():
                await self._finished.wait()
            return True
        return False
