"""The cgroup watch screens a batch only once no admission is in flight and no reconcile round
is due or running (or the deferral ran out).

Method: `watch_cgroups` over a plain directory (real inotify) under trio's MockClock with
autojump: virtual time advances only when every task waits, and a write's inotify event is
queued by the write itself, so the watch has read and settled the batch before the test's
virtual sleep ends. The screen records when it runs; `pace` is the daemon's
`AdmissionsInFlight.wait_quiet`; an admission in flight is `scanning()` held open, a round
running is `converging()` held open, a round due is the reconcile wake-up set. No real
durations are asserted.

Without the pace (the screen judging as soon as the batch settled, as at e8b4cf1) the first
assertion of the first three tests fails: the batch has been screened during the admission or
the round; with `wait_idle` as the pace (stop 21's tried 81f62c4: after the admissions only)
the round tests fail.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from memstate.node.admissions import MAX_ROUND_DEFER_SECONDS, AdmissionsInFlight
from memstate.node.cgroup_watch import DEFAULT_SETTLE_SECONDS, watch_cgroups
from memstate.node.watching import Batch

POD = "kubepods/pod-a"


class Watched:
    """A tree with one pod cgroup, and what the watch's screen and hints saw (virtual times)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / POD).mkdir(parents=True)
        (root / POD / "memory.min").write_text("0\n")
        self.round_due = False
        self.admissions = AdmissionsInFlight(lambda: False, round_due=lambda: self.round_due)
        self.screened: list[float] = []
        self.hints: list[str] = []

    def screen(self, batch: Batch) -> Batch:
        self.screened.append(trio.current_time())
        return batch

    def watch(self, *, paced: bool) -> object:
        return watch_cgroups(
            self.root,
            on_hint=self.hints.append,
            screen=self.screen,
            pace=self.admissions.wait_quiet if paced else None,
        )

    def write(self) -> None:
        (self.root / POD / "memory.min").write_text(str(2**30))


def _run(test: object, root: Path) -> None:
    async def main() -> None:
        watched = Watched(root)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watched.watch(paced=True))
            await trio.sleep(0.001)  # the watch task sets its inotify watches, then waits
            await test(watched)  # type: ignore[operator]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_batch_waits_for_the_admission_in_flight(tmp_path: Path) -> None:
    async def test(watched: Watched) -> None:
        with watched.admissions.scanning():
            watched.write()
            # Settled long ago, but the admission is still in flight: not judged yet.
            await trio.sleep(3 * DEFAULT_SETTLE_SECONDS)
            assert watched.screened == []
            assert watched.hints == []
            done = trio.current_time()
        await trio.sleep(0.001)
        assert watched.screened == [done]  # judged as soon as the admission was through
        assert watched.hints == [POD]

    _run(test, tmp_path)


def test_a_batch_waits_for_the_round_running(tmp_path: Path) -> None:
    async def test(watched: Watched) -> None:
        with watched.admissions.converging():
            watched.write()
            await trio.sleep(3 * DEFAULT_SETTLE_SECONDS)
            assert watched.screened == []
            done = trio.current_time()
        await trio.sleep(0.001)
        assert watched.screened == [done]
        assert watched.hints == [POD]

    _run(test, tmp_path)


def test_a_batch_waits_for_the_round_due_after_the_admission(tmp_path: Path) -> None:
    # The admission's commit asked for a round: at the scan's end the round is due, not
    # started; the batch waits for it to run and end.
    async def test(watched: Watched) -> None:
        with watched.admissions.scanning():
            watched.write()
            await trio.sleep(3 * DEFAULT_SETTLE_SECONDS)
            watched.round_due = True
        await trio.sleep(0.01)
        assert watched.screened == []
        with watched.admissions.converging():
            watched.round_due = False
            await trio.sleep(0.01)
            assert watched.screened == []
            done = trio.current_time()
        await trio.sleep(0.001)
        assert watched.screened == [done]
        assert watched.hints == [POD]

    _run(test, tmp_path)


def test_a_batch_is_judged_when_the_admission_outlasts_the_deferral(tmp_path: Path) -> None:
    # A foreign write is still hinted (and so corrected) while admissions keep coming.
    async def test(watched: Watched) -> None:
        with watched.admissions.scanning():
            watched.write()
            await trio.sleep(DEFAULT_SETTLE_SECONDS + MAX_ROUND_DEFER_SECONDS + 0.01)
            assert len(watched.screened) == 1
            assert watched.hints == [POD]

    _run(test, tmp_path)


def test_without_an_admission_a_batch_is_judged_once_settled(tmp_path: Path) -> None:
    async def test(watched: Watched) -> None:
        watched.write()
        await trio.sleep(3 * DEFAULT_SETTLE_SECONDS)
        assert len(watched.screened) == 1
        assert watched.screened[0] <= 2 * DEFAULT_SETTLE_SECONDS
        assert watched.hints == [POD]

    _run(test, tmp_path)
