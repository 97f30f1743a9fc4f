"""A deliberately altered reducer: replay and bisect both report exactly the first divergence.

Goal: the issue's done-criterion. A log recorded by the real reducer, through the real writer,
with checkpoints, is replayed by an altered reducer (a test-only change installed with
monkeypatch); `replay_log` must report exactly the first event where the altered reducer
decides differently, and `bisect` must find the same event — against a reference run, and
between two recorded logs (one written by the altered reducer).

Method: `tests/replay/recording.py` builds a deterministic history whose `zz-` trigger pods are
the only ones the altered reducers treat differently, so the first divergent seq is the seq of
the first trigger's request (read from the writer's own envelopes). A precondition check proves
that trigger really is decided differently (the real reducer put it on node 0 while node 1 had
room), so the assertion cannot pass vacuously. Two alterations:

- fill order (`fill_highest_first`): a different allocation and a different state;
- memory.high formula (`alter_memory_high`): a different decision but the *same* state (targets
  are not state), invisible to state hashes — bisect must still find it by comparing decisions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memstate.core.events import PodAdmitted
from memstate.core.state import state_hash
from memstate.history.bisect import Run, bisect
from memstate.history.replay import open_source, replay_log
from memstate.store.checkpoint import list_checkpoints
from tests.replay.recording import (
    alter_memory_high,
    churn_inputs,
    fill_highest_first,
    input_seq,
    record_log,
)

TRIGGERS = (140, 170, 230)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[int]]:
    """(state dir recorded by the real reducer, seq of the first trigger request, checkpoints)."""
    state_dir = tmp_path_factory.mktemp("real")
    written = record_log(state_dir, churn_inputs(260, triggers=TRIGGERS))
    first = input_seq(written, f"zz-{TRIGGERS[0]:06d}")
    decision = next(e.event for e in written if e.seq == first + 1)
    # Precondition: the real reducer pinned the first trigger to node 0 (lowest first) while
    # node 1 was empty, so a highest-first reducer must decide otherwise right there.
    assert isinstance(decision, PodAdmitted) and decision.allocation is not None
    assert decision.allocation.numa_nodes == (0,)
    checkpoints = [seq for seq, _ in list_checkpoints(state_dir)]
    assert len([c for c in checkpoints if c < first]) >= 3, "the divergence must be mid-log"
    return state_dir, first, checkpoints


def test_the_real_reducer_replays_its_own_log(recorded: tuple[Path, int, list[int]]) -> None:
    state_dir, _, checkpoints = recorded
    report = replay_log(open_source(state_dir))
    assert report.divergence is None
    assert report.checkpoints_verified == checkpoints
    assert report.warnings == []


def test_replay_reports_the_first_divergence_of_an_altered_fill_order(
    recorded: tuple[Path, int, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir, first, checkpoints = recorded
    fill_highest_first(monkeypatch)
    report = replay_log(open_source(state_dir))
    divergence = report.divergence
    assert divergence is not None
    assert (divergence.kind, divergence.seq) == ("decisions", first)
    # It stopped there: the divergent transaction (request + one decision) was the last read,
    # and the state reported is the one before it.
    assert (report.last_seq, report.state_seq) == (first + 1, first - 1)
    recorded_decision, derived_decision = divergence.recorded, divergence.derived
    assert recorded_decision is not None and derived_decision is not None
    assert isinstance(recorded_decision[0], PodAdmitted)
    assert isinstance(derived_decision[0], PodAdmitted)
    assert recorded_decision[0].allocation is not None
    assert derived_decision[0].allocation is not None
    assert recorded_decision[0].allocation.numa_nodes == (0,)
    assert derived_decision[0].allocation.numa_nodes == (1,)
    changes = divergence.changes()
    subjects = {(c.section, c.subject) for c in changes}
    assert ("machine", "NUMA 0") in subjects and ("machine", "NUMA 1") in subjects
    assert any(c.section == "pods" and "zz-000140" in c.subject for c in changes)
    # Every checkpoint before the divergence was compared and agreed.
    assert report.checkpoints_verified == [c for c in checkpoints if c < first]


def test_bisect_against_a_reference_run_finds_the_same_event(
    recorded: tuple[Path, int, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir, first, _ = recorded
    fill_highest_first(monkeypatch)
    source = open_source(state_dir)
    report = bisect(Run(source), Run(source, reference=True))
    assert report.divergence is not None
    assert (report.divergence.kind, report.divergence.seq) == ("decisions", first)
    assert report.window[0] < first <= (report.window[1] or first)
    # The window walk compared far fewer transactions than the log holds.
    assert report.transactions_walked < 60


def test_bisect_between_two_recorded_logs_uses_the_checkpoints(
    recorded: tuple[Path, int, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    state_dir, first, checkpoints = recorded
    with monkeypatch.context() as patch:
        fill_highest_first(patch)
        record_log(tmp_path / "altered", churn_inputs(260, triggers=TRIGGERS))
    # Recorded with the same cadence: checkpoints at the same seqs until the divergence.
    assert [seq for seq, _ in list_checkpoints(tmp_path / "altered")][:3] == checkpoints[:3]
    report = bisect(Run(open_source(state_dir)), Run(open_source(tmp_path / "altered")))
    assert report.method.startswith("binary search")
    assert report.divergence is not None
    assert (report.divergence.kind, report.divergence.seq) == ("decisions", first)
    lo, hi = report.window
    assert hi is not None and lo < first <= hi
    # Trigger pods come and go, so the states may meet again after the divergence: the
    # check of the earlier checkpoints keeps the answer right either way.
    assert lo == max(c for c in checkpoints if c < first)
    linear = bisect(
        Run(open_source(state_dir)), Run(open_source(tmp_path / "altered")), linear=True
    )
    assert linear.divergence is not None and linear.divergence.seq == first


def test_a_decision_only_change_is_found_by_replay_and_bisect(
    recorded: tuple[Path, int, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    state_dir, first, _ = recorded
    with monkeypatch.context() as patch:
        alter_memory_high(patch)
        report = replay_log(open_source(state_dir))
        assert report.divergence is not None
        assert (report.divergence.kind, report.divergence.seq) == ("decisions", first)
        # Targets are not state: the two states are equal, only the decisions differ.
        assert report.divergence.changes() == []
        assert report.divergence.state_recorded is not None
        assert report.divergence.state_derived is not None
        assert state_hash(report.divergence.state_recorded) == state_hash(
            report.divergence.state_derived
        )
        source = open_source(state_dir)
        reference = bisect(Run(source), Run(source, reference=True))
        assert reference.divergence is not None and reference.divergence.seq == first
        record_log(tmp_path / "altered", churn_inputs(260, triggers=TRIGGERS))
    # Two recorded logs whose checkpoints all agree: the binary search finds nothing, bisect
    # says so and compares decisions along the log instead.
    report2 = bisect(Run(open_source(state_dir)), Run(open_source(tmp_path / "altered")))
    assert report2.divergence is not None
    assert (report2.divergence.kind, report2.divergence.seq) == ("decisions", first)
    assert any("agree" in w for w in report2.warnings)
