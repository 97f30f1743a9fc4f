"""The one rule that groups log records into transactions.

A transaction is an input followed by the decision records its envelope announces (`decisions`),
all appended in one batch; a record that announces nothing (a note, or an input of a hand-written
scenario, which records no decisions) stands alone. `group_transactions` applies the rule to any
sequence of records; its users differ only in what a malformed sequence means to them, so each
turns a `TransactionProblem` into its own error:

- start-up and `memstate log verify` (`store.recovery.TailReplay`): a decision outside a
  transaction is refused, an input at the very end whose decisions are not all there is left out
  (it was never acknowledged). `TailReplay` applies this rule inline, in the one loop that reads
  and decodes every record of start-up's tail (a generator per layer cost ~10 % of folding);
  tests/store/test_transactions.py holds it to `group_transactions` on generated sequences;
- the append check (`store.writer.check_batch`, `check_transactions`): a batch must hold whole
  transactions only; `memstate log import` checks a whole scenario so, then batches it;
- replay, audit and bisect (`history.replay.transitions`): `LogStructureError`.

One reader stays apart, with reason: `store.scan.incomplete_transaction` runs at every start-up on
the last segment's raw frames, walking *backwards* from the end over at most one batch and
decoding only each frame's head. Grouping forwards needs a known transaction start, which for the
tail is the start of the segment: that would decode every head of the last segment (up to a
whole segment of records) to answer a question about its last batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from memstate.core.events import Envelope

T = TypeVar("T")

ProblemKind = Literal["orphan_decision", "cut_short", "interrupted"]


@dataclass(frozen=True)
class Transaction(Generic[T]):
    """A record and the decision records it announces, as the caller's items."""

    head: T
    decisions: tuple[T, ...] | None  # None: the head announces no decisions

    @property
    def members(self) -> tuple[T, ...]:
        """The head, then its decisions."""
        return (self.head, *(self.decisions or ()))


class TransactionProblem(Exception, Generic[T]):
    """Records that do not form whole transactions.

    `orphan_decision`: `head` is a decision that no input announced. `cut_short`: the records end
    before all of `head`'s decisions. `interrupted`: `offender` came where one of `head`'s
    decisions was due (not a decision, or a decision that announces decisions of its own).
    `taken` holds the head and the decisions found before the problem.
    """

    def __init__(
        self,
        kind: ProblemKind,
        head: Envelope,
        taken: list[T],
        offender: Envelope | None = None,
    ) -> None:
        super().__init__(f"{kind} at seq {head.seq}")
        self.kind: ProblemKind = kind
        self.head = head
        self.taken = taken
        self.offender = offender


def group_transactions(
    items: Iterable[T], envelope_of: Callable[[T], Envelope]
) -> Iterator[Transaction[T]]:
    """Yield `items` as transactions, each as soon as it is whole (nothing is read ahead);
    raise `TransactionProblem` at the first record that breaks the rule."""
    iterator = iter(items)
    for item in iterator:
        head = envelope_of(item)
        if head.event.role == "decision":
            raise TransactionProblem("orphan_decision", head, [item])
        if head.decisions is None:
            yield Transaction(item, None)
            continue
        taken = [item]
        for _ in range(head.decisions):
            following = next(iterator, None)
            if following is None:
                raise TransactionProblem("cut_short", head, taken)
            decision = envelope_of(following)
            if decision.event.role != "decision" or decision.decisions is not None:
                raise TransactionProblem("interrupted", head, taken, decision)
            taken.append(following)
        yield Transaction(item, tuple(taken[1:]))


def envelope_itself(envelope: Envelope) -> Envelope:
    """`envelope_of` for items that are envelopes."""
    return envelope
