"""The reconciler's scoped admission round alone: thread CPU per round at N resident pods.

    python -m benchmarks.reconcile_round [--pods 500] [--samples 200] [--containers] [--rounds 3]
                                         [--full-after] [--phases] [--cgroup-dir DIR]

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

`--baseline-src DIR` (a directory holding another version's `memstate` package and `tests/`,
e.g. a `git archive` of main) makes it an A/B within one process: that version is imported under
another package name (its imports rewritten into a temporary directory), both converge the same
node, and every sample runs one round of each, in alternating order, so both see the same load;
it prints both medians and the median of the per-sample ratios (this / baseline).

`--full-after` measures instead the first full round after each admission (the periodic resync
that follows a change: its targets are not the last full round's, so its plan is not reused and
the whole tree is planned): each sample runs the admission's scoped round untimed, then a full
round (`scope=None`) timed the same way.

`--cgroup-dir DIR` converges the directory-backed simulated tree instead
(memstate.host.sim.cgroupdir; one tree per side and round below DIR, e.g. on /dev/shm as
`benchmarks.daemon_admission` puts it, removed afterwards): each round then includes rendering
the new pod cgroup's directory and every file it writes, the tree's journal and its catch-up,
as in the daemon benchmark's scoped round.

`--phases` (this version only) says where a round's time goes: the round's parts (`PHASES`:
the observation, the carried structures' updates, planning and its checks, execution, the
report) are each wrapped to take their thread CPU, and the median over the samples of each
part's time per round is printed, with the garbage collector off (a collection would be charged
to whichever part allocated). Parts nest (`plan_operations` holds `_Planner.run`), and the
wrappers add a little to each; compare one version at two node sizes (what grows with the
pods), not a version with another.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAGE = 4096
BASELINE_PACKAGE = "memstate_baseline"
# (module, attribute) of the parts `--phases` times; dotted attributes are methods.
PHASES = (
    ("reconcile.reconciler", "observe_tree"),
    ("reconcile.observe", "merge_observations"),
    ("reconcile.reconciler", "Reconciler._with_containers"),
    ("core.plan.containers", "ContainerIndex.updated"),
    ("core.plan.index", "TargetIndex.updated"),
    ("core.plan.children", "ChildSums.updated"),
    ("core.plan.scope", "UndesiredNames.follow"),
    ("reconcile.reconciler", "plan_operations"),
    ("core.plan.planner", "check_target_tree"),
    ("core.plan.planner", "undesired_pod_cgroups"),
    ("core.plan.planner", "_Planner.run"),
    ("reconcile.reconciler", "Reconciler._see_children_of_lowered"),
    ("reconcile.reconciler", "Reconciler._drift"),
    ("reconcile.reconciler", "Reconciler._execute"),
    ("reconcile.reconciler", "Reconciler._finish"),
    ("reconcile.reconciler", "apply_operations"),
    ("reconcile.reconciler", "Reconciler._remember"),
)


def world(
    package: str,
    tests: str,
    pods: int,
    *,
    containers: bool,
    full_after: bool = False,
    tree_dir: Path | None = None,
) -> Callable[[int], float]:
    """A node of `pods` converged by `package`'s reconciler; returns the function that admits
    sample `index` and gives its scoped round's thread CPU seconds (`full_after`: the full
    round's after it). `tree_dir`: the directory-backed simulated tree there (a fresh one)
    instead of the in-memory model."""
    events: Any = importlib.import_module(f"{package}.core.events")
    reducer: Any = importlib.import_module(f"{package}.core.reducer")
    tracker_module: Any = importlib.import_module(f"{package}.core.state_targets")
    sim: Any = importlib.import_module(f"{package}.host.sim")
    reconciler_module: Any = importlib.import_module(f"{package}.reconcile.reconciler")
    state_module: Any = importlib.import_module(f"{package}.core.state")
    factories: Any = importlib.import_module(f"{tests}.factories")
    if tree_dir is None:
        fs = sim.SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-7")
    else:
        cgroupdir: Any = importlib.import_module(f"{package}.host.sim.cgroupdir")
        shutil.rmtree(tree_dir, ignore_errors=True)
        fs = cgroupdir.DirCgroupFS(tree_dir, page_size_bytes=PAGE, online_nodes="0-7")
    state = state_module.State()
    for event in (
        events.TopologyObserved(topology=factories.topology(*["64Gi"] * 8)),
        events.ConfigLoaded(config=factories.static_config(["1Gi"] * 8)),
    ):
        state = reducer.step(state, event).state
    for index in range(pods):
        admission = events.PodAdmissionRequested(pod=factories.pod(f"resident-{index:04d}", "64Mi"))
        state = reducer.step(state, admission).state
    tracker = tracker_module.TargetsTracker()
    targets = tracker.update(state)
    if targets is None:
        raise SystemExit("no targets: the node config was not taken")
    reconciler = reconciler_module.Reconciler(fs, page_size_bytes=PAGE)
    reconciler.reconcile(targets)
    if containers:
        for resident in targets.pods:
            fs.write(resident.cgroup, "cgroup.subtree_control", "+memory")
            fs.mkdir(f"{resident.cgroup}/app")
        reconciler.reconcile(targets)
    held = [state]

    def sample(index: int) -> float:
        uid = f"sample-{index:04d}"
        held[0] = reducer.step(
            held[0], events.PodAdmissionRequested(pod=factories.pod(uid, "64Mi"))
        ).state
        targets = tracker.update(held[0])
        cgroup = next(p.cgroup for p in targets.pods if p.uid == uid)
        started = time.thread_time()
        report = reconciler.reconcile(targets, scope=[cgroup], changes=tracker.recent)
        spent = time.thread_time() - started
        if not report.converged or report.full:
            raise SystemExit(f"sample {uid}: the round did not converge as a scoped round")
        if not full_after:
            return spent
        started = time.thread_time()
        report = reconciler.reconcile(targets, changes=tracker.recent)
        spent = time.thread_time() - started
        if not report.converged or not report.full or report.writes:
            raise SystemExit(f"sample {uid}: the full round after it did not find it converged")
        return spent

    return sample


def phase_timing(package: str, sample: Callable[[int], float], samples: int) -> None:
    """Print the median thread CPU per round of each part in `PHASES` (see the docstring)."""
    spent: dict[str, float] = {}

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.thread_time() - started

        return wrapper

    for module_name, attribute in PHASES:
        owner: Any = importlib.import_module(f"{package}.{module_name}")
        *path, name = attribute.split(".")
        for step in path:
            owner = getattr(owner, step, None)
        if owner is not None and hasattr(owner, name):  # an older version may lack a part
            setattr(owner, name, timed(attribute, getattr(owner, name)))
    per_part: dict[str, list[float]] = {}
    rounds: list[float] = []
    gc.disable()
    try:
        for index in range(samples):
            spent.clear()
            rounds.append(sample(index))
            for label, seconds in spent.items():
                per_part.setdefault(label, []).append(seconds)
    finally:
        gc.enable()
    print(f"the round: median {statistics.median(rounds) * 1e6:.1f} us")
    for label, times in sorted(per_part.items(), key=lambda item: -statistics.median(item[1])):
        times = times + [0.0] * (samples - len(times))  # rounds that did not call it
        print(f"  {label}: median {statistics.median(times) * 1e6:.1f} us")


def import_baseline(source: Path, into: Path) -> None:
    """Copy `source`'s memstate and tests packages into `into`, renamed (imports rewritten), and
    put `into` on the path."""
    renames = {"memstate": BASELINE_PACKAGE, "tests": f"{BASELINE_PACKAGE}_tests"}
    pattern = re.compile(r"\b(from|import) (memstate|tests)\b")
    for name, renamed in renames.items():
        shutil.copytree(source / name, into / renamed, ignore=shutil.ignore_patterns("__pycache__"))
        for file in (into / renamed).rglob("*.py"):
            text = file.read_text()
            file.write_text(pattern.sub(lambda m: f"{m[1]} {renames[m[2]]}", text))
    sys.path.insert(0, str(into))


def alternate(
    this: Callable[[int], float], baseline: Callable[[int], float], samples: int
) -> tuple[list[float], list[float]]:
    """`samples` measurements of each side, taken in turn, the side that goes first alternating
    from one sample to the next (so neither always runs on the caches the other left): this
    side's and the baseline's, in sample order."""
    mine: list[float] = []
    theirs: list[float] = []
    for index in range(samples):
        if index % 2:
            mine.append(this(index))
            theirs.append(baseline(index))
        else:
            theirs.append(baseline(index))
            mine.append(this(index))
    return mine, theirs


def sample_ratio(mine: list[float], theirs: list[float]) -> float:
    """This side / the baseline: the median of the per-sample ratios (samples the baseline
    measured as zero, below the clock's resolution, left out)."""
    return statistics.median(m / t for m, t in zip(mine, theirs, strict=True) if t > 0)


def print_rounds(ratios: list[float]) -> None:
    """The rounds' ratios: median and range, when there is more than one."""
    if len(ratios) > 1:
        print(
            f"this / baseline over {len(ratios)} rounds: median "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})"
        )


def spread(times: list[float]) -> str:
    """The median and the 10th..90th percentile, in ms."""
    ordered = sorted(times)
    low, high = ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]
    median = statistics.median(ordered) * 1000
    return f"median {median:.3f} ms (p10..p90 {low * 1000:.3f}..{high * 1000:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--containers", action="store_true")
    parser.add_argument("--full-after", action="store_true")
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--phases", action="store_true", help="time the round's parts")
    parser.add_argument(
        "--cgroup-dir",
        type=Path,
        default=None,
        help="the directory-backed simulated tree below this directory (e.g. under /dev/shm) "
        "instead of the in-memory model",
    )
    args = parser.parse_args()
    what = f"{args.pods} resident pods{' with containers' if args.containers else ''}"
    kind = "full rounds after an admission" if args.full_after else "scoped admission rounds"
    with tempfile.TemporaryDirectory(prefix="memstate-round-") as scratch:
        if args.baseline_src is not None:
            import_baseline(args.baseline_src.resolve(), Path(scratch))
        ratios: list[float] = []
        trees: list[Path] = []

        def tree_dir(side: str) -> Path | None:
            if args.cgroup_dir is None:
                return None
            trees.append(args.cgroup_dir / f"{side}-{len(trees)}")
            return trees[-1]

        for _ in range(args.rounds):
            this = world(
                "memstate",
                "tests",
                args.pods,
                containers=args.containers,
                full_after=args.full_after,
                tree_dir=tree_dir("this"),
            )
            if args.phases:
                print(f"{what}, {args.samples} {kind}:")
                phase_timing("memstate", this, args.samples)
                continue
            if args.baseline_src is None:
                times = [this(index) for index in range(args.samples)]
                print(f"{what}, {args.samples} {kind}: CPU per round {spread(times)}")
                continue
            baseline = world(
                BASELINE_PACKAGE,
                f"{BASELINE_PACKAGE}_tests",
                args.pods,
                containers=args.containers,
                full_after=args.full_after,
                tree_dir=tree_dir("baseline"),
            )
            mine, theirs = alternate(this, baseline, args.samples)
            ratio = sample_ratio(mine, theirs)
            ratios.append(ratio)
            print(
                f"{what}, {args.samples} {kind}, CPU per round: baseline "
                f"{spread(theirs)}, this {spread(mine)}; this / baseline, median of samples "
                f"{ratio:.3f}"
            )
        print_rounds(ratios)
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    main()
