"""Append throughput of the event log, with and without group commit, fsync on.

    .venv/bin/python -m benchmarks.log_append [--dir /var/tmp] [--records 4000]

Each run opens a fresh log in a temporary directory under --dir (put it on the disk you care
about; tmpfs makes fsync free) and appends the same transactions (an input plus its decisions,
from the real reducer), `--per-batch` transactions to an `append` call: one write and one fsync
per call. per_batch=1 is "no group commit": one fsync per transaction. The fsync=False row is
the CPU ceiling of encoding + framing + CRC (test/benchmark only; production never sets it).
Ratios are against per_batch=1 from the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.log_common import BASE_TS_NS, Workload, group
from memstate.store.writer import EventLog


def run(directory: Path, transactions: list, per_batch: int, fsync: bool) -> tuple[float, int, int]:
    state_dir = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=directory))
    try:
        batches = group(transactions, per_batch)
        records = sum(len(b) for b in batches)
        with EventLog.open(state_dir, fsync=fsync) as log:
            start = time.perf_counter()
            for batch in batches:
                log.append(batch, ts_ns=BASE_TS_NS)
            elapsed = time.perf_counter() - start
        return elapsed, records, len(batches)
    finally:
        shutil.rmtree(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--records", type=int, default=4000)
    args = parser.parse_args()
    transactions = Workload().transactions(args.records)
    print(
        f"{sum(len(t) for t in transactions)} records in {len(transactions)} transactions, "
        f"log under {args.dir}"
    )
    print(
        f"{'per_batch':>9} {'fsync':>5} {'appends':>8} {'records/s':>11} {'µs/record':>10} "
        f"{'ms/append':>10} {'vs per_batch=1':>15}"
    )
    baseline = None
    for per_batch, fsync in [
        (1, True),
        (4, True),
        (16, True),
        (64, True),
        (256, True),
        (256, False),
    ]:
        elapsed, records, appends = run(args.dir, transactions, per_batch, fsync)
        rate = records / elapsed
        if baseline is None:
            baseline = rate
        print(
            f"{per_batch:>9} {'on' if fsync else 'off':>5} {appends:>8} {rate:>11,.0f} "
            f"{elapsed / records * 1e6:>10.1f} {elapsed / appends * 1e3:>10.3f} "
            f"{rate / baseline:>14.1f}x"
        )


if __name__ == "__main__":
    main()
