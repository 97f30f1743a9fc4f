"""Property tests of the recovery policy over random logs and random damage.

Method: hypothesis draws a log (random pod churn, batch sizes, segment size) and one kind of
damage — a crash-like truncation or zero-fill of the last segment, or a single flipped bit
anywhere. The expected outcome is computed from the undamaged frame table and the transaction
structure of what was written: a crash-like tail is cut back to the last whole transaction and
nothing before it is lost; a flipped bit is refused at its frame, except in the very last frame,
where dropping that frame (and its unfinished transaction) is also allowed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from memstate.core.errors import LogCorruption, MidLogCorruption, SchemaError
from memstate.core.events import Envelope
from memstate.store.format import BASE_HEADER_BYTES, SEGMENT_HEADER_BYTES, padded_size
from memstate.store.reader import LogReader
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog
from tests.store.helpers import build_log, standard_batches


@dataclass(frozen=True)
class Frame:
    segment: str
    offset: int
    end: int
    envelope: Envelope


def frames_of(state_dir: Path, written: list[Envelope]) -> list[Frame]:
    raw = list(LogReader(state_dir).read_raw())
    assert [r.seq for r in raw] == [e.seq for e in written]
    return [
        Frame(r.segment, r.offset, r.offset + padded_size(len(r.payload)), e)
        for r, e in zip(raw, written, strict=True)
    ]


def whole_transactions(kept: list[Envelope]) -> list[Envelope]:
    """`kept` without a trailing input whose announced decisions are not all there."""
    index = 0
    while index < len(kept):
        announced = kept[index].decisions or 0
        if index + announced >= len(kept):
            return kept[:index]
        index += 1 + announced
    return kept


logs = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 10_000),
        "transactions": st.integers(1, 25),
        "per_batch": st.integers(1, 4),
        "segment_bytes": st.sampled_from([512, 1024, 4096]),
    }
)
damages = st.tuples(st.sampled_from(["truncate", "zero_fill", "flip"]), st.floats(0, 1))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(logs, damages)
def test_recovery_policy(params: dict[str, int], damage: tuple[str, float]) -> None:
    root = Path(tempfile.mkdtemp(prefix="memstate-prop-"))
    try:
        state_dir = root / "state"
        batches = standard_batches(
            params["transactions"], seed=params["seed"], per_batch=params["per_batch"]
        )
        written = build_log(
            state_dir,
            batches,
            segment_bytes=params["segment_bytes"],
            last_batch_acknowledged=False,  # the log a crash during the last append leaves
        )
        frames = frames_of(state_dir, written)
        acked = written[-1].seq - sum(1 for _ in batches[-1])
        check(state_dir, frames, *damage, acked=acked)
    finally:
        shutil.rmtree(root)


def check(state_dir: Path, frames: list[Frame], kind: str, where: float, *, acked: int) -> None:
    log_dir = state_dir / "log"
    last_segment = max(p.name for p in log_dir.glob("*.evlog"))
    last_path = log_dir / last_segment
    original = last_path.read_bytes()
    if kind in ("truncate", "zero_fill"):
        position = SEGMENT_HEADER_BYTES + int(where * (len(original) - SEGMENT_HEADER_BYTES))
        if kind == "truncate":
            damaged = original[:position]
        else:
            damaged = original[:position] + bytes(len(original) - position)
        last_path.write_bytes(damaged)
        intact = []
        for frame in frames:
            if frame.segment == last_segment and (
                frame.end > len(damaged)
                or damaged[frame.offset : frame.end] != original[frame.offset : frame.end]
            ):
                break  # this frame and everything after it in the last segment is damaged
            intact.append(frame.envelope)
        kept = whole_transactions(intact)
        if (kept[-1].seq if kept else 0) < acked:
            # The cut reaches acknowledged records: refused, whatever the shape of the cut.
            event("cut into acknowledged records refused")
            with pytest.raises(MidLogCorruption, match="acknowledged"):
                start_up(state_dir)
            return
        expect_recovered(state_dir, kept)
        return
    segments = sorted(log_dir.glob("*.evlog"))
    total = sum(p.stat().st_size for p in segments)
    byte = min(int(where * total), total - 1)
    for path in segments:
        size = path.stat().st_size
        if byte < size:
            break
        byte -= size
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << (byte % 8)
    path.write_bytes(bytes(data))
    last = frames[-1]
    in_last_frame = path.name == last.segment and byte >= last.offset
    try:
        start_up(state_dir)
    except (LogCorruption, SchemaError) as exc:
        assert exc.exit_code == 65
        event(f"flip refused: {type(exc).__name__}")
        if isinstance(exc, LogCorruption):
            assert isinstance(exc, MidLogCorruption)
            assert exc.file.endswith(path.name)
            assert exc.offset is not None
            if byte < SEGMENT_HEADER_BYTES:
                assert exc.offset < BASE_HEADER_BYTES
            else:
                frame = next(
                    f for f in frames if f.segment == path.name and f.offset <= byte < f.end
                )
                assert exc.offset == frame.offset
        return
    if BASE_HEADER_BYTES <= byte < SEGMENT_HEADER_BYTES:
        # One damaged mark slot (a torn mark write looks the same): the other one is used.
        event("flip in a mark slot tolerated")
        expect_content(state_dir, whole_transactions([f.envelope for f in frames]))
        return
    event("flip in the last frame recovered")
    assert in_last_frame, f"a flipped bit at {path.name}:{byte} was not refused"
    expect_content(state_dir, whole_transactions([f.envelope for f in frames[:-1]]))


def start_up(state_dir: Path) -> None:
    """The daemon's start-up reads: open (recovery), then `recover_state`."""
    with EventLog.open(state_dir, fsync=False):
        recover_state(state_dir)


def expect_recovered(state_dir: Path, expected: list[Envelope]) -> None:
    with EventLog.open(state_dir, fsync=False) as log:
        assert log.last_seq == (expected[-1].seq if expected else 0)
    expect_content(state_dir, expected)


def expect_content(state_dir: Path, expected: list[Envelope]) -> None:
    assert list(LogReader(state_dir).read()) == expected
