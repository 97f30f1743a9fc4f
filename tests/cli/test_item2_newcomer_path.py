"""Issue 14, item 2: the newcomer path. What `memstate demo` prints can be pasted as is; the demo
keeps a config the user edited; `admit` of a UID already present replaces that manifest;
`remove` takes a UID, a name or a file; and without a manifest directory it says so in one line.

Method: real subprocesses; a real daemon (`memstate demo --dir D --for S`) for admit/remove.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "memstate/examples/node"
# No virtualenv on PATH: the hints must work as a fresh clone's user pastes them.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env.update(PYTHONPATH=str(ROOT), PATH=BARE_PATH)
    return env


def memstate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment(),
        timeout=180,
        check=False,
    )


class RunningDemo:
    """`memstate demo --dir D` in the background, waited for until it prints its hints."""

    def __init__(self, directory: Path, seconds: int = 600) -> None:
        self.directory = directory
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memstate",
                "demo",
                "--metrics-port",
                "0",
                "--dir",
                str(directory),
                "--for",
                f"{seconds}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environment(),
        )
        self.printed: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.printed.append(line)
            if line.startswith("Stop with Ctrl-C"):
                return
        raise AssertionError(f"demo stopped: {self.process.wait()} {self.process.stderr}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=120)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RunningDemo]:
    running = RunningDemo(tmp_path / "demo")
    try:
        yield running
    finally:
        running.stop()


def test_item2_demo_hints_run_as_printed(demo: RunningDemo) -> None:
    hints = [
        line.split("   ")[0].strip()
        for line in demo.printed
        if line.startswith("  ") and "memstate" in line.split()[0]
    ]
    assert len(hints) >= 3, demo.printed
    for hint in hints:
        result = subprocess.run(
            [*shlex.split(hint), "-o", "json"] if " status " in hint else shlex.split(hint),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=environment(),
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"{hint}: {result.stderr}"


def test_item2_demo_keeps_an_edited_config(demo: RunningDemo) -> None:
    config = demo.directory / "config.yaml"
    edited = config.read_text().replace(
        "memoryThrottlingFactor: 0.9", "memoryThrottlingFactor: 0.8"
    )
    assert edited != config.read_text()
    config.write_text(edited)
    # A second demo on the same directory is refused by the lock and must leave the file alone.
    second = memstate("demo", "--metrics-port", "0", "--dir", str(demo.directory), "--for", "1")
    assert second.returncode == 75, second.stderr
    assert config.read_text() == edited
    demo.stop()
    third = memstate("demo", "--metrics-port", "0", "--dir", str(demo.directory), "--for", "1")
    assert third.returncode == 0, third.stderr
    assert config.read_text() == edited


def pod_files_with_uid(manifests: Path, uid: str) -> list[str]:
    return sorted(p.name for p in manifests.iterdir() if uid in p.read_text())


def test_item2_admit_of_a_present_uid_replaces_its_manifest(
    demo: RunningDemo, tmp_path: Path
) -> None:
    manifests = demo.directory / "manifests"
    uid = "c41e8d27-9f0a-4b63-a5d2-1e7b3c9f5a03"  # shop/api, placed by the demo as api.yaml
    changed = tmp_path / "api-v2.yaml"
    changed.write_text(
        (EXAMPLE / "manifests/api.yaml").read_text().replace("shop/api:1", "shop/api:2")
    )
    config = str(demo.directory / "config.yaml")
    result = memstate("admit", str(changed), "--config", config, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replaced"] == str(manifests / "api.yaml")
    assert pod_files_with_uid(manifests, uid) == ["api.yaml"]
    assert "shop/api:2" in (manifests / "api.yaml").read_text()


@pytest.mark.parametrize("how", ["uid", "name", "namespace/name", "file"])
def test_item2_remove_accepts_a_uid_a_name_or_a_file(
    demo: RunningDemo, tmp_path: Path, how: str
) -> None:
    manifests = demo.directory / "manifests"
    uid = "c41e8d27-9f0a-4b63-a5d2-1e7b3c9f5a03"
    # Two files of one UID (as a hand copy leaves them): the UID still names one pod.
    (manifests / "shop.api.yaml").write_text((manifests / "api.yaml").read_text())
    copy = tmp_path / "api.yaml"
    copy.write_text((EXAMPLE / "manifests/api.yaml").read_text())
    wanted = {"uid": uid, "name": "api", "namespace/name": "shop/api", "file": str(copy)}[how]
    config = str(demo.directory / "config.yaml")
    result = memstate("remove", wanted, "--config", config, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert pod_files_with_uid(manifests, uid) == []


def test_item2_remove_without_a_manifest_directory_is_one_line(tmp_path: Path) -> None:
    result = memstate("remove", "big", "--manifest-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "manifest directory" in lines[0] and "does not exist" in lines[0]


def test_item2_admit_of_a_present_uid_with_a_new_spec_waits_for_the_new_decision(
    demo: RunningDemo, tmp_path: Path
) -> None:
    manifests = demo.directory / "manifests"
    uid = "c41e8d27-9f0a-4b63-a5d2-1e7b3c9f5a03"
    changed = tmp_path / "api-smaller.yaml"
    text = (EXAMPLE / "manifests/api.yaml").read_text()
    changed.write_text(
        text.replace('limits: {cpu: "1", memory: 2Gi}', 'limits: {cpu: "1", memory: 1Gi}')
    )
    assert changed.read_text() != text
    config = str(demo.directory / "config.yaml")
    result = memstate("admit", str(changed), "--config", config, "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["admitted"] is True and document["decision"]["pod"]["uid"] == uid
    assert pod_files_with_uid(manifests, uid) == ["api.yaml"]
