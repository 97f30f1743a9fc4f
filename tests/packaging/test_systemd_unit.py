"""The systemd unit in packaging/ is valid and hardened.

Goal: `systemd-analyze verify` accepts packaging/memstate.service as installed (its ExecStart
present and executable), and `systemd-analyze security --offline=yes` rates its exposure at most
4.0, while the paths memstate must write (the state directory, the cgroup tree) stay writable.
Method: a scratch root holding the distribution's unit files, the unit and an executable where
the unit's ExecStart points (systemd-analyze --root), so nothing on the machine is touched. CI
installs systemd when it is missing (.ci/run); without systemd-analyze the test fails under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "memstate.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 4.0


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("systemd-analyze is missing under CI (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


def _exec_start() -> str:
    match = re.search(r"^ExecStart=(\S+)", UNIT.read_text(), re.M)
    assert match, "no ExecStart= in the unit"
    return match[1]


def _executables() -> list[str]:
    """Every program the unit runs (ExecStart=, ExecReload=, ...)."""
    return re.findall(r"^Exec\w+=[-@:+!]*(\S+)", UNIT.read_text(), re.M)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A scratch root with the distribution's units, ours, and our ExecStart binary."""
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} is missing: no systemd units to verify against")
    shutil.copytree(SYSTEM_UNITS, tmp_path / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    for program in _executables():
        binary = tmp_path / program.lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    return tmp_path


def test_unit_verifies(unit_root: Path) -> None:
    result = subprocess.run(
        [_analyze(), "verify", f"--root={unit_root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_verify_notices_a_missing_binary(unit_root: Path) -> None:
    """The check above is real: without the ExecStart binary, verify fails."""
    (unit_root / _exec_start().lstrip("/")).unlink()
    result = subprocess.run(
        [_analyze(), "verify", f"--root={unit_root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "not executable" in result.stdout + result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


def test_unit_exposure_is_at_most_four(tmp_path: Path) -> None:
    assert exposure(UNIT) <= MAX_EXPOSURE


def test_an_unhardened_unit_scores_worse(tmp_path: Path) -> None:
    """The scoring is live: the same unit without its hardening block rates above the limit."""
    text = UNIT.read_text().split("# Hardening", 1)[0]
    bare = tmp_path / "bare.service"
    bare.write_text(text + "\n[Install]\nWantedBy=multi-user.target\n")
    assert exposure(bare) > MAX_EXPOSURE


def test_memstate_can_still_write_its_state_and_the_cgroup_tree() -> None:
    """ProtectSystem=strict makes everything read-only but ReadWritePaths=; these must stay."""
    text = UNIT.read_text()
    writable = set(re.findall(r"^ReadWritePaths=(.*)$", text, re.M)[0].split())
    assert {"/sys/fs/cgroup", "/var/lib/memstate"} <= writable
    # Either of these would remount /sys/fs/cgroup read-only and fail every write.
    assert not re.search(r"^Protect(ControlGroups|KernelTunables)=yes", text, re.M)


def test_documentation_points_at_the_pages_the_install_puts_there() -> None:
    """Issue 14, item 7: a real `Documentation=`: each is a file the install of docs/operations.md
    (a venv at ExecStart's prefix) writes, because the wheel ships docs/ as share/doc/memstate."""
    import tomllib

    text = UNIT.read_text()
    prefix = _exec_start().removesuffix("/bin/memstate")
    assert f"python3 -m venv {prefix}\n" in (ROOT / "docs" / "operations.md").read_text()
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    installed_docs = shared["targets"]["wheel"]["shared-data"]["docs"]
    pages = re.findall(r"^Documentation=(\S+)$", text, re.M)
    assert pages
    for page in pages:
        assert page.startswith(f"file:{prefix}/{installed_docs}/"), page
        assert (ROOT / "docs" / page.rsplit("/", 1)[1]).is_file(), page
