"""A reconcile round does not start while an admission is on its way (memstate.node.admissions):
it waits until the manifest scan and the commit of what it found are through, then one round
covers both what woke it and the new pod; a scan that never ends delays rounds by at most
`MAX_ROUND_DEFER_SECONDS`. Deterministic: trio's MockClock, the simulated node, I/O inline."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from memstate.node.admissions import MAX_ROUND_DEFER_SECONDS
from memstate.node.daemon import Daemon
from tests.sim.world import (
    CONFIG_YAML,
    _settings,
    fixed_world,
    guaranteed_observation,
    run_inline,
    sim_adapters,
)

_T = TypeVar("_T")


def _inner(fn: Callable[..., Any]) -> Any:
    return fn.func if isinstance(fn, functools.partial) else fn


def _run(tmp_path: Path, hold_read_seconds: float | None) -> dict[str, Any]:
    """Admit pod "one" with its manifest read held, and a watch hint for "kubepods" arriving
    while it is held; the read is released after `hold_read_seconds` (None: half the bound)."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    held: dict[str, trio.Event | None] = {"read": None}
    rounds: list[tuple[float, list[str] | None]] = []  # (start time, scope) of every round
    seen: dict[str, Any] = {}

    async def gated_io(fn: Callable[[], _T], *, limiter: Any = None) -> _T:
        inner = _inner(fn)
        if getattr(inner, "__qualname__", "") == "Reconciler.reconcile":
            assert isinstance(fn, functools.partial)
            rounds.append((trio.current_time(), fn.keywords["scope"]))
        elif inner == world.read_pods and held["read"] is not None:
            await held["read"].wait()
        return await run_inline(fn)

    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world, run_io=gated_io))

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await trio.sleep(0.001)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            await until(lambda: daemon.readiness.converged)
            await trio.sleep(1.0)  # nothing left to do: no round in flight
            before = len(rounds)

            release = held["read"] = trio.Event()
            world.pods["one"] = guaranteed_observation("one")
            daemon._manifest_wake.set()
            await trio.sleep(0.001)  # the scan starts and waits for its read
            # What the cgroup watch does for a change under kubepods.
            hinted = trio.current_time()
            assert daemon._scope is not None
            daemon._scope.add("kubepods")
            daemon._reconcile_wake.set()
            await trio.sleep(
                MAX_ROUND_DEFER_SECONDS / 2 if hold_read_seconds is None else hold_read_seconds
            )
            seen["rounds_while_held"] = rounds[before:]
            release.set()
            held["read"] = None
            await until(lambda: "one" in daemon.state.pods and daemon.readiness.converged)
            await trio.sleep(1.0)  # any round still due has run
            seen["hinted"] = hinted
            seen["rounds_after"] = rounds[before:]
            seen["cgroup"] = daemon._targets.pod("one").cgroup  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    return seen


def test_a_round_waits_for_the_admission_in_flight_and_covers_both(tmp_path: Path) -> None:
    seen = _run(tmp_path, hold_read_seconds=None)
    assert seen["rounds_while_held"] == []
    # One round, after the commit, scoped to what the watch named and to the new pod.
    scopes = [scope for _, scope in seen["rounds_after"]]
    assert len(scopes) == 1, scopes
    assert scopes[0] is not None and {"kubepods", seen["cgroup"]} <= set(scopes[0])


def test_a_scan_that_does_not_end_delays_rounds_by_a_bounded_time(tmp_path: Path) -> None:
    seen = _run(tmp_path, hold_read_seconds=10 * MAX_ROUND_DEFER_SECONDS)
    held = seen["rounds_while_held"]
    assert len(held) == 1, held
    started, scope = held[0]
    assert scope == ["kubepods"]
    assert started - seen["hinted"] >= MAX_ROUND_DEFER_SECONDS - 1e-6
    # The bound, in virtual time (MockClock): not a measurement of this machine.
    assert started - seen["hinted"] <= MAX_ROUND_DEFER_SECONDS + 0.01


class _WakesWhileBusy(trio.abc.Instrument):
    """Counts the times the reconcile loop's task is made runnable while an admission is in
    flight (`AdmissionsInFlight.busy()`): each such wake-up finds the scan still open and waits
    again, a pass of its task for nothing."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.counting = False
        self.while_busy = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if self.counting and task.name.endswith("reconcile_loop"):
            self.while_busy += self.daemon.admissions.busy()


def test_the_commit_of_a_scan_wakes_the_round_once_the_scan_is_through(tmp_path: Path) -> None:
    """The commit of an admission asks for a round while its scan still holds `scanning()`:
    that wake-up is given at the scan's end (`wake_after_scan`), so the reconcile loop is not
    woken before it only to wait for it. Counted, not timed: without the deferral the commit's
    wake-up makes the loop runnable while the scan is open, once per admission."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    rounds: list[list[str] | None] = []

    async def recording_io(fn: Callable[[], _T], *, limiter: Any = None) -> _T:
        if getattr(_inner(fn), "__qualname__", "") == "Reconciler.reconcile":
            assert isinstance(fn, functools.partial)
            rounds.append(fn.keywords["scope"])
        return await run_inline(fn)

    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world, run_io=recording_io))
    wakes = _WakesWhileBusy(daemon)

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await trio.sleep(0.001)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            await until(lambda: daemon.readiness.converged)
            await trio.sleep(1.0)  # nothing left to do: no round in flight
            before = len(rounds)
            wakes.counting = True
            for uid in ("one", "two", "three"):
                world.pods[uid] = guaranteed_observation(uid)
                daemon._manifest_wake.set()
                await until(lambda u=uid: u in daemon.state.pods and daemon.readiness.converged)  # type: ignore[misc]
                await trio.sleep(1.0)
            wakes.counting = False
            admitted = [daemon._targets.pod(uid) for uid in ("one", "two", "three")]
            assert [[p.cgroup] if p else None for p in admitted] == rounds[before:]
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[wakes])
    assert wakes.while_busy == 0
