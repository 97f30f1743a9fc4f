"""The targets publication alone: thread CPU of `TargetsTracker.update` per admission at N pods.

    python -m benchmarks.targets_update [--pods 500] [--samples 400] [--rounds 3]
        [--baseline-src DIR]

The real reducer admits `--pods` pods on 8 NUMA nodes under a tiered config (a mix of
Guaranteed, Burstable and BestEffort pods, so every QoS sum moves), a `TargetsTracker` publishes
them, then each sample admits one more pod (or removes one admitted earlier, every third sample)
and times the `update` the daemon's writer makes for that commit (its decisions and the UIDs its
events name), in thread CPU time. `benchmarks.admission_cpu` measures the whole daemon, where
this ~0.1 ms is inside the noise of a loaded machine; this isolates it.

`--baseline-src DIR` (a directory holding another version's `memstate` package and `tests/`,
e.g. a `git archive` of the branch point) makes it an A/B within one process, as
`benchmarks.reconcile_round` does: both versions follow the same commits, every sample times
one update of each in alternating order; it prints both medians and the median of the
per-sample ratios (this / baseline).
"""

from __future__ import annotations

import argparse
import importlib
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


def world(package: str, tests: str, pods: int) -> Callable[[int], float]:
    """A node of `pods` published by `package`'s tracker; returns the function that makes
    sample `index`'s commit and gives its `update`'s thread CPU seconds."""
    events: Any = importlib.import_module(f"{package}.core.events")
    reducer: Any = importlib.import_module(f"{package}.core.reducer")
    tracker_module: Any = importlib.import_module(f"{package}.core.state_targets")
    state_module: Any = importlib.import_module(f"{package}.core.state")
    factories: Any = importlib.import_module(f"{tests}.factories")

    def pod_for(uid: str, index: int) -> Any:
        kind = index % 3  # Guaranteed, Burstable, BestEffort
        if kind == 0:
            return factories.pod(uid, "64Mi")
        memory = "64Mi" if kind == 1 else None
        return factories.pod_of(uid, [factories.container("app", memory, guaranteed=False)])

    state = state_module.State()
    config = factories.static_config(["1Gi"] * 8, memoryReservationPolicy="TieredReservation")
    for event in (
        events.TopologyObserved(topology=factories.topology(*["64Gi"] * 8)),
        events.ConfigLoaded(config=config),
    ):
        state = reducer.step(state, event).state
    for index in range(pods):
        admission = events.PodAdmissionRequested(pod=pod_for(f"resident-{index:04d}", index))
        state = reducer.step(state, admission).state
    tracker = tracker_module.TargetsTracker()
    if tracker.update(state) is None:
        raise SystemExit("no targets: the node config was not taken")
    held = [state]

    def sample(index: int) -> float:
        if index % 3 == 2:
            event = events.PodRemovalRequested(uid=f"sample-{index - 1:04d}")
        else:
            event = events.PodAdmissionRequested(pod=pod_for(f"sample-{index:04d}", index))
        transition = reducer.step(held[0], event)
        held[0] = transition.state
        changed = tracker_module.pods_changed_by([event, *transition.decisions])
        started = time.thread_time()
        tracker.update(held[0], transition.decisions, changed=changed)
        return time.thread_time() - started

    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    what = f"{args.pods} resident pods, {args.samples} commits, CPU per TargetsTracker.update"
    with tempfile.TemporaryDirectory(prefix="memstate-targets-") as scratch:
        if args.baseline_src is not None:
            import_baseline(args.baseline_src.resolve(), Path(scratch))
        ratios: list[float] = []
        for _ in range(args.rounds):
            this = world("memstate", "tests", args.pods)
            if args.baseline_src is None:
                times = [this(index) for index in range(args.samples)]
                print(f"{what}: {spread(times)}")
                continue
            baseline = world(BASELINE_PACKAGE, f"{BASELINE_PACKAGE}_tests", args.pods)
            mine, theirs = alternate(this, baseline, args.samples)
            ratio = sample_ratio(mine, theirs)
            ratios.append(ratio)
            print(
                f"{what}: baseline {spread(theirs)}, this {spread(mine)}; this / baseline, "
                f"median of samples {ratio:.3f}"
            )
        print_rounds(ratios)


if __name__ == "__main__":
    main()
