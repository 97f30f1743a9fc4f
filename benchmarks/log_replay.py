"""Replay throughput of the event log against a raw msgspec decode of the same payloads.

    .venv/bin/python -m benchmarks.log_replay [--records 200000] [--dir /var/tmp]

Builds a log of the benchmark workload (two-container pods admitted and removed, each an input
plus its decisions), then measures, best of --repeat runs, with the log in the page cache:

- baseline: `msgspec.msgpack.Decoder(Envelope).decode` over the payloads, already in memory —
  the floor for anything that reads envelopes;
- read_raw: the log reader's framing walk, CRC32C chain and seq checks, no decoding;
- read: the same plus decoding (with the schema-version check) and whole-transaction grouping —
  what every tool and start-up pay per record;
- recover_state: read plus folding every record with the reducer (full replay).

Ratios are against the baseline from the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import msgspec

from benchmarks.log_common import best_of, build_log
from memstate.core.events import Envelope
from memstate.store.log import LogReader
from memstate.store.recovery import recover_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    state_dir = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
    try:
        records = build_log(state_dir, args.records)
        reader = LogReader(state_dir)
        payloads = [r.payload for r in reader.read_raw()]
        size = sum(p.stat().st_size for p in (state_dir / "log").glob("*.evlog"))
        print(
            f"{records} records, {size / 2**20:.1f} MiB in "
            f"{len(list((state_dir / 'log').glob('*.evlog')))} segments, "
            f"mean payload {sum(map(len, payloads)) / len(payloads):.0f} B"
        )
        decoder = msgspec.msgpack.Decoder(Envelope)

        def baseline() -> int:
            decode = decoder.decode
            for payload in payloads:
                decode(payload)
            return len(payloads)

        def raw() -> int:
            return sum(1 for _ in LogReader(state_dir).read_raw())

        def decoded() -> int:
            return sum(1 for _ in LogReader(state_dir).read())

        def replay() -> int:
            return recover_state(state_dir).decoded_events

        rows = []
        for name, function in (
            ("baseline: msgspec decode", baseline),
            ("read_raw (frame + CRC)", raw),
            ("read (frame + CRC + decode)", decoded),
            ("recover_state (+ reducer)", replay),
        ):
            elapsed, count = best_of(args.repeat, function)
            assert count == records, (name, count)
            rows.append((name, count / elapsed, elapsed))
        base_rate = rows[0][1]
        print(f"{'what':<30} {'records/s':>11} {'µs/record':>10} {'vs baseline':>12}")
        for name, rate, elapsed in rows:
            print(
                f"{name:<30} {rate:>11,.0f} {elapsed / records * 1e6:>10.2f} "
                f"{base_rate / rate:>11.2f}x"
            )
    finally:
        shutil.rmtree(state_dir)


if __name__ == "__main__":
    main()
