"""Replaying events: re-derive every decision from the recorded inputs and compare.

A log (or scenario) is a sequence of *transitions*: an input record followed by the decision
records written with it (its envelope's `decisions` count says how many), or a lone note.
`transitions` walks them one at a time, holding only the current state, so memory does not grow
with the log:

- for each input it asks the reducer to `decide` afresh and compares with what was recorded
  (event bodies only; envelopes differ in timestamps);
- it then applies the *recorded* decisions when there are any (what the node really did), or the
  derived ones for hand-written scenarios, which record none.

The first transition whose derived decisions differ from the recorded ones is a divergence: the
reducer that replays is not the one that wrote the log, or the log was altered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from memstate.core.errors import InvariantViolation, MemstateError, ReplayDivergence
from memstate.core.events import Envelope, Event
from memstate.core.reducer import apply, apply_all, decide
from memstate.core.state import State


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
        """What was applied: the recorded decisions if any were recorded, else the derived."""
        if self.recorded is not None:
            return tuple(e.event for e in self.recorded)
        return self.derived


class LogStructureError(MemstateError):
    """A decision record without the input it belongs to, or an input missing its decisions."""

    exit_code = 65


def transitions(
    envelopes: Iterable[Envelope], *, state: State | None = None
) -> Iterator[Transition]:
    """Walk envelopes as transitions, re-deriving every decision. Streams; keeps one state."""
    current = state if state is not None else State()
    iterator = iter(envelopes)
    for envelope in iterator:
        event = envelope.event
        if event.role == "decision":
            raise LogStructureError(
                f"seq {envelope.seq}: {event.kind} is not preceded by the input it decides on"
            )
        derived = decide(current, event)
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
        applied = tuple(e.event for e in recorded) if recorded is not None else derived
        apply_error: str | None = None
        try:
            after = apply_all(apply(current, event), applied)
        except InvariantViolation as exc:
            if recorded is None or applied == derived:
                raise  # the log agrees with this reducer, so this is a real bug
            after, apply_error = current, str(exc)
        yield Transition(
            record=envelope,
            recorded=recorded,
            derived=derived,
            before=current,
            after=after,
            apply_error=apply_error,
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
