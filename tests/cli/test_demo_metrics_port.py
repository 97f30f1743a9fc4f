"""`memstate demo --metrics-port 0`: demos (and the tests that run them) side by side never race
for the documented default port 9473.

Method: two real demo daemons started at the same time in their own directories, each asked
for port 0; each prints its ready document (`-o json`) with the address it bound; both serve
real HTTP on loopback, on different ports, and `status` reports the bound address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_two_demos_on_port_zero_bind_different_free_ports(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "memstate", "demo", "--metrics-port", "0", "-o", "json"]
    demos = [
        subprocess.Popen(
            [*command, "--dir", str(tmp_path / name), "--for", "600"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environment(),
        )
        for name in ("a", "b")
    ]
    try:
        ready = []
        for demo in demos:
            assert demo.stdout is not None
            line = demo.stdout.readline()  # the ready document, once the daemon serves
            assert line, demo.communicate(timeout=120)[1]
            ready.append(json.loads(line))
        addresses = [document["metrics_address"] for document in ready]
        ports = {int(address.rsplit(":", 1)[1]) for address in addresses}
        assert len(ports) == 2 and 0 not in ports
        for document, address in zip(ready, addresses, strict=True):
            assert address.startswith("127.0.0.1:")
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=60) as response:
                assert response.status == 200
                assert b"memstate_" in response.read()
            state_dir = document["state_dir"]
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "memstate",
                    "status",
                    "--state-dir",
                    state_dir,
                    "-o",
                    "json",
                ],
                capture_output=True,
                text=True,
                env=environment(),
                timeout=180,
                check=False,
            )
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["daemon"]["metrics_address"] == address
    finally:
        for demo in demos:
            demo.terminate()
        for demo in demos:
            demo.communicate(timeout=120)
    assert [demo.returncode for demo in demos] == [0, 0]


def test_the_documented_default_port_stays_9473() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "memstate", "demo", "--help"],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert "written as 9473" in " ".join(result.stdout.split())
    assert "127.0.0.1:9473" in (ROOT / "README.md").read_text()
