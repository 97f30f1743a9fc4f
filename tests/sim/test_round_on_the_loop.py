"""Where the simulated daemon runs its reconcile rounds (memstate.node.loops.converge): a scoped
round on the event loop; its writes in the worker thread (`run_io`) when they may wait on the
kernel; every round in the worker thread for a while after a slow one; a full round always there.

Method: the simulated daemon with a `run_io` that records what it is handed (and runs it
inline); an admission, then a pod's limit raised by hand and that pod's cgroup put in the next
round's scope (the cgroup watch's hint), then the same after a round counted as slow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from memstate.node.daemon import Daemon
from memstate.node.worker_threads import InlineWhileFast
from tests.sim.world import (
    CONFIG_YAML,
    World,
    _settings,
    fixed_world,
    guaranteed_observation,
    handed_name,
    run_inline,
    sim_adapters,
)

_T = TypeVar("_T")


async def _converged(daemon: Daemon) -> None:
    while not daemon.readiness.converged:
        await trio.sleep(0.01)


async def _admit(daemon: Daemon, world: World, uid: str) -> None:
    """A Guaranteed pod appears in the world's manifests; returns once it is admitted and the
    tree converged."""
    world.pods[uid] = guaranteed_observation(uid)
    daemon._manifest_wake.set()
    while uid not in daemon.state.pods:
        await trio.sleep(0.01)
    await _converged(daemon)


def test_rounds_run_on_the_loop_unless_they_may_block_or_were_slow(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    handed: list[str] = []

    async def recording_io(fn: Callable[[], _T], *, limiter: Any = None) -> _T:
        name = handed_name(fn)
        if name.startswith("Reconciler."):
            handed.append(name)
        return await run_inline(fn)

    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world, run_io=recording_io))
    seen: dict[str, list[str]] = {}

    async def hint(path: str) -> None:
        """What the cgroup watch does when a managed cgroup changed."""
        assert daemon._scope is not None
        daemon._scope.add(path)
        daemon.readiness.converged = False
        daemon._reconcile_wake.set()
        await trio.sleep(0.5)
        await _converged(daemon)

    def raise_limit(uid: str) -> str:
        assert daemon.targets is not None
        path = daemon.targets.pod(uid).cgroup
        world.fs.write(path, "memory.max", "max")
        return path

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            await _converged(daemon)
            seen["start-up"] = handed[:]
            handed.clear()

            await _admit(daemon, world, "one")
            seen["admission"] = handed[:]
            handed.clear()

            await hint(raise_limit("one"))
            seen["lowering"] = handed[:]
            handed.clear()

            # Every half counts as slow from now on: the next round (and the rest) go to the thread.
            daemon.inline_rounds = InlineWhileFast(
                slow_seconds=-1.0, pause_seconds=60.0, clock=trio.current_time
            )
            await _admit(daemon, world, "two")
            seen["slow"] = handed[:]
            handed.clear()
            await hint(raise_limit("two"))
            seen["paused"] = handed[:]
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen["start-up"] == ["Reconciler.reconcile"], seen  # the first round is a full one
    assert seen["admission"] == [], seen  # created with its values: nothing to wait for
    assert seen["lowering"] == ["Reconciler.complete"], seen  # planned here, written there
    assert seen["slow"] == [], seen  # the slow round itself still ran here
    assert seen["paused"] == ["Reconciler.reconcile"], seen
    assert daemon.targets is not None
    for uid in ("one", "two"):
        assert world.fs.read(daemon.targets.pod(uid).cgroup, "memory.max") != "max"


def test_the_cpu_is_given_up_between_the_published_decision_and_its_round(tmp_path: Path) -> None:
    """The daemon gives the CPU up once before each round (`Adapters.yield_cpu`): after an
    admission, when the decision is published (what a waiting client is answered from) and
    before the round creates the pod's cgroup."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    # Per call: (the pod's decision published, its cgroup created).
    yields: list[tuple[bool, bool]] = []

    def yield_cpu() -> None:
        pod = daemon.published_pod("one")
        yields.append((pod is not None, pod is not None and world.fs.exists(pod.cgroup)))

    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world, yield_cpu=yield_cpu))

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            await _converged(daemon)
            assert yields == [(False, False)]  # the start-up's full round
            yields.clear()
            await _admit(daemon, world, "one")
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert yields == [(True, False)], yields  # once, before the admission's round wrote anything
    assert daemon.targets is not None
    assert world.fs.exists(daemon.targets.pod("one").cgroup)
