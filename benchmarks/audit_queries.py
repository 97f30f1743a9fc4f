"""Throughput of each replay and audit query on one log.

    .venv/bin/python -m benchmarks.audit_queries [--records 100000] [--dir /var/tmp]

Builds a log of the benchmark workload (benchmarks/replay_memory.build: 100 resident pods, then
admit/remove churn, a checkpoint every 20,000 records; not measured) and times, once each, with
the log in the page cache:

- replay: `replay_log` (decide and compare every input, check every checkpoint hash);
- bisect (reference): `bisect` of the log against this build's reference run (a lockstep pass
  of two runs, one of them deciding every input);
- bisect (two logs, binary search): against a copy of the log (every common checkpoint agrees,
  so after the search bisect compares decisions along the whole log);
- audit pod / numa / rejections / timeline / export / plot data: the `memstate audit` queries;
- anonymise: `anonymise_log` (two passes, re-deriving the decisions).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.replay_memory import POD, build
from memstate.history.anonymise import anonymise_log
from memstate.history.audit import (
    PodSelector,
    Window,
    export_records,
    numa_holdings,
    plot_data,
    pod_history,
    rejection_summary,
    state_at,
    timeline,
)
from memstate.history.bisect import Run, bisect
from memstate.history.replay import open_source, replay_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memstate-bench-", dir=args.dir))
    try:
        state_dir = work / "a"
        records = build(state_dir, args.records, 20_000)
        shutil.copytree(state_dir, work / "b")
        source = open_source(state_dir)

        def run_bisect_reference() -> object:
            return bisect(Run(source), Run(source, reference=True))

        def run_bisect_copy() -> object:
            return bisect(Run(source), Run(open_source(work / "b")))

        def run_export() -> object:
            with open(os.devnull, "w") as sink:
                for record in export_records(source, Window()):
                    sink.write(record.kind)
            return None

        queries: list[tuple[str, Callable[[], object]]] = [
            ("replay", lambda: replay_log(source)),
            ("bisect (reference run)", run_bisect_reference),
            ("bisect (two logs)", run_bisect_copy),
            ("audit pod", lambda: pod_history(source, PodSelector(POD), Window())),
            ("audit numa (end)", lambda: numa_holdings(state_at(source), 0)),
            ("audit rejections", lambda: rejection_summary(source, Window())),
            ("audit timeline", lambda: sum(1 for _ in timeline(source, Window()))),
            ("audit export", run_export),
            ("audit plot (data)", lambda: plot_data(source, Window())),
            ("replay anonymise", lambda: anonymise_log(source, work / "anon.jsonl")),
        ]
        print(f"{records} records")
        print(f"{'query':<26} {'seconds':>8} {'records/s':>10}")
        for name, query in queries:
            start = time.perf_counter()
            query()
            elapsed = time.perf_counter() - start
            print(f"{name:<26} {elapsed:>8.1f} {records / elapsed:>10,.0f}", flush=True)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
