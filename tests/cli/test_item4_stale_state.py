"""Issue 14, item 4: stale state. A rejected pod whose manifest is deleted while the daemon is
stopped is forgotten at the next readmission (status and the rejected-pods gauge), through a
recorded `pod_removal_requested` input, so replay agrees.

Method: the demo node with an over-size pod added (rejected), the daemon stopped, the manifest
deleted, the daemon started again; `status`, the log and `replay` read back as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from memstate.store.reader import LogReader

ROOT = Path(__file__).resolve().parents[2]


def memstate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )


def rejected_uids(node: Path) -> set[str]:
    status = memstate("status", "--state-dir", str(node / "state"), "-o", "json")
    assert status.returncode == 0, status.stderr
    return {r["uid"] for r in json.loads(status.stdout)["rejections"]}


def test_item4_a_rejection_whose_manifest_is_gone_is_forgotten_at_readmission(
    tmp_path: Path,
) -> None:
    node = tmp_path / "demo"
    manifests = node / "manifests"
    assert memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "1").returncode == 0
    big = yaml.safe_load((manifests / "db.yaml").read_text())
    big["metadata"].update(name="big", uid="0000-big")
    for container in big["spec"]["containers"]:
        container["resources"] = {"limits": {"cpu": "1", "memory": "900Gi"}}
    (manifests / "big.yaml").write_text(yaml.safe_dump(big))
    (manifests / "broken.yaml").write_text("kind: Pod\nmetadata: [\n")
    # The rejections are kept across a restart while their files are there...
    for _ in range(2):
        run = memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "1")
        assert run.returncode == 0, run.stderr
        status = json.loads(memstate("status", "--state-dir", str(node / "state")).stdout)
        sources = {Path(r["source"]).name for r in status["rejections"]}
        assert {"big.yaml", "broken.yaml"} <= sources
    # ...and forgotten once they were deleted while the daemon was stopped.
    (manifests / "big.yaml").unlink()
    (manifests / "broken.yaml").unlink()
    run = memstate("demo", "--metrics-port", "0", "--dir", str(node), "--for", "1")
    assert run.returncode == 0, run.stderr
    status = json.loads(memstate("status", "--state-dir", str(node / "state")).stdout)
    assert status["rejections"] == []
    assert len(status["pods"]) == 5
    forgotten = [
        r.event for r in LogReader(node / "state").read() if r.event.kind == "pod_removal_requested"
    ]
    assert {getattr(e, "uid", None) for e in forgotten} >= {"0000-big", ""}
    # Recorded as inputs: a replay of the log re-derives the same state.
    replay = memstate("replay", str(node / "state"), "-q", "-o", "json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["state_hash"] == status["state_hash"]
