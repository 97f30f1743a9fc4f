"""Cost of the acknowledged mark on the admission path: group commit with and without it.

    .venv/bin/python -m benchmarks.log_mark_cost [--dir /var/tmp] [--batches 300] [--rounds 5]

The writer rewrites a 40-byte mark slot in the segment header after every group commit (one
`pwrite`, no extra fsync: the next commit's fsync carries it). That dirties a second page, so
each fsync may write two pages instead of one. This measures that cost honestly: the same
appends (fsync on, real transactions from benchmarks/log_common.py, `--per-batch` transactions
per append) with the mark and with the mark write disabled (baseline: `EventLog._write_mark`
replaced by a no-op in this process only), interleaved A/B for `--rounds` rounds, each in a
fresh log under --dir (put it on the disk you care about; tmpfs makes fsync free). Prints the
per-append latency p50/p99 of each variant (median over rounds, and min..max) and the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.log_common import BASE_TS_NS, Workload, group
from memstate.store.writer import EventLog


@contextmanager
def mark_disabled(enabled: bool) -> Iterator[None]:
    """The baseline: the writer without its mark write (benchmark only)."""
    if enabled:
        yield
        return
    original = EventLog._write_mark
    EventLog._write_mark = lambda self, *, sealed: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        EventLog._write_mark = original  # type: ignore[method-assign]


def run(directory: Path, batches: list, *, mark: bool) -> tuple[float, float]:
    """(p50, p99) seconds per append of `batches` into a fresh log."""
    state_dir = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=directory))
    latencies: list[float] = []
    try:
        with mark_disabled(mark), EventLog.open(state_dir, fsync=True) as log:
            for batch in batches:
                started = time.perf_counter()
                log.append(batch, ts_ns=BASE_TS_NS)
                latencies.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(state_dir)
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def spread(values: list[float]) -> str:
    low, high = min(values) * 1e3, max(values) * 1e3
    return f"{statistics.median(values) * 1e3:.3f} ms ({low:.3f}..{high:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--per-batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workload = Workload()
    transactions = list(workload.setup) + list(workload.cycles)
    batches = group(transactions, args.per_batch)[: args.batches]
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for mark in (False, True):  # interleaved A/B
            results[mark].append(run(args.dir, batches, mark=mark))
    for mark in (False, True):
        label = "with mark   " if mark else "without mark"
        p50s = [r[0] for r in results[mark]]
        p99s = [r[1] for r in results[mark]]
        print(f"{label}  p50 {spread(p50s)}  p99 {spread(p99s)}")
    ratio50 = [a[0] / b[0] for a, b in zip(results[True], results[False], strict=True)]
    ratio99 = [a[1] / b[1] for a, b in zip(results[True], results[False], strict=True)]
    print(
        f"ratio with/without: p50 {statistics.median(ratio50):.2f}x "
        f"({min(ratio50):.2f}..{max(ratio50):.2f}), p99 {statistics.median(ratio99):.2f}x "
        f"({min(ratio99):.2f}..{max(ratio99):.2f})  [{args.rounds} rounds, "
        f"{len(batches)} appends of {args.per_batch} transaction(s)]"
    )


if __name__ == "__main__":
    main()
