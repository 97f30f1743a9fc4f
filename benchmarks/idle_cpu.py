"""Idle CPU of the running daemon: `memstate run` with nothing happening, over a window.

    python -m benchmarks.idle_cpu [--seconds 30] [--rounds 3] [--pods 0]
                                  [--baseline-src DIR] [--dir /var/tmp/memstate-idle]

Starts `memstate run` as a subprocess on a node laid out like the demo's (tests/daemon/harness:
two NUMA nodes, a directory-backed simulated cgroup tree, the metrics endpoint on), with the
production periods (rescan and resync every 30 s), admits `--pods` pods, waits until the
start-up and admission work is over (every pod's cgroup is in the tree, then for 5 s no
reconcile round ended, the tree's journal did not grow and the daemon reports converged), then
reads the process's CPU time (every thread's, the exited ones' too: `cpu_seconds`) at the start
and the end of a `--seconds` window in which nothing changes. Prints the share of one core.

With `--baseline-src DIR` (a directory holding another version's `memstate` package, e.g.
`git archive <rev> memstate | tar -x -C DIR`), the two versions are measured alternately, round
after round (A/B interleaved, so a change in the machine's load hits both), and the ratio of the
medians is printed with the spread (min..max) of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from memstate.host.sim.cgroupdir import JOURNAL_NAME
from tests.daemon.harness import Node, pod_manifest

SETTLE_SECONDS = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU-time clock: what clock_getcpuclockid(3) returns,
    spelled as Linux derives it from the pid (MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED))."""
    return ((~pid) << 3) | 2


def cpu_seconds(pid: int) -> float:
    """CPU time of the process (all its threads, the exited ones too), in seconds.

    Read from its CPU-time clock, in nanoseconds: utime + stime in /proc/<pid>/stat are the same
    time in clock ticks (10 ms, 0.033 % of a 30 s window), each truncated, so a difference of
    two readings is off by up to two ticks, more than the idle daemon's work in some windows.
    /proc is the fallback where the clock cannot be read."""
    try:
        return time.clock_gettime(process_cpu_clock(pid))
    except OSError:
        return cpu_ticks_seconds(pid)


def cpu_ticks_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds (whole clock ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reconcile_rounds(node: Node) -> float:
    """Reconcile rounds so far (scoped and full), from the daemon's metrics."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in node.metrics().splitlines()
        if line.startswith("memstate_reconcile_duration_seconds_count")
    )


def resident_pods(node: Node) -> set[str]:
    """UIDs of the pods the log says are admitted and not removed."""
    resident: set[str] = set()
    for record in node.records():
        event = record.event
        if event.kind == "pod_admitted":
            resident.add(getattr(event, "uid", ""))
        elif event.kind == "pod_removed":
            resident.discard(getattr(event, "uid", ""))
    return resident


def pod_cgroups_on_disk(node: Node) -> set[str]:
    """UIDs of the pod cgroups the simulated tree holds (``pod<uid>`` below kubepods, as the
    cgroupfs driver names them), read from the directory: the tree as it is, not as reported."""
    found: set[str] = set()
    for parent in ("kubepods", "kubepods/burstable", "kubepods/besteffort"):
        try:
            with os.scandir(node.cgroup_dir / parent) as entries:
                found.update(
                    entry.name[3:]
                    for entry in entries
                    if entry.name.startswith("pod") and entry.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            continue
    return found


def journal_size(node: Node) -> int:
    """Bytes in the simulated tree's journal: it grows with every change to the tree."""
    try:
        return (node.cgroup_dir / JOURNAL_NAME).stat().st_size
    except FileNotFoundError:
        return 0


def wait_until_quiet(node: Node, timeout: float = 600.0) -> None:
    """Until the start-up and admission work is over: every resident pod's cgroup is in the
    tree, and for `SETTLE_SECONDS` no reconcile round ended, nothing changed in the tree and the
    daemon reports converged.

    The daemon's own report is not enough: `memstate_reconcile_converged` is the result of the
    last round that *ended*, and the round that creates hundreds of pod cgroups after their
    admissions can run for longer than `SETTLE_SECONDS` on a loaded machine (10 s for 440 pods
    seen here) without ending; a window opened then measures that round, not idleness. So the
    tree itself is checked (the pods' cgroups exist), and so is its journal (a round that
    writes appends to it)."""
    deadline = time.monotonic() + timeout
    expected = resident_pods(node)
    state: tuple[float, int] | None = None
    since = time.monotonic()
    while True:
        if time.monotonic() > deadline:
            raise AssertionError("the daemon never became quiet")
        now_state = (reconcile_rounds(node), journal_size(node))
        settled = (
            now_state == state
            and node.metric("memstate_reconcile_converged") == 1
            and expected <= pod_cgroups_on_disk(node)
        )
        if not settled:
            state, since = now_state, time.monotonic()
        elif time.monotonic() - since >= SETTLE_SECONDS:
            return
        time.sleep(0.5)


def measure(directory: Path, *, src: Path | None, pods: int, seconds: float) -> float:
    """Share of one core the idle daemon used over `seconds` (0.01 = 1 %)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    node = Node(
        directory,
        extra_settings={"rescanSeconds": 30, "resyncSeconds": 30},
        nodes_memory=("64Gi", "64Gi"),
        topology_policy="best-effort",
    )
    node.start(env={"PYTHONPATH": str(src)} if src is not None else None)
    try:
        for index in range(pods):
            node.drop(f"idle-{index:04d}.yaml", pod_manifest(f"idle-{index:04d}", "64Mi"))
        return idle_share(node, seconds, admitted=pods)
    finally:
        node.terminate()


def idle_share(node: Node, seconds: float, *, admitted: int) -> float:
    """Once `node` has admitted `admitted` pods and is quiet (`wait_until_quiet`), the share of
    one core its daemon used over the next `seconds` (0.01 = 1 %)."""
    if admitted:
        node.wait_for(
            lambda records: sum(r.event.kind == "pod_admitted" for r in records) >= admitted,
            timeout=600,
        )
    wait_until_quiet(node)
    assert node.process is not None
    pid = node.process.pid
    started_cpu, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(pid) - started_cpu, time.monotonic() - started
    return used / elapsed


def describe(name: str, shares: list[float]) -> str:
    median = statistics.median(shares)
    return (
        f"{name:<10} median {median * 100:6.3f} % of a core  "
        f"(spread {min(shares) * 100:.3f}..{max(shares) * 100:.3f} %, {len(shares)} rounds)"
    )


# measure(directory, *, src, pods, seconds, **options) -> share of a core
Measure = Callable[..., float]


def main(
    measure_round: Measure | None = None,
    *,
    default_pods: int = 0,
    default_dir: Path = Path("/var/tmp/memstate-idle"),
    doc: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The command line of this benchmark and of its variants (`idle_cpu_kubelet`): rounds of
    `measure_round`, alternating with `--baseline-src` when given, then median and spread.
    `options`: a variant's own flags (name -> `add_argument` keywords), handed to
    `measure_round` as keywords."""
    measure_round = measure_round or measure
    parser = argparse.ArgumentParser(description=(doc or __doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pods", type=int, default=default_pods)
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--dir", type=Path, default=default_dir)
    for flag, spec in (options or {}).items():
        parser.add_argument(flag, **spec)
    args = parser.parse_args()
    extra = {flag.lstrip("-").replace("-", "_") for flag in options or {}}
    chosen = {name: getattr(args, name) for name in extra}
    current: list[float] = []
    baseline: list[float] = []
    for round_number in range(args.rounds):
        if args.baseline_src is not None:
            share = measure_round(
                args.dir,
                src=args.baseline_src.resolve(),
                pods=args.pods,
                seconds=args.seconds,
                **chosen,
            )
            baseline.append(share)
            print(f"round {round_number + 1}: baseline {share * 100:.3f} %", flush=True)
        share = measure_round(args.dir, src=None, pods=args.pods, seconds=args.seconds, **chosen)
        current.append(share)
        print(f"round {round_number + 1}: current  {share * 100:.3f} %", flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)
    described = "".join(f", {name} {value}" for name, value in sorted(chosen.items()))
    print(
        f"idle window {args.seconds:g} s, {args.pods} pods{described}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(describe("current", current))
    if baseline:
        print(describe("baseline", baseline))
        ratio = statistics.median(current) / statistics.median(baseline)
        print(f"current / baseline: {ratio:.3f}")


if __name__ == "__main__":
    main()
