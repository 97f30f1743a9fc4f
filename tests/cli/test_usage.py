"""`memstate --help` and `memstate` without a command, as argparse programs do it: help on stdout
and exit 0 when asked for; a missing command is a usage error, the usage line and one error line
on stderr, exit 2. The real console entry point runs in a subprocess (exit code, streams); the
command groups (`memstate log`, ...) are found by walking the parser, so a group added later is
held to the same rule."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memstate.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _memstate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )


def test_help_goes_to_stdout_and_exits_0() -> None:
    result = _memstate("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: memstate ")
    assert "exit codes:" in result.stdout  # the full help, not the usage line alone
    assert result.stderr == ""


def test_no_command_is_a_usage_error_on_stderr_exit_2() -> None:
    result = _memstate()
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("usage: memstate ")
    errors = [line for line in lines if line.startswith("memstate: error: ")]
    assert errors == [lines[-1]], result.stderr
    assert "command" in errors[0] and "--help" in errors[0]
    assert "exit codes:" not in result.stderr  # one error line, not the whole help


def _command_groups() -> list[str]:
    """Every command that only holds subcommands (`log`, `audit`, ...), as argv prefixes."""
    groups: list[str] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                if prefix:
                    groups.append(" ".join(prefix))
                for name, child in action.choices.items():
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return groups


def test_there_are_command_groups_to_check() -> None:
    assert {"log", "audit"} <= set(_command_groups())


@pytest.mark.parametrize("group", _command_groups())
def test_a_command_group_without_its_command_is_a_usage_error(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(group.split())
    except SystemExit as exit_:  # a group whose subcommand argparse itself requires
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"usage: memstate {group} ")
    assert lines[-1].startswith(f"memstate {group}: error: ")
