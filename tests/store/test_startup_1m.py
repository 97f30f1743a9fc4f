"""Start-up on a 1,000,000-record log with a checkpoint decodes only the tail, and reads no
byte of the sealed segments' bodies.

Goal: start-up cost after a checkpoint does not depend on how much history precedes it — it
decodes (and folds) only the records after the checkpoint. The test counts decoded records,
both with `Recovered.decoded_events` and by wrapping the store's decode function; it never
measures time (the benchmark in benchmarks/log_startup.py does).

Method: the node setup and a few admissions go through the real writer; ~1M filler notes are
written by the byte-identical fast path of tests/store/bulk.py (proven identical to the writer
below); a checkpoint is written after them; a tail of real transactions follows through the real
writer. Then the log is opened (recovery scans every frame's CRC) and `recover_state` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import memstate.store.reader as log_module
import memstate.store.recovery as recovery_module
from memstate.core.codec import encode_envelope
from memstate.core.events import SCHEMA_VERSION, Envelope
from memstate.store.checkpoint import write_checkpoint
from memstate.store.format import SEGMENT_HEADER_BYTES, SegmentHeader, decode_segment_header
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog
from tests.store.bulk import FILLER, FillerPayloads, write_filler_log
from tests.store.helpers import BASE_TS_NS, Node

TOTAL_RECORDS = 1_000_000
SEGMENT_BYTES = 16 << 20


def test_bulk_builder_matches_the_writer(tmp_path: Path) -> None:
    payloads = FillerPayloads(BASE_TS_NS)
    for seq in (1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 10**12):
        assert payloads.payload_for(seq) == encode_envelope(
            Envelope(seq, BASE_TS_NS, SCHEMA_VERSION, FILLER)
        )
    count = 3_000
    real, fast = tmp_path / "real", tmp_path / "fast" / "log"
    with EventLog.open(real, fsync=False, segment_bytes=8192) as log:
        for _ in range(count):
            log.append([(FILLER, None)], ts_ns=BASE_TS_NS)
        end_crc = log.chain_crc
    fast.mkdir(parents=True)
    assert write_filler_log(
        fast, first_seq=1, prev_chain_crc=0, count=count, ts_ns=BASE_TS_NS, segment_bytes=8192
    ) == (count, end_crc)
    real_files = {p.name: p.read_bytes() for p in (real / "log").glob("*.evlog")}
    fast_files = {p.name: p.read_bytes() for p in fast.glob("*.evlog")}
    assert len(real_files) > 3
    assert real_files == fast_files


def test_startup_with_a_checkpoint_decodes_only_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    node = Node(1_000_000)
    setup = node.start() + [node.churn() for _ in range(20)]
    with EventLog.open(state_dir, fsync=False, segment_bytes=SEGMENT_BYTES) as log:
        for batch in setup:
            log.append(batch, ts_ns=BASE_TS_NS)
        setup_seq, setup_crc = log.last_seq, log.chain_crc
    state_at_checkpoint = node.state
    tail = [node.group(2) for _ in range(150)]
    tail_records = sum(len(batch) for batch in tail)
    filler = TOTAL_RECORDS - setup_seq - tail_records
    checkpoint_seq, checkpoint_crc = write_filler_log(
        state_dir / "log",
        first_seq=setup_seq + 1,
        prev_chain_crc=setup_crc,
        count=filler,
        ts_ns=BASE_TS_NS + 1,
        segment_bytes=SEGMENT_BYTES,
    )
    write_checkpoint(
        state_dir, state_at_checkpoint, seq=checkpoint_seq, chain_crc=checkpoint_crc, fsync=False
    )
    with EventLog.open(state_dir, fsync=False, segment_bytes=SEGMENT_BYTES) as log:
        for batch in tail:
            log.append(batch, ts_ns=BASE_TS_NS + 2)
        assert log.last_seq == TOTAL_RECORDS

    decoded: list[int] = []
    real_decode = log_module.decode_envelope
    real_typed_decode = recovery_module.typed_decode

    def counting_decode(data: bytes | memoryview) -> Envelope:
        envelope = real_decode(data)
        decoded.append(envelope.seq)
        return envelope

    def counting_typed_decode() -> Callable[[bytes | memoryview], Envelope]:
        decode = real_typed_decode()

        def counting(data: bytes | memoryview) -> Envelope:
            envelope = decode(data)
            decoded.append(envelope.seq)
            return envelope

        return counting

    # Every decode start-up may do: the reader's, and the tail loop's typed decode.
    monkeypatch.setattr(log_module, "decode_envelope", counting_decode)
    monkeypatch.setattr(recovery_module, "typed_decode", counting_typed_decode)
    reads = record_reads(monkeypatch)
    with EventLog.open(state_dir, fsync=False) as log:  # start-up: recovery, then state
        assert not log.recovery.truncated and log.last_seq == TOTAL_RECORDS
        recovered = recover_state(state_dir)
    monkeypatch.undo()
    # Sealed segments are checked from their header and seal only: start-up reads no byte of
    # their bodies, so its cost does not grow with the log (the daemon reads them after READY).
    segments = sorted((state_dir / "log").glob("*.evlog"))
    sealed = [path for path in segments[:-1] if is_sealed(path)]
    assert len(sealed) >= 5
    for path in sealed:
        assert reads.get(str(path), 0) <= SEGMENT_HEADER_BYTES, path.name
    assert recovered.checkpoint_seq == checkpoint_seq
    assert recovered.decoded_events == tail_records == TOTAL_RECORDS - checkpoint_seq
    assert decoded == list(range(checkpoint_seq + 1, TOTAL_RECORDS + 1))
    assert recovered.last_seq == TOTAL_RECORDS
    assert recovered.state == node.state
    assert recovered.warnings == []


def is_sealed(path: Path) -> bool:
    header = decode_segment_header(path.read_bytes()[:SEGMENT_HEADER_BYTES])
    return isinstance(header, SegmentHeader) and header.sealed


def record_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap `os.pread`/`os.preadv`: the furthest byte read in each file, by path."""
    furthest: dict[str, int] = {}
    real_pread, real_preadv = os.pread, os.preadv

    def note(fd: int, offset: int, count: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        furthest[path] = max(furthest.get(path, 0), offset + count)

    def pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        note(fd, offset, len(data))
        return data

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        count = real_preadv(fd, buffers, offset)
        note(fd, offset, count)
        return count

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "preadv", preadv)
    return furthest
