"""The writer counts every appended record by kind (`memstate_events_appended_total`), the same
after its per-kind counters are remembered as when each was looked up per record."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import trio

from memstate.core.events import SCHEMA_VERSION, Envelope, Event, ManifestInvalid
from memstate.core.removals import NO_REMOVALS
from memstate.core.state import State
from memstate.node.metrics import Metrics
from memstate.node.writer import Writer


class _MemoryLog:
    def __init__(self) -> None:
        self.records: list[Envelope] = []

    @property
    def last_seq(self) -> int:
        return len(self.records)

    @property
    def chain_crc(self) -> int:
        return 0

    def append(self, items: Sequence[tuple[Event, int | None]], *, ts_ns: int) -> list[Envelope]:
        first = self.last_seq + 1
        envelopes = [
            Envelope(seq=first + i, ts_ns=ts_ns, schema_v=SCHEMA_VERSION, event=e, decisions=d)
            for i, (e, d) in enumerate(items)
        ]
        self.records.extend(envelopes)
        return envelopes


async def _inline(fn, *, limiter=None):  # type: ignore[no-untyped-def]
    return fn()


def memory_writer(metrics: Metrics | None = None) -> tuple[Writer, _MemoryLog]:
    """A `Writer` attached to an empty in-memory log, its I/O run inline (no thread)."""
    log = _MemoryLog()
    writer = Writer(
        metrics=metrics or Metrics(),
        wall_clock_ns=lambda: 1,
        run_io=_inline,
        on_commit=lambda decisions, applied: None,
        checkpoint_every=lambda: 1_000_000,
    )
    writer.attach(
        log,
        lambda *args: None,
        state=State(),
        removals=NO_REMOVALS,
        last_seq=0,
        checkpoint_seq=0,
    )
    return writer, log


def test_appended_records_are_counted_by_kind() -> None:
    metrics = Metrics()
    writer, log = memory_writer(metrics)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            for index in range(5):
                await writer.submit(
                    [ManifestInvalid(source=f"/m/{index}-{n}.yaml", error="bad") for n in range(2)]
                )
            nursery.cancel_scope.cancel()

    trio.run(main)
    kinds = Counter(record.event.kind for record in log.records)
    assert len(kinds) >= 2 and sum(kinds.values()) >= 10  # inputs and their decisions
    for kind, count in kinds.items():
        assert metrics.registry.get_sample_value(
            "memstate_events_appended_total", {"kind": kind}
        ) == float(count), kind
