"""`converged` (the `memstate_reconcile_converged` gauge, `/readyz`) says the tree equals the
*current* targets: it drops when a commit changes the targets and comes back only when a round
over those targets ends. A round that started before a commit and ends after it converged the
old targets, not the new ones (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from memstate.node.daemon import Daemon
from tests.sim.world import (
    CONFIG_YAML,
    _settings,
    fixed_world,
    guaranteed_observation,
    handed_name,
    run_inline,
    sim_adapters,
)

_T = TypeVar("_T")


def _is_round(fn: Callable[..., Any]) -> bool:
    return handed_name(fn) == "Reconciler.reconcile"


def test_converged_follows_the_current_targets(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    gate: dict[str, trio.Event | None] = {"open": None}
    rounds = {"started": 0}

    async def gated_io(fn: Callable[[], _T], *, limiter: Any = None) -> _T:
        if _is_round(fn):
            rounds["started"] += 1
            opened = gate["open"]
            if opened is not None:
                await opened.wait()
        return await run_inline(fn)

    daemon = Daemon(
        _settings(config_file), adapters=sim_adapters(world, run_io=gated_io, inline_rounds=False)
    )
    seen: dict[str, Any] = {}

    def gauge() -> float | None:
        return daemon.metrics.registry.get_sample_value("memstate_reconcile_converged")

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await trio.sleep(0.01)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            await until(lambda: daemon.readiness.converged)

            # A commit that changes the targets: not converged until a round over them ends.
            gate["open"] = first = trio.Event()
            started = rounds["started"]
            world.pods["one"] = guaranteed_observation("one")
            daemon._manifest_wake.set()
            await until(lambda: "one" in daemon.state.pods and rounds["started"] > started)
            seen["after_commit"] = (daemon.readiness.converged, gauge())

            # A second commit while that round is held: the round ends converged to targets
            # that are no longer the current ones.
            second = trio.Event()
            world.pods["two"] = guaranteed_observation("two")
            daemon._manifest_wake.set()
            await until(lambda: "two" in daemon.state.pods)
            gate["open"] = second
            first.set()
            # The next round starting means the held one was fully handled.
            await until(lambda: rounds["started"] > started + 1)
            seen["after_stale_round"] = (daemon.readiness.converged, gauge())

            gate["open"] = None
            second.set()
            await until(lambda: daemon.readiness.converged)
            seen["after_current_round"] = (daemon.readiness.converged, gauge())
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen["after_commit"] == (False, 0.0)
    assert seen["after_stale_round"] == (False, 0.0)
    assert seen["after_current_round"] == (True, 1.0)
