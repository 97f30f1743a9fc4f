"""Stateful property tests of the reducer.

Goal: over random sequences of admissions, removals, init completions, config reloads and
restarts on 1–8 NUMA nodes with hugepages, (1) every invariant holds after every step, (2) a
restart followed by readmission in *any* order gives every pod exactly its previous allocation
and the same state hash, and new pods admitted during readmission never take that memory, and
(3) replaying the recorded log re-derives exactly the recorded decisions.

Method: a hypothesis `RuleBasedStateMachine` drives `step`; the restart rule readmits the same
pods in two different orders and compares; the teardown replays the whole recorded log.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    Envelope,
    Event,
    PodAdmissionRequested,
    PodAdmitted,
    PodInitCompleted,
    PodRemovalRequested,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.invariants import violations
from memstate.core.pod import Pod
from memstate.core.predicate import (
    insufficient_resource,
    insufficient_resource_in,
    pod_request_totals,
)
from memstate.core.reducer import step
from memstate.core.state import State, state_hash
from memstate.history.replay import transitions
from tests.property.strategies import pods, static_configs, topologies


def pinned(state: State, uid: str) -> bool:
    config = state.config
    record = state.pods[uid]
    return bool(
        config and config.memory_manager_policy == "Static" and record.qos_class == "Guaranteed"
    )


class ReducerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = State()
        self.log: list[Envelope] = []
        self.specs: dict[str, Pod] = {}
        self.counter = 0

    def record(self, event: Event, state: State | None = None) -> State:
        current = self.state if state is None else state
        transition = step(current, event)
        seq = len(self.log) + 1
        self.log.append(
            Envelope(
                seq=seq, ts_ns=seq, schema_v=2, event=event, decisions=len(transition.decisions)
            )
        )
        for offset, decision in enumerate(transition.decisions, start=1):
            self.log.append(Envelope(seq=seq + offset, ts_ns=seq, schema_v=2, event=decision))
        return transition.state

    @initialize(data=st.data())
    def boot(self, data: st.DataObject) -> None:
        topology = data.draw(topologies())
        config = data.draw(static_configs(topology))
        self.state = self.record(TopologyObserved(topology=topology))
        self.state = self.record(ConfigLoaded(config=config))
        assert self.state.topology == topology and self.state.config == config

    @rule(data=st.data())
    def admit(self, data: st.DataObject) -> None:
        self.counter += 1
        uid = f"u{self.counter:03d}"
        hugepages = bool(self.state.topology and self.state.topology.hugepage_sizes)
        pod = data.draw(pods(uid, hugepages=hugepages))
        self.specs[uid] = pod
        self.state = self.record(PodAdmissionRequested(pod=pod, source=f"{uid}.yaml"))

    @precondition(lambda self: bool(self.state.pods))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.state.pods)))
        self.state = self.record(PodRemovalRequested(uid=uid))
        assert uid not in self.state.pods

    @precondition(lambda self: bool(self.state.pods))
    @rule(data=st.data())
    def init_completed(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.state.pods)))
        self.state = self.record(PodInitCompleted(uid=uid))

    @rule(data=st.data())
    def reload_config(self, data: st.DataObject) -> None:
        assert self.state.topology is not None
        config = data.draw(static_configs(self.state.topology, allow_policy_none=True))
        self.state = self.record(ConfigLoaded(config=config))

    @rule(data=st.data())
    def topology_drift(self, data: st.DataObject) -> None:
        # A different machine (between boots, but the reducer does not care when): allocations
        # that no longer fit are revoked by name; the config follows for the new node set.
        topology = data.draw(topologies())
        self.state = self.record(TopologyObserved(topology=topology))
        self.state = self.record(ConfigLoaded(config=data.draw(static_configs(topology))))
        assert self.state.topology == topology

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        before = self.state
        restarted = self.record(DaemonRestarted())
        waiting = sorted(restarted.pods)
        back = data.draw(st.lists(st.sampled_from(waiting), unique=True)) if waiting else []
        order = data.draw(st.permutations(back))
        newcomer: Pod | None = None
        if data.draw(st.booleans()):
            self.counter += 1
            uid = f"u{self.counter:03d}"
            newcomer = data.draw(pods(uid))
            self.specs[uid] = newcomer

        def readmit(sequence: list[str], *, record: bool) -> tuple[State, list[Event]]:
            state = restarted
            decisions: list[Event] = []
            events: list[Event] = []
            if newcomer is not None:
                events.append(PodAdmissionRequested(pod=newcomer))
            events.extend(PodAdmissionRequested(pod=self.specs[uid]) for uid in sequence)
            events.append(ReadmissionCompleted())
            for event in events:
                if record:
                    state = self.record(event, state)
                else:
                    transition = step(state, event)
                    state = transition.state
                    decisions.extend(transition.decisions)
            return state, decisions

        reference, decisions = readmit(list(reversed(order)), record=False)
        self.state, _ = readmit(list(order), record=True)
        # Any readmission order: same pods, same allocations, same hash.
        assert state_hash(self.state) == state_hash(reference)
        for uid in back:
            old = before.pods[uid]
            new = self.state.pods.get(uid)
            if old.allocation is not None:
                assert new is not None, f"{uid} lost on readmission"
                assert new.allocation == old.allocation
        restored = [d for d in decisions if isinstance(d, PodAdmitted) and d.restored]
        assert {d.uid for d in restored} == {
            uid
            for uid in back
            if before.pods[uid].allocation is not None or not pinned(before, uid)
        }
        for uid in set(waiting) - set(back):
            assert uid not in self.state.pods
        assert not self.state.readmission_open

    @invariant()
    def sound(self) -> None:
        problems = violations(self.state)
        assert not problems, problems

    @invariant()
    def predicate_sums_carried_exactly(self) -> None:
        # The request sums `apply` carries from state to state equal a walk over the pods, and
        # the predicate answers from them exactly as from that walk, for every pod as candidate
        # (deferred pods and the candidate itself excluded).
        state = self.state
        fresh = msgspec.structs.replace(state)  # same fields, no cached sums
        carried = {r: v for r, v in pod_request_totals(state).items() if v}
        walked = {r: v for r, v in pod_request_totals(fresh).items() if v}
        assert carried == walked
        if state.config is None or state.topology is None:
            return
        for uid, record in state.pods.items():
            others = [r for u, r in state.pods.items() if u != uid and u not in state.deferred]
            assert insufficient_resource_in(
                state, record.pod, state.config, state.topology
            ) == insufficient_resource(record.pod, others, state.config, state.topology)

    def teardown(self) -> None:
        # The recorded log replays to the same state and re-derives the same decisions.
        final = State()
        for transition in transitions(self.log):
            assert not transition.diverges, transition.record
            final = transition.after
        assert state_hash(final) == state_hash(self.state)


ReducerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestReducer = ReducerMachine.TestCase
