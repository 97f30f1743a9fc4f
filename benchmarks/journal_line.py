"""The journal line alone: thread CPU of `log_committed` per committed admission.

    python -m benchmarks.journal_line [--samples 2000] [--rounds 3] [--format text|json]
                                      [--baseline-src DIR]

The real reducer admits one pod per sample on an 8-NUMA-node tiered node, the writer's
envelopes of that commit (the input, its `pod_admitted`) are made as the log makes them, and
`log_committed` writes its journal line through the root handler `configure_logging("info",
"text")` installs (what `memstate run` does by default; `--format json`: `--log-format json`'s),
to a file instead of stderr; the
thread CPU of that call is the sample. Each line follows its admission's reducer step, as in the
daemon (where the append and its fsync come between too): the same line journalled again and
again, with nothing in between, costs a third of it. `benchmarks.daemon_admission` and
`admission_cpu` see the journal inside the noise of a loaded machine; this isolates it.

`--baseline-src DIR` (another version's `memstate` package and `tests/`, e.g. a `git archive`
of the branch point) makes it an A/B within one process, as `benchmarks.targets_update` does:
each sample journals one admission on each side, in alternating order, each side with its own
`configure_logging` in force (the logging module's switches are global: put back to the stdlib's
defaults before the baseline's). Both sides' lines must be the same text after the timestamp:
checked, and the run fails otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.reconcile_round import (
    BASELINE_PACKAGE,
    alternate,
    import_baseline,
    print_rounds,
    sample_ratio,
    spread,
)

# The stdlib's switches as they are before any `configure_logging` (restored for a side whose
# `configure_logging` does not set them).
_SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
_DEFAULTS = {name: getattr(logging, name) for name in _SWITCHES}


def world(package: str, tests: str, journal: Path, log_format: str) -> Callable[[int], float]:
    """A node whose commits `package` journals to `journal`; returns the function that commits
    sample `index`'s admission and gives its `log_committed`'s thread CPU seconds."""
    events: Any = importlib.import_module(f"{package}.core.events")
    reducer: Any = importlib.import_module(f"{package}.core.reducer")
    state_module: Any = importlib.import_module(f"{package}.core.state")
    journal_module: Any = importlib.import_module(f"{package}.node.journal")
    factories: Any = importlib.import_module(f"{tests}.factories")
    state = state_module.State()
    config = factories.static_config(["1Gi"] * 8, memoryReservationPolicy="TieredReservation")
    for event in (
        events.TopologyObserved(topology=factories.topology(*["64Gi"] * 8)),
        events.ConfigLoaded(config=config),
    ):
        state = reducer.step(state, event).state
    held = [state, 2]  # the state, the last seq
    logger = logging.getLogger("memstate.node.daemon")
    # This side's logging, configured once (its formatter keeps what it keeps between lines) and
    # put back in force before each of its samples.
    for name, value in _DEFAULTS.items():
        setattr(logging, name, value)
    with contextlib.redirect_stderr(journal.open("w")):
        journal_module.configure_logging("info", log_format)
    root = logging.getLogger()
    handlers = list(root.handlers)
    switches = {name: getattr(logging, name) for name in _SWITCHES}

    def sample(index: int) -> float:
        pod = factories.pod(f"sample-{index:05d}", "64Mi")
        admission = events.PodAdmissionRequested(pod=pod, source=f"/m/sample-{index:05d}.yaml")
        transition = reducer.step(held[0], admission)
        held[0] = transition.state
        seq = held[1] + 1
        records = [(admission, len(transition.decisions))]
        records += [(decision, None) for decision in transition.decisions]
        envelopes = [
            events.Envelope(
                seq=seq + offset,
                ts_ns=0,
                schema_v=events.SCHEMA_VERSION,
                event=event,
                decisions=decisions,
            )
            for offset, (event, decisions) in enumerate(records)
        ]
        held[1] = seq + len(records) - 1
        for name, value in switches.items():
            setattr(logging, name, value)
        root.handlers[:] = handlers
        started = time.thread_time()
        journal_module.log_committed(logger, envelopes)
        elapsed = time.thread_time() - started
        for handler in handlers:
            handler.flush()  # each side's file whole when the texts are compared
        return elapsed

    return sample


def _messages(journal: Path) -> list[str]:
    """The journal's lines without their timestamps (text: date and time, the first two words;
    JSON: `ts`), in their order and with their keys' order."""
    lines = journal.read_text().splitlines()
    if lines and lines[0].startswith("{"):
        return [
            json.dumps({key: value for key, value in json.loads(line).items() if key != "ts"})
            for line in lines
        ]
    return [line.split(" ", 2)[2] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    what = f"{args.samples} admissions, CPU per {args.format} journal line (log_committed)"
    root = logging.getLogger()
    kept = (list(root.handlers), root.level)
    with tempfile.TemporaryDirectory(prefix="memstate-journal-") as scratch:
        if args.baseline_src is not None:
            import_baseline(args.baseline_src.resolve(), Path(scratch))
        ratios: list[float] = []
        try:
            for round_index in range(args.rounds):
                mine_file = Path(scratch) / f"this-{round_index}.log"
                this = world("memstate", "tests", mine_file, args.format)
                if args.baseline_src is None:
                    times = [this(index) for index in range(args.samples)]
                    print(f"{what}: {spread(times)}")
                    continue
                theirs_file = Path(scratch) / f"baseline-{round_index}.log"
                baseline = world(
                    BASELINE_PACKAGE, f"{BASELINE_PACKAGE}_tests", theirs_file, args.format
                )
                mine, theirs = alternate(this, baseline, args.samples)
                if not _messages(mine_file) or _messages(mine_file) != _messages(theirs_file):
                    raise SystemExit("the two sides journalled different text")
                ratio = sample_ratio(mine, theirs)
                ratios.append(ratio)
                print(
                    f"{what}: baseline {spread(theirs)}, this {spread(mine)}; this / baseline, "
                    f"median of samples {ratio:.3f}; the lines' text identical"
                )
        finally:
            root.handlers[:] = kept[0]
            root.setLevel(kept[1])
            for name, value in _DEFAULTS.items():
                setattr(logging, name, value)
        print_rounds(ratios)


if __name__ == "__main__":
    main()
