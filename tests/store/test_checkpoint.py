"""Checkpoints and start-up recovery: atomic files, pair-checked hashes, fallbacks, tail replay.

Method: real logs built from reducer transactions; the reference state comes from
`memstate.history.replay.replay_state` (the replay engine, independent of the store's start-up
path).
Damaged or mismatching checkpoints must be skipped with a warning, never trusted.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memstate.store.checkpoint as checkpoint_module
from memstate.core.errors import CheckpointCorruption, MidLogCorruption, SchemaError
from memstate.core.events import SCHEMA_VERSION, Envelope, PodAdmissionRequested
from memstate.core.removals import PendingRemovals
from memstate.core.state import State, state_hash
from memstate.history.replay import replay_state
from memstate.store.checkpoint import (
    encode_checkpoint,
    list_checkpoints,
    load_checkpoint,
    oldest_checkpoint_seq,
    prune_checkpoints,
    write_checkpoint,
)
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog
from tests import factories
from tests.store.helpers import BASE_TS_NS, build_log, standard_batches


def boundaries(written: list[Envelope]) -> list[int]:
    """Seqs that end a transaction (where the daemon may checkpoint)."""
    ends, owed = [], 0
    for envelope in written:
        if owed:
            owed -= 1
        else:
            owed = envelope.decisions or 0
        if not owed:
            ends.append(envelope.seq)
    return ends


def checkpoint_at(state_dir: Path, written: list[Envelope], seq: int) -> Path:
    state = replay_state([e for e in written if e.seq <= seq])
    crc = LogReader(state_dir).chain_crc_at(seq)
    assert crc is not None
    return write_checkpoint(state_dir, state, seq=seq, chain_crc=crc, fsync=False)


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, list[Envelope]]:
    written = build_log(tmp_path, standard_batches(60, seed=5, per_batch=2), segment_bytes=2048)
    return tmp_path, written


def test_checkpoint_round_trip(logged: tuple[Path, list[Envelope]]) -> None:
    state_dir, written = logged
    seq = boundaries(written)[-5]
    path = checkpoint_at(state_dir, written, seq)
    assert path.name == f"{seq:020d}.snap"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    loaded = load_checkpoint(path)
    expected = replay_state([e for e in written if e.seq <= seq])
    assert loaded.state == expected
    assert loaded.state_hash == state_hash(expected)
    assert (loaded.seq, loaded.chain_crc) == (seq, LogReader(state_dir).chain_crc_at(seq))
    assert loaded.schema_version == SCHEMA_VERSION
    # Deterministic bytes: the same state encodes identically.
    assert encode_checkpoint(expected, seq=seq, chain_crc=loaded.chain_crc) == path.read_bytes()


def test_pending_removals_ride_along_and_none_leaves_the_old_format(
    logged: tuple[Path, list[Envelope]],
) -> None:
    """Retired pod cgroups still to remove are kept beside the state (not in its hash); with
    none, the body has no such key, so the file is what earlier builds wrote and read."""
    state_dir, written = logged
    seq = boundaries(written)[-5]
    state = replay_state([e for e in written if e.seq <= seq])
    chain = LogReader(state_dir).chain_crc_at(seq)
    assert chain is not None
    plain = encode_checkpoint(state, seq=seq, chain_crc=chain)
    body = msgspec.msgpack.decode(plain[16:-4])
    assert set(body) == {
        "seq", "chain_crc", "reducer_version", "schema_version", "state_hash", "state"
    }  # fmt: skip
    pending = PendingRemovals(paths={"kubepods/burstable/podgone": "gone"})
    path = write_checkpoint(state_dir, state, seq=seq, chain_crc=chain, removals=pending)
    loaded = load_checkpoint(path)
    assert loaded.removals == pending
    assert loaded.state_hash == state_hash(state)
    # Start-up continues the fold from the checkpoint's copy (the tail removes nothing of it).
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq == seq
    assert "kubepods/burstable/podgone" in recovered.removals.paths


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_flipped_bit_makes_a_checkpoint_unusable(data: st.DataObject) -> None:
    state = replay_state(
        [
            Envelope(i + 1, BASE_TS_NS, SCHEMA_VERSION, event, decisions)  # type: ignore[arg-type]
            for i, (event, decisions) in enumerate(
                [item for batch in standard_batches(4, seed=1) for item in batch]
            )
        ]
    )
    blob = bytearray(encode_checkpoint(state, seq=9, chain_crc=1234))
    bit = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    path = Path(data.draw(st.just("/tmp"))) / f"memstate-flip-{bit}-{id(blob)}.snap"
    try:
        path.write_bytes(bytes(blob))
        with pytest.raises((CheckpointCorruption, SchemaError)):
            load_checkpoint(path)
    finally:
        path.unlink()


def test_full_replay_without_checkpoint(logged: tuple[Path, list[Envelope]]) -> None:
    state_dir, written = logged
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq is None
    assert recovered.decoded_events == len(written)
    assert recovered.state == replay_state(written)
    assert recovered.last_seq == written[-1].seq
    with EventLog.open(state_dir, fsync=False) as log:
        assert recovered.chain_crc == log.chain_crc
    assert recovered.warnings == []


def test_start_from_newest_checkpoint_decodes_only_the_tail(
    logged: tuple[Path, list[Envelope]],
) -> None:
    state_dir, written = logged
    ends = boundaries(written)
    for seq in (ends[3], ends[-8]):
        checkpoint_at(state_dir, written, seq)
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq == ends[-8]
    assert recovered.decoded_events == written[-1].seq - ends[-8]
    assert recovered.state == replay_state(written)
    assert recovered.warnings == []


def test_corrupt_newest_checkpoint_falls_back_to_an_older_one(
    logged: tuple[Path, list[Envelope]],
) -> None:
    state_dir, written = logged
    ends = boundaries(written)
    checkpoint_at(state_dir, written, ends[5])
    newest = checkpoint_at(state_dir, written, ends[-3])
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    newest.write_bytes(bytes(blob))
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq == ends[5]
    assert recovered.state == replay_state(written)
    assert len(recovered.warnings) == 1 and newest.name in recovered.warnings[0]


def test_checkpoint_of_another_reducer_version_is_skipped(
    logged: tuple[Path, list[Envelope]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir, written = logged
    monkeypatch.setattr(checkpoint_module, "REDUCER_VERSION", 999)
    checkpoint_at(state_dir, written, boundaries(written)[-2])
    monkeypatch.undo()
    assert oldest_checkpoint_seq(state_dir) is None
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq is None
    assert recovered.decoded_events == len(written)
    assert "reducer version 999" in recovered.warnings[0]
    assert recovered.state == replay_state(written)


def test_checkpoint_whose_chain_crc_does_not_match_the_log_is_skipped(
    logged: tuple[Path, list[Envelope]],
) -> None:
    state_dir, written = logged
    seq = boundaries(written)[-4]
    crc = LogReader(state_dir).chain_crc_at(seq)
    assert crc is not None
    write_checkpoint(state_dir, State(), seq=seq, chain_crc=crc ^ 1, fsync=False)
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq is None
    assert "chain CRC" in recovered.warnings[0]
    assert recovered.state == replay_state(written)


def test_checkpoint_beyond_the_log_is_skipped_by_replay_tools(
    logged: tuple[Path, list[Envelope]],
) -> None:
    state_dir, written = logged
    write_checkpoint(state_dir, State(), seq=written[-1].seq + 10, chain_crc=0, fsync=False)
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq is None
    assert "does not hold" in recovered.warnings[0]


def test_prune_checkpoints_keeps_the_newest(logged: tuple[Path, list[Envelope]]) -> None:
    state_dir, written = logged
    ends = boundaries(written)
    for seq in ends[2:7]:
        checkpoint_at(state_dir, written, seq)
    removed = prune_checkpoints(state_dir, keep=2, fsync=False)
    assert [p.name for p in removed] == [f"{s:020d}.snap" for s in ends[2:5]]
    assert [seq for seq, _ in list_checkpoints(state_dir)] == ends[5:7]
    assert oldest_checkpoint_seq(state_dir) == ends[5]


def test_pruned_log_starts_from_its_checkpoint(logged: tuple[Path, list[Envelope]]) -> None:
    state_dir, written = logged
    seq = boundaries(written)[-6]
    checkpoint_at(state_dir, written, seq)
    with EventLog.open(state_dir, fsync=False) as log:
        assert log.prune_segments(through_seq=seq)
    first = LogReader(state_dir).first_seq()
    assert 1 < first <= seq + 1
    recovered = recover_state(state_dir)
    assert recovered.checkpoint_seq == seq
    assert recovered.state == replay_state(written)
    for _, path in list_checkpoints(state_dir):
        path.unlink()
    with pytest.raises(MidLogCorruption, match="pruned"):
        recover_state(state_dir)


def test_hand_written_inputs_get_their_decisions_derived(tmp_path: Path) -> None:
    node_batches = standard_batches(0)
    inputs = [
        event for batch in node_batches for event, decisions in batch if decisions is not None
    ]
    inputs.append(PodAdmissionRequested(pod=factories.pod("p-1", "1Gi"), source="by-hand"))
    envelopes = [
        Envelope(i + 1, BASE_TS_NS + i, SCHEMA_VERSION, event)  # type: ignore[arg-type]
        for i, event in enumerate(inputs)
    ]
    with EventLog.open(tmp_path, fsync=False) as log:
        log.append_envelopes(envelopes)
    recovered = recover_state(tmp_path)
    assert "p-1" in recovered.state.pods
    assert recovered.state == replay_state(envelopes)


def test_an_unrecovered_incomplete_transaction_is_not_applied(tmp_path: Path) -> None:
    batches = standard_batches(6, seed=2)
    written = build_log(tmp_path, batches, segment_bytes=1 << 20)
    ends = boundaries(written)
    segment = next((tmp_path / "log").glob("*.evlog"))
    last_input = next(e for e in reversed(written) if e.decisions)
    frame = next(r for r in LogReader(tmp_path).read_raw() if r.seq == last_input.seq + 1)
    with segment.open("r+b") as handle:
        handle.truncate(frame.offset)  # the decision is gone, its input is still there
    recovered = recover_state(tmp_path)  # a reader's view: no recovery has run yet
    assert recovered.last_seq == last_input.seq - 1
    assert recovered.last_seq in ends
    assert recovered.state == replay_state([e for e in written if e.seq < last_input.seq])
    assert "incomplete transaction" in recovered.warnings[0]


def test_start_up_and_replay_choose_a_checkpoint_by_the_same_rule(
    logged: tuple[Path, list[Envelope]],
) -> None:
    """One chooser (store.checkpoint.usable_checkpoint): start-up and `memstate replay
    --from-checkpoint` pass over the same newer checkpoints, for the same reasons, and start
    from the same one."""
    from memstate.history.replay import open_source, starting_point

    state_dir, written = logged
    ends = boundaries(written)
    checkpoint_at(state_dir, written, ends[3])
    crc = LogReader(state_dir).chain_crc_at(ends[-3])
    assert crc is not None
    write_checkpoint(state_dir, State(), seq=ends[-3], chain_crc=crc ^ 1, fsync=False)
    damaged = checkpoint_at(state_dir, written, ends[-2])
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    recovered = recover_state(state_dir)
    state, after, warnings = starting_point(open_source(state_dir), from_checkpoint=True)
    assert recovered.checkpoint_seq == after == ends[3]
    assert recovered.warnings == warnings
    assert len(warnings) == 2 and "CRC mismatch" in warnings[0] and "chain CRC" in warnings[1]
    assert state == replay_state([e for e in written if e.seq <= ends[3]])
    assert oldest_checkpoint_seq(state_dir) == ends[3]
