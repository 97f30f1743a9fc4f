"""CreateContainer round trip of the NRI plugin, beside the raw fsync latency of the same disk.

    python -m benchmarks.nri_create [--containers 1000] [--pods 110] [--dir /var/tmp/memstate-bench]

The plugin runs in its own process, connected over a real unix socket to a runtime stand-in
(tests/nri/standin.py) in this process. Its decider answers from a `Decisions` snapshot of
`--pods` admitted pods (core targets) and, before answering each CreateContainer, appends a
371-byte record to a file in `--dir` and fsyncs it: a stand-in for "the decision is durable in
the event log" (371 bytes = the mean record payload of benchmarks/log_common.py) until the daemon
is wired. Each iteration measures, interleaved, one raw 371-byte append + fsync in the same
directory, one Configure round trip (the transport alone: framing, protobuf, two processes, no
fsync) and one CreateContainer round trip (request out -> adjustment back). Prints p50/p90/p99
and the p99 difference (the issue's target: CreateContainer p99 <= fsync p99 + 2 ms; the
runtime's deadline is 2 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio

from memstate.nri.adapter import Decisions, TargetsDecider
from memstate.nri.decider import ContainerInfo, Refusal, ResourceAdjustment, SandboxInfo
from memstate.nri.plugin import NriPlugin, PluginSettings
from tests.nri import wire
from tests.nri.scenario import PINNED, node_decisions
from tests.nri.standin import StandInRuntime

RECORD = b"r" * 371


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def snapshot(pods: int) -> Decisions:
    """The scenario's decisions plus `pods` more admitted pods (copies of the pinned pod's
    targets under other UIDs): the look-up runs against a node-sized snapshot."""
    base = node_decisions()
    admitted = dict(base.admitted)
    pinned = admitted[PINNED]
    for i in range(pods):
        uid = f"00000000-0000-0000-0000-{i:012d}"
        admitted[uid] = msgspec.structs.replace(pinned, uid=uid)
    return Decisions(config=base.config, admitted=admitted, rejected=base.rejected)


class DurableDecider(TargetsDecider):
    """Answers after one append + fsync per creation (the log write's stand-in)."""

    def __init__(self, decisions: Decisions, record_path: Path) -> None:
        super().__init__(lambda: decisions)
        self._fd = os.open(record_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def create_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> ResourceAdjustment | Refusal:
        decision = await super().create_container(pod, container)
        os.write(self._fd, RECORD)
        os.fsync(self._fd)
        self.events.clear()  # keep memory flat over long runs
        return decision


def serve(socket_path: str, directory: str, pods: int) -> None:
    decider = DurableDecider(snapshot(pods), Path(directory) / "decisions")
    settings = PluginSettings(socket=socket_path, index="42", backoff_initial=0.01)
    trio.run(NriPlugin(settings, decider).run)


def fsync_once(fd: int) -> float:
    started = time.perf_counter()
    os.write(fd, RECORD)
    os.fsync(fd)
    return time.perf_counter() - started


async def measure(socket_dir: str, directory: Path, containers: int, pods: int) -> None:
    runtime = StandInRuntime(f"{socket_dir}/nri.sock")
    await runtime.listen()
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "benchmarks.nri_create",
            "--serve",
            runtime.path,
            str(directory),
            str(pods),
        ],
    )
    probe = os.open(directory / "fsync-probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        async with trio.open_nursery() as nursery:
            await runtime.accept(nursery)
            await runtime.call("Configure", wire.configure_request())
            await runtime.call("Synchronize", wire.synchronize_request([], [], False))
            pod = wire.pod_sandbox("sb", PINNED, "pinned", "kubepods-pod.slice")
            fsyncs: list[float] = []
            creates: list[float] = []
            transports: list[float] = []
            configure = wire.configure_request()
            for i in range(containers + 50):
                container = wire.container(f"c-{i}", "sb", PINNED, "app", memory_limit=2**30)
                request = wire.container_request(pod, container)
                raw = fsync_once(probe)
                started = time.perf_counter()
                await runtime.call("Configure", configure)
                transport = time.perf_counter() - started
                started = time.perf_counter()
                reply = await runtime.call("CreateContainer", request)
                elapsed = time.perf_counter() - started
                if reply.code != 0 or wire.create_response_adjustment(reply.payload).mems != "0":
                    raise SystemExit(f"unexpected answer {reply}")
                if i >= 50:  # warm-up
                    fsyncs.append(raw)
                    creates.append(elapsed)
                    transports.append(transport)
            nursery.cancel_scope.cancel()
    finally:
        os.close(probe)
        process.kill()
        await process.wait()
    report(fsyncs, creates, transports, pods)


def report(
    fsyncs: Sequence[float], creates: Sequence[float], transports: Sequence[float], pods: int
) -> None:
    def line(name: str, values: Sequence[float]) -> tuple[float, float]:
        p50, p90, p99 = (percentile(list(values), q) * 1000 for q in (50, 90, 99))
        spread = statistics.pstdev(values) * 1000
        print(
            f"{name:<36} p50 {p50:7.3f} ms  p90 {p90:7.3f} ms  p99 {p99:7.3f} ms  "
            f"sd {spread:6.3f} ms"
        )
        return p50, p99

    print(f"{len(creates)} CreateContainer round trips, {pods + 2} admitted pods in the snapshot")
    f50, f99 = line("raw 371-byte append + fsync", fsyncs)
    line("Configure round trip (transport only)", transports)
    c50, c99 = line("CreateContainer (incl. its fsync)", creates)
    print(
        f"CreateContainer p50 = {c50 / f50:.2f}x fsync p50; p99 - fsync p99 = {c99 - f99:+.3f} ms"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/memstate-bench"))
    args = parser.parse_args()
    directory = args.dir / "nri-create"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    socket_dir = tempfile.mkdtemp(prefix="nri-bench-", dir="/tmp")
    try:
        trio.run(measure, socket_dir, directory, args.containers, args.pods)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
