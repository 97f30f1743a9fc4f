"""Applying in place to an owned state gives `apply`'s states, and leaves the start untouched.

Goal: `reducer.apply_owned` (replay's working state: the pods map updated in place and handed
on) and `reducer.WorkingState` (that, plus one node map kept mutable across the walk) are
indistinguishable from `decide` and `apply`, including the predicate's sums carried with the
state, and `owned_copy` never lets them write into a state someone else holds. Method: walk the
replay/ corpus and a realistic log written by the real reducer (benchmarks/realistic_log.py),
apply every event both ways, and compare the states (equality and canonical bytes) after every
transaction; `replay_log` with and without an observer of transitions gives the same report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.realistic_log import build
from memstate.core.events import Envelope
from memstate.core.predicate import _requests_of, pod_request_totals
from memstate.core.reducer import WorkingState, apply_owned, owned_copy
from memstate.core.scenario import read_scenario
from memstate.core.state import State, encode_state
from memstate.history.replay import Transition, open_source, replay_log, transitions
from memstate.store.reader import LogReader

CORPUS = Path(__file__).resolve().parents[2] / "replay"


def walked_sums(state: State) -> dict[str, int]:
    sums: dict[str, int] = {}
    for record in state.pods.values():
        for resource, amount in _requests_of(record).items():
            sums[resource] = sums.get(resource, 0) + amount
    return {r: v for r, v in sums.items() if v}


def check_owned_matches_apply(envelopes: list[Envelope]) -> int:
    """Apply every transition's events in place and compare with `apply`'s states; returns
    the transitions checked."""
    start = State()
    start_bytes = encode_state(start)
    owned = owned_copy(start)
    count = 0
    for transition in transitions(envelopes):
        owned = apply_owned(owned, transition.record.event)
        for decision in transition.decisions:
            owned = apply_owned(owned, decision)
        assert owned == transition.after, f"seq {transition.record.seq}"
        assert encode_state(owned) == encode_state(transition.after)
        # The sums the predicate reads follow the map that changed in place.
        carried = {r: v for r, v in pod_request_totals(owned).items() if v}
        assert carried == walked_sums(owned), f"seq {transition.record.seq}"
        count += 1
    assert encode_state(start) == start_bytes, "owned_copy let the start state change"
    return count


def check_working_matches(envelopes: list[Envelope], every: int) -> int:
    """Decide every input and apply every transaction on a `WorkingState`, comparing the
    decisions with `decide`'s on the state before at every transaction and the state with
    `apply`'s at every `every`-th one (observing freezes the node map, so most transactions
    run on a node map moved many times since); returns the transitions checked."""
    start = State()
    start_bytes = encode_state(start)
    working = WorkingState(start)
    count = 0
    for transition in transitions(envelopes):
        event = transition.record.event
        if event.role == "input":
            assert working.decide(event) == transition.derived, f"seq {transition.record.seq}"
        working.apply(event)
        for decision in transition.decisions:
            working.apply(decision)
        count += 1
        if count % every == 0:
            state = working.state()
            assert state == transition.after, f"seq {transition.record.seq}"
            assert encode_state(state) == encode_state(transition.after)
            carried = {r: v for r, v in pod_request_totals(state).items() if v}
            assert carried == walked_sums(state), f"seq {transition.record.seq}"
    assert encode_state(working.state()) == encode_state(transition.after)
    assert encode_state(start) == start_bytes, "WorkingState let the start state change"
    return count


@pytest.mark.parametrize("scenario", sorted(CORPUS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_owned_matches_apply_on_the_corpus(scenario: Path) -> None:
    envelopes = read_scenario(scenario.read_text(), source=str(scenario))
    assert check_owned_matches_apply(envelopes) > 0


@pytest.mark.parametrize("scenario", sorted(CORPUS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_working_state_matches_on_the_corpus(scenario: Path) -> None:
    envelopes = read_scenario(scenario.read_text(), source=str(scenario))
    assert check_working_matches(envelopes, every=1) > 0
    assert check_working_matches(envelopes, every=5) > 0


@pytest.fixture(scope="module")
def realistic_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state_dir = tmp_path_factory.mktemp("owned") / "state"
    build(
        state_dir,
        numa_nodes=4,
        records=3000,
        live_pods=60,
        restart_every=300,
        checkpoint_every=200,
        seed=7,
    )
    return state_dir


def test_owned_matches_apply_on_a_realistic_log(realistic_log: Path) -> None:
    envelopes = list(LogReader(realistic_log).read())
    kinds = {e.event.kind for e in envelopes}
    assert {"pod_admitted", "pod_removed", "pod_rejected", "daemon_restarted"} <= kinds
    assert check_owned_matches_apply(envelopes) > 0


@pytest.mark.parametrize("every", [1, 37])
def test_working_state_matches_on_a_realistic_log(realistic_log: Path, every: int) -> None:
    envelopes = list(LogReader(realistic_log).read())
    assert check_working_matches(envelopes, every) > 100


def test_replay_with_and_without_an_observer_reports_the_same(realistic_log: Path) -> None:
    """The working-state walk (no `on_transition`) and the walk over observed transitions
    agree on everything they report, and on what `on_progress` sees; a stop leaves the state
    of the last transaction before it."""
    seen: list[Transition] = []
    progress_observed: list[tuple[int, int, int]] = []
    progress_owned: list[tuple[int, int, int]] = []
    observed = replay_log(
        open_source(realistic_log),
        on_transition=seen.append,
        on_progress=lambda r, last, d: progress_observed.append((r.seq, last, len(d))),
    )
    owned = replay_log(
        open_source(realistic_log),
        on_progress=lambda r, last, d: progress_owned.append((r.seq, last, len(d))),
    )
    assert observed.divergence is None and owned.divergence is None
    assert len(owned.checkpoints_verified) > 10
    for field in ("records", "transitions", "first_seq", "last_seq", "state_seq"):
        assert getattr(owned, field) == getattr(observed, field), field
    assert owned.checkpoints_verified == observed.checkpoints_verified
    assert owned.warnings == observed.warnings
    assert encode_state(owned.state) == encode_state(observed.state)
    assert (
        progress_owned
        == progress_observed
        == [(t.record.seq, t.last_seq, len(t.decisions)) for t in seen]
    )
    middle = seen[len(seen) // 2]
    stopped = replay_log(open_source(realistic_log), to_seq=middle.last_seq)
    assert stopped.state_seq == middle.last_seq
    assert encode_state(stopped.state) == encode_state(middle.after)


def test_working_state_decides_a_replaced_spec_on_its_own_node_map() -> None:
    """A new spec under an admitted UID is removed and decided afresh against the working node
    map, with the old pod's memory given back on a scratch copy: the same decisions as
    `decide` on the frozen state (the new pod fits only once the old one is released), and the
    working node map itself unchanged until the decisions are applied."""
    from memstate.core.events import ConfigLoaded, PodAdmissionRequested, TopologyObserved
    from memstate.core.reducer import apply, decide, step
    from tests.factories import Gi, pod, static_config, topology

    state = State()
    for event in (
        TopologyObserved(topology=topology(4 * Gi)),
        ConfigLoaded(config=static_config([Gi])),
    ):
        state = step(state, event).state
    working = WorkingState(state)
    for request in (
        PodAdmissionRequested(pod=pod("a", 2 * Gi), source="a.yaml"),
        PodAdmissionRequested(pod=pod("a", 2 * Gi + Gi // 2), source="a.yaml"),
    ):
        expected = decide(state, request)
        assert working.decide(request) == expected
        assert working.decide(request) == expected, "deciding moved the working node map"
        assert expected[-1].kind == "pod_admitted"
        for event in (request, *expected):
            state = apply(state, event)
            working.apply(event)
    assert [d.kind for d in expected] == ["pod_removed", "pod_admitted"]
    assert encode_state(working.state()) == encode_state(state)


def observed_and_expected(path: Path, to_seq: int | None = None) -> tuple[int, int]:
    """`replay_log`'s observer against `transitions` over the same source (up to its first
    divergence, or the transaction holding `to_seq`): the same transitions, equal field by field
    (states by value and canonical bytes), and every state observed still encoding as it did
    when observed after the walk went on (snapshots, not the working state). Returns (the
    transitions seen, how many of them changed the state)."""
    seen: list[Transition] = []
    at_the_time: list[tuple[bytes, bytes]] = []

    def observe(transition: Transition) -> None:
        seen.append(transition)
        at_the_time.append((encode_state(transition.before), encode_state(transition.after)))

    replay_log(open_source(path), to_seq=to_seq, on_transition=observe)
    expected: list[Transition] = []
    for transition in transitions(open_source(path).envelopes()):
        if to_seq is not None and transition.record.seq > to_seq:
            break
        expected.append(transition)
        if transition.diverges:
            break
    assert len(seen) == len(expected)
    changed = 0
    for got, want, (before, after) in zip(seen, expected, at_the_time, strict=True):
        assert got == want, f"seq {want.record.seq}"
        assert before == encode_state(got.before) == encode_state(want.before)
        assert after == encode_state(got.after) == encode_state(want.after)
        changed += before != after
    return len(seen), changed


@pytest.mark.parametrize("scenario", sorted(CORPUS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_the_observer_sees_the_transitions_of_the_corpus(scenario: Path) -> None:
    assert observed_and_expected(scenario)[0] > 0


def test_the_observer_sees_the_transitions_of_a_realistic_log(realistic_log: Path) -> None:
    count, changed = observed_and_expected(realistic_log)
    assert changed > 100 and count > changed
    assert observed_and_expected(realistic_log, to_seq=1500)[0] < count
