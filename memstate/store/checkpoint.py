"""Checkpoints: the state at sequence N, so start-up replays only the records after N.

Theory of operation
-------------------
A checkpoint is an optimisation, never a source of truth. It records the state after record N
together with the log's chain CRC at N, so start-up can prove that the checkpoint describes
*this* log's prefix (not a prefix of a log that was since repaired or replaced) before trusting
it; if it cannot, it falls back to an older checkpoint or to full replay
(`memstate.store.recovery`).

File `<state_dir>/snap/%020d.snap` (named by N), written atomically (temp file, fsync, rename,
fsync the directory):

    0  magic            8s   b"MEMSTCKP"
    8  format_version   u16  CHECKPOINT_FORMAT_VERSION (checked before anything else)
   10  flags            u16  0
   12  body_bytes       u32
   16  body                  msgpack `CheckpointBody`
  end  crc              u32  CRC32C of every byte before it

The body stores the state as the canonical bytes of `encode_state` plus their `state_hash`, and
the retired pod cgroups still to remove at N (`memstate.core.removals`: a fold of the log, not
part of the state or its hash; omitted when there are none, so such a checkpoint is byte for byte
what earlier builds wrote and read).
Unlike the kubelet's checkpoints (a checksum over a dump of in-memory objects, which broke when a
type was renamed), the hash is over the stored bytes. Pair assertions: before writing, the bytes
are decoded again and must hash the same; after reading, the hash must match the stored bytes
*and* the decoded state must re-encode to the same hash.

A checkpoint also records the `REDUCER_VERSION` that built the state. A different reducer might
have folded the same events into a different state, so start-up skips such checkpoints (with a
warning) and replays from an older one or from the beginning — the safe answer.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
from crc32c import crc32c

from memstate.core.errors import CheckpointCorruption, InvariantViolation, SchemaError
from memstate.core.events import SCHEMA_VERSION
from memstate.core.removals import NO_REMOVALS, PendingRemovals, removals_from_paths
from memstate.core.state import REDUCER_VERSION, State, decode_state, encode_state, state_hash
from memstate.store import fsio
from memstate.store.format import SNAP_DIRNAME

SNAP_MAGIC = b"MEMSTCKP"
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_SUFFIX = ".snap"
_HEAD = struct.Struct("<8sHHI")
_CRC = struct.Struct("<I")
MAX_CHECKPOINT_BYTES = 1 << 30


class CheckpointBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a checkpoint records (msgpack inside the framed file)."""

    seq: int
    chain_crc: int
    reducer_version: int
    schema_version: int
    state_hash: str
    state: bytes  # canonical `encode_state` bytes
    removals: dict[str, str] = {}  # retired pod cgroup path → pod UID (PendingRemovals)


class Checkpoint(msgspec.Struct, frozen=True):
    """A loaded and verified checkpoint."""

    path: str
    seq: int
    chain_crc: int
    reducer_version: int
    schema_version: int
    state_hash: str
    state: State
    removals: PendingRemovals = NO_REMOVALS


_BODY_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_BODY_DECODER = msgspec.msgpack.Decoder(CheckpointBody)


def checkpoint_name(seq: int) -> str:
    """`00000000000000000042.snap`."""
    return f"{seq:020d}{CHECKPOINT_SUFFIX}"


def list_checkpoints(state_dir: Path) -> list[tuple[int, Path]]:
    """(seq, path) of every checkpoint file, oldest first (temp and broken files skipped)."""
    return fsio.numbered_files(Path(state_dir) / SNAP_DIRNAME, _checkpoint_seq)


def _checkpoint_seq(name: str) -> int | None:
    """The seq a checkpoint file's name carries, None for any other name."""
    stem = name.removesuffix(CHECKPOINT_SUFFIX)
    return int(stem) if stem != name and len(stem) == 20 and stem.isdigit() else None


def encode_checkpoint(
    state: State, *, seq: int, chain_crc: int, removals: PendingRemovals = NO_REMOVALS
) -> bytes:
    """The complete file content of a checkpoint (pure, verified before it is returned)."""
    if seq < 1:
        raise InvariantViolation(f"a checkpoint needs seq >= 1, got {seq}")
    if not 0 <= chain_crc <= 0xFFFFFFFF:
        raise InvariantViolation(f"chain CRC {chain_crc} is not a u32")
    state_bytes = encode_state(state)
    digest = _digest(state_bytes)
    # Pair assertion, writing side: the stored bytes decode to a state with the same hash.
    if state_hash(decode_state(state_bytes)) != digest:
        raise InvariantViolation("state does not survive its own canonical encoding")
    body = _BODY_ENCODER.encode(
        CheckpointBody(
            seq=seq,
            chain_crc=chain_crc,
            reducer_version=REDUCER_VERSION,
            schema_version=SCHEMA_VERSION,
            state_hash=digest,
            state=state_bytes,
            removals=dict(sorted(removals.paths.items())),
        )
    )
    head = _HEAD.pack(SNAP_MAGIC, CHECKPOINT_FORMAT_VERSION, 0, len(body))
    return head + body + _CRC.pack(crc32c(body, crc32c(head)))


def write_checkpoint(
    state_dir: Path,
    state: State,
    *,
    seq: int,
    chain_crc: int,
    fsync: bool = True,
    removals: PendingRemovals = NO_REMOVALS,
) -> Path:
    """Write the state after record `seq` atomically; returns the checkpoint path.

    `chain_crc` is the log's chain CRC after `seq` (`EventLog.chain_crc` when `seq` is
    `EventLog.last_seq`). Call it at a transaction boundary (never between an input and its
    decisions). `removals` are the retired pod cgroups still to remove at `seq`.
    `fsync=False` is for tests and benchmarks only.
    """
    data = encode_checkpoint(state, seq=seq, chain_crc=chain_crc, removals=removals)
    directory = Path(state_dir) / SNAP_DIRNAME
    fsio.ensure_dir(directory, fsync=fsync)
    path = directory / checkpoint_name(seq)
    fsio.atomic_write(path, data, fsync=fsync)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint; `CheckpointCorruption` or `SchemaError` if unusable."""
    path = Path(path)
    return _verified(read_checkpoint_body(path), path)


def read_checkpoint_body(path: Path) -> CheckpointBody:
    """A checkpoint's framing, CRC and body checked and the body decoded, with the state still
    in its encoded bytes (`check_body` checks those; `load_checkpoint` decodes them too):
    enough for a reader that compares the bytes with a state of its own (`memstate replay`).
    `CheckpointCorruption` or `SchemaError` if unusable."""
    path = Path(path)
    data = fsio.read_file(path)
    where = str(path)
    if len(data) < _HEAD.size + _CRC.size:
        raise CheckpointCorruption(f"only {len(data)} bytes", file=where, offset=0)
    magic, version, flags, body_bytes = _HEAD.unpack_from(data, 0)
    if magic != SNAP_MAGIC:
        raise CheckpointCorruption(f"bad magic {magic!r}", file=where, offset=0)
    if version > CHECKPOINT_FORMAT_VERSION:
        raise SchemaError(
            f"{where}: checkpoint format version {version} is newer than this build "
            f"understands ({CHECKPOINT_FORMAT_VERSION})"
        )
    if flags != 0 or version < 1 or _HEAD.size + body_bytes + _CRC.size != len(data):
        raise CheckpointCorruption(
            f"bad header (version {version}, flags {flags}, body {body_bytes} bytes, file "
            f"{len(data)} bytes)",
            file=where,
            offset=0,
        )
    crc_offset = _HEAD.size + body_bytes
    (stored_crc,) = _CRC.unpack_from(data, crc_offset)
    if crc32c(data[:crc_offset]) != stored_crc:
        raise CheckpointCorruption("CRC mismatch", file=where, offset=crc_offset)
    try:
        body = _BODY_DECODER.decode(data[_HEAD.size : crc_offset])
    except msgspec.MsgspecError as exc:
        raise CheckpointCorruption(f"body does not decode: {exc}", file=where) from None
    return body


def check_body(body: CheckpointBody, path: Path) -> None:
    """The checks of `load_checkpoint` that need no decoding of the state: the seq the file
    name says, the state bytes against the recorded hash, the schema version."""
    where = str(path)
    stem = path.name.removesuffix(CHECKPOINT_SUFFIX)
    if stem.isdigit() and int(stem) != body.seq:
        raise CheckpointCorruption(
            f"file name says seq {int(stem)} but the checkpoint holds seq {body.seq}", file=where
        )
    if _digest(body.state) != body.state_hash:
        raise CheckpointCorruption("state hash does not match the stored state", file=where)
    if body.schema_version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: written with event schema {body.schema_version}, newer than this build "
            f"({SCHEMA_VERSION})"
        )


def _verified(body: CheckpointBody, path: Path) -> Checkpoint:
    where = str(path)
    check_body(body, path)
    try:
        state = decode_state(body.state)
    except msgspec.MsgspecError as exc:
        raise CheckpointCorruption(
            f"state does not decode with this build's types: {exc}", file=where
        ) from None
    # Pair assertion, reading side: the decoded state is the one that was hashed.
    if state_hash(state) != body.state_hash:
        raise CheckpointCorruption(
            "decoded state re-encodes to a different hash (written by an incompatible build?)",
            file=where,
        )
    return Checkpoint(
        path=where,
        seq=body.seq,
        chain_crc=body.chain_crc,
        reducer_version=body.reducer_version,
        schema_version=body.schema_version,
        state_hash=body.state_hash,
        state=state,
        removals=removals_from_paths(body.removals),
    )


def _digest(state_bytes: bytes) -> str:
    # Same function as `memstate.core.state.state_hash`, over bytes already encoded.
    return hashlib.blake2b(state_bytes, digest_size=16).hexdigest()


def prune_checkpoints(state_dir: Path, keep: int, *, fsync: bool = True) -> list[Path]:
    """Delete all but the newest `keep` checkpoint files; returns what was removed."""
    if keep < 1:
        raise InvariantViolation(f"keep at least one checkpoint (asked for {keep})")
    listed = list_checkpoints(state_dir)
    doomed = [path for _, path in listed[: max(len(listed) - keep, 0)]]
    for path in doomed:
        os.unlink(path)
    if doomed and fsync:
        fsio.fsync_dir(Path(state_dir) / SNAP_DIRNAME)
    return doomed


def oldest_checkpoint_seq(state_dir: Path) -> int | None:
    """Seq of the oldest checkpoint that loads and verifies (the limit for pruning the log)."""
    checkpoint = usable_checkpoint(list_checkpoints(state_dir))
    return checkpoint.seq if checkpoint is not None else None


def usable_checkpoint(
    candidates: Iterable[tuple[int, Path]],
    *,
    chain_crc_at: Callable[[int], int | None] | None = None,
    skipped: list[str] | None = None,
) -> Checkpoint | None:
    """The first of `candidates` ((seq, path), in the order given) that a replay may start from
    (`assess_checkpoint`); why each one before it was passed over is appended to `skipped`.

    The one rule for choosing a checkpoint: start-up (newest first), replay's starting point
    (oldest first for a pruned log, newest first when asked) and the pruning limit (oldest
    first, without a log to compare with) all choose through it.
    """
    for seq, path in candidates:
        checkpoint, reason = assess_checkpoint(path, seq, chain_crc_at)
        if checkpoint is not None:
            return checkpoint
        if skipped is not None:
            skipped.append(f"checkpoint {path.name} skipped: {reason}")
    return None


def assess_checkpoint(
    path: Path, seq: int, chain_crc_at: Callable[[int], int | None] | None = None
) -> tuple[Checkpoint | None, str]:
    """(the checkpoint, "") if a replay may start from it, else (None, why not).

    It must load and verify (CRC, state hashes, schema) and come from this `REDUCER_VERSION`;
    with `chain_crc_at` (the log's chain CRC at a seq, None if the log does not hold it) the log
    must hold its seq with the *same chain CRC*, which proves the checkpoint describes this
    log's prefix (after a repair or a restore from another node, a seq may hold other records).
    """
    try:
        checkpoint = load_checkpoint(path)
    except (CheckpointCorruption, SchemaError) as exc:
        return None, str(exc)
    if checkpoint.reducer_version != REDUCER_VERSION:
        return None, (
            f"built by reducer version {checkpoint.reducer_version}, this build is "
            f"{REDUCER_VERSION} (replaying instead)"
        )
    if checkpoint.schema_version > SCHEMA_VERSION:
        return None, (
            f"event schema {checkpoint.schema_version} is newer than this build ({SCHEMA_VERSION})"
        )
    if chain_crc_at is None:
        return checkpoint, ""
    log_crc = chain_crc_at(seq)
    if log_crc is None:
        return None, f"the log does not hold seq {seq}"
    if log_crc != checkpoint.chain_crc:
        return None, (
            f"chain CRC {checkpoint.chain_crc:08x} does not match the log's {log_crc:08x} at "
            f"seq {seq} (the log was repaired or replaced)"
        )
    return checkpoint, ""
