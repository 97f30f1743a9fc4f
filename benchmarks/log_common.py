"""Shared workload for the event-log benchmarks (benchmarks/log_*.py).

The workload is what the log sees on a node: a daemon start, the topology and config, ~100 pods
admitted, then churn — each transaction an input plus the decisions the real reducer returned
for it, appended as one batch. Pods have two containers (the reference event of
docs/performance.md). Churn is a pool of admit/remove cycles that leave the state as they found
it, so a log of any length can be built from a few thousand reducer steps and still replays
correctly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memstate.core.config import config_from_object
from memstate.core.events import (
    ConfigLoaded,
    DaemonStarted,
    Event,
    PodAdmissionRequested,
    PodRemovalRequested,
    TopologyObserved,
)
from memstate.core.pod import pod_from_manifest
from memstate.core.reducer import step
from memstate.core.state import REDUCER_VERSION, State
from memstate.core.topology import topology_from_object
from memstate.store.writer import EventLog

Batch = list[tuple[Event, int | None]]
BASE_TS_NS = 1_767_225_600 * 10**9


def _manifest(uid: str) -> dict[str, Any]:
    def container(name: str) -> dict[str, Any]:
        limits = {"memory": "256Mi", "cpu": "1"}
        return {"name": name, "resources": {"requests": limits, "limits": limits}}

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"web-{uid}", "namespace": "prod", "uid": uid},
        "spec": {"containers": [container("app"), container("sidecar")]},
    }


class Workload:
    """Setup transactions, then state-neutral churn cycles (admit + remove of one pod)."""

    def __init__(self, resident_pods: int = 100, cycle_pods: int = 200) -> None:
        self.state = State()
        self.setup: list[Batch] = []
        topology = topology_from_object(
            {"nodes": [{"id": 0, "memory": "256Gi"}, {"id": 1, "memory": "256Gi"}]}
        )
        config = config_from_object(
            {
                "memoryManagerPolicy": "Static",
                "topologyManagerPolicy": "best-effort",
                "reservedMemory": [
                    {"numaNode": 0, "limits": {"memory": "1Gi"}},
                    {"numaNode": 1, "limits": {"memory": "1Gi"}},
                ],
                "systemReserved": {"memory": "2Gi"},
                "evictionHard": {"memory.available": "0"},
            }
        )
        for event in (
            DaemonStarted(memstate_version="bench", reducer_version=REDUCER_VERSION),
            TopologyObserved(topology=topology),
            ConfigLoaded(config=config),
        ):
            self.setup.append(self._transaction(event))
        for index in range(resident_pods):
            pod = pod_from_manifest(_manifest(f"resident-{index:04d}"))
            self.setup.append(self._transaction(PodAdmissionRequested(pod=pod)))
        self.cycles: list[Batch] = []
        for index in range(cycle_pods):
            uid = f"churn-{index:04d}"
            self.cycles.append(
                self._transaction(PodAdmissionRequested(pod=pod_from_manifest(_manifest(uid))))
            )
            self.cycles.append(self._transaction(PodRemovalRequested(uid=uid)))

    def _transaction(self, event: Event) -> Batch:
        transition = step(self.state, event)
        self.state = transition.state
        return [(event, len(transition.decisions)), *((d, None) for d in transition.decisions)]

    def transactions(self, records: int) -> list[Batch]:
        """Setup plus churn, at least `records` records in total."""
        result = list(self.setup)
        count = sum(len(t) for t in result)
        index = 0
        while count < records:
            transaction = self.cycles[index % len(self.cycles)]
            result.append(transaction)
            count += len(transaction)
            index += 1
        return result


def group(transactions: list[Batch], per_batch: int) -> list[Batch]:
    """Transactions concatenated `per_batch` at a time (what group commit hands the log)."""
    return [
        [item for t in transactions[i : i + per_batch] for item in t]
        for i in range(0, len(transactions), per_batch)
    ]


def build_log(state_dir: Path, records: int, *, per_batch: int = 512) -> int:
    """Write a log of about `records` records without fsync (build time is not measured)."""
    transactions = Workload().transactions(records)
    with EventLog.open(state_dir, fsync=False) as log:
        for batch in group(transactions, per_batch):
            log.append(batch, ts_ns=BASE_TS_NS)
        return log.last_seq


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """(fastest wall time in seconds, the last result) over `repeat` runs."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def median(values: list[float]) -> float:
    return statistics.median(values)
