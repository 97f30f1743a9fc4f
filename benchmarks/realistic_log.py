"""A realistic event log, written by the real reducer into a real state directory.

    .venv/bin/python -m benchmarks.realistic_log --numa-nodes 4 --records 100000

What a busy node's log looks like, as far as the reducer's cost goes (issue 15):

- N NUMA nodes (4 or 8) with 2 MiB hugepages, the Static Memory Manager policy, the best-effort
  Topology Manager in container scope and Memory QoS with TieredReservation;
- about `--live-pods` pods alive at any time, of every QoS class: Guaranteed (one container;
  with 2 MiB hugepages and a regular init container; with an init container and a sidecar),
  Burstable and BestEffort; sizes drawn at random, so some admissions are rejected;
- churn: a random live pod removed, a new one requested, init containers completing, now and
  then a manifest file that cannot be read (deleted again a while later) and a removal for a pod
  that is not there; every pod has its manifest file as `source`, as the daemon records it;
- a daemon restart every ~`--restart-every` transactions: `daemon_started`, `daemon_restarted`,
  the live pods re-requested in a shuffled order (a few stay away), `readmission_completed`;
- a checkpoint every ~`--checkpoint-every` records, at a transaction boundary, with the pending
  removals beside the state (as the daemon's checkpoints carry them);
- the retired pod cgroups removed as a live daemon's reconciler removes them: the pending removals
  are folded after every transaction (`fold_removals`, as the daemon's writer does) and, after
  each input, a `pod_cgroup_removed` note per pending path (the reconcile round that follows a
  commit removes them); none while a restart's readmission is under way, so those wait for
  `readmission_completed`. Without them the pending paths would grow with the log, which no
  live daemon does.

Every transaction is the input plus the decisions `step` returned for it, appended through
`EventLog` (without fsync: building is not what is measured). The randomness is seeded, so one
(nodes, records, seed) always gives the same log. `cached_log` keeps built logs under a
directory (default: the system temp dir) so benchmark reruns skip the build; a log is only
used once it is complete (built elsewhere, then renamed into place).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from memstate.core.config import config_from_object
from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    DaemonStarted,
    Event,
    ManifestInvalid,
    PodAdmissionRequested,
    PodCgroupRemoved,
    PodInitCompleted,
    PodRemovalRequested,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.pod import Pod, pod_from_manifest
from memstate.core.reducer import apply, step
from memstate.core.removals import NO_REMOVALS, fold_removals
from memstate.core.state import REDUCER_VERSION, State
from memstate.core.topology import topology_from_object
from memstate.store.checkpoint import write_checkpoint
from memstate.store.writer import EventLog

# Bump when the workload changes, or when the reducer's decisions on it change without a
# REDUCER_VERSION bump, so that cached logs of the old workload are not reused: a cached log
# that this build decides differently makes `log_replay` stop with "replay diverged". 3: the
# admission predicate (OutOfmemory) rejects some pods the logs of version 2 admitted. 4: the
# retired pod cgroups are recorded removed (`pod_cgroup_removed`), as a live daemon records them,
# and the live pods stay near `live_pods` (version 3's churn drained them to ~20).
WORKLOAD_VERSION = 4
BASE_TS_NS = 1_767_225_600 * 10**9
Gi = 2**30
Mi = 2**20
TOTAL_MEMORY = 256 * Gi  # split over the NUMA nodes, so 4 and 8 nodes hold the same pods
HUGEPAGES_2M_PER_NODE = 1024  # 2 GiB of 2 MiB pages on every node


def topology_object(numa_nodes: int) -> dict[str, Any]:
    per_node = TOTAL_MEMORY // numa_nodes
    return {
        "nodes": [
            {"id": i, "memory": str(per_node), "hugepages": {"2Mi": HUGEPAGES_2M_PER_NODE}}
            for i in range(numa_nodes)
        ]
    }


def config_object(numa_nodes: int) -> dict[str, Any]:
    return {
        "memoryManagerPolicy": "Static",
        "topologyManagerPolicy": "best-effort",
        "topologyManagerScope": "container",
        "memoryReservationPolicy": "TieredReservation",
        "reservedMemory": [
            {"numaNode": i, "limits": {"memory": "512Mi"}} for i in range(numa_nodes)
        ],
        "systemReserved": {"memory": str(numa_nodes * 512 * Mi)},
        "evictionHard": {"memory.available": "0"},
    }


def _resources(memory: int, *, limit: int | None = None, cpu: str = "1") -> dict[str, Any]:
    """Guaranteed when `limit` is None (limits equal requests), Burstable otherwise."""
    requests = {"memory": str(memory), "cpu": cpu}
    limits = dict(requests) if limit is None else {"memory": str(limit)}
    return {"requests": requests, "limits": limits}


def pod_manifest(rng: random.Random, uid: str) -> dict[str, Any]:
    """A pod of a randomly drawn kind (the mix is roughly what a shared node runs)."""
    kind = rng.choices(
        ["guaranteed", "guaranteed-hugepages", "guaranteed-sidecar", "burstable", "besteffort"],
        weights=[30, 10, 10, 30, 20],
    )[0]
    size = rng.choice([128, 256, 512, 1024, 2048, 4096]) * Mi
    init: list[dict[str, Any]] = []
    if kind == "guaranteed":
        containers = [{"name": "app", "resources": _resources(size)}]
    elif kind == "guaranteed-hugepages":
        pages = rng.choice([64, 128, 256]) * 2 * Mi
        resources = _resources(size)
        resources["requests"]["hugepages-2Mi"] = str(pages)
        resources["limits"]["hugepages-2Mi"] = str(pages)
        containers = [{"name": "app", "resources": resources}]
        init = [{"name": "setup", "resources": _resources(size // 2)}]
    elif kind == "guaranteed-sidecar":
        containers = [{"name": "app", "resources": _resources(size)}]
        init = [
            {"name": "migrate", "resources": _resources(size * 2)},
            {"name": "proxy", "restartPolicy": "Always", "resources": _resources(128 * Mi)},
        ]
    elif kind == "burstable":
        containers = [
            {"name": "app", "resources": _resources(size, limit=size * 2)},
            {"name": "log", "resources": {"requests": {"memory": "64Mi"}}},
        ]
    else:
        containers = [{"name": "app"}]
    spec: dict[str, Any] = {"containers": containers}
    if init:
        spec["initContainers"] = init
    namespace = rng.choice(["prod", "batch"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{kind}-{uid}", "namespace": namespace, "uid": uid},
        "spec": spec,
    }


class _Writer:
    """Steps the reducer and appends each transaction; checkpoints at transaction boundaries."""

    def __init__(self, log: EventLog, state_dir: Path, checkpoint_every: int) -> None:
        self.log = log
        self.state_dir = state_dir
        self.state = State()
        self.checkpoint_every = checkpoint_every
        self.next_checkpoint = checkpoint_every
        self.pending: list[tuple[Event, int | None]] = []
        self.transactions = 0
        self.removals = NO_REMOVALS
        self.readmitting = False  # between daemon_restarted and readmission_completed

    def submit(self, event: Event) -> None:
        before = self.state
        transition = step(before, event)
        self.state = transition.state
        self.pending.append((event, len(transition.decisions)))
        self.pending.extend((d, None) for d in transition.decisions)
        self.removals = fold_removals(
            self.removals, before, [event, *transition.decisions], self.state
        )
        self.transactions += 1
        if isinstance(event, DaemonRestarted):
            self.readmitting = True
        elif isinstance(event, ReadmissionCompleted):
            self.readmitting = False
        if not self.readmitting:
            # The reconcile round after the commit removes the retired cgroups; the daemon
            # records each one seen gone as a note (memstate.node.loops.converge).
            for path, uid in sorted(self.removals.paths.items()):
                self.note(PodCgroupRemoved(path=path, uid=uid))
        if len(self.pending) >= 64:
            self.flush()

    def note(self, note: Event) -> None:
        """A note stands alone; the daemon's writer applies it and folds the removals."""
        before = self.state
        self.state = apply(before, note)
        self.pending.append((note, None))
        self.removals = fold_removals(self.removals, before, [note], self.state)

    def flush(self) -> None:
        if not self.pending:
            return
        self.log.append(self.pending, ts_ns=BASE_TS_NS + self.log.last_seq * 10**7)
        self.pending = []
        if self.log.last_seq >= self.next_checkpoint:
            write_checkpoint(
                self.state_dir,
                self.state,
                seq=self.log.last_seq,
                chain_crc=self.log.chain_crc,
                fsync=False,
                removals=self.removals,
            )
            self.next_checkpoint += self.checkpoint_every

    @property
    def records(self) -> int:
        return self.log.last_seq + len(self.pending)


def build(
    state_dir: Path,
    *,
    numa_nodes: int,
    records: int,
    live_pods: int = 300,
    restart_every: int = 4000,
    checkpoint_every: int = 1000,
    seed: int = 15,
) -> int:
    """Write the log into `state_dir` (created); returns the number of records."""
    rng = random.Random(seed)
    topology = topology_from_object(topology_object(numa_nodes))
    config = config_from_object(config_object(numa_nodes))
    serial = 0
    live: dict[str, Pod] = {}  # pods asked for and not yet removed (admitted or not)
    with_init: list[str] = []
    broken: list[str] = []  # unreadable manifest files present now

    def source(uid: str) -> str:
        return f"/etc/kubernetes/memstate/{uid}.yaml"

    def new_pod() -> Pod:
        nonlocal serial
        serial += 1
        pod = pod_from_manifest(pod_manifest(rng, f"pod-{serial:07d}"))
        live[pod.uid] = pod
        if any(c.kind == "init" for c in pod.containers):
            with_init.append(pod.uid)
        return pod

    def started() -> DaemonStarted:
        return DaemonStarted(memstate_version="bench", reducer_version=REDUCER_VERSION)

    with EventLog.open(state_dir, fsync=False) as log:
        writer = _Writer(log, state_dir, checkpoint_every)
        writer.submit(started())
        writer.submit(TopologyObserved(topology=topology))
        writer.submit(ConfigLoaded(config=config))
        while len(live) < live_pods:
            pod = new_pod()
            writer.submit(PodAdmissionRequested(pod=pod, source=source(pod.uid)))
        since_restart = 0
        while writer.records < records:
            since_restart += 1
            if since_restart >= restart_every:
                since_restart = 0
                writer.submit(started())
                writer.submit(DaemonRestarted())
                returning = sorted(live)
                rng.shuffle(returning)
                for uid in returning:
                    if rng.random() < 0.02:
                        del live[uid]  # gone while memstate was down
                        continue
                    writer.submit(PodAdmissionRequested(pod=live[uid], source=source(uid)))
                writer.submit(ReadmissionCompleted())
                continue
            roll = rng.random()
            if roll < 0.06 and with_init:
                uid = with_init.pop(rng.randrange(len(with_init)))
                if uid in live:
                    writer.submit(PodInitCompleted(uid=uid))
            elif roll < 0.07:
                if len(broken) >= 5:  # an operator fixed or deleted the oldest one
                    writer.submit(PodRemovalRequested(uid="", source=broken.pop(0)))
                broken.append(source(f"broken-{serial}"))
                writer.submit(ManifestInvalid(source=broken[-1], error="line 3: bad indentation"))
            elif roll < 0.08:
                writer.submit(PodRemovalRequested(uid=f"pod-gone-{serial}"))
            elif live and (len(live) >= live_pods or rng.random() < len(live) / (2 * live_pods)):
                # Removal odds grow with the live count, so it stays near `live_pods` (a fixed
                # removal share above the admission share drained the node to ~20 pods).
                uid = rng.choice(sorted(live))
                del live[uid]
                writer.submit(PodRemovalRequested(uid=uid, source=source(uid)))
            else:
                pod = new_pod()
                writer.submit(PodAdmissionRequested(pod=pod, source=source(pod.uid)))
        writer.flush()
        return log.last_seq


def cached_log(
    numa_nodes: int,
    records: int,
    *,
    cache_dir: Path | None = None,
    seed: int = 15,
) -> Path:
    """The state directory of a built log, building it first if the cache lacks it."""
    root = (cache_dir or Path(tempfile.gettempdir())) / "memstate-bench-logs"
    name = f"v{WORKLOAD_VERSION}-r{REDUCER_VERSION}-numa{numa_nodes}-{records}-seed{seed}"
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(scratch / "state", numa_nodes=numa_nodes, records=records, seed=seed)
        os.rename(scratch / "state", final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numa-nodes", type=int, default=4)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    path = cached_log(args.numa_nodes, args.records, cache_dir=args.cache_dir)
    print(path)


if __name__ == "__main__":
    main()
