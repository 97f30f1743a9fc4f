"""Issue 14: no command prints a traceback for an operator error.

Every command is run with a wrong path, a missing file, a malformed input and (where it writes)
an unwritable directory: one `memstate: error:` line on stderr, the exit code of the error's
class (docs/cli.md, `memstate --help`: 65 input, 74 file access, 78 config, 1 no state), and
no traceback. Real subprocesses; the unwritable directory is enforced for root by dropping
CAP_DAC_OVERRIDE (as tests/cli/test_file_errors.py does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "replay" / "memory-qos-tiered.jsonl"
SETPRIV = shutil.which("setpriv")

# (arguments with {bad} = malformed file, {missing} = a path that does not exist, {ro} = an
# unwritable directory, {scenario} = a valid recorded scenario; expected exit code)
CASES: list[tuple[str, int]] = [
    ("status --state-dir {missing}", 65),
    ("status --config {missing}.yaml", 78),
    ("status --config {bad}", 78),
    ("admit {missing}.yaml", 65),
    ("admit {bad}", 65),
    ("remove x --config {bad}", 78),
    ("remove x --manifest-dir {missing}", 65),
    ("topology --topology-file {missing}", 65),
    ("topology --topology-file {bad}", 65),
    ("plan --state-dir {missing}", 65),
    ("diff --scenario {bad}", 65),
    ("plan --scenario {missing}", 65),
    ("log verify --state-dir {missing}", 65),
    ("log dump --state-dir {missing}", 65),
    ("log dump --config {missing}.yaml", 78),
    ("log prune --state-dir {missing}", 65),
    ("log export --state-dir {missing}", 65),
    ("log import {missing} --state-dir {ro}", 65),
    ("log import {bad} --state-dir {ro}", 65),
    ("log import {scenario} --state-dir {ro}", 74),
    ("replay {missing}", 65),
    ("replay {bad}", 65),
    ("replay bisect {missing} --against {missing}", 65),
    ("replay anonymise {bad} {ro}/out.jsonl", 65),
    ("audit timeline --state-dir {missing}", 65),
    ("audit timeline --config {bad}", 78),
    ("audit timeline --log {bad}", 65),
    ("audit export -f {ro}/x.jsonl --log {scenario}", 74),
    ("run --config {missing}.yaml", 78),
    ("run --config {bad}", 78),
    ("demo --dir {ro}/demo --for 1", 74),
    ("demo --simulate --example-dir {missing}", 65),
]


@pytest.mark.parametrize(("arguments", "exit_code"), CASES, ids=[c[0] for c in CASES])
def test_operator_error_is_one_line_with_its_exit_code(
    tmp_path: Path, arguments: str, exit_code: int
) -> None:
    bad = tmp_path / "bad"
    bad.write_text("{not: [valid\n")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    words = arguments.format(
        bad=bad, missing=tmp_path / "missing", ro=read_only, scenario=SCENARIO
    ).split()
    prefix: list[str] = []
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        prefix = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "memstate", *words],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
        check=False,
    )
    read_only.chmod(0o755)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memstate: error: "), result.stderr
    assert result.returncode == exit_code, result.stderr


def _state_dir_commands() -> list[tuple[str, list[str]]]:
    """Every leaf command with a --state-dir that reads an existing one (the walk of
    tests/cli/test_item6_every_command.py, so a new command is covered), with the arguments it
    needs besides."""
    from tests.cli.test_item6_every_command import LEAVES, options_of

    # These create the state directory or wait on a daemon that would: not readers.
    writers = {"run", "admit", "remove", "log import", "import kubelet-state"}
    needs = {
        "log repair": ["--point-in-time"],
        "audit pod": ["web"],
        "audit numa": ["0"],
        "audit plot": ["-f", "x.png"],
    }
    return [
        (words, needs.get(words, []))
        for words, parser in sorted(LEAVES.items())
        if "--state-dir" in options_of(parser) and words not in writers
    ]


@pytest.mark.parametrize(
    ("words", "extra"), _state_dir_commands(), ids=[w for w, _ in _state_dir_commands()]
)
def test_a_missing_state_directory_is_exit_65_from_every_command(
    tmp_path: Path, words: str, extra: list[str]
) -> None:
    """One convention (docs/cli.md "Conventions"): a state directory that is not there is an
    operator input error, 65, whichever command is given it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTATE_")}
    env["PYTHONPATH"] = str(ROOT)
    missing = tmp_path / "missing"
    argv = [*words.split(), *extra, "--state-dir", str(missing)]
    result = subprocess.run(
        [sys.executable, "-m", "memstate", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"memstate: error: {missing}"), result.stderr
    assert result.returncode == 65, result.stderr
