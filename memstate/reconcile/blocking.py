"""Which planned operations may block in the kernel for long: what decides where a round runs.

A cgroup write is normally a few microseconds of kernel work, but a few may take as long as the
kernel needs (docs/reconciler.md "Where a round runs"):

- `memory.high` or `memory.max` set below the cgroup's usage reclaims inside the write (and for
  `memory.max` may OOM-kill until the usage fits) before the write returns;
- `cpuset.mems` changed on a cgroup with tasks migrates their pages to the new nodes.

Neither can happen to a cgroup the same plan creates (it has no tasks and no usage yet), nor to a
limit that is raised or kept: a raise only lets the cgroup grow. Everything else the planner does
(mkdir, rmdir, enabling controllers, `cgroup.kill`, `memory.min`/`memory.low`) returns at once.
The usage itself is not observed, so a lowered limit of an existing cgroup always counts: the
check errs towards the worker thread.

Pure: a predicate over the plan, with the values the plan observed.
"""

from __future__ import annotations

import math

from memstate.core.plan import Operation, Plan
from memstate.core.targets import CPUSET_MEMS, MEMORY_HIGH, MEMORY_MAX

_LIMITS = frozenset({MEMORY_HIGH, MEMORY_MAX})


def may_block_in_kernel(plan: Plan) -> bool:
    """True when executing `plan` may wait on the kernel: a limit lowered, or nodes changed, on
    a cgroup the plan does not create (see the module docstring)."""
    created = {operation.path for operation in plan.operations if operation.kind == "mkdir"}
    return any(
        operation.kind == "write" and operation.path not in created and _may_block(operation)
        for operation in plan.operations
    )


def _may_block(operation: Operation) -> bool:
    if operation.file == CPUSET_MEMS:
        return True  # pages of the cgroup's tasks may move
    if operation.file not in _LIMITS:
        return False
    new = _limit(operation.value)
    old = _limit(operation.observed)
    return new is None or old is None or new < old


def _limit(text: str | None) -> float | None:
    """A limit's bytes (an exact int), `max` as infinity; None when unknown or not a limit."""
    if text is None:
        return None
    if text == "max":
        return math.inf
    return int(text) if text.isdigit() else None
