"""The replay engine: sources, modes, stopping points, checkpoints, pruned logs, bisect's search.

Goal: `memstate.history.replay` does what docs/replay.md promises beyond the first divergence
(covered in test_altered_reducer.py): the streaming scenario reader is `read_scenario` line by line;
`recorded` mode trusts recorded decisions and `reference` mode ignores them; `--to-seq` and
`--at` stop after whole transactions; starting from a checkpoint gives the same state as
replaying from genesis; a pruned log starts at its oldest usable checkpoint; a checkpoint whose
state hash disagrees is a divergence of its own kind, one that describes another log only a
warning; bisect's binary search is corrected when a divergence does not persist.

Method: logs recorded through the real writer (tests/replay/recording.py); expectations come
from independent sources — the writer's own envelopes, `recover_state`, checkpoint files.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from memstate.core import reducer
from memstate.core.errors import CheckpointCorruption, MidLogCorruption, ScenarioError
from memstate.core.events import Envelope, PodAdmissionRequested, PodRemovalRequested
from memstate.core.scenario import read_scenario, write_scenario
from memstate.core.state import State, state_hash
from memstate.history.bisect import Run, bisect
from memstate.history.replay import (
    LogStructureError,
    iter_scenario,
    open_source,
    replay_log,
    transitions,
)
from memstate.store.checkpoint import list_checkpoints, load_checkpoint, write_checkpoint
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog
from tests import factories
from tests.replay.recording import (
    BASE_TS_NS,
    churn_inputs,
    fill_highest_first,
    record_log,
    start_inputs,
)

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "replay").glob("*.jsonl"))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Envelope]]:
    state_dir = tmp_path_factory.mktemp("log")
    written = record_log(state_dir, churn_inputs(120), checkpoint_every=20)
    return state_dir, written


# --- sources --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", CORPUS, ids=lambda p: p.name)
def test_streaming_reader_equals_read_scenario(scenario: Path) -> None:
    text = scenario.read_text()
    assert list(iter_scenario(text.splitlines(keepends=True))) == read_scenario(text)


def test_streaming_reader_reads_exports_and_reports_the_same_errors(
    log_dir: tuple[Path, list[Envelope]],
) -> None:
    _, written = log_dir
    export = write_scenario(written)
    assert list(iter_scenario(export.splitlines())) == read_scenario(export) == written
    bad = [*export.splitlines()[:3], '{"kind": "no_such_kind"}']
    with pytest.raises(ScenarioError) as streamed:
        list(iter_scenario(bad, source="x.jsonl"))
    with pytest.raises(ScenarioError) as whole:
        read_scenario("\n".join(bad), source="x.jsonl")
    assert str(streamed.value) == str(whole.value)


def test_a_state_dir_and_its_export_replay_the_same(
    log_dir: tuple[Path, list[Envelope]], tmp_path: Path
) -> None:
    state_dir, written = log_dir
    export = tmp_path / "export.jsonl"
    export.write_text(write_scenario(written))
    from_dir = replay_log(open_source(state_dir))
    from_file = replay_log(open_source(export))
    assert from_dir.divergence is None and from_file.divergence is None
    assert state_hash(from_dir.state) == state_hash(from_file.state)
    assert from_dir.records == from_file.records == len(written)
    # The export has no checkpoints; the state directory's were all verified.
    assert from_file.checkpoints_verified == []
    assert from_dir.checkpoints_verified == [seq for seq, _ in list_checkpoints(state_dir)]
    assert state_hash(from_dir.state) == state_hash(recover_state(state_dir).state)


def test_open_source_refuses_what_is_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not a state directory"):
        open_source(tmp_path)
    with pytest.raises(Exception, match="no such file"):
        open_source(tmp_path / "missing.jsonl")


def test_a_decision_without_its_input_is_a_structure_error(
    log_dir: tuple[Path, list[Envelope]],
) -> None:
    _, written = log_dir
    decision = next(e for e in written if e.event.role == "decision")
    with pytest.raises(LogStructureError, match="not preceded"):
        list(transitions([msgspec.structs.replace(decision, seq=1)]))


# --- modes ----------------------------------------------------------------------------------------


def test_recorded_mode_does_not_decide_and_reference_mode_ignores_the_record(
    log_dir: tuple[Path, list[Envelope]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, written = log_dir
    calls = []
    real = reducer.decide

    def counting(state: State, event: object) -> object:
        calls.append(event)
        return real(state, event)  # type: ignore[arg-type]

    monkeypatch.setattr("memstate.history.replay.decide", counting)
    recorded = list(transitions(written, mode="recorded"))
    assert calls == []  # every input of this log records its decisions
    assert all(not t.diverges for t in recorded)
    fill_highest_first(monkeypatch)
    # The altered reducer decides otherwise for trigger pods only; this log has none, so the
    # reference run of it must equal the recorded run.
    reference = list(transitions(written, mode="reference"))
    assert len(calls) == sum(1 for e in written if e.event.role == "input")
    assert state_hash(reference[-1].after) == state_hash(recorded[-1].after)


# --- stopping points ------------------------------------------------------------------------------


def test_to_seq_stops_after_the_whole_transaction(log_dir: tuple[Path, list[Envelope]]) -> None:
    state_dir, written = log_dir
    source = open_source(state_dir)
    for checkpoint_seq, path in list_checkpoints(state_dir):
        report = replay_log(source, to_seq=checkpoint_seq)
        assert report.state_seq == checkpoint_seq
        assert state_hash(report.state) == load_checkpoint(path).state_hash
    # A seq inside a transaction (an input with decisions) includes the whole transaction.
    inner = next(e for e in written if e.decisions)
    assert inner.decisions is not None
    report = replay_log(source, to_seq=inner.seq)
    assert report.state_seq == inner.seq + inner.decisions


def test_at_stops_before_the_first_input_stamped_later(
    log_dir: tuple[Path, list[Envelope]],
) -> None:
    state_dir, written = log_dir
    # record_log stamps input i with BASE + i seconds: at BASE + 40.5 s, inputs 0..40 are in.
    report = replay_log(open_source(state_dir), at_ns=BASE_TS_NS + 40 * 10**9 + 5 * 10**8)
    later = [e for e in written if e.ts_ns > BASE_TS_NS + 40 * 10**9 + 5 * 10**8]
    assert report.state_seq == later[0].seq - 1
    assert report.last_ts_ns == BASE_TS_NS + 40 * 10**9


def test_from_checkpoint_starts_late_and_reaches_the_same_state(
    log_dir: tuple[Path, list[Envelope]],
) -> None:
    state_dir, _written = log_dir
    checkpoints = [seq for seq, _ in list_checkpoints(state_dir)]
    target = checkpoints[2] + 7
    fast = replay_log(open_source(state_dir), to_seq=target, from_checkpoint=True)
    full = replay_log(open_source(state_dir), to_seq=target)
    assert fast.started_from_checkpoint == checkpoints[2]
    assert full.started_from_checkpoint is None
    assert state_hash(fast.state) == state_hash(full.state)
    assert fast.records < full.records


def test_a_pruned_log_starts_at_its_oldest_usable_checkpoint(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    record_log(state_dir, churn_inputs(200), checkpoint_every=30, segment_bytes=8 << 10)
    expected = replay_log(open_source(state_dir))
    checkpoints = [seq for seq, _ in list_checkpoints(state_dir)]
    with EventLog.open(state_dir, fsync=False, segment_bytes=8 << 10) as log:
        assert log.prune_segments(through_seq=checkpoints[1])
    first = LogReader(state_dir).first_seq()
    assert first > 1
    report = replay_log(open_source(state_dir))
    assert report.started_from_checkpoint == min(c for c in checkpoints if c >= first - 1)
    assert state_hash(report.state) == state_hash(expected.state)
    for _, path in list_checkpoints(state_dir):
        path.unlink()
    with pytest.raises(MidLogCorruption, match="pruned"):
        replay_log(open_source(state_dir))


# --- checkpoints ----------------------------------------------------------------------------------


def test_a_checkpoint_that_disagrees_with_the_log_is_a_divergence(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    written = record_log(state_dir, churn_inputs(100), checkpoint_every=20)
    (seq2, path2) = list_checkpoints(state_dir)[1]
    good = load_checkpoint(path2)
    # What another apply() would have folded: one more pinning request counted.
    other = msgspec.structs.replace(
        good.state,
        counters=msgspec.structs.replace(
            good.state.counters, pinning_requests=good.state.counters.pinning_requests + 1
        ),
    )
    write_checkpoint(state_dir, other, seq=seq2, chain_crc=good.chain_crc, fsync=False)
    report = replay_log(open_source(state_dir))
    divergence = report.divergence
    assert divergence is not None
    assert (divergence.kind, divergence.seq) == ("checkpoint_hash", seq2)
    assert divergence.hash_recorded == state_hash(other) != divergence.hash_derived
    assert [(c.section, c.field) for c in divergence.changes()] == [
        ("counters", "pinning_requests")
    ]
    assert report.checkpoints_verified == [list_checkpoints(state_dir)[0][0]]
    # The same checkpoint claiming another log's chain CRC is only reported.
    write_checkpoint(state_dir, other, seq=seq2, chain_crc=good.chain_crc ^ 1, fsync=False)
    report = replay_log(open_source(state_dir))
    assert report.divergence is None
    assert any("describes another log" in w for w in report.warnings)
    assert report.records == len(written)


def test_a_damaged_checkpoint_is_skipped_with_a_warning_and_the_others_verified(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    record_log(state_dir, churn_inputs(100), checkpoint_every=20)
    listed = list_checkpoints(state_dir)
    assert len(listed) >= 3
    (seq1, path1) = listed[1]
    data = bytearray(path1.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the body: the file's CRC no longer matches
    path1.write_bytes(bytes(data))
    report = replay_log(open_source(state_dir))
    assert report.divergence is None
    assert [w for w in report.warnings if path1.name in w] == [
        f"checkpoint {path1.name} skipped: {_load_error(path1)}"
    ]
    assert report.checkpoints_verified == [seq for seq, _ in listed if seq != seq1]


def _load_error(path: Path) -> str:
    with pytest.raises(CheckpointCorruption) as caught:
        load_checkpoint(path)
    return str(caught.value)


# --- bisect ---------------------------------------------------------------------------------------


def _healing_history() -> list[object]:
    """Ten small pods, trigger A, five pods, A removed, five pods, trigger B, five pods."""

    def admit(uid: str) -> PodAdmissionRequested:
        return PodAdmissionRequested(pod=factories.pod(uid, "64Mi", namespace="t"))

    inputs: list[object] = list(start_inputs())
    inputs += [admit(f"uid-{i:03d}") for i in range(10)]  # indexes 3..12
    inputs.append(admit("zz-a"))  # 13
    inputs += [admit(f"uid-{i:03d}") for i in range(10, 15)]  # 14..18
    inputs.append(PodRemovalRequested(uid="zz-a"))  # 19
    inputs += [admit(f"uid-{i:03d}") for i in range(15, 20)]  # 20..24
    inputs.append(admit("zz-b"))  # 25
    inputs += [admit(f"uid-{i:03d}") for i in range(20, 25)]  # 26..30
    return inputs


def test_bisect_corrects_a_divergence_that_did_not_persist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints after inputs 10, 16, 22, 27, 30 compare F T F T T between a real and an
    altered log (trigger A's divergence heals when A is removed at 19). The binary search
    alone settles on the checkpoint after 27 (trigger B); checking the earlier checkpoints finds
    the one after 16 and the answer is trigger A's request."""
    inputs = _healing_history()
    at = {10, 16, 22, 27, 30}
    real = record_log(tmp_path / "real", inputs, checkpoint_at=at)  # type: ignore[arg-type]
    with monkeypatch.context() as patch:
        fill_highest_first(patch)
        record_log(tmp_path / "altered", inputs, checkpoint_at=at)  # type: ignore[arg-type]
    request_a = next(
        e.seq
        for e in real
        if isinstance(e.event, PodAdmissionRequested) and e.event.pod.uid == "zz-a"
    )
    request_b = next(
        e.seq
        for e in real
        if isinstance(e.event, PodAdmissionRequested) and e.event.pod.uid == "zz-b"
    )
    first, second = Run(open_source(tmp_path / "real")), Run(open_source(tmp_path / "altered"))
    checked = bisect(first, second)
    assert checked.non_monotone
    assert checked.divergence is not None and checked.divergence.seq == request_a
    trusting = bisect(first, second, verify_earlier=False)
    assert not trusting.non_monotone
    assert trusting.divergence is not None and trusting.divergence.seq == request_b
    lockstep = bisect(first, second, linear=True)
    assert lockstep.divergence is not None and lockstep.divergence.seq == request_a


def test_bisect_of_identical_runs_finds_nothing(log_dir: tuple[Path, list[Envelope]]) -> None:
    state_dir, _ = log_dir
    source = open_source(state_dir)
    report = bisect(Run(source), Run(source, reference=True), probe_every=7)
    assert report.divergence is None
    assert report.probes >= len(list_checkpoints(state_dir))


def test_bisect_reports_logs_of_different_inputs(tmp_path: Path) -> None:
    record_log(tmp_path / "a", churn_inputs(40, seed=1))
    record_log(tmp_path / "b", churn_inputs(40, seed=2))
    report = bisect(Run(open_source(tmp_path / "a")), Run(open_source(tmp_path / "b")))
    assert report.divergence is not None
    assert report.divergence.kind == "input"
    assert report.divergence.other_record is not None


def test_bisect_of_a_pruned_log_starts_at_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    written = record_log(
        state_dir, churn_inputs(200, triggers=(150,)), checkpoint_every=30, segment_bytes=8 << 10
    )
    with EventLog.open(state_dir, fsync=False, segment_bytes=8 << 10) as log:
        assert log.prune_segments(through_seq=list_checkpoints(state_dir)[1][0])
    assert LogReader(state_dir).first_seq() > 1
    fill_highest_first(monkeypatch)
    source = open_source(state_dir)
    report = bisect(Run(source), Run(source, reference=True))
    first = next(
        e.seq
        for e in written
        if isinstance(e.event, PodAdmissionRequested) and e.event.pod.uid == "zz-000150"
    )
    assert report.divergence is not None and report.divergence.seq == first
    assert replay_log(source).divergence.seq == first  # type: ignore[union-attr]
