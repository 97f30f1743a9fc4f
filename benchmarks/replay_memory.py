"""Peak memory and time of `memstate replay` and `memstate audit pod` versus log length.

    .venv/bin/python -m benchmarks.replay_memory [--lengths 100000,300000,1000000] [--dir /var/tmp]

For each length, builds a log of the benchmark workload (benchmarks/log_common.py: a node start,
100 resident pods, then admit/remove churn; without fsync; not measured) with a checkpoint every
`--checkpoint-every` records, then runs each query in a fresh child process and reports the
child's peak resident set size (VmHWM) and wall time:

- baseline: the child imports memstate and opens the log (what every query pays);
- read: every record read and decoded, streaming (`LogReader.read`): the log-reading part of
  every replay, in bounded chunks since the log format 2 work (was: whole 16 MiB segments);
- replay: `replay_log` — every decision re-derived and compared, every checkpoint's hash checked
  (what `memstate replay DIR` does);
- audit pod: `pod_history` of one resident pod (what `memstate audit pod NAME` does);
- materialise (reference, up to --materialise-max): `list(LogReader.read())`, what a tool that
  held the whole log would pay.

The log files are in the page cache (just written); numbers are single runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.log_common import BASE_TS_NS, Batch, Workload, group
from memstate.core.reducer import apply_all
from memstate.core.state import State
from memstate.store.checkpoint import write_checkpoint
from memstate.store.writer import EventLog

POD = "prod/web-resident-0007"


def build(state_dir: Path, length: int, checkpoint_every: int) -> int:
    """A log of about `length` records with a checkpoint every `checkpoint_every` records
    (checkpoint states folded in memory while building)."""
    workload = Workload()
    pairs = [workload.cycles[i : i + 2] for i in range(0, len(workload.cycles), 2)]
    transactions: list[Batch] = list(workload.setup)
    count = sum(len(t) for t in transactions)
    index = 0
    while count < length:
        for transaction in pairs[index % len(pairs)]:
            transactions.append(transaction)
            count += len(transaction)
        index += 1
    state = State()
    next_checkpoint = checkpoint_every
    with EventLog.open(state_dir, fsync=False) as log:
        for batch in group(transactions, 64):
            log.append(batch, ts_ns=BASE_TS_NS + log.last_seq * 10**6)
            state = apply_all(state, (event for event, _ in batch))
            if log.last_seq >= next_checkpoint:
                write_checkpoint(
                    state_dir, state, seq=log.last_seq, chain_crc=log.chain_crc, fsync=False
                )
                next_checkpoint += checkpoint_every
        return log.last_seq


def child(query: str, state_dir: Path) -> None:
    """Run one query and print {seconds, maxrss_kib, result} as JSON (in a fresh process)."""
    from memstate.history.audit import PodSelector, Window, pod_history
    from memstate.history.replay import open_source, replay_log
    from memstate.store.reader import LogReader

    source = open_source(state_dir)
    start = time.perf_counter()
    result: object
    if query == "baseline":
        result = source.first_seq()
    elif query == "read":
        result = {"records": sum(1 for _ in LogReader(state_dir).read())}
    elif query == "replay":
        report = replay_log(source)
        assert report.divergence is None, report.divergence
        result = {"records": report.records, "checkpoints": len(report.checkpoints_verified)}
    elif query == "audit-pod":
        found = pod_history(source, PodSelector(POD), Window())
        result = {"rows": len(found.rows)}
    elif query == "materialise":
        result = {"records": len(list(LogReader(state_dir).read()))}
    else:
        raise SystemExit(f"unknown query {query}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "maxrss_kib": peak_rss_kib(), "result": result}))


def peak_rss_kib() -> int:
    """This process's peak RSS. Linux's VmHWM belongs to the process image, so it starts
    afresh at exec; `ru_maxrss` is kept across exec and would include the parent's size at the
    moment it spawned the child (here: the parent that just built a large log)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(query: str, state_dir: Path) -> dict[str, object]:
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.replay_memory", "--child", query, str(state_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    measured: dict[str, object] = json.loads(output)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="100000,300000,1000000")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--checkpoint-every", type=int, default=100_000)
    parser.add_argument("--materialise-max", type=int, default=500_000)
    parser.add_argument("--child", nargs=2, metavar=("QUERY", "STATE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    print(
        f"{'records':>9} {'log MiB':>8} {'baseline MiB':>13} {'read MiB':>9} "
        f"{'replay s':>9} {'replay MiB':>11} "
        f"{'audit pod s':>12} {'audit pod MiB':>14} {'materialise MiB':>16}"
    )
    for length in (int(x) for x in args.lengths.split(",")):
        state_dir = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
        try:
            records = build(state_dir, length, args.checkpoint_every)
            size = sum(p.stat().st_size for p in (state_dir / "log").iterdir())
            base = measure("baseline", state_dir)
            read = measure("read", state_dir)
            replay = measure("replay", state_dir)
            audit = measure("audit-pod", state_dir)
            whole = measure("materialise", state_dir) if length <= args.materialise_max else None

            def mib(measured: dict[str, object] | None) -> str:
                if measured is None:
                    return "-"
                return f"{int(str(measured['maxrss_kib'])) / 1024:.1f}"

            print(
                f"{records:>9} {size / 2**20:>8.1f} {mib(base):>13} {mib(read):>9} "
                f"{float(str(replay['seconds'])):>9.1f} {mib(replay):>11} "
                f"{float(str(audit['seconds'])):>12.1f} {mib(audit):>14} {mib(whole):>16}",
                flush=True,
            )
        finally:
            shutil.rmtree(state_dir)


if __name__ == "__main__":
    main()
