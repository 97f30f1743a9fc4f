"""Guest-side NRI suite: memstate's container adjustments applied by a runtime on a real kernel.

Theory of operation: this program runs inside the cgvm VM (tests/vm/suites.py adds it to the
session boot, 2 NUMA nodes). Like guest_daemon.py it only *observes*: one JSON object per
observation, the expectations live on the host (tests/vm/test_nri_vm.py).

1. A node on the guest's tmpfs as in guest_daemon.py (Static policy, TieredReservation,
   `ALLOCATABLE_MIB` per NUMA node, `cgroupTree: /sys/fs/cgroup`, the cgroupfs driver's
   kubelet-shaped pod cgroups `kubepods/pod<uid>`, `kubepods/burstable/pod<uid>`), plus `nri:` on
   a socket this program owns. Three pods: two Guaranteed pods of 64 MiB (they cannot share a
   NUMA node, so one is pinned to each), one with two containers, and a Burstable pod.
2. The runtime's socket is bound first, then the daemon is forked from this program (no new
   interpreter: `memstate.cli.main(["run", ...])`, as guest_daemon.py's restart) and READY=1
   awaited; the pods' decisions are awaited in the log, as a kubelet admits before the runtime
   creates.
3. The Python runtime stand-in (tests/nri/standin.py, its own wire code) accepts the plugin,
   sends Configure, Synchronize, RunPodSandbox and CreateContainer for every container, and
   does with each answer what runc does with the OCI spec: a container cgroup
   `<cgroup parent>/<container id>`, controllers enabled on the pod cgroup if missing,
   `cpuset.mems` and every `unified` value written (plus `memory.max` = the container's limit,
   the runtime's own value), then a small process (a fresh interpreter without site-packages)
   put in `cgroup.procs` before it allocates anything.
4. Each pinned container's process then allocates and touches up to `TOUCH_MIB` of anonymous
   memory (the Burstable one stays idle: no swap, nothing may go near `memory.high`); the
   kernel's view is read back: the files, `cpuset.mems.effective`, the process's
   `Mems_allowed_list`, and `memory.numa_stat` (anon per node).
5. Cleanup: processes killed, cgroups removed, the daemon stopped with SIGTERM (exit status
   recorded).

Stdlib, trio and memstate only. By hand:
``.venv/bin/python scripts/cgvm run --numa 2 -- python -m tests.vm.guest_nri``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from memstate.core.events import PodAdmitted, PodRejected
from tests.nri import wire
from tests.nri.standin import StandInRuntime
from tests.vm.guest_daemon import (
    KUBEPODS,
    Node,
    cleanup,
    decided,
    decision_record,
    emit,
    guest_main,
    node_config,
    node_memory,
    now,
    preimport,
    read_text,
)

ARTIFACTS = "nri-node"  # where the node's files end up in $CGVM_JOB (back on the host)
# Anonymous memory each pinned container's process allocates and touches: at most half of its
# limit (memory.max, which the runtime sets) so that it never nears an OOM kill.
TOUCH_MIB = 24
MIB = 1 << 20


@dataclass(frozen=True)
class Spec:
    """A container as the pod spec has it: name, request, limit (MiB)."""

    name: str
    request_mib: int
    limit_mib: int


# uid -> containers. Two 64 MiB Guaranteed pods never fit one node of ALLOCATABLE_MIB (96): one is
# pinned to each node (topologyManagerScope pod: a pod's containers share its node). The
# Burstable pod is not pinned; it gets memory.low and memory.high.
PODS: dict[str, tuple[Spec, ...]] = {
    "vm-nri-a": (Spec("app", 48, 48), Spec("side", 16, 16)),
    "vm-nri-b": (Spec("app", 64, 64),),
    "vm-nri-c": (Spec("web", 16, 64),),
}
CONTAINER_FILES = (
    "cpuset.mems",
    "cpuset.mems.effective",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
)
NRI_WAIT_SECONDS = 1.5


def pod_manifest(uid: str, specs: tuple[Spec, ...]) -> dict[str, Any]:
    containers = []
    for spec in specs:
        resources: dict[str, Any] = {"limits": {"memory": f"{spec.limit_mib}Mi", "cpu": "100m"}}
        if spec.request_mib != spec.limit_mib:
            resources["requests"] = {"memory": f"{spec.request_mib}Mi", "cpu": "100m"}
        containers.append({"name": spec.name, "image": "x", "resources": resources})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": uid, "namespace": "default", "uid": uid},
        "spec": {"containers": containers},
    }


def container_id(uid: str, name: str) -> str:
    return f"{uid}-{name}"


def touch_bytes(spec: Spec) -> int:
    """What the container's process allocates: TOUCH_MIB, at most half its limit."""
    return min(TOUCH_MIB, spec.limit_mib // 2) * MIB


# --- the container's process ---------------------------------------------------------------------


# The container's program: a fresh interpreter without site-packages (small, like the process a
# runtime execs), told how much to allocate once it is in its cgroup. Not a fork of this
# program: cgroup v2 migrates a task's pages to its new cpuset.mems when it moves in, and a fork
# maps this program's whole heap (tens of MiB migrated, half a minute under TCG).
CONTAINER_PROGRAM = """
import sys
for line in sys.stdin.buffer:
    held = b"x" * int(line)  # allocated and written: every page touched
    sys.stdout.buffer.write(b"%d\\n" % len(held))
    sys.stdout.buffer.flush()
"""


class ContainerProcess:
    """The container's process, held until it is in its cgroup, then told to allocate."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", CONTAINER_PROGRAM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def allocate(self, size: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"%d\n" % size)
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if answer.strip() != str(size).encode():
            raise RuntimeError(f"container process {self.pid} answered {answer!r}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=60)


def numa_anon(cgroup: Path) -> dict[str, int]:
    """anon bytes per node from memory.numa_stat ({"0": bytes, "1": bytes})."""
    for line in (read_text(cgroup / "memory.numa_stat") or "").splitlines():
        name, *nodes = line.split()
        if name == "anon":
            return {n.split("=")[0].removeprefix("N"): int(n.split("=")[1]) for n in nodes}
    return {}


def mems_allowed(pid: int) -> str | None:
    found = re.search(
        r"^Mems_allowed_list:\s*(\S+)", read_text(Path(f"/proc/{pid}/status")) or "", re.M
    )
    return found.group(1) if found else None


def files(path: Path) -> dict[str, str | None]:
    return {
        name: None if (text := read_text(path / name)) is None else text.strip()
        for name in CONTAINER_FILES
    }


def create_container(
    mount: Path, parent: str, cid: str, adjusted: wire.Adjusted, limit: int
) -> tuple[Path, ContainerProcess]:
    """What runc does with the adjusted OCI spec: the cgroup, its values, then the process."""
    pod_dir = mount / parent
    enabled = (pod_dir / "cgroup.subtree_control").read_text().split()
    missing = [c for c in ("cpuset", "memory") if c not in enabled]
    if missing:
        (pod_dir / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    directory = pod_dir / cid
    directory.mkdir()
    if adjusted.mems:
        (directory / "cpuset.mems").write_text(adjusted.mems)
    for key, value in adjusted.unified.items():
        (directory / key).write_text(value)
    (directory / "memory.max").write_text(str(limit))
    process = ContainerProcess()
    (directory / "cgroup.procs").write_text(str(process.pid))
    return directory, process


# --- the scenario --------------------------------------------------------------------------------


async def play_runtime(
    mount: Path, listener: socket.socket, decisions: dict[str, dict[str, Any]]
) -> list[ContainerProcess]:
    """The stand-in runtime's part: NRI calls, container cgroups, processes, observations."""
    runtime = StandInRuntime(listener.getsockname())
    runtime.listener = trio.socket.from_stdlib_socket(listener)
    processes: list[ContainerProcess] = []
    async with trio.open_nursery() as nursery:
        await runtime.accept(nursery)
        reply = await runtime.call("Configure", wire.configure_request())
        emit({"id": "nri/configure", "code": reply.code, "registrations": runtime.registrations})
        reply = await runtime.call("Synchronize", wire.synchronize_request([], [], False))
        emit({"id": "nri/synchronize", "code": reply.code})
        for uid, specs in PODS.items():
            parent = decisions[uid]["cgroup"]
            sandbox = wire.pod_sandbox(f"sb-{uid}", uid, uid, parent)
            reply = await runtime.call("RunPodSandbox", wire.pod_request(sandbox))
            emit({"id": f"nri/run/{uid}", "code": reply.code, "message": reply.message})
            for spec in specs:
                cid = container_id(uid, spec.name)
                limit = spec.limit_mib * MIB
                request = wire.container_request(
                    sandbox, wire.container(cid, f"sb-{uid}", uid, spec.name, memory_limit=limit)
                )
                asked = now()
                reply = await runtime.call("CreateContainer", request)
                answered = now()
                adjusted = wire.create_response_adjustment(reply.payload)
                directory, process = create_container(mount, parent, cid, adjusted, limit)
                created = now()
                processes.append(process)
                record: dict[str, Any] = {
                    "id": f"container/{cid}",
                    "uid": uid,
                    "name": spec.name,
                    "code": reply.code,
                    "message": reply.message,
                    "adjusted": {"mems": adjusted.mems, "unified": adjusted.unified},
                    "path": str(directory.relative_to(mount)),
                    "pid": process.pid,
                    "in_cgroup": str(process.pid) in (directory / "cgroup.procs").read_text(),
                    "mems_allowed": mems_allowed(process.pid),
                    "files": files(directory),
                    "anon_before": numa_anon(directory),
                }
                if adjusted.mems:
                    touched = touch_bytes(spec)
                    process.allocate(touched)
                    record["touched"] = touched
                record["anon"] = numa_anon(directory)
                # Information only (TCG is slow and the host never asserts on time).
                record["seconds"] = {
                    "answer": round(answered - asked, 3),
                    "create": round(created - answered, 3),
                    "allocate": round(now() - created, 3),
                }
                emit(record)
        nursery.cancel_scope.cancel()
    return processes


def run(mount: Path, job: Path) -> None:
    nodes = node_memory()
    emit({"id": "node", "nodes": {str(k): v for k, v in nodes.items()}})
    if (mount / KUBEPODS).exists():
        raise RuntimeError(f"{mount / KUBEPODS} exists before the test")
    root = Path(tempfile.mkdtemp(prefix="memstate-nri-"))
    config = node_config(root, nodes)
    config["topologyManagerScope"] = "pod"
    socket_path = root / "nri.sock"
    config["memstate"]["nri"] = {
        "socket": str(socket_path),
        "pluginIndex": "50",
        "unknownPodWaitSeconds": NRI_WAIT_SECONDS,
    }
    node = Node(root, config)
    for uid, specs in PODS.items():
        node.drop(f"{uid}.json", pod_manifest(uid, specs))
    # The runtime's socket exists before the daemon starts, as containerd's does.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(4)
    processes: list[ContainerProcess] = []
    try:
        t0 = now()
        imported = preimport()
        __import__("memstate.node.nri_decider")
        node.start(forked=True)  # before trio runs here: the child runs its own trio loop
        node.wait_ready()
        emit({"id": "start", "seconds": round(now() - t0, 2), "preimport": round(imported, 2)})
        decisions: dict[str, dict[str, Any]] = {}
        for uid in PODS:
            records = node.wait_for(f"a decision about {uid}", decided(uid))
            (envelope,) = [
                r
                for r in records
                if isinstance(r.event, (PodAdmitted, PodRejected)) and r.event.uid == uid
            ]
            if not isinstance(envelope.event, PodAdmitted) or envelope.event.targets is None:
                raise RuntimeError(f"pod {uid} was not admitted: {decision_record(envelope)}")
            decision = decision_record(envelope)
            # The containers' files by name, which decision_record lists without names.
            decision["by_name"] = {c.name: dict(c.files) for c in envelope.event.targets.containers}
            decisions[uid] = decision
            emit({"id": f"decision/{uid}", **decision})
        processes = trio.run(play_runtime, mount, listener, decisions)
        alive = node.alive()
        emit({"id": "daemon", "alive": alive, "stderr": "" if alive else node.stderr()})
        emit({"id": "stop", "returncode": node.stop(signal.SIGTERM), "stderr": node.stderr()})
    finally:
        if node.process is not None:
            with contextlib.suppress(Exception):
                node.stop(signal.SIGKILL)
        for process in processes:
            process.kill()
        leftover = cleanup(mount, [])
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            node.notify_path.unlink()
            socket_path.unlink()
        shutil.copytree(root, job / ARTIFACTS, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        emit({"id": "cleanup", "leftover": leftover})


def main(argv: list[str]) -> int:
    return guest_main(argv, run, name="nri", controllers=("memory", "cpuset"))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
