"""The daemon schedules no round for the echo of its own writes, and one for anyone else's.

Method: the real `Daemon` in process (host loops on: the manifest and cgroup watches with real
inotify, worker threads, the event log on disk) on a directory-backed simulated tree; every
reconcile round's scope is recorded where the round is handed to its worker thread. Pods are
admitted, then someone else writes a pod's memory.min by hand. inotify reports the tree's
changes in order, so the round such a write causes is the first one after the echo of every
earlier write of the daemon's: had an echo been hinted, it would have had a round of its own
before, or joined that one's scope. So the rounds after the admissions must be exactly one per
foreign write, each scoped to the pod written. No durations are asserted; the waits are hang
guards.

Without the echo screen (memstate.node.cgroup_echo) each admission's and each correction's
writes are reported ~50 ms later and give rounds scoped to ``kubepods`` and the pod: the
assertion on the rounds fails.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import yaml

from memstate.node.adapters import Adapters
from memstate.node.daemon import Daemon
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from memstate.node.worker_threads import in_worker_thread
from tests.daemon.harness import Node, pod_manifest

_T = TypeVar("_T")
WAIT = 10.0  # a hang guard on a loaded machine, never a measurement
TARGET = str(64 * 2**20)


def _scope_of(fn: Callable[[], Any]) -> list[str] | str | None:
    """A reconcile round's scope, or "" for any other call."""
    if isinstance(fn, functools.partial) and getattr(fn.func, "__qualname__", "") == (
        "Reconciler.reconcile"
    ):
        scope: list[str] | None = fn.keywords["scope"]
        return scope
    return ""


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.01)


def test_own_writes_make_no_round_and_a_foreign_write_makes_one(tmp_path: Path) -> None:
    node = Node(tmp_path, extra_settings={"resyncSeconds": 300, "rescanSeconds": 300})
    node.config["memstate"]["metricsAddress"] = "off"
    node.write_config()
    memstate = node.config["memstate"]
    settings = Settings(
        state_dir=Path(memstate["stateDir"]),
        manifest_dir=Path(memstate["manifestDir"]),
        config_file=node.config_file,
        cgroup_sim=Path(memstate["cgroupSim"]),
        topology_file=Path(memstate["topologyFile"]),
        metrics_address="off",
        resync_seconds=300,
        rescan_seconds=300,
    )
    rounds: list[list[str] | None] = []

    async def recording_io(fn: Callable[[], _T], *, limiter: Any = None) -> _T:
        scope = _scope_of(fn)
        if scope != "":
            rounds.append(scope)  # type: ignore[arg-type]
        return await in_worker_thread(fn, limiter=limiter)

    daemon = Daemon(
        settings,
        # Every round through `recording_io`, which counts them.
        adapters=Adapters(run_io=recording_io, notifier=Notifier(None, None), inline_rounds=False),
    )

    def memory_min(uid: str) -> str | None:
        return node.cgroup_file(f"kubepods/pod{uid}", "memory.min")

    def by_hand(uid: str) -> None:
        (node.cgroup_dir / f"kubepods/pod{uid}" / "memory.min").write_text("0\n")

    async def admit(uid: str) -> None:
        temporary = node.manifest_dir / f".{uid}.tmp"
        temporary.write_text(yaml.safe_dump(pod_manifest(uid, "64Mi")))
        temporary.replace(node.manifest_dir / f"{uid}.yaml")
        # What the manifest watch does; it may not be in place yet just after READY (the loops
        # start then), and a rescan is 300 s away.
        daemon.manifests.hint({f"{uid}.yaml"})
        daemon._manifest_wake.set()
        await _until(lambda: memory_min(uid) == TARGET)

    async def corrected(uid: str) -> None:
        by_hand(uid)
        await _until(lambda: memory_min(uid) == "0")  # not corrected before it was seen
        await _until(lambda: memory_min(uid) == TARGET)

    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            with trio.fail_after(WAIT):
                await daemon.ready.wait()
            await admit("b")
            await admit("a")
            mark = len(rounds)
            # (a) The echo of a's admission (kubepods' and a's files, a's cgroup) comes before
            # this write's change: the next round is b's correction alone.
            await corrected("b")
            # (b) A write by someone else to a file the daemon wrote: corrected; the
            # correction's own echo then schedules nothing before b's next correction.
            await corrected("a")
            await corrected("b")
            seen["rounds"] = rounds[mark:]
            own = daemon.own_writes
            seen["echoes"] = own.echoes if own is not None else 0
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert seen["rounds"] == [["kubepods/podb"], ["kubepods/poda"], ["kubepods/podb"]]
    assert seen["echoes"] > 0
