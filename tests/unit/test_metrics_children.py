"""`LabelledChildren` (memstate.node.metrics): each labelled series updated through it reads
exactly as when every update looked its child up with `labels(...)`, and prometheus-client is
asked once per set of label values."""

from __future__ import annotations

import random
from typing import Any

from memstate.node.metrics import LabelledChildren, Metrics

FILES = ["memory.min", "memory.low", "memory.high", "cpuset.mems", "mkdir"]
RESULTS = ["ok", "failed", "skipped"]


def _series(metrics: Metrics) -> list[str]:
    return sorted(
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith(("memstate_cgroup_writes", "memstate_reconcile_duration_seconds"))
    )


def test_updates_through_the_children_read_as_through_labels() -> None:
    rng = random.Random(15)
    remembered, looked_up = Metrics(), Metrics()
    for _ in range(400):
        file_name, result, count = rng.choice(FILES), rng.choice(RESULTS), rng.randint(1, 4)
        remembered.cgroup_writes_by(file_name, result).inc(count)
        looked_up.cgroup_writes.labels(file=file_name, result=result).inc(count)
        scope, seconds = rng.choice(["full", "scoped"]), rng.random() / 10
        remembered.reconcile_seconds_by(scope).observe(seconds)
        looked_up.reconcile_seconds.labels(scope=scope).observe(seconds)
    assert _series(remembered) == _series(looked_up)
    assert any('result="failed"' in line for line in _series(remembered))


def test_each_set_of_values_is_looked_up_once() -> None:
    calls: list[tuple[str, ...]] = []
    metric = Metrics().cgroup_writes

    class Counting:
        def labels(self, *values: str) -> Any:
            calls.append(values)
            return metric.labels(*values)

    children = LabelledChildren(Counting())
    first = children("memory.min", "ok")
    assert children("memory.min", "ok") is first
    assert children("memory.min", "failed") is not first
    assert children("memory.min", "failed") is metric.labels("memory.min", "failed")
    assert calls == [("memory.min", "ok"), ("memory.min", "failed")]
