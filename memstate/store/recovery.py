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

from memstate.core.codec import typed_decode
from memstate.core.errors import (
    InvariantViolation,
    LogCorruption,
    MidLogCorruption,
    SchemaError,
)
from memstate.core.events import SCHEMA_VERSION, Envelope, PodCgroupRemoved
from memstate.core.reducer import Folder, step
from memstate.core.removals import NO_REMOVALS, PendingRemovals, RemovalsFolder, snapshot_for
from memstate.core.state import State
from memstate.store.checkpoint import Checkpoint, list_checkpoints, usable_checkpoint
from memstate.store.format import CHAIN_SEED
from memstate.store.gc_pause import gc_paused
from memstate.store.problems import REPAIR_HINT, LogProblem
from memstate.store.reader import LogReader, decode_at


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
    with gc_paused():  # the fold makes no cycles: see `gc_pause`
        return _recover_state(state_dir, reader, use_checkpoints)


def _recover_state(state_dir: Path, reader: LogReader | None, use_checkpoints: bool) -> Recovered:
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
    fold = folder.fold
    pending = RemovalsFolder(removals)  # a working copy, as the folder's
    # Once no pending path is implied by the state (`pending.clean`), the folder's journal of
    # changed pods is all the removals fold needs; before that, a snapshot of the pods the
    # events name.
    clean = pending.clean
    if clean:
        folder.track_changes()
    replay = TailReplay(reader, last_seq)
    last: list[Envelope] = []  # the last transaction folded
    for members, crc in replay:
        last, chain = members, crc
        if len(members) == 1:
            head = members[0]
            event = head.event
            if type(event) is PodCgroupRemoved:
                # A note stands alone and changes no pod: it only ends its path's removal.
                fold(event)
                pending.gone(event.path)
                continue
            if head.decisions is None and event.role == "input":
                # A hand-written input: derive its decisions, as `memstate replay` does.
                _derive(folder, pending, head, clean=clean)
                clean = pending.clean
                continue
        if clean:
            folder.fold_records(members)
            changes = folder.take_changes()
            if changes is None:
                continue
            if changes.replaced is None and len(members) > 1:
                # An input and its decisions: no note among them (a note stands alone).
                # Nothing replaced: the config is the same after it as before it.
                pending.fold_pods(changes.before, changes.config, folder.pods)
            else:
                pending.fold_changes(changes, [m.event for m in members], folder)
        else:
            events = [m.event for m in members]
            before = snapshot_for(folder, events)
            folder.fold_records(members)
            pending.fold(before, events, folder)
            clean = pending.clean
            if clean:
                folder.track_changes()
    if last:
        last_seq = last[-1].seq
    if replay.incomplete:
        first = replay.incomplete[0]
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


def _derive(folder: Folder, pending: RemovalsFolder, head: Envelope, *, clean: bool) -> None:
    """Fold a hand-written input (no recorded decisions) by deriving its decisions."""
    event = head.event
    if clean:
        folder.reload(step(folder.state(), event).state)
        changes = folder.take_changes()
        if changes is not None:
            pending.fold_changes(changes, [event], folder)
        return
    before = snapshot_for(folder, [event])
    folder.reload(step(folder.state(), event).state)
    pending.fold(before, [event], folder)
    if pending.clean:
        folder.track_changes()


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

    Iterating yields each transaction as (its records, the chain CRC after the last one);
    afterwards `decoded` counts the records decoded and `incomplete` holds an input at the end
    whose decisions are not all there, with those that are (left out).

    The grouping is `transactions.group_transactions`'s rule, applied inline: this is the one
    loop over every record start-up runs, and a generator per layer (records, transactions)
    cost ~10 % of folding. tests/store/test_transactions.py holds it to `group_transactions`
    (the same transactions, the same refusals) on generated record sequences.
    """

    def __init__(self, reader: LogReader, after_seq: int) -> None:
        self.reader = reader
        self.after_seq = after_seq
        self.decoded = 0
        self.incomplete: list[Envelope] = []

    def __iter__(self) -> Iterator[tuple[list[Envelope], int]]:
        first = expected = self.after_seq + 1
        decode = typed_decode()
        current_schema = SCHEMA_VERSION
        members: list[Envelope] = []
        owed = 0  # decisions still due in `members`
        try:
            for segment, frames in self.reader.segment_frames(first):
                for offset, seq, payload, _, crc in frames:
                    if seq < first:
                        continue  # before the tail (the segment walked from its start)
                    if seq != expected:
                        raise InvariantViolation(f"reader yielded seq {seq}, expected {expected}")
                    try:
                        envelope = decode(payload)
                        current = envelope.seq == seq and envelope.schema_v == current_schema
                    except msgspec.MsgspecError:
                        current = False
                    if not current:
                        # The general path: an older record upcast, or the error naming the
                        # record's place.
                        envelope = decode_at(payload, seq, segment, offset)
                    expected += 1
                    if owed:
                        if envelope.event.role != "decision" or envelope.decisions is not None:
                            raise InvariantViolation(
                                f"seq {envelope.seq}: {envelope.event.kind} cannot be one of "
                                f"the decisions announced by seq {members[0].seq} (a log not "
                                "written by memstate)"
                            )
                        members.append(envelope)
                        owed -= 1
                        if not owed:
                            yield members, crc
                        continue
                    if envelope.event.role == "decision":
                        raise InvariantViolation(
                            f"seq {envelope.seq}: {envelope.event.kind} is a decision outside a "
                            "transaction (a checkpoint taken mid-transaction, or a log not "
                            "written by memstate)"
                        )
                    members = [envelope]
                    announced = envelope.decisions
                    if announced is not None and announced > 0:
                        owed = announced
                        continue
                    yield members, crc
        finally:
            self.decoded += expected - first  # every record decoded so far
        if owed:
            self.incomplete = members  # never acknowledged: left out


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
