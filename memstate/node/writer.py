"""The writer: the one path every event takes, before and after READY.

Theory of operation
-------------------
`submit(events)` queues events and returns once they are durable. One task (`run`) takes queued
submissions, asks the reducer to `decide` on each input (against the state after the previous
ones), folds the retired-cgroup removals, appends the inputs with their decisions in one
group-commit batch (one fsync, through the injected `run_io`, a worker thread in production),
and only then applies them: the new state, removals and seq become visible together and
`on_commit(decisions, applied)` publishes them (`applied`: every event of the batch, inputs,
decisions and notes, in log order, so the subscriber can tell which pods changed). The append
and the state update form one section no cancellation splits (its only awaits, the append in a
worker thread and a checkpoint, are shielded), so a cancellation mid-fsync waits for it and
the state in memory always matches the log's last record. With an `inline` policy
(memstate.node.worker_threads.InlineWhileFast, the daemon's) a small batch is appended on the
event loop itself while such appends stay fast and no other log operation is running: the same
write and fsync, without two cross-thread wake-ups per batch; a slow one sends the next ones to
`run_io` again for a while.

Nothing here reads a clock or a file directly: record timestamps come from `wall_clock_ns`,
durations from trio's clock (`trio.current_time()`, a `MockClock` in the simulation), the log
and the checkpoint writer are injected. A full disk fails the batch (nothing acknowledged) and
is reported to every submitter; any other log error ends the writer (the daemon exits 74).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from memstate.core.errors import InvariantViolation, LogDiskFull, MemstateError
from memstate.core.events import Envelope, Event
from memstate.core.reducer import apply, step
from memstate.core.removals import NO_REMOVALS, PendingRemovals, fold_removals
from memstate.core.state import State
from memstate.node.journal import log_committed
from memstate.node.metrics import Metrics
from memstate.node.worker_threads import InlineWhileFast

logger = logging.getLogger("memstate.node.writer")
# Decisions are journalled under the daemon's name, where operators look for them.
journal_logger = logging.getLogger("memstate.node.daemon")

MAX_BATCH_EVENTS = 256
# A batch of at most this many records may be appended on the event loop (`inline`): an
# admission is an input and a decision or two; a start-up's or a burst's batch goes to `run_io`
# (its size, not the disk, would make it slow and pause the inline appends).
INLINE_APPEND_RECORDS = 16

_T = TypeVar("_T")


class RunIO(Protocol):
    """How blocking file I/O is run: in a worker thread in production
    (`memstate.node.worker_threads.in_worker_thread`, with a limiter per resource), inline in
    the deterministic simulation."""

    def __call__(
        self, fn: Callable[[], _T], *, limiter: trio.CapacityLimiter | None = None
    ) -> Awaitable[_T]: ...


class LogAppender(Protocol):
    """What the writer needs of the event log (memstate.store.writer.EventLog in production)."""

    @property
    def last_seq(self) -> int: ...

    @property
    def chain_crc(self) -> int: ...

    def append(self, items: Sequence[tuple[Event, int | None]], *, ts_ns: int) -> list[Envelope]:
        """Append a batch durably (one fsync); raises LogDiskFull or LogIOError."""
        ...


# (state, seq, chain CRC, removals) -> None: writes a checkpoint (runs in `run_io`).
CheckpointWriter = Callable[[State, int, int, PendingRemovals], None]


@dataclass
class _Submission:
    events: list[Event]
    done: trio.Event = field(default_factory=trio.Event)
    error: MemstateError | None = None


class Writer:
    """Owns the state: decide, append, apply, publish. See the module docstring."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        wall_clock_ns: Callable[[], int],
        run_io: RunIO,
        on_commit: Callable[[Sequence[Event], Sequence[Event]], None],
        checkpoint_every: Callable[[], int],
        inline: InlineWhileFast | None = None,
    ) -> None:
        self.metrics = metrics
        self.inline = inline  # when the log append may run on the event loop (None: never)
        self.wall_clock_ns = wall_clock_ns
        self.run_io = run_io
        self.on_commit = on_commit
        self.checkpoint_every = checkpoint_every
        self.state = State()
        self.removals: PendingRemovals = NO_REMOVALS
        self.last_seq = 0
        self.log: LogAppender | None = None
        self.write_checkpoint: CheckpointWriter | None = None
        self.checkpoint_seq = 0
        self.events_since_checkpoint = 0
        self.limiter = trio.CapacityLimiter(1)  # one log operation at a time
        self._send, self._receive = trio.open_memory_channel[_Submission](64)

    def attach(
        self,
        log: LogAppender,
        write_checkpoint: CheckpointWriter,
        *,
        state: State,
        removals: PendingRemovals,
        last_seq: int,
        checkpoint_seq: int,
    ) -> None:
        """Start from a recovered log and state (before `run`)."""
        self.log = log
        self.write_checkpoint = write_checkpoint
        self.state = state
        self.removals = removals
        self.last_seq = last_seq
        self.checkpoint_seq = checkpoint_seq

    async def submit(self, events: Sequence[Event]) -> None:
        """Have `events` decided and recorded; returns once they are durable."""
        if not events:
            return
        submission = _Submission(list(events))
        # Queued without a schedule point of its own when there is room (the usual case): the
        # wait for `done` below is the checkpoint, and an extra one cost a pass of the event
        # loop per admission. A cancelled caller still queues nothing.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._send.send_nowait(submission)
        except trio.WouldBlock:
            await self._send.send(submission)
        await submission.done.wait()
        if submission.error is not None:
            raise submission.error

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: group queued submissions into batches and commit them."""
        task_status.started()
        async for first in self._receive:
            batch = [first]
            count = len(first.events)
            while count < MAX_BATCH_EVENTS:
                try:
                    item = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(item)
                count += len(item.events)
            error: MemstateError | None = None
            try:
                await self._commit([e for item in batch for e in item.events])
            except LogDiskFull as exc:
                self.metrics.log_append_errors.inc()
                logger.error("event log: %s", exc)
                error = exc
            for item in batch:
                item.error = error
                item.done.set()

    async def _commit(self, events: Sequence[Event]) -> list[Envelope]:
        """Decide, append durably, then apply and publish; not split by a cancellation (see the
        module docstring)."""
        if self.log is None:
            raise InvariantViolation("the writer runs before the log was opened")
        log = self.log
        state = self.state
        removals = self.removals
        records: list[tuple[Event, int | None]] = []
        decisions: list[Event] = []
        for event in events:
            before = state
            if event.role == "input":
                transition = step(state, event)
                state = transition.state
                records.append((event, len(transition.decisions)))
                records.extend((d, None) for d in transition.decisions)
                decisions.extend(transition.decisions)
                removals = fold_removals(removals, before, [event, *transition.decisions], state)
            else:
                state = apply(state, event)
                records.append((event, None))
                removals = fold_removals(removals, before, [event], state)
        started = trio.current_time()
        append = functools.partial(log.append, records, ts_ns=self.wall_clock_ns())
        inline = self.inline
        if (
            inline is not None
            and len(records) <= INLINE_APPEND_RECORDS
            and self.limiter.borrowed_tokens == 0
            and inline.available()
        ):
            # A small batch, no log operation running in a thread (none can start while
            # this blocks the event loop), and appends have been fast: this one runs here.
            envelopes = inline.run(append)
        else:
            # Only an await can be cancelled: the thread's append and the checkpoint below are
            # the section's two, and each is shielded (a commit appended inline enters no
            # cancel scope at all; nothing from here to the end yields but them).
            with trio.CancelScope(shield=True):
                envelopes = await self.run_io(append, limiter=self.limiter)
        appended_in = trio.current_time() - started
        self.state = state
        self.removals = removals
        self.last_seq = envelopes[-1].seq
        self.on_commit(decisions, [event for event, _ in records])
        log_committed(journal_logger, envelopes)
        # The append's own metrics once the journal line is out (the line is what says the
        # decision is durable and acted on): nothing yields in between, so no reader of the
        # metrics sees a difference, only the line comes sooner.
        self.metrics.fsync_seconds.observe(appended_in)
        self.metrics.batch_events.observe(len(envelopes))
        for envelope in envelopes:
            self.metrics.events_appended_by(envelope.event.kind).inc()
        self.events_since_checkpoint += len(envelopes)
        if self.events_since_checkpoint >= self.checkpoint_every():
            with trio.CancelScope(shield=True):
                await self.checkpoint()
        return envelopes

    async def checkpoint(self) -> None:
        """Write a checkpoint of the current state (shielded by the caller or at shutdown)."""
        if self.log is None or self.write_checkpoint is None:
            raise InvariantViolation("a checkpoint before the log was opened")
        log, state, seq, removals = self.log, self.state, self.last_seq, self.removals
        if seq in (0, self.checkpoint_seq):
            return
        if log.last_seq != seq:
            raise InvariantViolation(
                f"state at seq {seq} but the log ends at {log.last_seq}: refusing a checkpoint"
            )
        write = functools.partial(self.write_checkpoint, state, seq, log.chain_crc, removals)
        await self.run_io(write, limiter=self.limiter)
        self.checkpoint_seq = seq
        self.events_since_checkpoint = 0
        logger.info("checkpoint at seq %d", seq)
