"""Start-up time with a checkpoint versus log length.

    .venv/bin/python -m benchmarks.log_startup [--lengths 10000,100000,1000000] [--tail 1000]

For each length, builds a log of the benchmark workload (without fsync; not measured) with a
checkpoint `--tail` records before the end, then measures start-up as the daemon does it:

- open: `EventLog.open` — lock, then recovery: every segment header; sealed segments from their
  seal; the active segment's acknowledged prefix by its CRC32C and frame by frame after it
  (payloads are not decoded);
- recover: `recover_state` — load and verify the checkpoint, decode and fold the tail;
- decoded: how many records `recover_state` decoded (the tail only);
- sealed check: `check_sealed_bodies` — what the daemon runs in the background after READY
  (every sealed segment's length and body CRC32C, read in 1 MiB chunks);
- full replay: `recover_state` after removing the checkpoint (lengths up to --full-max).

The checkpoint state is computed while building by folding the same events in memory (not
measured). Best of --repeat runs, page cache warm.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.log_common import BASE_TS_NS, Batch, Workload, best_of, group
from memstate.core.reducer import apply_all
from memstate.core.state import State
from memstate.store.checkpoint import list_checkpoints, write_checkpoint
from memstate.store.recovery import recover_state
from memstate.store.verify import check_sealed_bodies
from memstate.store.writer import EventLog


def build(state_dir: Path, length: int, tail: int) -> tuple[int, int]:
    """A log of about `length` records with a checkpoint `tail` records before its end."""
    workload = Workload()
    setup_records = sum(len(t) for t in workload.setup)
    pairs = [workload.cycles[i : i + 2] for i in range(0, len(workload.cycles), 2)]
    pair_records = sum(len(t) for t in pairs[0])

    def churn(records: int) -> list[Batch]:
        out: list[Batch] = []
        for index in range(max(records // pair_records, 0)):
            out.extend(pairs[index % len(pairs)])
        return out

    before = list(workload.setup) + churn(length - tail - setup_records)
    after = churn(tail)
    state = apply_all(State(), (event for transaction in before for event, _ in transaction))
    with EventLog.open(state_dir, fsync=False) as log:
        for batch in group(before, 512):
            log.append(batch, ts_ns=BASE_TS_NS)
        write_checkpoint(state_dir, state, seq=log.last_seq, chain_crc=log.chain_crc, fsync=False)
        checkpoint_seq = log.last_seq
        for batch in group(after, 512):
            log.append(batch, ts_ns=BASE_TS_NS + 1)
        return log.last_seq, checkpoint_seq


def measure(state_dir: Path, length: int, args: argparse.Namespace) -> str:
    """One table row for a log of about `length` records."""
    records, checkpoint_seq = build(state_dir, length, args.tail)
    size = sum(p.stat().st_size for p in (state_dir / "log").iterdir()) / 2**20

    def open_log() -> int:
        with EventLog.open(state_dir) as log:
            return log.last_seq

    open_s, last = best_of(args.repeat, open_log)
    assert last == records
    recover_s, recovered = best_of(args.repeat, lambda: recover_state(state_dir))
    sealed_s, sealed_problem = best_of(args.repeat, lambda: check_sealed_bodies(state_dir))
    assert sealed_problem is None
    assert recovered.checkpoint_seq == checkpoint_seq and not recovered.warnings
    full = "-"
    if records <= args.full_max:
        for _, path in list_checkpoints(state_dir):
            path.unlink()
        full_s, replayed = best_of(1, lambda: recover_state(state_dir))
        assert replayed.state == recovered.state
        full = f"{full_s:.3f}"
    return (
        f"{records:>9} {size:>7.1f} {open_s:>8.3f} {recover_s:>10.3f} "
        f"{recovered.decoded_events:>8} {open_s + recover_s:>11.3f} {sealed_s:>9.3f} {full:>14}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="10000,100000,1000000")
    parser.add_argument("--tail", type=int, default=1000)
    parser.add_argument("--full-max", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'records':>9} {'MiB':>7} {'open s':>8} {'recover s':>10} {'decoded':>8} "
        f"{'start-up s':>11} {'sealed s':>9} {'full replay s':>14}"
    )
    for length in (int(x) for x in args.lengths.split(",")):
        state_dir = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
        try:
            print(measure(state_dir, length, args), flush=True)
        finally:
            shutil.rmtree(state_dir)


if __name__ == "__main__":
    main()
