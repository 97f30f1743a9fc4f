"""The node the NRI scenarios run against: real memstate decisions from the core reducer."""

from __future__ import annotations

from memstate.core.events import ConfigLoaded, PodAdmissionRequested, TopologyObserved
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.nri.adapter import Decisions, decisions_from_state
from tests.factories import container, pod_of, static_config, topology

PINNED = "11111111-1111-1111-1111-111111111111"
BURSTABLE = "22222222-2222-2222-2222-222222222222"
REJECTED = "33333333-3333-3333-3333-333333333333"
UNKNOWN = "44444444-4444-4444-4444-444444444444"
Gi = 2**30
Mi = 2**20


def node_state() -> State:
    """Two 8 GiB NUMA nodes, Static policy, TieredReservation; a pinned Guaranteed pod with two
    containers, a Burstable pod, and a pod too large for any node (rejected)."""
    events = [
        TopologyObserved(topology=topology("8Gi", "8Gi")),
        ConfigLoaded(
            config=static_config(
                ["1Gi", "1Gi"],
                topology_policy="single-numa-node",
                memoryReservationPolicy="TieredReservation",
            )
        ),
        PodAdmissionRequested(
            pod=pod_of(PINNED, [container("app", "1Gi"), container("sidecar", "512Mi")])
        ),
        PodAdmissionRequested(
            pod=pod_of(
                BURSTABLE,
                [container("web", "256Mi", limit_memory="1Gi", guaranteed=False)],
            )
        ),
        PodAdmissionRequested(pod=pod_of(REJECTED, [container("big", "20Gi")])),
    ]
    state = State()
    for event in events:
        state = step(state, event).state
    return state


def node_decisions() -> Decisions:
    decisions = decisions_from_state(node_state())
    assert decisions is not None
    return decisions
