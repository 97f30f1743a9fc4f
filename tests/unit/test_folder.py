"""Folding without intermediate states gives `apply`'s states, and observed states never change.

Goal: `reducer.Folder` (start-up's fold, mutating working copies) is indistinguishable from
applying events one by one, and the copy-on-write reducer never alters a state once returned.
Method: walk the replay/ corpus and a realistic log written by the real reducer
(benchmarks/realistic_log.py: mixed QoS, hugepages, init containers, churn, restarts with
shuffled readmission) and compare the folder's state with `apply`'s after every transaction;
keep the canonical bytes of every state seen and check them again after everything else ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.realistic_log import build
from memstate.core.errors import InvariantViolation
from memstate.core.events import Envelope, PodRemoved
from memstate.core.reducer import Folder, apply
from memstate.core.removals import NO_REMOVALS, fold_removals
from memstate.core.scenario import read_scenario
from memstate.core.state import State, encode_state, state_hash
from memstate.history.replay import replay_state, transitions
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.transactions import envelope_itself, group_transactions

CORPUS = Path(__file__).resolve().parents[2] / "replay"


def check_fold_matches_apply(envelopes: list[Envelope]) -> int:
    """Fold every transition's events and compare with `apply`; returns transitions checked.
    Also checks that no state `apply` returned changed afterwards (immutability)."""
    folder = Folder(State())
    seen: list[tuple[State, bytes]] = []
    count = 0
    for transition in transitions(envelopes):
        folder.fold(transition.record.event)
        for decision in transition.decisions:
            folder.fold(decision)
        folded = folder.state()
        assert folded == transition.after, f"seq {transition.record.seq}"
        assert state_hash(folded) == state_hash(transition.after)
        seen.append((transition.before, encode_state(transition.before)))
        seen.append((folded, encode_state(folded)))
        count += 1
    for state, data in seen:
        assert encode_state(state) == data, "a state changed after it was returned"
    return count


@pytest.mark.parametrize("scenario", sorted(CORPUS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_fold_matches_apply_on_the_corpus(scenario: Path) -> None:
    envelopes = read_scenario(scenario.read_text(), source=str(scenario))
    assert check_fold_matches_apply(envelopes) > 0


@pytest.mark.parametrize("numa_nodes", [2, 4])
def test_fold_matches_apply_on_a_realistic_log(tmp_path: Path, numa_nodes: int) -> None:
    state_dir = tmp_path / "state"
    build(
        state_dir,
        numa_nodes=numa_nodes,
        records=3000,
        live_pods=60,
        restart_every=300,
        checkpoint_every=500,
        seed=numa_nodes,
    )
    envelopes = list(LogReader(state_dir).read())
    kinds = {e.event.kind for e in envelopes}
    # The log exercises what the folder has fast paths for, and what it hands to `apply`.
    assert {"pod_admitted", "pod_removed", "pod_rejected", "daemon_restarted"} <= kinds
    assert any(e.event.kind == "pod_admitted" and e.event.restored for e in envelopes)
    assert check_fold_matches_apply(envelopes) > 0
    # `fold_records` (start-up's call: one per transaction) gives the same states.
    by_records = Folder(State())
    for transaction, transition in zip(
        group_transactions(envelopes, envelope_itself), transitions(envelopes), strict=True
    ):
        by_records.fold_records(transaction.members)
        assert by_records.state() == transition.after, f"seq {transition.record.seq}"
    # Start-up folds with a Folder: from seq 1 and from the newest checkpoint, the same state.
    final = replay_state(envelopes)
    from_start = recover_state(state_dir, use_checkpoints=False)
    assert from_start.state == final
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq is not None
    assert recovered.state == final
    # The removals start-up folds (the folder's change journal) are the writer's fold's, and
    # the log records retired cgroups removed, as a daemon does.
    assert "pod_cgroup_removed" in kinds
    pending = NO_REMOVALS
    retired: set[str] = set()
    for transition in transitions(envelopes):
        events = [transition.record.event, *transition.decisions]
        pending = fold_removals(pending, transition.before, events, transition.after)
        retired.update(pending.paths)
    assert retired, "the log retires no cgroup: the removals fold is not exercised"
    assert from_start.removals.paths == pending.paths
    assert recovered.removals.paths == pending.paths


def test_folder_leaves_its_input_and_returned_states_alone() -> None:
    envelopes = read_scenario((CORPUS / "restart-any-order.jsonl").read_text())
    states = [t.after for t in transitions(envelopes)]
    middle = states[len(states) // 2]
    before = encode_state(middle)
    folder = Folder(middle)
    first = folder.state()
    first_bytes = encode_state(first)
    for uid in sorted(middle.pods):
        folder.fold(PodRemoved(uid=uid, reason="requested"))
    assert not folder.state().pods
    assert encode_state(middle) == before
    assert encode_state(first) == first_bytes
    assert apply(middle, PodRemoved(uid=sorted(middle.pods)[0], reason="requested")) != middle


def test_folder_raises_what_apply_raises() -> None:
    with pytest.raises(InvariantViolation, match="unknown pod"):
        apply(State(), PodRemoved(uid="nope", reason="requested"))
    with pytest.raises(InvariantViolation, match="unknown pod"):
        Folder(State()).fold(PodRemoved(uid="nope", reason="requested"))
