"""One transaction grouper (memstate.store.transactions), differentially against the groupers it
replaced.

Method: the three grouping loops as they were before (start-up's `TailReplay`, replay's
`transitions`, the append's `check_batch`) are kept here verbatim as oracles, and run beside the
code that now groups through `group_transactions` over generated record sequences, well formed
or not. Where the old and new answers may differ, the difference is one of the fixes named in
the change, and the test says which.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.codec import encode_envelope
from memstate.core.errors import InvariantViolation
from memstate.core.events import (
    SCHEMA_VERSION,
    ConfigRejected,
    DaemonRestarted,
    Envelope,
    Event,
    PodRemoved,
)
from memstate.history.replay import LogStructureError, _transactions
from memstate.store.recovery import TailReplay
from memstate.store.transactions import (
    Transaction,
    TransactionProblem,
    envelope_itself,
    group_transactions,
)
from memstate.store.writer import check_batch

# (kind of record, the decisions it announces): an input, a note, a decision.
RECORD = st.tuples(
    st.sampled_from(["input", "note", "decision"]),
    st.one_of(st.none(), st.integers(min_value=0, max_value=3)),
)


def envelopes_of(shapes: Sequence[tuple[str, int | None]]) -> list[Envelope]:
    events: dict[str, Event] = {
        "input": DaemonRestarted(),
        "note": ConfigRejected(source="c.yaml", error="bad"),
        "decision": PodRemoved(uid="u", reason="requested"),
    }
    return [
        Envelope(seq=i + 1, ts_ns=i, schema_v=SCHEMA_VERSION, event=events[kind], decisions=count)
        for i, (kind, count) in enumerate(shapes)
    ]


def old_tail_replay(records: list[Envelope]) -> tuple[list[list[int]], list[int]]:
    """TailReplay.__iter__ before the change (seqs of each group, then of the incomplete tail)."""
    groups: list[list[int]] = []
    group: list[Envelope] = []
    owed = 0
    for envelope in records:
        group.append(envelope)
        if owed:
            owed -= 1
        elif envelope.decisions:
            owed = envelope.decisions
        elif envelope.event.role == "decision":
            raise InvariantViolation("decision outside a transaction")
        if owed:
            continue
        groups.append([e.seq for e in group])
        group = []
    return groups, [e.seq for e in group]


def old_transitions(records: list[Envelope]) -> list[tuple[int, tuple[int, ...] | None]]:
    """The grouping part of replay.transitions before the change."""
    out: list[tuple[int, tuple[int, ...] | None]] = []
    iterator = iter(records)
    for envelope in iterator:
        if envelope.event.role == "decision":
            raise LogStructureError("not preceded")
        recorded: tuple[int, ...] | None = None
        if envelope.decisions is not None:
            taken = []
            for _ in range(envelope.decisions):
                decision = next(iterator, None)
                if decision is None or decision.event.role != "decision":
                    raise LogStructureError("not all there")
                taken.append(decision.seq)
            recorded = tuple(taken)
        out.append((envelope.seq, recorded))
    return out


def old_check_batch(envelopes: list[Envelope]) -> None:
    """check_batch before the change (the length checks left out: they are unchanged)."""
    index = 0
    while index < len(envelopes):
        envelope = envelopes[index]
        decisions = envelope.decisions
        index += 1
        if decisions is None:
            continue
        if decisions < 0:
            raise InvariantViolation("decisions must be >= 0")
        if envelope.event.role != "input":
            raise InvariantViolation("only inputs announce decisions")
        following = envelopes[index : index + decisions]
        if len(following) < decisions:
            raise InvariantViolation("must be appended whole")
        for decision in following:
            if decision.event.role != "decision" or decision.decisions is not None:
                raise InvariantViolation("cannot be one of the decisions")
        index += decisions


class ListReader:
    """A LogReader's `segment_frames` over records kept in a list (payloads really encoded),
    as one segment."""

    def __init__(self, records: list[Envelope]) -> None:
        self.records = records

    def segment_frames(
        self, from_seq: int
    ) -> Iterator[tuple[str, Iterator[tuple[int, int, bytes, int, int]]]]:
        yield "segment", self._frames(from_seq)

    def _frames(self, from_seq: int) -> Iterator[tuple[int, int, bytes, int, int]]:
        for envelope in self.records[from_seq - 1 :]:
            yield 0, envelope.seq, encode_envelope(envelope), 0, envelope.seq


def new_tail_replay(records: list[Envelope]) -> tuple[list[list[int]], list[int]]:
    """store.recovery.TailReplay as start-up runs it."""
    replay = TailReplay(ListReader(records), 0)  # type: ignore[arg-type]
    groups = [[e.seq for e in group] for group, _ in replay]
    return groups, [e.seq for e in replay.incomplete]


def _contains_interrupted_transaction(records: list[Envelope]) -> bool:
    try:
        for _ in group_transactions(records, envelope_itself):
            pass
    except TransactionProblem as problem:
        return problem.kind == "interrupted"
    return False


@settings(max_examples=400, deadline=None)
@given(st.lists(RECORD, max_size=12))
def test_start_up_groups_as_before(shapes: list[tuple[str, int | None]]) -> None:
    records = envelopes_of(shapes)
    try:
        old: tuple[list[list[int]], list[int]] | None = old_tail_replay(records)
    except InvariantViolation:
        old = None
    try:
        new: tuple[list[list[int]], list[int]] | None = new_tail_replay(records)
    except InvariantViolation:
        new = None
    if old == new:
        return
    # Named fix: start-up used to fold any record as an announced decision (a note, an input,
    # a decision announcing decisions itself); it now refuses such a log. And a decision that
    # announces decisions no longer opens a transaction of its own.
    assert new is None
    assert _contains_interrupted_transaction(records) or any(
        e.event.role == "decision" and e.decisions for e in records
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(RECORD, max_size=12))
def test_replay_groups_as_before(shapes: list[tuple[str, int | None]]) -> None:
    records = envelopes_of(shapes)
    try:
        old: list[tuple[int, tuple[int, ...] | None]] | None = old_transitions(records)
    except LogStructureError:
        old = None
    try:
        new: list[tuple[int, tuple[int, ...] | None]] | None = [
            (head.seq, None if decisions is None else tuple(d.seq for d in decisions))
            for head, decisions in _transactions(records)
        ]
    except LogStructureError:
        new = None
    if old == new:
        return
    # Named fix: a decision record that announces decisions of its own is not taken as one of
    # another input's decisions.
    assert new is None
    assert any(e.event.role == "decision" and e.decisions is not None for e in records)


@settings(max_examples=400, deadline=None)
@given(st.lists(RECORD, min_size=1, max_size=12))
def test_the_append_check_accepts_and_refuses_as_before(
    shapes: list[tuple[str, int | None]],
) -> None:
    records = envelopes_of(shapes)
    try:
        old_check_batch(records)
        old = True
    except InvariantViolation:
        old = False
    try:
        check_batch(records)
        new = True
    except InvariantViolation:
        new = False
    if old == new:
        return
    # Named fix: a batch holding a decision that no input announces was accepted (start-up then
    # refused the log); it is refused at the append now.
    assert old and not new
    with pytest.raises(TransactionProblem) as raised:
        for _ in group_transactions(records, envelope_itself):
            pass
    assert raised.value.kind == "orphan_decision"


def test_a_transaction_is_yielded_before_the_next_record_is_read() -> None:
    """Nothing is read ahead: start-up folds each transaction as soon as it is whole."""
    records = envelopes_of([("input", 1), ("decision", None), ("note", None)])
    read: list[int] = []

    def reading() -> Iterator[Envelope]:
        for envelope in records:
            read.append(envelope.seq)
            yield envelope

    grouped = group_transactions(reading(), envelope_itself)
    first = next(grouped)
    assert first == Transaction(records[0], (records[1],))
    assert read == [1, 2]
    assert next(grouped) == Transaction(records[2], None)


def test_problems_carry_what_each_user_reports() -> None:
    cut = envelopes_of([("input", 2), ("decision", None)])
    with pytest.raises(TransactionProblem) as raised:
        list(group_transactions(cut, envelope_itself))
    assert raised.value.kind == "cut_short" and raised.value.taken == cut
    interrupted = envelopes_of([("input", 2), ("decision", None), ("note", None)])
    with pytest.raises(TransactionProblem) as raised:
        list(group_transactions(interrupted, envelope_itself))
    assert raised.value.kind == "interrupted" and raised.value.offender == interrupted[2]
    with pytest.raises(InvariantViolation, match="no input in the batch announces"):
        check_batch(envelopes_of([("note", None), ("decision", None)]))


def by_the_rule(records: list[Envelope]) -> tuple[list[list[int]], list[int], str]:
    """What start-up must do by `group_transactions`: the transactions (seqs), the incomplete
    tail left out (seqs), and the refusal (the offending seq and what it is), "" if none."""
    groups: list[list[int]] = []
    try:
        for transaction in group_transactions(records, envelope_itself):
            groups.append([e.seq for e in transaction.members])
    except TransactionProblem as problem:
        if problem.kind == "cut_short":
            return groups, [e.seq for e in problem.taken], ""
        if problem.kind == "orphan_decision":
            return groups, [], f"seq {problem.head.seq}: pod_removed is a decision outside"
        offender = problem.offender
        assert offender is not None
        return (
            groups,
            [],
            f"seq {offender.seq}: {offender.event.kind} cannot be one of the decisions "
            f"announced by seq {problem.head.seq}",
        )
    return groups, [], ""


@settings(max_examples=400, deadline=None)
@given(st.lists(RECORD, max_size=12))
def test_start_up_groups_by_the_one_rule(shapes: list[tuple[str, int | None]]) -> None:
    """TailReplay applies `group_transactions`'s rule inline (start-up's hot loop): the same
    transactions, in the same order, the same incomplete tail, the same refusals."""
    records = envelopes_of(shapes)
    groups, incomplete, refusal = by_the_rule(records)
    replay = TailReplay(ListReader(records), 0)  # type: ignore[arg-type]
    seen: list[list[int]] = []
    if refusal:
        with pytest.raises(InvariantViolation) as raised:
            for group, _ in replay:
                seen.append([e.seq for e in group])
        assert str(raised.value).startswith(refusal)
    else:
        seen = [[e.seq for e in group] for group, _ in replay]
        assert [e.seq for e in replay.incomplete] == incomplete
        assert replay.decoded == len(records)
    assert seen == groups
