"""Command-line tools meet files they cannot use: one clear line, never a traceback.

Goal: `admit`, `remove` and `log repair` (issue 10 showed tracebacks on permission errors), and
any command through the CLI's safety net, print one `memstate: error:` line naming the path and
the operating system's reason, and exit 74. Method: real subprocesses on real directories made
read-only; the tests run as root, so the subprocess is started without CAP_DAC_OVERRIDE (util-linux
`setpriv`), which makes the kernel refuse the write with EACCES as it would for an operator.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstate.core.events import DaemonRestarted
from memstate.store.writer import EventLog
from tests.factories import container, manifest

ROOT = Path(__file__).resolve().parents[2]
SETPRIV = shutil.which("setpriv")


def memstate_without_dac_override(*args: str) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        prefix = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[list[Path]]:
    """Directories appended to the list are made read-only, and writable again at teardown."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        for item in [path, *path.rglob("*")]:
            if item.is_dir():
                item.chmod(0o755)


def make_read_only(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        mode = item.stat().st_mode
        item.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def assert_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 74, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memstate: error: "), result.stderr
    for needle in ("Permission denied", *needles):
        assert needle in lines[0], lines[0]


def test_admit_permission_error_is_one_line(tmp_path: Path, read_only: list[Path]) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    source = tmp_path / "web.json"
    source.write_text(json.dumps(manifest("u1", [container("app", "1Gi")], name="web")))
    read_only.append(pods)
    make_read_only(pods)
    result = memstate_without_dac_override(
        "admit", str(source), "--manifest-dir", str(pods), "--state-dir", str(tmp_path / "s")
    )
    assert_one_line(result, str(pods), "cannot place the manifest")


def test_remove_permission_error_is_one_line(tmp_path: Path, read_only: list[Path]) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    (pods / "web.json").write_text(json.dumps(manifest("u1", [container("app", "1Gi")])))
    read_only.append(pods)
    make_read_only(pods)
    result = memstate_without_dac_override(
        "remove", "u1", "--manifest-dir", str(pods), "--state-dir", str(tmp_path / "s")
    )
    assert_one_line(result, str(pods / "web.json"), "cannot delete the manifest")
    assert (pods / "web.json").exists()


def test_log_repair_permission_error_is_one_line(tmp_path: Path, read_only: list[Path]) -> None:
    state = tmp_path / "state"
    with EventLog.open(state, fsync=False) as log:
        log.append([(DaemonRestarted(), 0)], ts_ns=1)
    read_only.append(state)
    make_read_only(state)
    result = memstate_without_dac_override(
        "log", "repair", "--truncate-torn-tail", "--state-dir", str(state)
    )
    assert_one_line(result, str(state))
