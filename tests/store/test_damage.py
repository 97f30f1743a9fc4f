"""The damage test: `log verify` and start-up give the same verdict on every damaged log.

Method: build a real multi-segment log twice — as a stopped daemon leaves it (every record
acknowledged) and as a crash during the last append leaves it (the last batch written, its mark
not) — then damage copies: cut the log (the byte stream of all segments) at every record
boundary and at byte offsets of the last two segments, and flip one bit at byte offsets
throughout. For each damaged log, `verify` runs first (read-only), then start-up as the daemon
does it (`EventLog.open` with recovery, then `recover_state`). The verdicts must be identical:
both refuse with the same exit code and message (file, offset, seq), or both accept and the
tail verify reports is exactly what start-up cut. And no acknowledged record may be lost without
a refusal: whenever start-up accepts, every acknowledged record is still in the log, byte for
byte, and whatever it cut is in a `.broken` copy with a `log_tail_truncated` note to record.

With a checkpoint at the end of the log, start-up does not read sealed segments; there a flipped
bit in a sealed segment must be found by `verify --full` and by the daemon's background check
(`check_sealed_bodies`) instead, and start-up's verdict still equals `verify`'s.

Offsets are sampled (seeded) where a sweep would take too long; MEMSTATE_DAMAGE_SAMPLES raises
the sample (0 = every offset).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from memstate.core.errors import InvariantViolation, LogCorruption, MemstateError, SchemaError
from memstate.core.events import Envelope
from memstate.history.replay import replay_state
from memstate.store.checkpoint import write_checkpoint
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.verify import check_sealed_bodies, verify
from memstate.store.writer import EventLog
from tests.store.helpers import build_log, standard_batches

SAMPLES = int(os.environ.get("MEMSTATE_DAMAGE_SAMPLES", "200"))


@dataclass(frozen=True)
class Verdict:
    refused: bool
    detail: str  # the error line when refused; the offset of the cut tail (or "") otherwise


@dataclass
class Pristine:
    state_dir: Path
    files: dict[str, bytes]  # log/*.evlog
    acknowledged: list[Envelope]
    written: list[Envelope]

    def restore(self) -> None:
        shutil.rmtree(self.state_dir / "log")
        (self.state_dir / "log").mkdir()
        for name, data in self.files.items():
            (self.state_dir / "log" / name).write_bytes(data)

    def stream(self) -> list[tuple[str, int]]:
        """(segment, offset within it) for every byte of the log, in order."""
        return [
            (name, offset) for name in sorted(self.files) for offset in range(len(self.files[name]))
        ]


def make(tmp_path: Path, *, crashed: bool, checkpoint: bool) -> Pristine:
    state_dir = tmp_path / f"state-{int(crashed)}{int(checkpoint)}"
    batches = standard_batches(36, seed=5, per_batch=2)
    written = build_log(state_dir, batches, segment_bytes=1024, last_batch_acknowledged=not crashed)
    acknowledged = written[: len(written) - len(batches[-1])] if crashed else written
    if checkpoint:
        seq = acknowledged[-1].seq
        crc = LogReader(state_dir).chain_crc_at(seq)
        assert crc is not None
        write_checkpoint(state_dir, replay_state(acknowledged), seq=seq, chain_crc=crc, fsync=False)
    files = {p.name: p.read_bytes() for p in sorted((state_dir / "log").glob("*.evlog"))}
    assert len(files) >= 5
    return Pristine(state_dir, files, acknowledged, written)


def verdict_of_verify(state_dir: Path) -> Verdict:
    try:
        report = verify(state_dir)
    except (LogCorruption, SchemaError, InvariantViolation) as exc:
        return Verdict(True, f"{exc.exit_code} {exc}")
    if report.problem is not None:
        error = report.problem.to_error()
        return Verdict(True, f"{error.exit_code} {error}")
    return Verdict(False, str(report.tail.offset) if report.tail else "")


def start_up(state_dir: Path) -> tuple[Verdict, EventLog | None]:
    """The daemon's start-up with the log: open (recovery), then `recover_state`."""
    try:
        log = EventLog.open(state_dir, fsync=False)
    except MemstateError as exc:
        return Verdict(True, f"{exc.exit_code} {exc}"), None
    try:
        recovered = recover_state(state_dir)
    except MemstateError as exc:
        log.close()
        return Verdict(True, f"{exc.exit_code} {exc}"), None
    assert recovered.last_seq == log.last_seq
    report = log.recovery
    return Verdict(False, str(report.offset) if report.truncated else ""), log


def judge(pristine: Pristine, what: str) -> str:
    """Verify, then start up; the verdicts must agree and nothing acknowledged may vanish."""
    state_dir = pristine.state_dir
    by_verify = verdict_of_verify(state_dir)
    by_start, log = start_up(state_dir)
    assert by_verify == by_start, f"{what}: verify {by_verify} != start-up {by_start}"
    if by_start.refused:
        assert by_start.detail.startswith("65 "), what
        return "refused"
    assert log is not None
    try:
        report = log.recovery
        if report.truncated:
            assert Path(report.broken_copy).exists(), what
            assert report.tail_truncated_event() is not None, what
        try:
            kept = list(LogReader(state_dir).read())
        except LogCorruption:
            # Damage start-up did not read (a sealed segment before the checkpoint it used):
            # the background check must report it (no silent loss).
            problem = check_sealed_bodies(state_dir)
            assert problem is not None, f"{what}: damage found by no check"
            assert verify(state_dir, full=True).problem is not None, what
            return "found in the background"
        assert kept[: len(pristine.acknowledged)] == pristine.acknowledged, (
            f"{what}: acknowledged records lost without a refusal"
        )
    finally:
        log.close()
    return "cut" if report.truncated else "intact"


def cut_log(pristine: Pristine, segment: str, offset: int) -> None:
    """The log's byte stream cut at `segment`:`offset`: later segments are gone."""
    for name in pristine.files:
        if name > segment:
            (pristine.state_dir / "log" / name).unlink()
    path = pristine.state_dir / "log" / segment
    path.write_bytes(pristine.files[segment][:offset])


def flip(pristine: Pristine, segment: str, offset: int) -> None:
    data = bytearray(pristine.files[segment])
    data[offset] ^= 1 << (offset % 8)
    (pristine.state_dir / "log" / segment).write_bytes(bytes(data))


def sample(items: list[tuple[str, int]], seed: int) -> list[tuple[str, int]]:
    if SAMPLES == 0 or len(items) <= SAMPLES:
        return items
    return sorted(random.Random(seed).sample(items, SAMPLES))


def record_boundaries(pristine: Pristine) -> list[tuple[str, int]]:
    boundaries = []
    for record in LogReader(pristine.state_dir).read_raw():
        boundaries.append((record.segment, record.offset))
    for name in pristine.files:  # the end of every segment is a boundary too
        boundaries.append((name, len(pristine.files[name])))
    return sorted(set(boundaries))


@pytest.mark.parametrize("crashed", [False, True], ids=["stopped", "crashed"])
def test_cuts_at_record_boundaries_and_byte_offsets(tmp_path: Path, crashed: bool) -> None:
    pristine = make(tmp_path, crashed=crashed, checkpoint=False)
    last_two = sorted(pristine.files)[-2:]
    boundaries = [b for b in record_boundaries(pristine) if b[0] in last_two]
    offsets = [(name, offset) for name, offset in pristine.stream() if name in last_two]
    outcomes: dict[str, int] = {}
    for segment, offset in boundaries + sample(offsets, seed=1):
        cut_log(pristine, segment, offset)
        outcome = judge(pristine, f"cut at {segment}:{offset}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        pristine.restore()
    # Every cut that removes an acknowledged record is refused; the stopped log has nothing
    # else, the crashed one has an unacknowledged last batch that can be cut.
    assert outcomes.get("refused", 0) > 0
    if crashed:
        assert outcomes.get("cut", 0) > 0


@pytest.mark.parametrize("crashed", [False, True], ids=["stopped", "crashed"])
def test_flipped_bits_throughout(tmp_path: Path, crashed: bool) -> None:
    pristine = make(tmp_path, crashed=crashed, checkpoint=False)
    outcomes: dict[str, int] = {}
    for segment, offset in sample(pristine.stream(), seed=2):
        flip(pristine, segment, offset)
        outcome = judge(pristine, f"bit flip at {segment}:{offset}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        pristine.restore()
    assert outcomes.get("refused", 0) > 0


def test_with_a_checkpoint_sealed_segments_are_checked_in_the_background(tmp_path: Path) -> None:
    pristine = make(tmp_path, crashed=False, checkpoint=True)
    outcomes: dict[str, int] = {}
    for segment, offset in sample(pristine.stream(), seed=3):
        flip(pristine, segment, offset)
        outcome = judge(pristine, f"bit flip at {segment}:{offset} with a checkpoint")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        pristine.restore()
    assert outcomes.get("found in the background", 0) > 0
    assert outcomes.get("refused", 0) > 0
