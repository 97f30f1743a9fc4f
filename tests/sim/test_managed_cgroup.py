"""Which managed cgroup a cgroup watch hint belongs to (memstate.node.loops.converge's
`managed_cgroup_of`): the nearest cgroup at or above the changed path that the published targets
manage, found by a look-up per ancestor in the targets tracker.

Method: the simulated daemon admits two pods; hints for their cgroups, for a container cgroup
the runtime made below one of them, for the QoS level above them, and for paths nobody manages
are mapped, and again after one pod is removed (its cgroup no longer managed).
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from memstate.node.daemon import Daemon
from memstate.node.loops.converge import managed_cgroup_of
from tests.sim.world import (
    CONFIG_YAML,
    _settings,
    fixed_world,
    guaranteed_observation,
    sim_adapters,
)


def test_a_hint_maps_to_the_nearest_managed_cgroup(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG_YAML)
    world = fixed_world()
    daemon = Daemon(_settings(config_file), adapters=sim_adapters(world))
    found: dict[str, dict[str, str | None]] = {}

    async def admitted(uids: set[str]) -> None:
        daemon._manifest_wake.set()
        while set(daemon.state.pods) != uids:
            await trio.sleep(0.01)

    def mapped(paths: dict[str, str]) -> dict[str, str | None]:
        return {name: managed_cgroup_of(daemon, path) for name, path in paths.items()}

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            world.pods["one"] = guaranteed_observation("one")
            world.pods["two"] = guaranteed_observation("two")
            await admitted({"one", "two"})
            assert daemon.targets is not None
            one = daemon.targets.pod("one").cgroup
            two = daemon.targets.pod("two").cgroup
            parent = one.rpartition("/")[0]
            paths = {
                "one": one,
                "container": f"{one}/container-abc",
                "deep": f"{two}/container-abc/child",
                "parent": parent,
                "sibling": f"{parent}/podunknown",
                "elsewhere": "system.slice/x",
            }
            found["both"] = mapped(paths)
            found["both-expected"] = {
                "one": one,
                "container": one,
                "deep": two,
                "parent": parent,
                "sibling": parent,
                "elsewhere": None,
            }
            del world.pods["one"]
            await admitted({"two"})
            found["after"] = mapped(paths)
            found["after-expected"] = {**found["both-expected"], "one": parent, "container": parent}
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert found["both"] == found["both-expected"]
    assert found["after"] == found["after-expected"]
