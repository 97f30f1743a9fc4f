"""Tables fit the terminal: cut text columns with an ellipsis, never numbers; --wide keeps all.

Goal: `audit pod` rows of ~400 columns at COLUMNS=100 (issue: tables ignore the terminal width)
fit in 100 columns, and nothing is lost for a program or a person who asks for --wide.
Method: render_table with explicit widths; then the real CLI as a subprocess with COLUMNS set,
with and without --wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from memstate.present.output import ELLIPSIS, render_table

REPO = Path(__file__).resolve().parents[2]
LONG = "x" * 300


def test_a_wide_table_is_cut_to_the_width() -> None:
    rows = [["pod-a", LONG, 1234567], ["pod-b", "short", 7]]
    text = render_table(["POD", "REASON", "BYTES"], rows, width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert ELLIPSIS in lines[1]
    # Numbers are never cut, names shorter than the minimum are kept.
    assert "1234567" in lines[1] and lines[1].startswith("pod-a")


def test_without_a_width_nothing_is_cut() -> None:
    text = render_table(["POD", "REASON"], [["pod-a", LONG]], width=None)
    assert LONG in text and ELLIPSIS not in text


def test_a_table_that_fits_is_unchanged() -> None:
    rows = [["a", "b", 1]]
    assert render_table(["X", "Y", "Z"], rows, width=200) == render_table(["X", "Y", "Z"], rows)


def test_the_widest_column_gives_way_first() -> None:
    text = render_table(["A", "B"], [["a" * 50, "b" * 20]], width=60)
    first = text.splitlines()[1]
    assert "b" * 20 in first  # the narrower column kept whole
    assert len(first) <= 60


def run_cli(*args: str, columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    result = subprocess.run(
        [sys.executable, "-m", "memstate", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def test_audit_pod_fits_columns_100_and_wide_keeps_everything() -> None:
    scenario = str(REPO / "replay" / "audit-night-shift.jsonl")
    narrow = run_cli("audit", "pod", "etl", "--log", scenario, "-o", "table", columns="100")
    wide = run_cli("audit", "pod", "etl", "--log", scenario, "-o", "table", "--wide", columns="100")
    assert max(map(len, narrow.splitlines())) <= 100
    assert max(map(len, wide.splitlines())) > 100  # the rows really were wider
    assert len(narrow.splitlines()) == len(wide.splitlines())
