"""Start-up: the newest checkpoint that matches the log, then replay of the tail only.

Theory of operation
-------------------
The daemon starts with `EventLog.open` (lock, torn-tail recovery), then calls `recover_state`,
which rebuilds the state without touching the log:

1. Checkpoints are tried newest first. One is used only if it loads and verifies (CRC, state
   hash of the stored bytes, hash of the decoded state), was built by this `REDUCER_VERSION`, and
   the log still holds its seq with the *same chain CRC* there. The chain CRC is what proves the
   checkpoint describes this log's prefix: after a repair or a restore from another node, a
   checkpoint may name a seq that exists but now holds different records. Every checkpoint
   skipped is reported in `warnings`; the log stays the source of truth.
2. The records after the checkpoint (or all of them) are decoded and folded with the pure
   reducer: recorded decisions are applied verbatim (an upgrade never rewrites history); an
   input that records no decision count (a hand-written scenario imported with
   `memstate log import`) gets its decisions derived, as `memstate replay` does.
3. Only whole transactions are applied: an input whose decisions are not all in the log yet
   is left out (the writer's recovery drops it; it was never acknowledged).
4. The retired pod cgroups still to remove (`memstate.core.removals`) are folded alongside,
   transaction by transaction, from the checkpoint's own list (or none): a removal decided
   before a crash is finished after it.

`decoded_events` counts the records decoded, so a test can prove that start-up with a checkpoint
decodes only the tail, whatever the log length.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from memstate.core.errors import (
    InvariantViolation,
    LogCorruption,
    MidLogCorruption,
    SchemaError,
)
from memstate.core.events import Envelope
from memstate.core.reducer import Folder, step
from memstate.core.removals import NO_REMOVALS, PendingRemovals, RemovalsFolder, snapshot_for
from memstate.core.state import State
from memstate.store.checkpoint import Checkpoint, list_checkpoints, usable_checkpoint
from memstate.store.format import CHAIN_SEED
from memstate.store.problems import REPAIR_HINT, LogProblem
from memstate.store.reader import LogReader, decode_at
from memstate.store.transactions import TransactionProblem, group_transactions


class Recovered(msgspec.Struct, frozen=True):
    """The state rebuilt at start-up and how it was obtained."""

    state: State
    removals: PendingRemovals  # retired pod cgroups still to remove after last_seq
    last_seq: int  # seq of the last record folded in (0 for an empty log)
    chain_crc: int  # chain CRC after last_seq
    checkpoint_seq: int | None  # the checkpoint started from, None for full replay
    decoded_events: int  # records decoded (the tail only, when a checkpoint was used)
    warnings: list[str]


def recover_state(
    state_dir: Path, *, reader: LogReader | None = None, use_checkpoints: bool = True
) -> Recovered:
    """Rebuild the state: newest valid checkpoint + replay of the records after it.

    `use_checkpoints=False` folds the whole log from seq 1 (benchmarks, cross-checks).
    """
    state_dir = Path(state_dir)
    reader = reader if reader is not None else LogReader(state_dir)
    warnings: list[str] = []
    checkpoint = startup_checkpoint(state_dir, reader, warnings, use_checkpoints=use_checkpoints)
    removals = NO_REMOVALS
    if checkpoint is not None:
        state, last_seq, chain = checkpoint.state, checkpoint.seq, checkpoint.chain_crc
        removals = checkpoint.removals
    else:
        state, last_seq, chain = State(), 0, CHAIN_SEED
    # Intermediate states are never looked at: fold into working copies, freeze once at the end.
    folder = Folder(state)
    pending = RemovalsFolder(removals)  # a working copy, as the folder's
    replay = TailReplay(reader, last_seq)
    for group in replay:
        events = [member.event for member, _ in group]
        # Once no pending path is implied by the state, the folder's journal of changed pods
        # is all the removals fold needs; before that, a snapshot of the pods the events name.
        clean = pending.clean
        if clean:
            folder.track_changes()
        else:
            before = snapshot_for(folder, events)
        for member, member_crc in group:
            event = member.event
            if event.role == "input" and member.decisions is None:
                # A hand-written input: derive its decisions, as `memstate replay` does.
                folder.reload(step(folder.state(), event).state)
            else:
                folder.fold(event)
            last_seq, chain = member.seq, member_crc
        if clean:
            pending.fold_changes(folder.changes(), events, folder)
        else:
            pending.fold(before, events, folder)
    if replay.incomplete:
        first = replay.incomplete[0][0]
        warnings.append(
            f"seq {first.seq} announces {first.decisions} decisions but the log "
            f"ends after {len(replay.incomplete) - 1}: the incomplete transaction was not applied"
        )
    removals = pending.pending(removals)
    return Recovered(
        state=folder.state(),
        removals=removals,
        last_seq=last_seq,
        chain_crc=chain,
        checkpoint_seq=checkpoint.seq if checkpoint is not None else None,
        decoded_events=replay.decoded,
        warnings=warnings,
    )


def startup_checkpoint(
    state_dir: Path, reader: LogReader, warnings: list[str], *, use_checkpoints: bool = True
) -> Checkpoint | None:
    """The checkpoint start-up begins from (None: replay from seq 1); raises if a pruned log
    has none (or `use_checkpoints` is False). Skipped checkpoints are explained in `warnings`."""
    checkpoint = (
        usable_checkpoint(
            reversed(list_checkpoints(state_dir)),
            chain_crc_at=reader.chain_crc_at,
            skipped=warnings,
        )
        if use_checkpoints
        else None
    )
    if checkpoint is None:
        first = reader.first_seq()
        if first > 1:
            raise MidLogCorruption(
                f"the log was pruned to start at seq {first} and no usable checkpoint covers "
                f"the records before it; {REPAIR_HINT}",
                file=str(reader.log_dir),
                seq=first,
            )
    return checkpoint


class TailReplay:
    """The whole transactions after `after_seq`, decoded, as start-up folds them.

    Iterating yields each transaction as [(envelope, chain CRC after it), ...]; afterwards
    `decoded` counts the records decoded and `incomplete` holds an input at the end whose
    decisions are not all there (left out)."""

    def __init__(self, reader: LogReader, after_seq: int) -> None:
        self.reader = reader
        self.after_seq = after_seq
        self.decoded = 0
        self.incomplete: list[tuple[Envelope, int]] = []

    def __iter__(self) -> Iterator[list[tuple[Envelope, int]]]:
        grouped = group_transactions(self._records(), _envelope_of)
        try:
            for transaction in grouped:
                decisions = transaction.decisions
                yield [transaction.head, *decisions] if decisions else [transaction.head]
        except TransactionProblem as problem:
            if problem.kind == "cut_short":
                self.incomplete = problem.taken  # never acknowledged: left out
                return
            if problem.kind == "orphan_decision":
                raise InvariantViolation(
                    f"seq {problem.head.seq}: {problem.head.event.kind} is a decision outside a "
                    "transaction (a checkpoint taken mid-transaction, or a log not written by "
                    "memstate)"
                ) from None
            offender = problem.offender
            raise InvariantViolation(
                f"seq {offender.seq if offender else 0}: "
                f"{offender.event.kind if offender else 'a record'} cannot be one of the "
                f"decisions announced by seq {problem.head.seq} (a log not written by memstate)"
            ) from None

    def _records(self) -> Iterator[tuple[Envelope, int]]:
        """Every record after `after_seq`, decoded, with the chain CRC after it."""
        expected = self.after_seq + 1
        for payload, seq, offset, segment, crc in self.reader.read_frames(self.after_seq + 1):
            if seq != expected:
                raise InvariantViolation(f"reader yielded seq {seq}, expected {expected}")
            envelope = decode_at(payload, seq, segment, offset)
            self.decoded += 1
            expected += 1
            yield envelope, crc


def _envelope_of(record: tuple[Envelope, int]) -> Envelope:
    return record[0]


def check_startup_reads(state_dir: Path) -> LogProblem | None:
    """What start-up's reads of the log would refuse, without folding anything.

    Start-up (`recover_state`) picks a checkpoint (reading the segment that holds its seq to
    compare chain CRCs) and decodes every record after it; `memstate log verify` runs this so
    that it refuses exactly what start-up refuses (same file, offset and seq).
    """
    reader = LogReader(state_dir)
    try:
        checkpoint = startup_checkpoint(state_dir, reader, [])
        for _ in TailReplay(reader, checkpoint.seq if checkpoint is not None else 0):
            pass
    except SchemaError as exc:
        return LogProblem("schema", str(reader.log_dir), 0, 0, str(exc))
    except LogCorruption as exc:
        return LogProblem(
            "corruption",
            exc.file or str(reader.log_dir),
            exc.offset or 0,
            exc.seq or 0,
            exc.message.removesuffix(f"; {REPAIR_HINT}"),
        )
    return None
