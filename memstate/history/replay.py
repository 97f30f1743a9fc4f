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
log and is only reported. `--to-seq` / `--at` stop early; a pruned log starts from its oldest
usable checkpoint.

`bisect` finds the first event where two runs over the same inputs part: two recorded logs (two
memstate versions), or a log and a *reference run* of it by this build. Runs are aligned by
transaction (the n-th input of one with the n-th of the other), not by seq, since a divergence
can change the number of decision records. See `bisect` for the search and its assumptions.

Sources: `open_source(path)` accepts a state directory (it has `log/`) or a JSON-lines scenario
or export, read line by line (`memstate.core.scenario.iter_scenario`). Neither is ever
materialised whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

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
from memstate.core.reducer import apply, apply_all, decide
from memstate.core.scenario import iter_scenario
from memstate.core.state import REDUCER_VERSION, State, state_hash
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

    @property
    def diverges(self) -> bool:
        if self.recorded is None:
            return False
        return tuple(e.event for e in self.recorded) != self.derived

    @property
    def last_seq(self) -> int:
        return self.recorded[-1].seq if self.recorded else self.record.seq

    @property
    def decisions(self) -> tuple[Event, ...]:
        """What was applied: the recorded decisions if any were recorded (and this is not a
        reference run), else the derived."""
        if self.recorded is not None and not self.reference:
            return tuple(e.event for e in self.recorded)
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
    iterator = iter(envelopes)
    for envelope in iterator:
        event = envelope.event
        if event.role == "decision":
            raise LogStructureError(
                f"seq {envelope.seq}: {event.kind} is not preceded by the input it decides on"
            )
        recorded: tuple[Envelope, ...] | None = None
        if envelope.decisions is not None:
            taken = []
            for _ in range(envelope.decisions):
                decision = next(iterator, None)
                if decision is None or decision.event.role != "decision":
                    raise LogStructureError(
                        f"seq {envelope.seq}: {event.kind} announces {envelope.decisions} "
                        "decision records that are not all there"
                    )
                taken.append(decision)
            recorded = tuple(taken)
        derived: tuple[Event, ...]
        if event.role != "input":
            derived = ()  # notes imply nothing (what `decide` would say, without the call)
        elif mode == "recorded" and recorded is not None:
            derived = tuple(e.event for e in recorded)
        else:
            derived = decide(current, event)
        applied: tuple[Event, ...]
        if mode == "reference" or recorded is None:
            applied = derived
        else:
            applied = tuple(e.event for e in recorded)
        apply_error: str | None = None
        try:
            after = apply_all(apply(current, event), applied)
        except InvariantViolation as exc:
            if recorded is None or applied == derived:
                raise  # this build's own decisions do not fit: a real bug
            after, apply_error = current, str(exc)
        yield Transition(
            record=envelope,
            recorded=recorded,
            derived=derived,
            before=current,
            after=after,
            apply_error=apply_error,
            reference=mode == "reference",
        )
        current = after


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

    def envelopes(self, from_seq: int = 1) -> Iterator[Envelope]:
        return (envelope for envelope, _ in self.records(from_seq))

    def first_seq(self) -> int:
        """The first seq the log holds (1 unless a state directory's log was pruned)."""
        if self.kind == "jsonl":
            return 1
        from memstate.store.log import LogReader

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
        from memstate.store.log import LogReader

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


def _state_dir_records(state_dir: Path, from_seq: int) -> Iterator[Record]:
    """`LogReader.read` plus the chain CRC of every record: whole transactions only (an input
    whose decisions are not all written yet is held back, like the rest of a tail in flight)."""
    from memstate.store.log import LogReader, decode_at

    pending: list[Record] = []
    owed = 0
    for payload, seq, offset, segment, crc in LogReader(state_dir).read_frames(from_seq):
        envelope = decode_at(payload, seq, segment, offset)
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


def _version_of(started: DaemonStarted | None) -> str:
    if started is None:
        return "unknown (no daemon_started before this point)"
    return f"memstate {started.memstate_version} (reducer {started.reducer_version})"


def decision_divergence(
    transition: Transition, *, versions: tuple[str, str] = ("", "")
) -> Divergence:
    """A `decisions` divergence from a replayed transition: recorded vs re-derived."""
    assert transition.recorded is not None
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


def replay_log(
    source: LogSource,
    *,
    to_seq: int | None = None,
    at_ns: int | None = None,
    from_checkpoint: bool = False,
    verify_checkpoints: bool = True,
    on_transition: OnTransition | None = None,
) -> ReplayReport:
    """Replay `source` from its start (or a checkpoint), comparing every decision and every
    checkpoint hash; stops at the first divergence, after the transaction holding `to_seq`, or
    before the first input stamped after `at_ns`. Keeps one state (and the pending checkpoint
    list), whatever the log's length."""
    start_state, start_seq, warnings = starting_point(source, to_seq, at_ns, from_checkpoint)
    report = ReplayReport(source=str(source), state=start_state, warnings=warnings)
    report.started_from_checkpoint = start_seq or None
    report.state_seq = start_seq
    pending = [c for c in source.checkpoints() if c.seq > start_seq] if verify_checkpoints else []
    crcs: dict[int, int] = {}
    wanted = {c.seq for c in pending}
    started: DaemonStarted | None = None

    def tracked(records: Iterator[Record]) -> Iterator[Envelope]:
        for envelope, crc in records:
            if crc is not None and envelope.seq in wanted:
                crcs[envelope.seq] = crc
            yield envelope

    state = start_state
    for transition in transitions(tracked(source.records(start_seq + 1)), state=start_state):
        record = transition.record
        if to_seq is not None and record.seq > to_seq:
            break
        if at_ns is not None and record.ts_ns > at_ns:
            break
        if isinstance(record.event, DaemonStarted):
            started = record.event
        report.first_seq = report.first_seq or record.seq
        report.records += transition.last_seq - record.seq + 1
        report.transitions += 1
        report.last_seq, report.last_ts_ns = transition.last_seq, record.ts_ns
        if on_transition is not None:
            on_transition(transition)
        if transition.diverges:
            report.divergence = decision_divergence(
                transition, versions=(_version_of(started), build_version())
            )
            state = transition.before
            break
        state, report.state_seq = transition.after, transition.last_seq
        while pending and pending[0].seq <= transition.last_seq:
            checkpoint = pending.pop(0)
            found = _verify_checkpoint(checkpoint, transition, crcs.pop(checkpoint.seq, None))
            if isinstance(found, str):
                report.warnings.append(found)
                continue
            if found is not None:
                report.divergence = replace(
                    found, versions=(_version_of(started), found.versions[1])
                )
                break
            report.checkpoints_verified.append(checkpoint.seq)
        if report.divergence is not None:
            break
    report.state = state
    report.recorded_by = _version_of(started) if started else ""
    return report


def _verify_checkpoint(
    checkpoint: CheckpointRef, transition: Transition, crc: int | None
) -> Divergence | str | None:
    """None when the checkpoint agrees with the replayed state, a warning when it cannot be
    compared, a `checkpoint_hash` divergence when it disagrees."""
    from memstate.store.checkpoint import load_checkpoint

    name = checkpoint.path.name
    if checkpoint.seq != transition.last_seq:
        return (
            f"checkpoint {name} is inside the transaction of seq {transition.record.seq}; skipped"
        )
    try:
        loaded = load_checkpoint(checkpoint.path)
    except (CheckpointCorruption, SchemaError) as exc:
        return f"checkpoint {name} skipped: {exc}"
    if crc is not None and crc != loaded.chain_crc:
        return (
            f"checkpoint {name} skipped: its chain CRC {loaded.chain_crc:08x} is not the log's "
            f"{crc:08x} at seq {checkpoint.seq} (it describes another log)"
        )
    replayed_hash = state_hash(transition.after)
    if replayed_hash == loaded.state_hash:
        return None
    return Divergence(
        kind="checkpoint_hash",
        seq=checkpoint.seq,
        ts_ns=transition.record.ts_ns,
        message=(
            f"checkpoint {name} (written by reducer {loaded.reducer_version}) records state hash "
            f"{loaded.state_hash}, the replayed state at seq {checkpoint.seq} hashes to "
            f"{replayed_hash}"
        ),
        record=transition.record,
        recorded=transition.decisions,
        derived=transition.decisions,
        state_recorded=loaded.state,
        state_derived=transition.after,
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
    from memstate.store.log import LogReader
    from memstate.store.recovery import assess_checkpoint

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
    for candidate in ordered:
        checkpoint, reason = assess_checkpoint(candidate.path, candidate.seq, reader)
        if checkpoint is not None:
            return checkpoint.state, checkpoint.seq, warnings
        warnings.append(f"checkpoint {candidate.path.name} not used: {reason}")
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


# --- bisect ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One side of a bisect: a recorded log, or this build's reference run of a log's inputs."""

    source: LogSource
    reference: bool = False
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return f"reference run of {self.source}" if self.reference else str(self.source)

    @property
    def mode(self) -> Mode:
        return "reference" if self.reference else "recorded"


@dataclass
class BisectReport:
    """Where the first divergence is and how it was found."""

    runs: tuple[str, str]
    method: str
    window: tuple[int, int | None]  # (after seq, through seq or None: the end) on the first run
    probes: int  # probe points whose hashes were compared
    transactions_walked: int  # transitions compared one by one in the window
    divergence: Divergence | None
    non_monotone: bool = False  # a probe before the binary search's answer differed
    warnings: list[str] = field(default_factory=list)


def bisect(
    first: Run,
    second: Run,
    *,
    probe_every: int = 1000,
    linear: bool = False,
    verify_earlier: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> BisectReport:
    """The first transaction where `first` and `second` part.

    1. **Find a window.** When both runs are recorded state directories with checkpoints at the
       same seqs, binary-search those checkpoints for the first whose recorded state hashes
       differ (loading O(log n) checkpoints). This assumes a divergence *persists* (the states
       stay different once they part); with `verify_earlier` every checkpoint before the answer
       is then checked too (cheap: recorded hashes), and an earlier difference wins
       (`non_monotone`). Otherwise — a reference run, a JSON-lines export, no common
       checkpoints, or `linear` — both runs go forward in lockstep from the start comparing
       every transaction's input and decisions (cheap) and the state hashes at probe points
       (every checkpoint seq, and every `probe_every` transactions), stopping at the first
       difference; no assumption is needed there.
    2. **Walk the window** from the last point where both agreed, one transaction at a time,
       comparing inputs, decisions and the state hash after every transaction. The first
       difference is the answer.

    State hashes cannot see a divergence that leaves the state alone (only a decision's cgroup
    targets differ, say); when the binary search finds no differing checkpoint, bisect falls
    back to the lockstep pass over the whole log, which compares decisions and finds those too.
    """
    report_runs = (first.name, second.name)
    common = _common_checkpoints(first, second) if not linear else []
    warnings: list[str] = []
    if common:
        found = _binary_search(first, second, common, verify_earlier, warnings)
        if found is not None:
            index, non_monotone = found
            lo = common[index - 1] if index > 0 else None
            hi = common[index]
            if lo is not None:
                start_state, lo_seq = _checkpoint_state(first, lo), lo.seq
            else:
                start_state, lo_seq, _ = _origin(first, second)
            walked, divergence = _walk_window(
                first, second, start_state, lo_seq, lo_seq, stop_after_seq=hi.seq
            )
            if divergence is None:
                divergence = _inconsistent_checkpoint(first, second, hi)
            return BisectReport(
                runs=report_runs,
                method=f"binary search over {len(common)} common checkpoints",
                window=(lo_seq, hi.seq),
                probes=len(common),
                transactions_walked=walked,
                divergence=divergence,
                non_monotone=non_monotone,
                warnings=warnings,
            )
        warnings.append(
            f"all {len(common)} common checkpoints agree; comparing decisions along the whole "
            "log (a divergence that leaves the state alone is invisible to state hashes)"
        )
    agreed_state, agreed_a, agreed_b, probes, stop = _lockstep(
        first, second, probe_every, on_progress
    )
    walked, divergence = _walk_window(
        first, second, agreed_state, agreed_a, agreed_b, stop_after_seq=stop
    )
    return BisectReport(
        runs=report_runs,
        method=(
            "lockstep pass comparing every transaction's decisions, state hashes at "
            f"{probes} probe points"
        ),
        window=(agreed_a, stop),
        probes=probes,
        transactions_walked=walked,
        divergence=divergence,
        warnings=warnings,
    )


def _common_checkpoints(first: Run, second: Run) -> list[CheckpointRef]:
    """Checkpoints of `first` at seqs where `second` has one too (recorded runs only)."""
    if first.reference or second.reference:
        return []
    theirs = {c.seq for c in second.source.checkpoints()}
    return [c for c in first.source.checkpoints() if c.seq in theirs]


def _checkpoint_at(run: Run, seq: int) -> CheckpointRef:
    for checkpoint in run.source.checkpoints():
        if checkpoint.seq == seq:
            return checkpoint
    raise InvariantViolation(f"{run.name} has no checkpoint at seq {seq}")


def _recorded_hash(run: Run, checkpoint: CheckpointRef, cache: dict[tuple[str, int], str]) -> str:
    """A checkpoint's recorded state hash, after proving it describes this run's log (chain
    CRC); an unusable checkpoint gets a hash no other matches, and a warning upstream."""
    from memstate.store.checkpoint import load_checkpoint
    from memstate.store.log import LogReader

    key = (str(run.source.path), checkpoint.seq)
    if key not in cache:
        try:
            loaded = load_checkpoint(checkpoint.path)
            crc = LogReader(run.source.path).chain_crc_at(checkpoint.seq)
            cache[key] = loaded.state_hash if crc == loaded.chain_crc else f"unusable:{key}"
        except (CheckpointCorruption, SchemaError) as exc:
            cache[key] = f"unusable:{key}:{exc}"
    return cache[key]


def _binary_search(
    first: Run,
    second: Run,
    common: list[CheckpointRef],
    verify_earlier: bool,
    warnings: list[str],
) -> tuple[int, bool] | None:
    """(index of the first common checkpoint whose hashes differ, non-monotone?) or None."""
    cache: dict[tuple[str, int], str] = {}

    def differs(index: int) -> bool:
        checkpoint = common[index]
        mine = _recorded_hash(first, checkpoint, cache)
        theirs = _recorded_hash(second, _checkpoint_at(second, checkpoint.seq), cache)
        return mine != theirs

    lo, hi = 0, len(common)
    while lo < hi:  # first index where `differs`, assuming False…False True…True
        middle = (lo + hi) // 2
        if differs(middle):
            hi = middle
        else:
            lo = middle + 1
    if lo == len(common):
        return None
    if verify_earlier:
        for index in range(lo):
            if differs(index):
                warnings.append(
                    f"checkpoint {common[index].seq} already differs although the search "
                    f"settled on {common[lo].seq}: the divergence did not persist (the states "
                    "met again); using the earliest difference"
                )
                return index, True
    for key, value in cache.items():
        if value.startswith("unusable:"):
            warnings.append(f"checkpoint seq {key[1]} of {key[0]} could not be used ({value})")
    return lo, False


def _checkpoint_state(run: Run, checkpoint: CheckpointRef) -> State:
    from memstate.store.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint.path).state


def _paired(
    first: Run, second: Run, state: State, after_a: int, after_b: int
) -> Iterator[tuple[Transition | None, Transition | None]]:
    """The two runs' transitions side by side, inputs only: notes change no state and two
    daemons need not have reported the same ones, so they would only misalign the pairing."""
    a = transitions(first.source.envelopes(after_a + 1), state=state, mode=first.mode)
    b = transitions(second.source.envelopes(after_b + 1), state=state, mode=second.mode)
    return itertools.zip_longest(
        (t for t in a if t.record.event.role == "input"),
        (t for t in b if t.record.event.role == "input"),
    )


def _same_input(x: Transition, y: Transition) -> bool:
    """Equal inputs; `daemon_started` only by kind (it names the build, which is expected to
    differ between two recordings)."""
    if isinstance(x.record.event, DaemonStarted):
        return isinstance(y.record.event, DaemonStarted)
    return x.record.event == y.record.event


def _origin(first: Run, second: Run) -> tuple[State, int, int]:
    """Where both runs start: genesis, or — for a pruned log — the first run's oldest usable
    checkpoint, which the second run must share (its reference run, or a log with a checkpoint
    at the same seq and the same state hash)."""
    state, after, _ = starting_point(first.source)
    other_state, other_after, _ = starting_point(second.source)
    if after == other_after == 0:
        return state, 0, 0
    if second.reference and second.source.path == first.source.path:
        return state, after, after
    if (after, state_hash(state)) == (other_after, state_hash(other_state)):
        return state, after, other_after
    raise InputError(
        f"the logs start at different points (after seq {after} and {other_after}, pruned); "
        "bisect needs a common starting checkpoint"
    )


def _lockstep(
    first: Run, second: Run, probe_every: int, on_progress: Callable[[int], None] | None
) -> tuple[State, int, int, int, int | None]:
    """Both runs forward from the start: (state where they last agreed at a probe, its seq in
    each run, probes compared, seq on the first run where a difference showed or None)."""
    probe_seqs = {c.seq for c in first.source.checkpoints()}
    agreed = _origin(first, second)
    probes = 0
    for count, (x, y) in enumerate(_paired(first, second, *agreed), start=1):
        if x is None or y is None or not _same_input(x, y):
            return (*agreed, probes, x.last_seq if x is not None else None)
        if x.decisions != y.decisions or x.apply_error or y.apply_error:
            return (*agreed, probes, x.last_seq)
        if on_progress is not None:
            on_progress(x.last_seq)
        if x.last_seq in probe_seqs or count % probe_every == 0:
            probes += 1
            if state_hash(x.after) != state_hash(y.after):
                return (*agreed, probes, x.last_seq)
            agreed = (x.after, x.last_seq, y.last_seq)
    return (*agreed, probes, None)


def _walk_window(
    first: Run,
    second: Run,
    state: State,
    after_a: int,
    after_b: int,
    *,
    stop_after_seq: int | None,
) -> tuple[int, Divergence | None]:
    """Compare transaction by transaction from a state both runs share; (walked, divergence)."""
    walked = 0
    started: list[DaemonStarted | None] = [None, None]
    for x, y in _paired(first, second, state, after_a, after_b):
        walked += 1
        for index, t in enumerate((x, y)):
            if t is not None and isinstance(t.record.event, DaemonStarted):
                started[index] = t.record.event
        versions = (_run_version(first, started[0]), _run_version(second, started[1]))
        divergence = _compare_pair(first, second, x, y, versions)
        if divergence is not None:
            return walked, divergence
        assert x is not None
        if stop_after_seq is not None and x.last_seq >= stop_after_seq:
            break
    return walked, None


def _run_version(run: Run, started: DaemonStarted | None) -> str:
    return build_version() if run.reference else _version_of(started)


def _compare_pair(
    first: Run,
    second: Run,
    x: Transition | None,
    y: Transition | None,
    versions: tuple[str, str],
) -> Divergence | None:
    labels = (first.name, second.name)
    if x is None or y is None:
        present = x if x is not None else y
        assert present is not None
        longer = labels[0] if x is not None else labels[1]
        return Divergence(
            kind="input",
            seq=present.record.seq,
            ts_ns=present.record.ts_ns,
            message=f"{longer} goes on after the other run ends (seq {present.record.seq})",
            record=present.record,
            labels=labels,
            versions=versions,
        )
    base = Divergence(
        kind="input",
        seq=x.record.seq,
        ts_ns=x.record.ts_ns,
        message="",
        record=x.record,
        recorded=x.decisions,
        derived=y.decisions,
        labels=labels,
        versions=versions,
        other_seq=y.record.seq,
    )
    if not _same_input(x, y):
        return replace(
            base,
            message=(
                f"the runs do not hold the same input here: seq {x.record.seq} is "
                f"{x.record.event.kind} in {labels[0]}, seq {y.record.seq} is "
                f"{y.record.event.kind} in {labels[1]}"
            ),
            other_record=y.record,
        )
    if x.decisions != y.decisions or x.apply_error or y.apply_error:
        error = x.apply_error or y.apply_error
        return replace(
            base,
            kind="decisions",
            message=f"seq {x.record.seq} ({x.record.event.kind}): the decisions differ"
            + (f" ({error})" if error else ""),
            state_recorded=None if x.apply_error else x.after,
            state_derived=None if y.apply_error else y.after,
            apply_error=error,
        )
    mine, theirs = state_hash(x.after), state_hash(y.after)
    if mine != theirs:
        return replace(
            base,
            kind="state",
            message=(
                f"seq {x.record.seq} ({x.record.event.kind}): same decisions, but they leave "
                "different states (apply differs)"
            ),
            state_recorded=x.after,
            state_derived=y.after,
            hash_recorded=mine,
            hash_derived=theirs,
        )
    return None


def _inconsistent_checkpoint(
    first: Run, second: Run, checkpoint: CheckpointRef
) -> Divergence | None:
    """The window walk found the runs agreeing through a checkpoint whose recorded hashes
    differ: one of them does not describe its own log. Say which."""
    from memstate.store.checkpoint import load_checkpoint

    for run in (first, second):
        own = _checkpoint_at(run, checkpoint.seq)
        state = State()
        last: Transition | None = None
        for transition in transitions(run.source.envelopes(), mode="recorded"):
            if transition.record.seq > checkpoint.seq:
                break
            state, last = transition.after, transition
        loaded = load_checkpoint(own.path)
        if last is not None and state_hash(state) != loaded.state_hash:
            return Divergence(
                kind="checkpoint_hash",
                seq=checkpoint.seq,
                ts_ns=last.record.ts_ns,
                message=(
                    f"{run.name}: checkpoint {own.path.name} records state hash "
                    f"{loaded.state_hash}, but its own log replays to {state_hash(state)} at seq "
                    f"{checkpoint.seq}"
                ),
                record=last.record,
                state_recorded=loaded.state,
                state_derived=state,
                hash_recorded=loaded.state_hash,
                hash_derived=state_hash(state),
                labels=("checkpoint", "replayed"),
                versions=(f"reducer {loaded.reducer_version}", build_version()),
            )
    return None
