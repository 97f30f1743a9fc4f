"""Guest-side daemon suite: `memstate run` end to end on a real cgroup v2 tree, killed, restarted.

Theory of operation: this program runs inside the cgvm VM (tests/vm/suites.py adds it to the
session boot, 2 NUMA nodes). Like guest_probe.py it only *observes*: it prints one JSON object
per observation (``{"id": ...}``) and the expectations live on the host, in
tests/vm/test_daemon_vm.py.

The scenario:

1. Lay out a node on the guest's tmpfs (copied to ``$CGVM_JOB/daemon-node`` at the end, so that
   the config, the daemon's stderr and its state directory come back to the host): a config
   with the Static policy and TieredReservation, ``reservedMemory`` on both NUMA nodes sized
   from the VM's sysfs so that each node has ``ALLOCATABLE_MIB`` allocatable (and matching
   systemReserved + evictionHard), ``cgroupTree: /sys/fs/cgroup`` (the real memory, cpuset and
   hugetlb controllers), the topology read from sysfs, metrics off.
2. Start ``python -m memstate run`` (the host's interpreter, a new process) and wait for READY=1
   on a real NOTIFY_SOCKET datagram socket.
3. Drop three Guaranteed pods (a 64 MiB, b 64 MiB, c 32 MiB) one at a time, each time waiting
   for the decision in the log and for the pod cgroup's files in the real tree.
4. Play the container runtime: a ``ctr`` child under each pod cgroup, with the container's
   memory.min, holding a real ``sleep`` process (the pod cgroup itself never gets a process:
   the no-internal-process rule). Then write a drift into a file the daemon manages and wait
   until the daemon corrects it (or dies): the correction shows the daemon has been through
   the container cgroups' inotify events too.
5. Start a watcher (a forked child, no new interpreter) that samples memory.min and memory.low of
   every cgroup under ``kubepods`` in a tight loop. A sample is taken twice and kept only when
   both reads agree, so it is a consistent picture and not a mix of before and after a write.
   Only the samples that differ from the previous one are kept, with their monotonic time.
6. SIGKILL the daemon; while it is down drop d (24 MiB: fits only in the memory the running pods
   left free) and e (48 MiB: fits nowhere); restart with MEMSTATE_TEST_MANIFEST_ORDER=reverse
   (so e and d are requested before the running pods come back) and wait for READY=1.
7. Stop the watcher after one more sample, read the decisions, the real tree, the processes and
   the log; SIGTERM the daemon (it must exit 0); kill the processes and remove the cgroups.

Interpreter starts cost 8-10 s each under TCG (imports), so the restart is a fork of this
program running ``memstate.cli.main(["run", "--config", ...])``, the function behind
``python -m memstate``: the same code path in a new process, with this program's imports
(made while the first daemon started, on the other CPU) instead of a new interpreter's.

Everything runs with generous bounds (TCG is slow) and no timing assertions: times are recorded
only so that the host can order samples against the kill, the restart and READY=1.
Stdlib plus memstate only. By hand:
``scripts/cgvm run --numa 2 --hugepages 8 -- python -m tests.vm.guest_daemon``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from memstate.core.events import PodAdmissionRequested, PodAdmitted, PodRejected, PodRemoved
from memstate.store.reader import LogReader

DEFAULT_MOUNT = "/sys/fs/cgroup"
NODE_DIR = Path("/sys/devices/system/node")
ALLOCATABLE_MIB = 96  # per NUMA node: a (64) + c (32) fill one node, b (64) the other
EVICTION_MIB = 16
KUBEPODS = "kubepods"
ARTIFACTS = "daemon-node"  # where the node's files end up in $CGVM_JOB (back on the host)
# (manifest file, uid, memory) — the first three run before the kill, the last two are added
# while the daemon is down.
RUNNING = (("a.json", "vm-a", 64), ("b.json", "vm-b", 64), ("c.json", "vm-c", 32))
ADDED = (("d.json", "vm-d", 24), ("e.json", "vm-e", 48))
# A drift written after the container cgroups appear: its correction in the log shows that the
# daemon has been through the inotify events before it (see survive_containers).
DRIFT_PATH = f"{KUBEPODS}/besteffort"
DRIFT_FILE = "memory.max"
DRIFT_VALUE = "1073741824"  # the target is "max"; the besteffort cgroup is empty
WAIT_SECONDS = 180.0  # any single wait; TCG is slow and the host never asserts on time
POLL_SECONDS = 0.05
STABLE_READS = 50  # a watcher sample is retried this often when two reads disagree


def now() -> float:
    return time.monotonic()


STARTED = now()


def emit(record: dict[str, Any]) -> None:
    """One observation as a JSON line; ``at`` is seconds since the suite started (information)."""
    print(json.dumps({**record, "at": round(now() - STARTED, 2)}, sort_keys=True), flush=True)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# --- the node ------------------------------------------------------------------------------------


def node_memory() -> dict[int, dict[str, int]]:
    """MemTotal and the hugepage pool of every NUMA node, in KiB, from sysfs."""
    nodes: dict[int, dict[str, int]] = {}
    for entry in sorted(NODE_DIR.glob("node[0-9]*")):
        node_id = int(entry.name.removeprefix("node"))
        text = (entry / "meminfo").read_text()
        found = re.search(rf"Node {node_id} MemTotal:\s+(\d+) kB", text)
        if found is None:
            raise RuntimeError(f"no MemTotal in {entry}/meminfo")
        hugepages_kib = 0
        for pool in sorted((entry / "hugepages").glob("hugepages-*kB")):
            size_kib = int(pool.name.removeprefix("hugepages-").removesuffix("kB"))
            hugepages_kib += size_kib * int((pool / "nr_hugepages").read_text())
        nodes[node_id] = {"memtotal_kib": int(found.group(1)), "hugepages_kib": hugepages_kib}
    return nodes


def node_config(root: Path, nodes: dict[int, dict[str, int]]) -> dict[str, Any]:
    """A KubeletConfiguration (plus memstate's section) leaving ALLOCATABLE_MIB per node."""
    reserved = {
        node_id: facts["memtotal_kib"] - facts["hugepages_kib"] - ALLOCATABLE_MIB * 1024
        for node_id, facts in nodes.items()
    }
    if min(reserved.values()) <= EVICTION_MIB * 1024:
        raise RuntimeError(f"the VM's NUMA nodes are too small for this test: {nodes}")
    system_kib = sum(reserved.values()) - EVICTION_MIB * 1024
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "memoryManagerPolicy": "Static",
        "topologyManagerPolicy": "restricted",
        "systemReserved": {"memory": f"{system_kib}Ki"},
        "evictionHard": {"memory.available": f"{EVICTION_MIB}Mi"},
        "reservedMemory": [
            {"numaNode": node_id, "limits": {"memory": f"{kib}Ki"}}
            for node_id, kib in sorted(reserved.items())
        ],
        "memoryReservationPolicy": "TieredReservation",
        "cgroupDriver": "cgroupfs",
        "memstate": {
            "stateDir": str(root / "state"),
            "manifestDir": str(root / "manifests"),
            "cgroupTree": DEFAULT_MOUNT,
            "metricsAddress": "off",
            "rescanSeconds": 2,
            "resyncSeconds": 10,
        },
    }


def pod_manifest(uid: str, memory_mib: int) -> dict[str, Any]:
    """A Guaranteed pod with one container (requests = limits)."""
    limits = {"memory": f"{memory_mib}Mi", "cpu": "100m"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": uid, "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "x", "resources": {"limits": limits}}]},
    }


# What `memstate run` imports, at start or later: imported here while the first daemon starts
# (the guest has 2 CPUs), so that the restart, a fork of this program, imports nothing.
DAEMON_MODULES = (
    "memstate.cli.main",
    "memstate.cli.commands.run_cmd",
    "memstate.node.daemon",
    "memstate.node.cgroup_tree",
    "memstate.reconcile.reconciler",
    "memstate.host.sysfs",
    "memstate.node.cgroup_watch",
    "memstate.node.watching",
)


def preimport() -> float:
    """Import what the daemon needs (the CLI parser imports every command); seconds spent."""
    started = now()
    for name in DAEMON_MODULES:
        importlib.import_module(name)
    cli = importlib.import_module("memstate.cli.main")
    cli.build_parser()
    return now() - started


class ForkedDaemon:
    """A `memstate run` forked from this program: the Popen calls Node uses, on a pid."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stderr: Path) -> None:
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid:
            return
        code = 1  # the child: become the daemon, never return into the suite
        try:
            os.environ.update(env)
            os.chdir(cwd)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(os.open(stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), 2)
            cli = importlib.import_module("memstate.cli.main")
            code = cli.main(argv)
        except SystemExit as exc:  # what `python -m memstate` turns into its exit status
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # a crash: a traceback and status 1, as the interpreter would
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        deadline = now() + timeout
        while self.poll() is None:
            if now() > deadline:
                raise RuntimeError(f"forked daemon {self.pid} still running after {timeout} s")
            time.sleep(POLL_SECONDS)
        assert self.returncode is not None
        return self.returncode


class Node:
    """The node's files and the daemon process (a child of this program)."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.manifest_dir = root / "manifests"
        self.config_file = root / "config.json"
        self.stderr_path = root / "daemon.stderr"
        self.notify_path = root / "notify.sock"
        self.manifest_dir.mkdir(parents=True)
        self.config_file.write_text(json.dumps(config, indent=1))
        self.process: subprocess.Popen[bytes] | ForkedDaemon | None = None
        self.notify: socket.socket | None = None
        # The records read so far: `records` decodes only what was appended since (under TCG,
        # decoding the whole log on every poll of `wait_for` took guest CPU from the daemon).
        self._records: list[Any] = []

    def start(self, env: dict[str, str] | None = None, *, forked: bool = False) -> None:
        """`python -m memstate run` (a new interpreter), or a fork of this program running the
        same `memstate.cli.main(["run", ...])` without the interpreter start and imports."""
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        extra = {"NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        argv = ["run", "--config", str(self.config_file)]
        if forked:
            self.process = ForkedDaemon(argv, extra, self.root, self.stderr_path)
            return
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "memstate", *argv],
                cwd=self.root,
                env={**os.environ, **extra},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def wait_ready(self) -> None:
        assert self.notify is not None and self.process is not None
        deadline = now() + WAIT_SECONDS
        while now() < deadline:
            ready, _, _ = select.select([self.notify], [], [], 0.2)
            if ready and b"READY=1" in self.notify.recv(4096):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited {self.process.returncode}: {self.stderr()}")
        raise RuntimeError(f"no READY=1 after {WAIT_SECONDS} s: {self.stderr()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=WAIT_SECONDS)
        self.process = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return code

    def stderr(self, tail: int = 3000) -> str:
        return (read_text(self.stderr_path) or "")[-tail:]

    def drop(self, name: str, manifest: dict[str, Any]) -> None:
        """Place a manifest atomically (hidden temporary file, then rename)."""
        temporary = self.manifest_dir / f".{name}.tmp"
        temporary.write_text(json.dumps(manifest))
        temporary.replace(self.manifest_dir / name)

    def records(self) -> list[Any]:
        """Every record of the log so far, in order (complete transactions only, as
        `LogReader.read` yields them: a transaction still being written is read next time)."""
        if (self.state_dir / "log").exists():
            after = self._records[-1].seq if self._records else 0
            self._records.extend(LogReader(self.state_dir).read(from_seq=after + 1))
        return list(self._records)

    def wait_for(self, what: str, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        deadline = now() + WAIT_SECONDS
        while True:
            records = self.records()
            if predicate(records):
                return records
            if now() > deadline:
                kinds = [r.event.kind for r in records[-20:]]
                raise RuntimeError(f"timed out waiting for {what}; last: {kinds}; {self.stderr()}")
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"daemon died waiting for {what}: {self.stderr()}")
            time.sleep(POLL_SECONDS)


def decided(uid: str) -> Callable[[list[Any]], bool]:
    return lambda records: any(
        isinstance(r.event, (PodAdmitted, PodRejected)) and r.event.uid == uid for r in records
    )


def decision_record(envelope: Any) -> dict[str, Any]:
    """A decision about a pod as plain data (allocation and targets as the log encodes them)."""
    event = envelope.event
    record: dict[str, Any] = {"seq": envelope.seq, "kind": event.kind, "uid": event.uid}
    if isinstance(event, PodAdmitted):
        allocation = event.allocation
        takes = allocation.takes if allocation else ()
        record.update(
            restored=event.restored,
            allocation=json.loads(msgspec.json.encode(allocation)) if allocation else None,
            numa_nodes=list(allocation.numa_nodes) if allocation else [],
            takes=[[t.numa_node, t.resource, t.size_bytes] for t in takes],
            cgroup=event.targets.cgroup if event.targets else None,
            files=dict(event.targets.files) if event.targets else {},
            containers=[dict(c.files) for c in event.targets.containers] if event.targets else [],
        )
    elif isinstance(event, PodRejected):
        record.update(reason=event.reason, message=event.message)
    elif isinstance(event, PodRemoved):
        record.update(reason=event.reason)
    return record


# --- the real tree -------------------------------------------------------------------------------

POD_FILES = ("memory.min", "memory.low", "memory.max", "cpuset.mems", "cpuset.mems.effective")


def read_files(path: Path, names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: _strip(read_text(path / name)) for name in names}


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip()


def wait_files(path: Path, expected: dict[str, str]) -> dict[str, str | None]:
    """Poll until every file in `expected` reads back as expected (bounded)."""
    deadline = now() + WAIT_SECONDS
    while True:
        found = read_files(path, tuple(expected))
        if found == expected or now() > deadline:
            return found
        time.sleep(POLL_SECONDS)


def tree(mount: Path) -> dict[str, dict[str, str | None]]:
    """The managed files of kubepods and every pod cgroup below it."""
    kubepods = mount / KUBEPODS
    found = {KUBEPODS: read_files(kubepods, ("memory.min", "memory.low", "memory.max"))}
    found[DRIFT_PATH] = read_files(mount / DRIFT_PATH, (DRIFT_FILE,))
    for _, _, uid, _ in _all_pods():
        found[uid] = read_files(kubepods / f"pod{uid}", POD_FILES)
    return found


def _all_pods() -> list[tuple[str, str, str, int]]:
    return [("running", *p) for p in RUNNING] + [("added", *p) for p in ADDED]


def _read_value(path: str) -> str | None:
    # os-level calls: the watcher's sampling rate is what it can observe, and TCG is slow.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 64).decode().strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def snapshot(kubepods: Path) -> dict[str, list[str | None]]:
    """memory.min and memory.low of kubepods and every cgroup below it (path -> [min, low])."""
    found: dict[str, list[str | None]] = {}
    stack = [(str(kubepods), KUBEPODS)]
    while stack:
        directory, name = stack.pop()
        try:
            with os.scandir(directory) as listing:
                children = [
                    (entry.path, f"{name}/{entry.name}")
                    for entry in listing
                    if entry.is_dir(follow_symlinks=False)
                ]
        except OSError:
            continue  # removed while we looked: absent from this sample
        found[name] = [
            _read_value(f"{directory}/memory.min"),
            _read_value(f"{directory}/memory.low"),
        ]
        stack.extend(children)
    return found


def stable_snapshot(kubepods: Path) -> tuple[dict[str, list[str | None]], bool]:
    """A snapshot read twice in a row with the same result (True), else the last one (False)."""
    previous = snapshot(kubepods)
    for _ in range(STABLE_READS):
        current = snapshot(kubepods)
        if current == previous:
            return current, True
        previous = current
    return previous, False


def watcher(kubepods: Path, commands: int, replies: int, out: Path) -> None:
    """The watcher child: sample until told to quit; 'a' asks for an acknowledged fresh sample."""
    kept: list[dict[str, Any]] = []
    acks: list[dict[str, Any]] = []
    last: dict[str, list[str | None]] | None = None
    samples = unstable = 0
    pending_ack = False
    while True:
        current, stable = stable_snapshot(kubepods)
        samples += 1
        unstable += not stable
        if current != last:
            kept.append({"n": samples, "t": now(), "stable": stable, "tree": current})
            last = current
        if pending_ack:  # this sample began after the request
            acks.append({"n": samples, "t": now()})
            os.write(replies, b"a")
            pending_ack = False
        ready, _, _ = select.select([commands], [], [], 0)
        if not ready:
            continue
        command = os.read(commands, 1)
        if command == b"a":
            pending_ack = True
        else:  # quit, or the parent went away
            break
    out.write_text(
        json.dumps({"samples": samples, "unstable": unstable, "kept": kept, "acks": acks})
    )


class Watcher:
    """Parent side of the watcher child."""

    def __init__(self, kubepods: Path) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="memstate-watch-")) / "samples.json"
        command_r, self.command_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 0
            try:
                os.close(self.command_w)
                os.close(self.reply_r)
                watcher(kubepods, command_r, reply_w, self.out)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(command_r)
        os.close(reply_w)

    def sampled(self) -> float:
        """Ask for a sample that starts after now; returns when it is taken (monotonic time)."""
        asked = now()
        os.write(self.command_w, b"a")
        ready, _, _ = select.select([self.reply_r], [], [], WAIT_SECONDS)
        if not ready or os.read(self.reply_r, 1) != b"a":
            raise RuntimeError("the watcher did not acknowledge a sample")
        return asked

    def finish(self) -> dict[str, Any]:
        os.write(self.command_w, b"q")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.command_w)
        os.close(self.reply_r)
        if status != 0:
            raise RuntimeError(f"the watcher failed (wait status {status})")
        result: dict[str, Any] = json.loads(self.out.read_text())
        shutil.rmtree(self.out.parent, ignore_errors=True)
        return result

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def add_container(
    mount: Path, pod_cgroup: str, container_files: dict[str, str]
) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """What a runtime does: a container cgroup under the pod, its memory.min, a process in it."""
    pod_dir = mount / pod_cgroup
    control = (pod_dir / "cgroup.subtree_control").read_text().split()
    if "memory" not in control:
        (pod_dir / "cgroup.subtree_control").write_text("+memory")
    ctr = pod_dir / "ctr"
    ctr.mkdir()
    protection = container_files.get("memory.min", "0")
    if protection != "0":
        (ctr / "memory.min").write_text(protection)
    process = subprocess.Popen(
        ["sleep", "3600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (ctr / "cgroup.procs").write_text(str(process.pid))
    record = {
        "pid": process.pid,
        "path": f"{pod_cgroup}/ctr",
        "subtree_control_before": control,
        "memory_min": _strip(read_text(ctr / "memory.min")),
    }
    return record, process


def survive_containers(mount: Path, node: Node) -> dict[str, Any]:
    """Did the daemon live through the runtime creating container cgroups under its pods?

    The container cgroups' inotify events are followed by a drift the daemon must correct (a
    write to a file it manages): once that correction is in the log, the events before it have
    been through the daemon's watcher too. The wait ends early if the daemon exits.
    """
    (mount / DRIFT_PATH / DRIFT_FILE).write_text(DRIFT_VALUE)

    def corrected_or_dead(records: list[Any]) -> bool:
        return not node.alive() or any(
            r.event.kind == "cgroup_drift_corrected"
            and getattr(r.event, "path", "") == DRIFT_PATH
            and getattr(r.event, "file", "") == DRIFT_FILE
            for r in records
        )

    deadline = now() + WAIT_SECONDS
    while not corrected_or_dead(node.records()) and now() < deadline:
        time.sleep(POLL_SECONDS)
    alive = node.alive()
    return {
        "alive": alive,
        "returncode": None if alive or node.process is None else node.process.returncode,
        "drift_corrected": corrected_or_dead(node.records()) and alive,
        "drift_now": _strip(read_text(mount / DRIFT_PATH / DRIFT_FILE)),
        "stderr": "" if alive else node.stderr(),
    }


def process_facts(mount: Path, container: dict[str, Any]) -> dict[str, Any]:
    """Is the container's process alive, still in its cgroup, and on which NUMA nodes?"""
    pid = container["pid"]
    status = read_text(Path(f"/proc/{pid}/status")) or ""
    mems = re.search(r"^Mems_allowed_list:\s*(\S+)", status, re.MULTILINE)
    state = re.search(r"^State:\s*(\S)", status, re.MULTILINE)
    procs = (read_text(mount / container["path"] / "cgroup.procs") or "").split()
    return {
        "alive": state is not None and state.group(1) != "Z",
        "in_cgroup": str(pid) in procs,
        "proc_cgroup": _strip(read_text(Path(f"/proc/{pid}/cgroup"))),
        "mems_allowed": mems.group(1) if mems else None,
    }


def cleanup(mount: Path, processes: list[subprocess.Popen[bytes]]) -> list[str]:
    """Kill everything under kubepods and remove its cgroups; returns what is left."""
    kubepods = mount / KUBEPODS
    if kubepods.exists():
        with contextlib.suppress(OSError):
            (kubepods / "cgroup.kill").write_text("1")
    for process in processes:
        process.kill()
        process.wait(timeout=WAIT_SECONDS)
    leftover = []
    if kubepods.exists():
        directories = sorted(
            (Path(d) for d, _, _ in os.walk(kubepods)), key=lambda p: -len(p.parts)
        )
        for directory in directories:
            deadline = now() + 30
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if now() > deadline:
                        leftover.append(str(directory.relative_to(mount)))
                        break
                    time.sleep(POLL_SECONDS)
    return leftover


# --- the scenario --------------------------------------------------------------------------------


def run(mount: Path, job: Path) -> None:
    nodes = node_memory()
    emit({"id": "node", "nodes": {str(k): v for k, v in nodes.items()}})
    if (mount / KUBEPODS).exists():
        raise RuntimeError(f"{mount / KUBEPODS} exists before the test")
    # The node lives on the guest's tmpfs, a local filesystem like a node's: on the 9p job share
    # each admission waited for the periodic rescan (the manifest directory's watch did not wake
    # the daemon) and every fsync went to the host. Its files are copied to the job share at the
    # end.
    root = Path(tempfile.mkdtemp(prefix="memstate-node-"))
    config = node_config(root, nodes)
    node = Node(root, config)
    emit({"id": "config", "reservedMemory": config["reservedMemory"], "root": str(root)})
    containers: dict[str, dict[str, Any]] = {}
    sleeps: list[subprocess.Popen[bytes]] = []
    watch: Watcher | None = None
    try:
        t0 = now()
        node.start()
        imported = preimport()
        node.wait_ready()
        emit(
            {
                "id": "first_start",
                "how": "python -m memstate run",
                "seconds": round(now() - t0, 2),
                "preimport_seconds": round(imported, 2),
            }
        )

        admitted: dict[str, dict[str, Any]] = {}
        for name, uid, memory_mib in RUNNING:
            node.drop(name, pod_manifest(uid, memory_mib))
            records = node.wait_for(f"a decision about {uid}", decided(uid))
            (decision,) = [
                decision_record(r)
                for r in records
                if isinstance(r.event, (PodAdmitted, PodRejected)) and r.event.uid == uid
            ]
            admitted[uid] = decision
            emit({"id": f"decision/{uid}", "memory_mib": memory_mib, **decision})
            if decision["kind"] == "pod_admitted":
                found = wait_files(mount / decision["cgroup"], decision["files"])
                emit({"id": f"converged/{uid}", "expected": decision["files"], "found": found})

        for _, uid, _ in RUNNING:
            decision = admitted[uid]
            if decision["kind"] != "pod_admitted":
                continue
            container, process = add_container(mount, decision["cgroup"], decision["containers"][0])
            containers[uid] = container
            sleeps.append(process)
        emit({"id": "containers", "containers": containers})
        emit({"id": "after_containers", **survive_containers(mount, node)})
        emit({"id": "tree_before", "tree": tree(mount)})

        watch = Watcher(mount / KUBEPODS)
        phases: dict[str, float] = {"watch_started": watch.sampled()}
        phases["kill"] = now()
        alive = node.alive()
        killed = node.stop(signal.SIGKILL)
        phases["killed"] = now()
        for name, uid, memory_mib in ADDED:
            node.drop(name, pod_manifest(uid, memory_mib))
        phases["restart"] = now()
        node.start(env={"MEMSTATE_TEST_MANIFEST_ORDER": "reverse"}, forked=True)
        node.wait_ready()
        phases["ready"] = now()
        phases["sampled_after_ready"] = watch.sampled()
        samples = watch.finish()
        watch = None
        emit({"id": "kill", "alive_before": alive, "returncode": killed})
        emit({"id": "watch", "phases": phases, **samples})

        records = node.records()
        restart = max(i for i, r in enumerate(records) if r.event.kind == "daemon_restarted")
        after = records[restart:]
        emit(
            {
                "id": "after_restart",
                "requested": [
                    r.event.pod.uid for r in after if isinstance(r.event, PodAdmissionRequested)
                ],
                "decisions": [
                    decision_record(r)
                    for r in after
                    if isinstance(r.event, (PodAdmitted, PodRejected, PodRemoved))
                ],
            }
        )
        expected_after = {}
        for r in after:
            if isinstance(r.event, PodAdmitted) and r.event.targets is not None:
                expected_after[r.event.uid] = decision_record(r)
        converged = {
            uid: wait_files(mount / d["cgroup"], d["files"]) for uid, d in expected_after.items()
        }
        emit({"id": "tree_after", "tree": tree(mount), "converged": converged})
        emit(
            {
                "id": "processes_after",
                "processes": {uid: process_facts(mount, c) for uid, c in containers.items()},
            }
        )
        kinds = Counter(r.event.kind for r in records)
        failures = [
            msgspec.json.decode(msgspec.json.encode(r.event))
            for r in records
            if r.event.kind in ("cgroup_write_failed", "cgroup_drift_corrected")
        ]
        emit({"id": "log", "kinds": dict(kinds), "cgroup_notes": failures})
        emit({"id": "stop", "returncode": node.stop(signal.SIGTERM), "stderr": node.stderr()})
    finally:
        if watch is not None:
            watch.kill()
        if node.process is not None:
            with contextlib.suppress(Exception):
                node.stop(signal.SIGKILL)
        leftover = cleanup(mount, sleeps)
        with contextlib.suppress(FileNotFoundError):
            node.notify_path.unlink()
        shutil.copytree(root, job / ARTIFACTS, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        emit({"id": "cleanup", "leftover": leftover})


def guest_main(
    argv: list[str],
    suite: Callable[[Path, Path], None],
    *,
    name: str,
    controllers: tuple[str, ...] = ("memory", "cpuset", "hugetlb"),
) -> int:
    """A guest suite's entry point: the mount (argv[1]), the job directory ($CGVM_JOB), the facts
    record, a skip when the root does not enable `controllers`, then `suite(mount, job)`; an
    exception is an `error` record with its traceback (exit 1), never a silent pass."""
    mount = Path(argv[1] if len(argv) > 1 else DEFAULT_MOUNT)
    job = Path(os.environ.get("CGVM_JOB") or tempfile.mkdtemp(prefix=f"memstate-{name}-vm-"))
    enabled = (read_text(mount / "cgroup.subtree_control") or "").split()
    emit({"id": "facts", "kernel": os.uname().release, "enabled": enabled})
    if not set(controllers) <= set(enabled):
        wanted = ", ".join(controllers[:-1]) + f" and {controllers[-1]}"
        emit({"id": "skip", "reason": f"{mount} does not enable {wanted}"})
        return 0
    try:
        suite(mount, job)
    except Exception:
        emit({"id": "error", "traceback": traceback.format_exc()})
        return 1
    return 0


def main(argv: list[str]) -> int:
    return guest_main(argv, run, name="daemon")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
