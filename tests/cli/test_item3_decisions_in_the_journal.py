"""Issue 14, item 3: decisions in the journal. At `--log-level info` the daemon logs one
structured line per decision (pod, QoS class, NUMA nodes or reason), per rejected file, per
applied reload and per drift correction;
`--log-format json` makes every stderr line a JSON object for log shippers.

Method: the demo node laid out by `memstate demo --for 1`, an over-size pod and a broken file
added, then a real `memstate run --log-format json` whose stderr is read until the lines appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_item3_one_json_line_per_decision_and_rejected_file(tmp_path: Path) -> None:
    node = tmp_path / "demo"
    laid = subprocess.run(
        [
            sys.executable,
            "-m",
            "memstate",
            "demo",
            "--metrics-port",
            "0",
            "--dir",
            str(node),
            "--for",
            "1",
        ],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=180,
        check=False,
    )
    assert laid.returncode == 0, laid.stderr
    manifests = node / "manifests"
    big = yaml.safe_load((manifests / "db.yaml").read_text())
    big["metadata"].update(name="big", uid="0000-big")
    for container in big["spec"]["containers"]:
        container["resources"] = {"limits": {"cpu": "1", "memory": "900Gi"}}
    (manifests / "big.yaml").write_text(yaml.safe_dump(big))
    (manifests / "broken.yaml").write_text("kind: Pod\nmetadata: [\n")
    config = yaml.safe_load((node / "config.yaml").read_text())
    config["memstate"]["metricsAddress"] = "off"
    (node / "config.yaml").write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memstate",
            "run",
            "--config",
            str(node / "config.yaml"),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    seen: dict[str, list[dict[str, Any]]] = {}
    try:
        assert daemon.stderr is not None
        for raw in daemon.stderr:
            line = json.loads(raw)  # every line is JSON, not only the decisions
            assert {"ts", "level", "logger", "msg"} <= line.keys()
            seen.setdefault(line.get("event", ""), []).append(line)
            if line["msg"].startswith("ready"):
                break
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
    rejected = [r for r in seen.get("pod_rejected", []) if r["uid"] == "0000-big"]
    assert len(rejected) == 1, seen.keys()
    assert rejected[0]["level"] == "info" and rejected[0]["reason"]
    assert rejected[0]["pod"] == "shop/big"
    files = [r for r in seen.get("file_rejected", []) if r["source"].endswith("broken.yaml")]
    assert len(files) == 1 and files[0]["error"]
    admitted = {r["pod"]: r for r in seen.get("pod_admitted", [])}
    assert admitted["shop/db"]["qos"] == "Guaranteed"
    assert admitted["shop/db"]["numa"] == [1]
    assert admitted["shop/db"]["restored"] is True
    assert "qos=Guaranteed" in admitted["shop/db"]["msg"]


def test_item3_one_json_line_per_reload_and_drift_correction(tmp_path: Path) -> None:
    """After `ready`, an edited config (SIGHUP) is one `config_applied` line and a cgroup file
    changed behind the daemon's back is one `drift_corrected` line naming the file, what was
    found and what was written back (the simulated tree is real files; resync at most 10 s)."""
    import signal
    import threading

    node = tmp_path / "demo"
    laid = subprocess.run(
        [
            sys.executable,
            "-m",
            "memstate",
            "demo",
            "--metrics-port",
            "0",
            "--dir",
            str(node),
            "--for",
            "1",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=180,
        check=False,
    )
    assert laid.returncode == 0, laid.stderr
    config_path = node / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["memstate"]["metricsAddress"] = "off"
    config_path.write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memstate",
            "run",
            "--config",
            str(config_path),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    # If a line never comes, the stream ends when the daemon is killed and the asserts say why.
    watchdog = threading.Timer(300, daemon.kill)
    watchdog.start()
    memory_min = node / "cgroup" / "kubepods" / "memory.min"
    seen: dict[str, list[dict[str, Any]]] = {}
    try:
        assert daemon.stderr is not None
        for raw in daemon.stderr:
            line = json.loads(raw)
            seen.setdefault(line.get("event", ""), []).append(line)
            if line["msg"].startswith("ready"):
                target = memory_min.read_text().strip()
                config["memoryThrottlingFactor"] = 0.7
                config_path.write_text(yaml.safe_dump(config))
                daemon.send_signal(signal.SIGHUP)
                memory_min.write_text("0\n")
            if "config_applied" in seen and "drift_corrected" in seen:
                break
    finally:
        watchdog.cancel()
        daemon.terminate()
        daemon.wait(timeout=120)
    applied = seen.get("config_applied", [])
    assert len(applied) == 1 and applied[0]["level"] == "info", seen.keys()
    assert applied[0]["revoked"] == []
    drift = [d for d in seen.get("drift_corrected", []) if d["file"] == "memory.min"]
    assert drift, seen.keys()
    assert drift[0]["cgroup"] == "kubepods"
    assert drift[0]["found"] == "0" and drift[0]["expected"] == target
    assert memory_min.read_text().strip() == target
