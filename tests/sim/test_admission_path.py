"""One admission, end to end, in the simulated daemon (docs/architecture.md): the pod's targets
are computed once (by the reducer's decision), and the only blocking call handed to the I/O
runner (a worker thread in production) is file I/O: the manifest read. The log append and the
admission's scoped reconcile round run on the event loop while they are fast
(memstate.node.worker_threads.InlineWhileFast), as they always are under the simulation's clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from memstate.core import qos, reducer, state_targets
from memstate.host.sim import SimCgroupFS
from memstate.node.daemon import Daemon
from tests.sim.world import (
    CONFIG_YAML,
    PAGE,
    ProtectionCheckingFS,
    SimDisk,
    World,
    _random_pod,
    _settings,
    handed_name,
    run_inline,
    sim_adapters,
)

_T = TypeVar("_T")


def test_one_admission_computes_targets_once_and_hands_only_io_to_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    rng = random.Random(1)
    world = World(
        seed=1,
        rng=rng,
        disk=SimDisk(random.Random(2)),
        fs=ProtectionCheckingFS(SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-1")),
    )
    calls: list[str] = []
    handed: list[str] = []

    def counting(*args: Any) -> Any:
        calls.append(args[0].uid)
        return qos.pod_targets(*args)

    monkeypatch.setattr(reducer, "pod_targets", counting)
    monkeypatch.setattr(state_targets, "pod_targets", counting)

    async def recording_io(fn: Callable[[], _T], *, limiter: Any = None) -> _T:
        handed.append(handed_name(fn))
        return await run_inline(fn)

    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world, run_io=recording_io))

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            calls.clear()
            handed.clear()
            pod = _random_pod(rng, "one")  # seed 1 draws a Guaranteed pod: pinned, min set
            world.pods["one"] = pod
            daemon._manifest_wake.set()
            while "one" not in daemon.state.pods or not daemon.readiness.converged:
                await trio.sleep(0.1)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert calls == ["one"]
    assert daemon.targets is not None and daemon.targets.pod("one").cgroup
    # The append and the round run on the event loop: timed by trio's clock, which a MockClock
    # does not move during the call, they are never slow here (the simulation's interleaving does
    # not depend on the machine's load); the round's plan writes nothing that may block.
    assert set(handed) <= {"World.read_pods"}, handed
