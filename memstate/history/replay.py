"""Replaying events: re-derive every decision from the recorded inputs and compare.

Theory of operation
-------------------
A log (or scenario) is a sequence of *transitions*: an input record followed by the decision
records written with it (its envelope's `decisions` count says how many), or a lone note.
`transitions` walks them one at a time, holding only the current state, so memory does not grow
with the log. It runs in one of three modes:

- `compare` (replay): for each input ask the reducer to `decide` afresh and compare with what was
  recorded (event bodies only; envelopes differ in timestamps), then apply the *recorded*
  decisions when there are any (what the node really did), or the derived ones for hand-written
  scenarios, which record none;
- `recorded` (audit): trust the recorded decisions and derive only where none are recorded —
  what start-up does, and cheaper, since `decide` is skipped;
- `reference` (bisect): derive every decision with this build and apply the derived ones,
  ignoring the recorded ones — "what would this build have done with these inputs".

The first transition whose derived decisions differ from the recorded ones is a divergence: the
reducer that replays is not the one that wrote the log, or the log was altered.

`replay_log` adds what a state directory offers: every checkpoint's recorded `state_hash` is
compared with the hash of the replayed state at its seq (a divergence of its own kind: `apply`
folded the same decisions into a different state, or the checkpoint came from another build);
the chain CRC at that seq must match the checkpoint's first, or the checkpoint describes another
log and is only reported. Unless a caller asks to see every transition (`on_transition`), it
walks one working state updated in place (`reducer.WorkingState`), comparing each transaction
before applying it. `--to-seq` / `--at` stop early; a pruned log starts from its oldest
usable checkpoint.

Bisecting two runs (where two logs, or a log and this build, part) is built on these
transitions in memstate.history.bisect.

Sources: `open_source(path)` accepts a state directory (it has `log/`) or a JSON-lines scenario
or export, read line by line (`memstate.core.scenario.iter_scenario`). Neither is ever
materialised whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from memstate import __version__
from memstate.core.errors import (
    CheckpointCorruption,
    InputError,
    InvariantViolation,
    MemstateError,
    MidLogCorruption,
    ReplayDivergence,
    SchemaError,
)
from memstate.core.events import DaemonStarted, Envelope, Event
from memstate.core.reducer import WorkingState, apply, apply_all, decide
from memstate.core.scenario import iter_scenario
from memstate.core.state import REDUCER_VERSION, State, encode_state, state_hash
from memstate.history.statediff import Change, diff_states

Mode = Literal["compare", "recorded", "reference"]


@dataclass(frozen=True)
class Transition:
    """One input (or note) with its decisions, and the state before and after it."""

    record: Envelope
    recorded: tuple[Envelope, ...] | None  # None: the source records no decisions
    derived: tuple[Event, ...]
    before: State
    after: State
    # Set when recorded decisions diverge and cannot even be applied to this build's state.
    apply_error: str | None = None
    # True in `reference` mode: the derived decisions were applied, whatever was recorded.
    reference: bool = False
    # The recorded decisions' events (None when none are recorded): given by `transitions`,
    # which has them anyway; derived from `recorded` when left out.
    recorded_events: tuple[Event, ...] | None = None

    def __post_init__(self) -> None:
        if self.recorded is not None and self.recorded_events is None:
            object.__setattr__(self, "recorded_events", tuple(e.event for e in self.recorded))

    @property
    def diverges(self) -> bool:
        recorded = self.recorded_events
        return recorded is not None and recorded != self.derived

    @property
    def last_seq(self) -> int:
        return self.recorded[-1].seq if self.recorded else self.record.seq

    @property
    def decisions(self) -> tuple[Event, ...]:
        """What was applied: the recorded decisions if any were recorded (and this is not a
        reference run), else the derived."""
        recorded = self.recorded_events
        if recorded is not None and not self.reference:
            return recorded
        return self.derived


class LogStructureError(MemstateError):
    """A decision record without the input it belongs to, or an input missing its decisions."""

    exit_code = 65


def transitions(
    envelopes: Iterable[Envelope], *, state: State | None = None, mode: Mode = "compare"
) -> Iterator[Transition]:
    """Walk envelopes as transitions, re-deriving decisions per `mode` (module docstring).
    Streams; keeps one state."""
    current = state if state is not None else State()
    trust_recorded = mode == "recorded"
    for envelope, recorded in _transactions(envelopes):
        event = envelope.event
        derived: tuple[Event, ...]
        if event.role != "input":
            derived = ()  # notes imply nothing (what `decide` would say, without the call)
        elif trust_recorded and recorded is not None:
            derived = tuple([e.event for e in recorded])
        else:
            derived = decide(current, event)
        transition = _transition(envelope, recorded, derived, current, mode)
        yield transition
        current = transition.after


def _transition(
    envelope: Envelope,
    recorded: tuple[Envelope, ...] | None,
    derived: tuple[Event, ...],
    current: State,
    mode: Mode,
) -> Transition:
    """The transition of one transaction from `current` (left unchanged), `derived` given."""
    reference = mode == "reference"
    recorded_events = None if recorded is None else tuple([e.event for e in recorded])
    applied = derived if reference or recorded_events is None else recorded_events
    apply_error: str | None = None
    try:
        after = apply(current, envelope.event)
        for decision in applied:
            after = apply(after, decision)
    except InvariantViolation as exc:
        if recorded is None or applied == derived:
            raise  # this build's own decisions do not fit: a real bug
        after, apply_error = current, str(exc)
    return Transition(
        record=envelope,
        recorded=recorded,
        derived=derived,
        before=current,
        after=after,
        apply_error=apply_error,
        reference=reference,
        recorded_events=recorded_events,
    )


Grouped = tuple[Envelope, tuple[Envelope, ...] | None]
"""A transaction: its input or note, and its recorded decisions (None when it announces none)."""


def _transactions(envelopes: Iterable[Envelope]) -> Iterator[Grouped]:
    """(record, its recorded decisions or None) by the store's one grouping rule
    (memstate.store.transactions); a malformed sequence is a `LogStructureError`."""
    from memstate.store.transactions import TransactionProblem, envelope_itself, group_transactions

    try:
        for transaction in group_transactions(envelopes, envelope_itself):
            yield transaction.head, transaction.decisions
    except TransactionProblem as problem:
        head = problem.head
        if problem.kind == "orphan_decision":
            raise _orphan(head) from None
        raise _not_all_there(head) from None


def _orphan(head: Envelope) -> LogStructureError:
    return LogStructureError(
        f"seq {head.seq}: {head.event.kind} is not preceded by the input it decides on"
    )


def _not_all_there(head: Envelope) -> LogStructureError:
    return LogStructureError(
        f"seq {head.seq}: {head.event.kind} announces {head.decisions} "
        "decision records that are not all there"
    )


def replay_state(envelopes: Iterable[Envelope], *, state: State | None = None) -> State:
    """The state after all envelopes (recorded decisions applied verbatim)."""
    final = state if state is not None else State()
    for transition in transitions(envelopes, state=final):
        final = transition.after
    return final


def first_divergence(envelopes: Iterable[Envelope]) -> Transition | None:
    """The first transition whose re-derived decisions differ from the recorded ones."""
    for transition in transitions(envelopes):
        if transition.diverges:
            return transition
    return None


def check_replay(envelopes: Iterable[Envelope]) -> State:
    """Replay and raise `ReplayDivergence` at the first divergence; returns the final state."""
    final = State()
    for transition in transitions(envelopes):
        if transition.diverges:
            raise ReplayDivergence(
                f"seq {transition.record.seq} ({transition.record.event.kind}): re-derived "
                "decisions differ from the recorded ones"
            )
        final = transition.after
    return final


# --- sources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file of a state directory (loaded only when needed)."""

    seq: int
    path: Path


Record = tuple[Envelope, int | None]
"""An envelope and the log's chain CRC after it (None for JSON-lines sources)."""


class LogSource:
    """A log to replay or audit: a state directory (binary log and checkpoints) or a JSON-lines
    scenario or export. Reads stream; nothing holds the whole log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if (self.path / "log").is_dir():
            self.kind: Literal["state_dir", "jsonl"] = "state_dir"
        elif self.path.is_file():
            self.kind = "jsonl"
        elif self.path.is_dir():
            raise InputError(
                f"not a state directory (no {self.path / 'log'}) and not a .jsonl file",
                source=str(self.path),
            )
        else:
            raise InputError("no such file or directory", source=str(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def records(self, from_seq: int = 1) -> Iterator[Record]:
        """Envelopes from `from_seq` on (whole transactions), each with the chain CRC after it."""
        if self.kind == "jsonl":
            with self.path.open(encoding="utf-8") as lines:
                for envelope in iter_scenario(lines, source=str(self.path)):
                    if envelope.seq >= from_seq:
                        yield envelope, None
            return
        yield from _state_dir_records(self.path, from_seq)

    def transactions(
        self, from_seq: int, wanted: set[int], crcs: dict[int, int]
    ) -> Iterator[Grouped]:
        """Whole transactions from `from_seq` on (`LogStructureError` at a malformed one),
        noting in `crcs` the chain CRC after every seq in `wanted` (state directories only)."""
        if self.kind == "jsonl":
            return _transactions(self.envelopes(from_seq))
        return _state_dir_transactions(self.path, from_seq, wanted, crcs)

    def envelopes(self, from_seq: int = 1) -> Iterator[Envelope]:
        return (envelope for envelope, _ in self.records(from_seq))

    def first_seq(self) -> int:
        """The first seq the log holds (1 unless a state directory's log was pruned)."""
        if self.kind == "jsonl":
            return 1
        from memstate.store.reader import LogReader

        return LogReader(self.path).first_seq()

    def checkpoints(self) -> list[CheckpointRef]:
        """Checkpoint files, oldest first (none for JSON-lines sources)."""
        if self.kind == "jsonl":
            return []
        from memstate.store.checkpoint import list_checkpoints

        return [CheckpointRef(seq, path) for seq, path in list_checkpoints(self.path)]

    def last_seq_estimate(self) -> int:
        """The last seq, cheaply (progress bars): a state directory walks its last segment only;
        a JSON-lines file counts its record lines."""
        if self.kind == "jsonl":
            with self.path.open(encoding="utf-8") as lines:
                return sum(
                    1
                    for line in lines
                    if line.strip() and not line.lstrip().startswith(("#", "//"))
                )
        from memstate.store.reader import LogReader

        reader = LogReader(self.path)
        listed = reader.segments()
        if not listed:
            return 0
        last = listed[-1][0] - 1
        for _, seq, _, _, _ in reader.read_frames(listed[-1][0]):
            last = seq
        return last


def open_source(path: Path | str) -> LogSource:
    """A state directory (with `log/`) or a JSON-lines file; `InputError` (exit 65) otherwise."""
    return LogSource(Path(path))


def _state_dir_transactions(
    state_dir: Path, from_seq: int, wanted: set[int], crcs: dict[int, int]
) -> Iterator[Grouped]:
    """`_transactions` of `_state_dir_records` in one pass over the frames (`_grouped`)."""
    import msgspec

    from memstate.core.codec import typed_decode
    from memstate.store.reader import LogReader, decode_at

    return _grouped(
        LogReader(state_dir).segment_frames(from_seq),
        from_seq,
        fast=typed_decode(),
        fast_failed=msgspec.MsgspecError,
        decode=decode_at,
        wanted=wanted,
        crcs=crcs,
    )


def _state_dir_frames(state_dir: Path, from_seq: int) -> Iterator[Record]:
    """Every valid record from `from_seq` on, decoded, with the chain CRC after it."""
    from memstate.store.reader import LogReader, decode_at

    for payload, seq, offset, segment, crc in LogReader(state_dir).read_frames(from_seq):
        yield decode_at(payload, seq, segment, offset), crc


Payload = TypeVar("Payload")
Segments = Iterable[tuple[str, Iterable[tuple[int, int, Payload, int, int | None]]]]
"""`LogReader.segment_frames`' shape: (segment name, its frames as (offset, seq, payload, end,
chain CRC after it)); a segment's frames may start before the seq wanted."""


def _grouped(
    segments: Segments[Payload],
    from_seq: int,
    *,
    fast: Callable[[Payload], Envelope],
    fast_failed: type[Exception] | tuple[type[Exception], ...],
    decode: Callable[[Payload, int, str, int], Envelope],
    wanted: set[int],
    crcs: dict[int, int],
) -> Iterator[Grouped]:
    """`_transactions(_whole(...))` of the records from `from_seq` on in `segments`, grouped
    once, not twice, and decoded in the same loop: holds back an incomplete tail and raises at
    the same records with the same messages. Notes in `crcs` the chain CRC after every seq in
    `wanted`.

    One generator over the segments' frames, as start-up's `TailReplay`: a record is decoded by
    `fast` (the typed decoder) when that succeeds with the frame's seq and the current schema
    (every record a current build writes), by `decode` (`reader.decode_at`: an older record
    upcast, or the error naming the record's place) otherwise; `LogReader.read_frames`'
    generator and a decode function per record, one Python call each, are not in between.
    tests/replay/test_grouped_frames.py holds it to `decode` alone and to the two passes."""
    from memstate.core.events import SCHEMA_VERSION

    current_schema = SCHEMA_VERSION
    head: Envelope | None = None
    taken: list[Envelope] = []
    owed = 0
    for segment, frames in segments:
        for offset, seq, payload, _, crc in frames:
            if seq < from_seq:
                continue  # before the start (the segment walked from its beginning)
            try:
                envelope = fast(payload)
            except fast_failed:
                envelope = decode(payload, seq, segment, offset)
            else:
                if envelope.seq != seq or envelope.schema_v != current_schema:
                    envelope = decode(payload, seq, segment, offset)
            if crc is not None and seq in wanted:
                crcs[seq] = crc
            if owed:
                taken.append(envelope)
                owed -= 1
                if owed == 0 and head is not None:
                    # Checked once whole, as the store's rule does after `_whole` held it back.
                    if head.event.role == "decision":
                        raise _orphan(head)
                    for decision in taken:
                        if decision.event.role != "decision" or decision.decisions is not None:
                            raise _not_all_there(head)
                    yield head, tuple(taken)
                    taken.clear()
            elif envelope.decisions:
                head, owed = envelope, envelope.decisions
            elif envelope.event.role == "decision":
                raise _orphan(envelope)
            else:
                yield envelope, None if envelope.decisions is None else ()


def _state_dir_records(state_dir: Path, from_seq: int) -> Iterator[Record]:
    """`LogReader.read` plus the chain CRC of every record: whole transactions only (an input
    whose decisions are not all written yet is held back, like the rest of a tail in flight)."""
    return _whole(_state_dir_frames(state_dir, from_seq))


def _whole(frames: Iterable[Record]) -> Iterator[Record]:
    """`frames` without an incomplete last transaction."""
    pending: list[Record] = []
    owed = 0
    for envelope, crc in frames:
        if owed:
            pending.append((envelope, crc))
            owed -= 1
            if owed == 0:
                yield from pending
                pending.clear()
        elif envelope.decisions:
            pending.append((envelope, crc))
            owed = envelope.decisions
        else:
            yield envelope, crc


# --- divergences ----------------------------------------------------------------------------------

DivergenceKind = Literal["decisions", "checkpoint_hash", "input", "state"]


@dataclass(frozen=True)
class Divergence:
    """The first point where two runs part.

    - `decisions`: the decisions differ (`recorded` vs `derived`; with `apply_error` when the
      recorded ones do not even fit this build's state);
    - `checkpoint_hash`: a checkpoint's recorded state hash differs from the replayed state's;
    - `state` (bisect): same decisions, different states (`apply` differs);
    - `input` (bisect): the two logs do not hold the same inputs here.

    `state_recorded` / `state_derived` are the states after the transition on each side (None
    where they cannot exist); `labels` name the sides and `versions` say which build made each.
    """

    kind: DivergenceKind
    seq: int
    ts_ns: int
    message: str
    record: Envelope | None = None
    recorded: tuple[Event, ...] | None = None
    derived: tuple[Event, ...] | None = None
    state_recorded: State | None = None
    state_derived: State | None = None
    apply_error: str | None = None
    hash_recorded: str | None = None
    hash_derived: str | None = None
    labels: tuple[str, str] = ("recorded", "derived")
    versions: tuple[str, str] = ("", "")
    other_seq: int | None = None  # bisect: the seq of the same transaction in the second log
    other_record: Envelope | None = None  # bisect, kind "input": the second log's input

    def changes(self) -> list[Change]:
        """The structural diff of the two states (empty when one side has no state)."""
        if self.state_recorded is None or self.state_derived is None:
            return []
        return diff_states(self.state_recorded, self.state_derived)


def build_version() -> str:
    """How this build names itself in reports."""
    return f"memstate {__version__} (reducer {REDUCER_VERSION})"


def version_of(started: DaemonStarted | None) -> str:
    """How the daemon that recorded a log named itself, from its last `daemon_started`."""
    if started is None:
        return "unknown (no daemon_started before this point)"
    return f"memstate {started.memstate_version} (reducer {started.reducer_version})"


def decision_divergence(
    transition: Transition, *, versions: tuple[str, str] = ("", "")
) -> Divergence:
    """A `decisions` divergence from a replayed transition: recorded vs re-derived."""
    if transition.recorded is None:
        raise InvariantViolation(
            f"seq {transition.record.seq}: a decisions divergence needs recorded decisions"
        )
    recorded = tuple(e.event for e in transition.recorded)
    derived_state = apply_all(apply(transition.before, transition.record.event), transition.derived)
    return Divergence(
        kind="decisions",
        seq=transition.record.seq,
        ts_ns=transition.record.ts_ns,
        message=(
            f"seq {transition.record.seq} ({transition.record.event.kind}): the decisions this "
            "build derives differ from the recorded ones"
            + (
                " (the recorded decisions do not fit this build's state)"
                if transition.apply_error
                else ""
            )
        ),
        record=transition.record,
        recorded=recorded,
        derived=transition.derived,
        state_recorded=None if transition.apply_error else transition.after,
        state_derived=derived_state,
        apply_error=transition.apply_error,
        versions=versions,
    )


# --- replay of a whole source ---------------------------------------------------------------------


@dataclass
class ReplayReport:
    """What `replay_log` did and found."""

    source: str
    state: State
    first_seq: int = 0  # first record replayed (0: none)
    last_seq: int = 0  # last record read and compared (the divergent one, if any)
    state_seq: int = 0  # `state` is the state after this seq (before a divergent transaction)
    last_ts_ns: int | None = None
    records: int = 0
    transitions: int = 0
    started_from_checkpoint: int | None = None
    checkpoints_verified: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    divergence: Divergence | None = None
    recorded_by: str = ""  # the last daemon_started seen


OnTransition = Callable[[Transition], None]
OnProgress = Callable[[Envelope, int, tuple[Event, ...]], None]
"""Called after each transaction replayed without divergence: (its input or note, its last
seq, the decisions applied). Sees no state, so the replay may keep one working state."""


def replay_log(
    source: LogSource,
    *,
    to_seq: int | None = None,
    at_ns: int | None = None,
    from_checkpoint: bool = False,
    verify_checkpoints: bool = True,
    on_transition: OnTransition | None = None,
    on_progress: OnProgress | None = None,
) -> ReplayReport:
    """Replay `source` from its start (or a checkpoint), comparing every decision and every
    checkpoint hash; stops at the first divergence, after the transaction holding `to_seq`, or
    before the first input stamped after `at_ns`. Keeps one state (and the pending checkpoint
    list), whatever the log's length.

    The replay updates one working state in place (`reducer.WorkingState`): the same
    decisions and states as `transitions`, without copying the pods map at every admission
    and removal. `on_transition` sees every transition as `transitions` gives it, with its
    states before and after each a value of its own (`WorkingState.snapshot`: one copy per
    transaction that changes the state). `on_progress` is called after it, with or without."""
    start_state, start_seq, warnings = starting_point(source, to_seq, at_ns, from_checkpoint)
    report = ReplayReport(source=str(source), state=start_state, warnings=warnings)
    report.started_from_checkpoint = start_seq or None
    report.state_seq = start_seq
    pending = [c for c in source.checkpoints() if c.seq > start_seq] if verify_checkpoints else []
    crcs: dict[int, int] = {}
    wanted = {c.seq for c in pending}

    def stops(record: Envelope) -> bool:
        return (to_seq is not None and record.seq > to_seq) or (
            at_ns is not None and record.ts_ns > at_ns
        )

    stopping = stops if to_seq is not None or at_ns is not None else None

    replayer = _Replayer(report, pending, crcs)
    grouped = source.transactions(start_seq + 1, wanted, crcs)
    from memstate.store.gc_pause import gc_paused

    with gc_paused():  # the walk makes no cycles (`gc_pause`)
        replayer.walk(grouped, start_state, stopping, on_transition, on_progress)
    started = replayer.started
    report.recorded_by = version_of(started) if started else ""
    return report


class _Replayer:
    """`replay_log`'s walk: the report's bookkeeping and the checkpoint checks, shared by the
    walk over observed transitions and the one over a working state."""

    def __init__(self, report: ReplayReport, pending: list[CheckpointRef], crcs: dict[int, int]):
        self.report = report
        self.pending = pending
        self.crcs = crcs
        self.started: DaemonStarted | None = None

    def diverged(self, transition: Transition) -> None:
        self.report.divergence = decision_divergence(
            transition, versions=(version_of(self.started), build_version())
        )
        self.report.state = transition.before

    def settled(
        self, record: Envelope, last_seq: int, after: State, decisions: tuple[Event, ...]
    ) -> bool:
        """`after` is the state after `last_seq`: check the checkpoints up to there; False
        when one of them diverges."""
        report = self.report
        report.state, report.state_seq = after, last_seq
        pending = self.pending
        while pending and pending[0].seq <= last_seq:
            checkpoint = pending.pop(0)
            found = _verify_checkpoint(
                checkpoint,
                record=record,
                last_seq=last_seq,
                after=after,
                decisions=decisions,
                crc=self.crcs.pop(checkpoint.seq, None),
            )
            if isinstance(found, str):
                report.warnings.append(found)
                continue
            if found is not None:
                report.divergence = replace(
                    found, versions=(version_of(self.started), found.versions[1])
                )
                return False
            report.checkpoints_verified.append(checkpoint.seq)
        return True

    def walk(
        self,
        grouped: Iterable[Grouped],
        start: State,
        stops: Callable[[Envelope], bool] | None,
        on_transition: OnTransition | None,
        on_progress: OnProgress | None,
    ) -> None:
        """`transitions` in compare mode on one working state (`reducer.WorkingState`, its node
        map frozen only at a checkpoint, a divergence, an observed transaction and the end):
        each transaction is compared before anything is applied, so at a divergence or a stop
        the working state is still the state before it. Nothing else ever holds it:
        `on_transition` sees snapshots."""
        report = self.report
        pending = self.pending
        working = WorkingState(start)
        # The report's counters are kept in locals and written back when the walk ends.
        records = transactions = 0
        first_seq = last_seq = state_seq = report.state_seq
        last_ts_ns = report.last_ts_ns
        try:
            for envelope, recorded in grouped:
                if stops is not None and stops(envelope):
                    break
                event = envelope.event
                derived = working.decide(event) if event.role == "input" else ()
                if recorded is None:
                    applied = derived
                elif len(recorded) == 1:
                    applied = (recorded[0].event,)  # most transactions: no comprehension
                else:
                    applied = tuple([e.event for e in recorded])
                last_seq = recorded[-1].seq if recorded else envelope.seq
                if not transactions:
                    first_seq = envelope.seq
                records += last_seq - envelope.seq + 1
                transactions += 1
                last_ts_ns = envelope.ts_ns
                if type(event) is DaemonStarted:
                    self.started = event
                if recorded is not None and applied != derived:
                    transition = _transition(
                        envelope, recorded, derived, working.snapshot(), "compare"
                    )
                    if on_transition is not None:
                        on_transition(transition)
                    self.diverged(transition)
                    return
                if on_transition is not None:
                    before = working.snapshot()
                working.apply(event)
                for decision in applied:
                    working.apply(decision)
                state_seq = last_seq
                if on_transition is not None:
                    on_transition(
                        Transition(
                            record=envelope,
                            recorded=recorded,
                            derived=derived,
                            before=before,
                            after=working.snapshot(),
                            recorded_events=None if recorded is None else applied,
                        )
                    )
                if on_progress is not None:
                    on_progress(envelope, last_seq, applied)
                if (
                    pending
                    and pending[0].seq <= last_seq
                    and not self.settled(envelope, last_seq, working.state(), applied)
                ):
                    return
        finally:
            if transactions:
                report.first_seq = report.first_seq or first_seq
                report.records += records
                report.transitions += transactions
                report.last_seq, report.last_ts_ns = last_seq, last_ts_ns
            # Before any divergent transaction (`diverged` set the same state).
            report.state, report.state_seq = working.state(), state_seq


def _verify_checkpoint(
    checkpoint: CheckpointRef,
    *,
    record: Envelope,
    last_seq: int,
    after: State,
    decisions: tuple[Event, ...],
    crc: int | None,
) -> Divergence | str | None:
    """None when the checkpoint agrees with the replayed state, a warning when it cannot be
    compared, a `checkpoint_hash` divergence when it disagrees."""
    from memstate.store.checkpoint import check_body, load_checkpoint, read_checkpoint_body

    name = checkpoint.path.name
    if checkpoint.seq != last_seq:
        return f"checkpoint {name} is inside the transaction of seq {record.seq}; skipped"
    try:
        body = read_checkpoint_body(checkpoint.path)
        check_body(body, checkpoint.path)
    except (CheckpointCorruption, SchemaError) as exc:
        return f"checkpoint {name} skipped: {exc}"
    if crc is not None and crc != body.chain_crc:
        return (
            f"checkpoint {name} skipped: its chain CRC {body.chain_crc:08x} is not the log's "
            f"{crc:08x} at seq {checkpoint.seq} (it describes another log)"
        )
    if encode_state(after) == body.state:
        # The stored bytes, whose hash `check_body` checked, are the replayed state's canonical
        # encoding: the hashes agree, and decoding the stored state would give this state back.
        return None
    try:
        loaded = load_checkpoint(checkpoint.path)  # the states differ: decoded for the report
    except (CheckpointCorruption, SchemaError) as exc:
        return f"checkpoint {name} skipped: {exc}"
    replayed_hash = state_hash(after)
    if replayed_hash == loaded.state_hash:
        return None
    return Divergence(
        kind="checkpoint_hash",
        seq=checkpoint.seq,
        ts_ns=record.ts_ns,
        message=(
            f"checkpoint {name} (written by reducer {loaded.reducer_version}) records state hash "
            f"{loaded.state_hash}, the replayed state at seq {checkpoint.seq} hashes to "
            f"{replayed_hash}"
        ),
        record=record,
        recorded=decisions,
        derived=decisions,
        state_recorded=loaded.state,
        state_derived=after,
        hash_recorded=loaded.state_hash,
        hash_derived=replayed_hash,
        labels=("checkpoint", "replayed"),
        versions=(f"reducer {loaded.reducer_version}", build_version()),
    )


def starting_point(
    source: LogSource,
    to_seq: int | None = None,
    at_ns: int | None = None,
    from_checkpoint: bool = False,
) -> tuple[State, int, list[str]]:
    """(state, seq it is after, warnings): genesis, or a checkpoint when the log was pruned or
    `from_checkpoint` asks for the newest one before the stopping point."""
    first = source.first_seq()
    if first <= 1 and not from_checkpoint:
        return State(), 0, []
    from memstate.store.checkpoint import usable_checkpoint
    from memstate.store.reader import LogReader

    reader = LogReader(source.path)
    warnings: list[str] = []
    candidates = [c for c in source.checkpoints() if c.seq >= first - 1]
    if to_seq is not None:
        candidates = [c for c in candidates if c.seq <= to_seq]
    if at_ns is not None:
        candidates = [c for c in candidates if _ts_at(source, c.seq) <= at_ns]
    # A pruned log must start at its oldest usable checkpoint (everything after it is checked);
    # `from_checkpoint` skips ahead to the newest one.
    ordered = reversed(candidates) if from_checkpoint else iter(candidates)
    checkpoint = usable_checkpoint(
        ((c.seq, c.path) for c in ordered), chain_crc_at=reader.chain_crc_at, skipped=warnings
    )
    if checkpoint is not None:
        return checkpoint.state, checkpoint.seq, warnings
    if first > 1:
        raise MidLogCorruption(
            f"the log was pruned to start at seq {first} and no usable checkpoint covers the "
            "records before it, so it cannot be replayed",
            file=str(source.path),
            seq=first,
        )
    return State(), 0, warnings


def _ts_at(source: LogSource, seq: int) -> int:
    for envelope, _ in source.records(seq):
        return envelope.ts_ns
    return 0
