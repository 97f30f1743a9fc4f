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

    daemon = Daemon(
        _settings(config_file), adapters=sim_adapters(world, run_io=gated_io, inline_rounds=False)
    )

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
