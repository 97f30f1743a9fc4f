"""The reconciler's scoped admission round alone: thread CPU per round at N resident pods.

    python -m benchmarks.reconcile_round [--pods 500] [--samples 200] [--containers] [--rounds 3]

`benchmarks.admission_cpu` measures the whole daemon per admission (sources, writer, log, trio
hand-offs and the reconcile round); this one takes the round out: the real reducer admits
`--pods` Guaranteed pods on 8 NUMA nodes, the targets tracker publishes them, a `Reconciler`
converges the in-memory kernel model (`SimCgroupFS`) in a full round, then each sample admits one
more pod and runs the round the daemon runs for it (scoped to the new pod cgroup, with the
tracker's change records) and takes its thread CPU time. `--containers` gives every resident pod
a container cgroup first (as the runtime would), so each round also carries 500 container
cgroups. Prints the median and the 10th..90th percentile per round. Unlike
`benchmarks.reconcile_admission` (writes and reads per admission, each round on a fresh copy of
the converged tree), the rounds follow one another on one reconciler, as in the daemon, so what
it carries from round to round (indexes, sums, the picture of the tree) is what is measured.

For an A/B, run it from a `git archive` of the other commit (with this file copied into its
benchmarks/) and from this tree in turn: it imports the code of the current directory.
"""

from __future__ import annotations

import argparse
import statistics
import time

from memstate.core.events import ConfigLoaded, PodAdmissionRequested, TopologyObserved
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.state_targets import TargetsTracker
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import Reconciler
from tests.factories import pod, static_config, topology

PAGE = 4096


def run(pods: int, samples: int, *, containers: bool) -> list[float]:
    """Thread CPU seconds of each sample's scoped round."""
    fs = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-7")
    state = State()
    for event in (
        TopologyObserved(topology=topology(*["64Gi"] * 8)),
        ConfigLoaded(config=static_config(["1Gi"] * 8)),
    ):
        state = step(state, event).state
    for index in range(pods):
        admission = PodAdmissionRequested(pod=pod(f"resident-{index:04d}", "64Mi"))
        state = step(state, admission).state
    tracker = TargetsTracker()
    targets = tracker.update(state)
    if targets is None:
        raise SystemExit("no targets: the node config was not taken")
    reconciler = Reconciler(fs, page_size_bytes=PAGE)
    reconciler.reconcile(targets)
    if containers:
        for resident in targets.pods:
            fs.write(resident.cgroup, "cgroup.subtree_control", "+memory")
            fs.mkdir(f"{resident.cgroup}/app")
        reconciler.reconcile(targets)
    times: list[float] = []
    for index in range(samples):
        uid = f"sample-{index:04d}"
        state = step(state, PodAdmissionRequested(pod=pod(uid, "64Mi"))).state
        targets = tracker.update(state)
        if targets is None:
            raise SystemExit("no targets")
        cgroup = next(p.cgroup for p in targets.pods if p.uid == uid)
        started = time.thread_time()
        report = reconciler.reconcile(targets, scope=[cgroup], changes=tracker.recent)
        times.append(time.thread_time() - started)
        if not report.converged or report.full:
            raise SystemExit(f"sample {uid}: the round did not converge as a scoped round")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--containers", action="store_true")
    args = parser.parse_args()
    medians: list[float] = []
    for _ in range(args.rounds):
        times = sorted(run(args.pods, args.samples, containers=args.containers))
        median = statistics.median(times) * 1000
        medians.append(median)
        low, high = times[len(times) // 10] * 1000, times[len(times) * 9 // 10] * 1000
        print(
            f"{args.pods} resident pods{' with containers' if args.containers else ''}, "
            f"{args.samples} scoped admission rounds: CPU per round median {median:.3f} ms "
            f"(p10..p90 {low:.3f}..{high:.3f})"
        )
    if args.rounds > 1:
        print(
            f"median of rounds {statistics.median(medians):.3f} ms "
            f"({min(medians):.3f}..{max(medians):.3f})"
        )


if __name__ == "__main__":
    main()
