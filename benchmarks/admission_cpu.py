"""memstate's own CPU per admission at N resident pods: the real daemon in process, no simulator.

    python -m benchmarks.admission_cpu [--pods 500] [--samples 100]

`benchmarks.daemon_admission` measures the whole `memstate run` process, whose cgroup tree is the
directory-backed simulator: there, rendering every file of a new cgroup directory on disk costs
far more CPU than memstate's own work. This benchmark takes the simulator out: the real `Daemon`
(writer, reducer, pod tracker, manifest directory with real files, targets, reconciler, the event
log with fsync in a temporary directory, worker threads as in production) runs in this process
against the in-memory kernel model (`SimCgroupFS`), with the watches off: each sample writes one
manifest, reports its name as the watch would (`ManifestDirectory.hint`), wakes the manifest loop
and waits (woken at the end of each reconcile round, not polling) until the pod is admitted and a
round whose scope held its cgroup ended converged. CPU is this process's
`time.process_time()` over the samples (the model's work included, which is small), less the
thread time of writing the manifests (the writer's CPU: create, write, rename), divided by
`--samples` (the sample manifests' YAML is rendered before the clock starts); periodic
rescans and resyncs are set to an hour so that none falls in the window.
The reconcile rounds' own CPU (thread time of each round) is printed beside it.
`--containers` gives every resident pod a container cgroup first (what the runtime makes on a
real node; the model has none otherwise), so each round also finds and manages 500 of them.
`--journal FILE` logs as `memstate run` does by default (`configure_logging("info", "text")`:
one journal line per decision, and every other info line) to FILE instead of stderr; without
it nothing is logged at info, so the journal's cost is not counted.
`--cgroup-dir DIR` puts the directory-backed simulated tree (memstate.host.sim.cgroupdir) in DIR
instead (on tmpfs, as `benchmarks.daemon_admission` runs it; emptied first): the rounds' CPU
then includes rendering every file of each new pod cgroup, the in-process stand-in for the
daemon benchmark's scoped round.

Run another version's daemon with PYTHONPATH (e.g. a `git archive` of an older commit first on
the path); a version without `ManifestDirectory.hint` rescans the directory instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import trio
import yaml

from memstate.host.sim import SimCgroupFS
from memstate.host.sim.cgroupdir import DirCgroupFS
from memstate.node.adapters import Adapters
from memstate.node.daemon import Daemon
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from tests.daemon.harness import pod_manifest
from tests.factories import topology

PAGE = 4096
CONFIG = {
    "memoryManagerPolicy": "Static",
    "topologyManagerPolicy": "best-effort",
    "memoryReservationPolicy": "TieredReservation",
    "systemReserved": {"memory": "8Gi"},
    "evictionHard": {"memory.available": "0"},
    "reservedMemory": [{"numaNode": i, "limits": {"memory": "1Gi"}} for i in range(8)],
    "memstate": {
        "metricsAddress": "off",
        "cgroupTree": "/",
        "rescanSeconds": 3600,
        "resyncSeconds": 3600,
        "checkpointEvery": 1000000,
    },
}


def run(
    root: Path,
    pods: int,
    samples: int,
    *,
    containers: bool = False,
    cgroup_dir: Path | None = None,
) -> tuple[float, float, float, float, list[float]]:
    """(memstate's CPU seconds per admission, of which in reconcile rounds, rounds per
    admission, the manifest writer's CPU seconds per admission, wall seconds of each
    admission)."""
    manifests = root / "manifests"
    manifests.mkdir()
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    settings = Settings(
        state_dir=root / "state",
        manifest_dir=manifests,
        config_file=config_file,
        metrics_address="off",
        pod_sources=("manifests",),
    )
    cgroups: SimCgroupFS | DirCgroupFS
    if cgroup_dir is None:
        cgroups = SimCgroupFS(page_size_bytes=PAGE, online_nodes="0-7")
    else:
        shutil.rmtree(cgroup_dir, ignore_errors=True)
        cgroups = DirCgroupFS(cgroup_dir, page_size_bytes=PAGE, online_nodes="0-7")
    adapters = Adapters(
        cgroup_fs=cgroups,
        topology=topology(*["64Gi"] * 8),
        sources=[],
        notifier=Notifier(None, None),
        host_loops=False,
    )
    daemon = Daemon(settings, adapters=adapters)
    walls: list[float] = []
    rounds = [0, 0.0]  # the rounds begun, their thread time summed
    cpu = [0.0, 0.0, 0.0, 0.0]

    def render(uid: str) -> str:
        return yaml.safe_dump(pod_manifest(uid, "64Mi"))

    def drop(uid: str, text: str) -> None:
        temporary = manifests / f".{uid}.tmp"
        temporary.write_text(text)
        temporary.replace(manifests / f"{uid}.yaml")

    def hint(names: set[str]) -> None:
        source = daemon.manifests
        if hasattr(source, "hint"):
            source.hint(names)
        daemon._manifest_wake.set()

    # Woken when a reconcile round ends (the daemon sets `readiness.converged` after each),
    # not by polling: a poll every 0.5 ms cost ~10 event-loop wake-ups per admission, the
    # benchmark's CPU rather than memstate's. The 50 ms fallback only bounds a missed wake-up.
    round_ended = [trio.Event()]
    covered: set[str] = set()  # the scope paths of every round that has ended

    class NotifyingReadiness(type(daemon.readiness)):  # type: ignore[misc]
        def __setattr__(self, name: str, value: object) -> None:
            super().__setattr__(name, value)
            if name == "converged":
                round_ended[0].set()

    async def until(condition: object) -> None:
        assert callable(condition)
        while not condition():
            with trio.move_on_after(0.05):
                await round_ended[0].wait()
            round_ended[0] = trio.Event()

    async def add_containers() -> None:
        """What the runtime does on a real node: each resident pod's container gets its cgroup
        ("app", named after the container) with the memory controller enabled above it; a full
        round then finds them all (the reconciler manages their protections from then on)."""
        targets = daemon.targets
        assert targets is not None
        made = {pod.cgroup for pod in targets.pods}
        while not made <= {f"kubepods/{name}" for name in cgroups.list_children("kubepods")}:
            await trio.sleep(0.05)  # the last residents' cgroups are still being made
        for path in sorted(made):
            cgroups.write(path, "cgroup.subtree_control", "+memory")
            cgroups.mkdir(f"{path}/app")
        daemon._scope = None  # a full resync, as after the cgroup watch saw the runtime's work
        daemon._reconcile_wake.set()
        await trio.sleep(1.0)
        await until(lambda: daemon.readiness.converged)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await daemon.ready.wait()
            residents = [f"resident-{index:04d}" for index in range(pods)]
            for uid in residents:
                drop(uid, render(uid))
            hint({f"{uid}.yaml" for uid in residents})
            await until(lambda: len(daemon.state.pods) >= pods and daemon.readiness.converged)
            if containers:
                await add_containers()
            await trio.sleep(0.5)
            reconciler = daemon.reconciler
            # A round is `prepare` then `complete` (`reconcile` calls both), each on the event
            # loop or in the worker thread; a version without them has `reconcile` only.
            halves = ("prepare", "complete") if hasattr(reconciler, "prepare") else ("reconcile",)

            def timed(name: str) -> None:
                real = getattr(reconciler, name)

                def timed_half(*args: object, **kwargs: object) -> object:
                    started = time.thread_time()  # each half runs on one thread
                    try:
                        return real(*args, **kwargs)
                    finally:
                        rounds[1] += time.thread_time() - started
                        if name != "complete":  # one per round
                            rounds[0] += 1
                            covered.update(kwargs.get("scope") or ())  # type: ignore[arg-type]

                setattr(reconciler, name, timed_half)

            for name in halves:
                timed(name)
            daemon.readiness.__class__ = NotifyingReadiness
            if os.environ.get("MEMSTATE_SAMPLE_OUT"):
                os.kill(os.getpid(), signal.SIGUSR1)  # a sampling profiler starts afresh here
            # The manifests are rendered before the clock starts: PyYAML's pure-Python emitter
            # costs milliseconds per pod, which is the writer's CPU, not memstate's.
            uids = [f"sample-{index:04d}" for index in range(samples)]
            texts = [render(uid) for uid in uids]
            writer_cpu = 0.0
            started_cpu = time.process_time()
            for uid, text in zip(uids, texts, strict=True):
                started = time.perf_counter()
                writing = time.thread_time()
                drop(uid, text)
                writer_cpu += time.thread_time() - writing
                hint({f"{uid}.yaml"})
                # Admitted, and a round whose scope held its pod cgroup ended converged (a round
                # that began before the commit may end after it, still converged).
                await until(
                    lambda u=uid: (  # type: ignore[misc]
                        u in daemon.state.pods
                        and daemon.readiness.converged
                        and any(u in path for path in covered)
                    )
                )
                walls.append(time.perf_counter() - started)
            # Writing the manifest (create, write, rename: kernel time mostly) is the writer's
            # CPU, not memstate's: measured on this thread and taken out.
            cpu[0] = (time.process_time() - started_cpu - writer_cpu) / samples
            cpu[3] = writer_cpu / samples
            cpu[1] = rounds[1] / samples
            cpu[2] = rounds[0] / samples
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    if isinstance(cgroups, DirCgroupFS):
        cgroups.close()
        shutil.rmtree(cgroups.root, ignore_errors=True)
    return cpu[0], cpu[1], cpu[2], cpu[3], walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--containers",
        action="store_true",
        help="give each resident pod a container cgroup, as the runtime would on a real node",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        default=None,
        help="log at info as `memstate run` does, to this file (the journal lines' cost counted)",
    )
    parser.add_argument(
        "--cgroup-dir",
        type=Path,
        default=None,
        help="the directory-backed simulated tree in this directory (e.g. under /dev/shm; "
        "emptied first) instead of the in-memory model",
    )
    args = parser.parse_args()
    if args.journal is not None:
        from memstate.node.journal import configure_logging

        configure_logging("info", "text")
        # The handler writes where `memstate run`'s stderr would go (a file, as the harness's).
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(args.journal.open("a"))
    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="memstate-admission-cpu-", dir="/var/tmp") as tmp:
            cpu, in_rounds, rounds, writer, walls = run(
                Path(tmp),
                args.pods,
                args.samples,
                containers=args.containers,
                cgroup_dir=args.cgroup_dir,
            )
        results.append(cpu)
        print(
            f"{args.pods} resident pods, {args.samples} admissions: CPU per admission "
            f"{cpu * 1000:.2f} ms, of which reconcile rounds {in_rounds * 1000:.2f} ms "
            f"({rounds:.2f} rounds per admission; the manifest writer's "
            f"{writer * 1000:.2f} ms not counted); "
            f"wall p50 {statistics.median(walls) * 1000:.2f} ms"
        )
    if args.rounds > 1:
        ms = [r * 1000 for r in results]
        print(f"median {statistics.median(ms):.2f} ms ({min(ms):.2f}..{max(ms):.2f})")


if __name__ == "__main__":
    main()
