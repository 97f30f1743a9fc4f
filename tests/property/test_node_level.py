"""The node-level part a tracker carries equals the one computed anew for the same sums.

Goal: `NodeLevel`, kept across commits, renders a root, node or QoS cgroup again only when the
sum it depends on changed; for any sequence of Guaranteed and Burstable sums and throttled counts
(random configs, tiered or not, with or without a cgroupRoot), its cgroups, `NodeTargets` fields
and warnings equal those of a fresh `NodeLevel` (what `assemble_from_parts` uses), and a cgroup
whose files did not change is the very object it gave before (what the change records rely on).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstate.core.config import NodeConfig
from memstate.core.qos import NodeLevel
from memstate.core.topology import Topology
from tests.property.strategies import static_configs, topologies

SUMS = st.lists(
    st.tuples(
        st.sampled_from([0, 2**20, 2**30, 3 * 2**30, 2**40, 2**62]),
        st.sampled_from([0, 2**20, 2**30, 2**40]),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def contexts(draw: st.DrawFn) -> tuple[NodeConfig, Topology]:
    topology = draw(topologies(max_nodes=4))
    return draw(static_configs(topology)), topology


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contexts(), SUMS)
def test_a_carried_node_level_equals_a_fresh_one(
    context: tuple[NodeConfig, Topology], sums: list[tuple[int, int, int]]
) -> None:
    config, topology = context
    carried = NodeLevel(config, topology)
    before = None
    for guaranteed, burstable, throttled in sums:
        fresh = NodeLevel(config, topology)
        cgroups = carried.cgroups(guaranteed, burstable)
        assert cgroups == fresh.cgroups(guaranteed, burstable)
        assert [(len(t.path.split("/")) if t.path else 0, t.path) for t in cgroups] == list(
            carried.orders
        )
        if before is not None:
            for old, new in zip(before, cgroups, strict=True):
                assert (old is new) == (old == new), new.path
        before = cgroups
        made = carried.node_targets(
            tuple(cgroups),
            (),
            guaranteed_bytes=guaranteed,
            burstable_bytes=burstable,
            throttled=throttled,
        )
        assert made == fresh.node_targets(
            tuple(cgroups),
            (),
            guaranteed_bytes=guaranteed,
            burstable_bytes=burstable,
            throttled=throttled,
        )
