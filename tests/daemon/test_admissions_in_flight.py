"""`AdmissionsInFlight.wake_after_scan` and `Wakeup.set_by`: a round asked for during a scan is
woken at the scan's end, not before, and no later than `MAX_ROUND_DEFER_SECONDS` after it was
asked for when the scan does not end, as when it was woken at once and waited (`wait_idle`).
Virtual time (trio's MockClock): no real durations are asserted."""

from __future__ import annotations

import trio
import trio.testing

from memstate.node.admissions import MAX_ROUND_DEFER_SECONDS, AdmissionsInFlight
from memstate.node.context import Wakeup


def _run(test: object) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_without_a_scan_the_wake_up_is_given_at_once() -> None:
    async def test() -> None:
        wake = Wakeup()
        AdmissionsInFlight(lambda: False).wake_after_scan(wake)
        assert wake.is_set()
        assert await wake.wait(10.0)
        assert trio.current_time() == 0.0

    _run(test)


def test_a_wake_up_asked_for_during_a_scan_is_given_at_its_end() -> None:
    async def test() -> None:
        admissions = AdmissionsInFlight(lambda: False)
        wake = Wakeup()
        woken: list[tuple[bool, float]] = []

        async def waiter() -> None:
            woken.append((await wake.wait(10.0), trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            with admissions.scanning():
                admissions.wake_after_scan(wake)
                assert not wake.is_set()
                await trio.sleep(MAX_ROUND_DEFER_SECONDS / 2)
                assert woken == []  # not woken while the scan is open
                ended = trio.current_time()
            assert wake.is_set()
        assert woken == [(True, ended)]
        assert await admissions.wait_idle()
        assert trio.current_time() == ended

    _run(test)


def test_a_scan_that_does_not_end_delays_the_wake_up_by_a_bounded_time() -> None:
    async def test() -> None:
        admissions = AdmissionsInFlight(lambda: False)
        wake = Wakeup()
        with admissions.scanning():
            await trio.sleep(1.0)
            asked = trio.current_time()
            admissions.wake_after_scan(wake)
            assert await wake.wait(10.0)  # woken by the bound, the scan still open
            assert trio.current_time() == asked + MAX_ROUND_DEFER_SECONDS
            # The round has waited its time for the admission already.
            assert not await admissions.wait_idle()
            assert trio.current_time() == asked + MAX_ROUND_DEFER_SECONDS
            # The next wait is an ordinary one again.
            assert not await wake.wait(1.0)
            assert trio.current_time() == asked + MAX_ROUND_DEFER_SECONDS + 1.0

    _run(test)


def test_set_by_a_deadline_while_a_task_waits_moves_its_wake_up_earlier() -> None:
    async def test() -> None:
        wake = Wakeup()
        woken: list[tuple[bool, float]] = []

        async def waiter() -> None:
            woken.append((await wake.wait(10.0), trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1.0)
            wake.set_by(3.0)
            wake.set_by(5.0)  # the earliest deadline holds
        assert woken == [(True, 3.0)]

    _run(test)
