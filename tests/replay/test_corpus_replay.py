"""Every replay/ entry replays as a file and as a binary log, diverging only where it says.

Goal: `memstate replay` on the corpus gives each entry's expected outcome — no divergence, or
exactly the divergence its `expected.json` names (`"divergence": {"seq", "kind"}`) — whether
the entry is read as JSON lines or imported into a state directory through the real writer
(the form a log copied off a node has); and the audit-ready anonymised copy of every entry
replays exactly like it. tests/golden/test_replay_corpus.py checks the decisions and final
states; this checks the replay tool on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memstate.core.scenario import read_scenario
from memstate.core.state import state_hash
from memstate.history.anonymise import anonymise_log
from memstate.history.replay import open_source, replay_log
from memstate.present.views import numa_document
from memstate.store.writer import EventLog

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "replay").glob("*.jsonl"))


def expected_divergence(scenario: Path) -> tuple[int, str] | None:
    expected = json.loads(Path(str(scenario)[: -len(".jsonl")] + ".expected.json").read_text())
    found = expected.get("divergence")
    return (found["seq"], found["kind"]) if found else None


def outcome(path: Path) -> tuple[int, str] | None:
    report = replay_log(open_source(path))
    return (report.divergence.seq, report.divergence.kind) if report.divergence else None


@pytest.mark.parametrize("scenario", CORPUS, ids=lambda p: p.name)
def test_corpus_entry_replays_to_its_expected_outcome(scenario: Path, tmp_path: Path) -> None:
    wanted = expected_divergence(scenario)
    assert outcome(scenario) == wanted
    state_dir = tmp_path / "state"
    with EventLog.open(state_dir, fsync=False) as log:
        log.append_envelopes(read_scenario(scenario.read_text()))
    assert outcome(state_dir) == wanted


@pytest.mark.parametrize("scenario", CORPUS, ids=lambda p: p.name)
def test_anonymised_copy_replays_like_the_original(scenario: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jsonl"
    result = anonymise_log(open_source(scenario), copy)
    wanted = expected_divergence(scenario)
    assert result.divergence_seq == (wanted[0] if wanted else None)
    assert outcome(copy) == wanted
    original = replay_log(open_source(scenario))
    anonymised = replay_log(open_source(copy))
    # Names differ, so the hashes do; the NUMA tables hold none and must be identical.
    assert state_hash(original.state) != state_hash(anonymised.state) or not original.state.pods
    assert numa_document(original.state) == numa_document(anonymised.state)
    assert original.records == anonymised.records
