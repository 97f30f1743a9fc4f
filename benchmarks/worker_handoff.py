"""CPU per worker-thread hand-off: `trio.to_thread.run_sync` against the daemon's own.

    python -m benchmarks.worker_handoff [--calls 2000] [--rounds 5]

An admission hands three blocking calls to worker threads (the manifest read, the log append,
the reconcile round). This measures what one hand-off itself costs, with a function that does
nothing: the process's CPU time (`time.process_time`, every thread) over `--calls` sequential
calls under a `CapacityLimiter(1)` as the daemon's log and cgroup calls use, divided by the
calls. The two ways alternate round by round in one process, so both see the same machine;
the ratio of the medians is the figure, with each side's median and spread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import trio

from memstate.node.worker_threads import in_worker_thread

Handoff = Callable[[Callable[[], None], trio.CapacityLimiter], Awaitable[None]]


async def _trio_to_thread(fn: Callable[[], None], limiter: trio.CapacityLimiter) -> None:
    await trio.to_thread.run_sync(fn, limiter=limiter)


async def _in_worker_thread(fn: Callable[[], None], limiter: trio.CapacityLimiter) -> None:
    await in_worker_thread(fn, limiter=limiter)


def _nothing() -> None:
    return None


async def _round(handoff: Handoff, calls: int) -> float:
    limiter = trio.CapacityLimiter(1)
    for _ in range(50):  # warm the thread cache
        await handoff(_nothing, limiter)
    started = time.process_time()
    for _ in range(calls):
        await handoff(_nothing, limiter)
    return (time.process_time() - started) / calls


def main() -> None:
    """Print each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sides: dict[str, Handoff] = {
        "trio.to_thread.run_sync": _trio_to_thread,
        "in_worker_thread": _in_worker_thread,
    }
    results: dict[str, list[float]] = {name: [] for name in sides}

    async def run() -> None:
        for index in range(args.rounds):
            for name, handoff in sides.items():
                per_call = await _round(handoff, args.calls)
                results[name].append(per_call)
                print(f"round {index + 1} {name}: {per_call * 1e6:.1f} us CPU per hand-off")

    trio.run(run)
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        print(
            f"{name}: median {medians[name] * 1e6:.1f} us "
            f"({min(values) * 1e6:.1f}-{max(values) * 1e6:.1f})"
        )
    ratio = medians["in_worker_thread"] / medians["trio.to_thread.run_sync"]
    print(f"in_worker_thread / trio.to_thread.run_sync: {ratio:.2f}")


if __name__ == "__main__":
    main()
