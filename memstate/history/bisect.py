"""Bisect: the first transaction where two runs over the same inputs part.

The runs are two recorded logs (two memstate versions), or a log and a *reference run* of it by
this build (`Run(reference=True)`: every decision derived afresh, the recorded ones ignored).
Runs are aligned by transaction (the n-th input of one with the n-th of the other), not by seq,
since a divergence can change the number of decision records. A window is found first (binary
search over common checkpoints, or a lockstep pass with state-hash probes), then walked one
transaction at a time; see `bisect` for the search and its assumptions. The transitions and the
divergence kinds are those of the replay engine (memstate.history.replay).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from memstate.core.errors import CheckpointCorruption, InputError, InvariantViolation, SchemaError
from memstate.core.events import DaemonStarted
from memstate.core.state import State, state_hash
from memstate.history.replay import (
    CheckpointRef,
    Divergence,
    LogSource,
    Mode,
    Transition,
    build_version,
    starting_point,
    transitions,
    version_of,
)


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
    from memstate.store.reader import LogReader

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
        if x is None:
            # _compare_pair reports a run that ends before the other as a divergence.
            raise InvariantViolation("bisect: the first run ended without a divergence")
        if stop_after_seq is not None and x.last_seq >= stop_after_seq:
            break
    return walked, None


def _run_version(run: Run, started: DaemonStarted | None) -> str:
    return build_version() if run.reference else version_of(started)


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
        if present is None:
            raise InvariantViolation("bisect: a pair of transitions with neither side")
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
