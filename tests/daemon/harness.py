"""Running the real `memstate run` as a subprocess for end-to-end tests.

`Node` lays out a node in a temporary directory (topology file, config file, manifest directory,
state directory, a directory-backed simulated cgroup tree), starts the daemon with
`python -m memstate run`, waits for READY=1 on a real sd_notify socket, and offers helpers to
drop manifests, read decisions from the log, read the simulated cgroup files and scrape metrics
over HTTP. Processes are stopped with SIGTERM or killed with SIGKILL, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from memstate.core.events import Envelope
from memstate.store.reader import LogReader

ROOT = Path(__file__).resolve().parents[2]
Gi = 2**30
Mi = 2**20


def pod_manifest(
    uid: str,
    memory: str,
    *,
    name: str | None = None,
    cpu: str = "1",
    guaranteed: bool = True,
    limit: str | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any]
    if guaranteed:
        resources = {"limits": {"memory": memory, "cpu": cpu}}
    else:
        resources = {"requests": {"memory": memory}, "limits": {"memory": limit or "4Gi"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name or uid, "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "x", "resources": resources}]},
    }


class Node:
    """A node laid out under `root`, and the daemon process running on it."""

    def __init__(
        self,
        root: Path,
        *,
        nodes_memory: tuple[str, ...] = ("5Gi", "5Gi"),
        reserved: str = "1Gi",
        topology_policy: str = "restricted",
        reservation_policy: str = "TieredReservation",
        extra_settings: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.manifest_dir = root / "manifests"
        self.cgroup_dir = root / "cgroup"
        self.topology_file = root / "topology.yaml"
        self.config_file = root / "config.yaml"
        self.notify_path = root / "notify.sock"
        # The daemon binds port 0 (the kernel picks a free one: no race with other processes
        # for a port picked here and released); `metrics_port` reads what it bound.
        self._metrics_port: int | None = None
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        self.topology_file.write_text(
            yaml.safe_dump(
                {
                    "kernelRelease": "6.1.0-test",
                    "nodes": [
                        {"id": i, "memory": m, "hugepages": {"2Mi": 64}}
                        for i, m in enumerate(nodes_memory)
                    ],
                }
            )
        )
        count = len(nodes_memory)
        self.config = {
            "memoryManagerPolicy": "Static",
            "topologyManagerPolicy": topology_policy,
            "systemReserved": {"memory": f"{count}Gi"},
            "evictionHard": {"memory.available": "0"},
            "reservedMemory": [
                {"numaNode": i, "limits": {"memory": reserved}} for i in range(count)
            ],
            "memoryReservationPolicy": reservation_policy,
            "memstate": {
                "stateDir": str(self.state_dir),
                "manifestDir": str(self.manifest_dir),
                "cgroupSim": str(self.cgroup_dir),
                "topologyFile": str(self.topology_file),
                "metricsAddress": "127.0.0.1:0",
                "rescanSeconds": 1,
                "resyncSeconds": 2,
                **(extra_settings or {}),
            },
        }
        self.write_config()
        self.process: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        self.stderr_path = root / "daemon.stderr"

    def write_config(self) -> None:
        self.config_file.write_text(yaml.safe_dump(self.config))

    # --- process ---------------------------------------------------------------------------------

    def start(
        self,
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        cwd: Path | None = None,
        config_arg: str | None = None,
    ) -> None:
        """Start `memstate run --config <config_arg or the config file>` in `cwd` (default: the
        node's root)."""
        assert self.process is None, "already running"
        if self.notify_path.exists():
            self.notify_path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NOTIFY_SOCKET": str(self.notify_path),
            **(env or {}),
        }
        stderr = self.stderr_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memstate",
                "run",
                "--config",
                config_arg or str(self.config_file),
            ],
            cwd=cwd or self.root,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self._notify is not None and self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._notify.settimeout(0.2)
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                message = ""
            if "READY=1" in message:
                return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.process.returncode}: {self.stderr()}"
                )
        raise AssertionError(f"daemon not ready after {timeout}s: {self.stderr()}")

    @property
    def metrics_port(self) -> int:
        """The port the running daemon's HTTP endpoint is bound to, from the status file it
        writes before READY=1 (`daemon.metrics_address` of `memstate status`)."""
        if self._metrics_port is None:
            assert self.process is not None, "no daemon running"
            status = self.state_dir / "daemon-status.json"
            deadline = time.monotonic() + 60.0
            while True:
                try:
                    document = json.loads(status.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    document = {}
                # Written with ready true just before READY=1, after the endpoint is bound.
                if document.get("pid") == self.process.pid and document.get("ready"):
                    break
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no status file from the daemon: {self.stderr()}")
                time.sleep(0.1)
            address = str(document["metrics_address"])
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1" and port.isdigit() and int(port) > 0, address
            self._metrics_port = int(port)
        return self._metrics_port

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def terminate(self, timeout: float = 20.0) -> int:
        return self._stop(signal.SIGTERM, timeout)

    def kill(self) -> int:
        return self._stop(signal.SIGKILL, 10.0)

    def _stop(self, signum: int, timeout: float) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        self.process = None
        self._metrics_port = None  # the next start binds another
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return code

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- inputs ----------------------------------------------------------------------------------

    def drop(self, name: str, manifest: dict[str, Any] | str) -> Path:
        """Place a manifest atomically (hidden temporary file, then rename)."""
        path = self.manifest_dir / name
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        temporary = self.manifest_dir / f".{name}.tmp"
        temporary.write_text(text)
        temporary.replace(path)
        return path

    # --- observations ----------------------------------------------------------------------------

    def records(self) -> list[Envelope]:
        if not (self.state_dir / "log").exists():
            return []
        return list(LogReader(self.state_dir).read())

    def wait_for(
        self, predicate: Callable[[list[Envelope]], bool], timeout: float = 30.0
    ) -> list[Envelope]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                kinds = [r.event.kind for r in records[-20:]]
                raise AssertionError(f"timed out; last records: {kinds}; {self.stderr()[-2000:]}")
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon died: {self.stderr()[-4000:]}")
            time.sleep(0.1)

    def cgroup_file(self, path: str, file: str) -> str | None:
        try:
            return (self.cgroup_dir / path / file).read_text().strip()
        except FileNotFoundError:
            return None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def http(self, path: str) -> tuple[int, str]:
        """GET `path` on the daemon's HTTP endpoint: (status, body), errors included."""
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status), str(response.read().decode())
        except urllib.error.HTTPError as error:
            return int(error.code), str(error.read().decode())

    def threads(self) -> int:
        """The daemon process's thread count (/proc)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1]
        )

    def metric(self, name: str) -> float | None:
        for line in self.metrics().splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        return None

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "memstate",
                "status",
                "--config",
                str(self.config_file),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            cwd=self.root,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
            check=True,
        )
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def cli(
        self,
        *args: str,
        timeout: float = 60.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "memstate", *args],
            capture_output=True,
            text=True,
            cwd=cwd or self.root,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            timeout=timeout,
            check=False,
        )
