"""Rendering command output: aligned tables for people, JSON / JSON lines for programs.

Conventions shared by every command:
- `-o/--output table|json|jsonl`; the default is a table on a TTY and JSON lines (or JSON, for
  single documents) when stdout is a pipe, so `memstate log dump | jq` just works;
- JSON is produced from plain objects with stable, documented keys (docs/cli.md); timestamps are
  UTC ISO 8601 with a `Z`, byte counts are integers;
- tables fit the terminal: on a terminal (or with COLUMNS set) the widest text columns are cut
  with an ellipsis until the table fits; numbers are never cut; `--wide` keeps every cell whole.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TextIO

import msgspec

OutputFormat = Literal["table", "json", "jsonl"]

_JSON = msgspec.json.Encoder(order="sorted")

# The width tables are fitted to, set once per command by `configure_tables` (None: no limit).
_TABLE_WIDTH: ContextVar[int | None] = ContextVar("memstate_table_width", default=None)
# A column is never cut below this many characters (or its header, if shorter).
MIN_COLUMN_WIDTH = 8
ELLIPSIS = "…"


QUIET_HELP = (
    "quiet: nothing on stdout unless -o is given (then the summary only), no notes or progress "
    "on stderr; errors are still printed"
)


def add_output_argument(
    parser: argparse.ArgumentParser, *, jsonl: bool = True, quiet_help: str = QUIET_HELP
) -> None:
    """Add `-o/--output` with the house choices, `--wide` and `-q/--quiet` (every command that
    prints a result has all three: docs/cli.md "Conventions")."""
    choices = ["table", "json", "jsonl"] if jsonl else ["table", "json"]
    parser.add_argument(
        "-o",
        "--output",
        choices=choices,
        default=None,
        help="output format (default: table on a terminal, "
        + ("jsonl" if jsonl else "json")
        + " otherwise)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="tables: keep every cell whole instead of fitting the terminal width",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def is_quiet(args: argparse.Namespace) -> bool:
    """`-q` was given."""
    return bool(getattr(args, "quiet", False))


@contextlib.contextmanager
def quiet_stdout(args: argparse.Namespace) -> Iterator[None]:
    """With `-q` and no explicit `-o`, whatever the command prints on stdout is dropped (the
    one rule that makes `-q` mean the same for every command); otherwise nothing changes."""
    if not is_quiet(args) or getattr(args, "output", None) is not None:
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield


def note(args: argparse.Namespace, text: str) -> None:
    """A line for the operator about what a command did, on stderr; nothing with `-q`."""
    if not is_quiet(args):
        sys.stderr.write(text + "\n")


def report(args: argparse.Namespace, document: Any, text: str) -> None:
    """The result of a command whose product is a file (an export, a plot, an import): with
    `-o json` the document on stdout, otherwise `text` as a note on stderr."""
    if getattr(args, "output", None) == "json":
        write_json(document)
    else:
        note(args, text)


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The width to fit tables to: COLUMNS if set, else the terminal's, else None (a pipe)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    out = stream or sys.stdout
    try:
        if out.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        return None
    return None


def configure_tables(*, wide: bool, stream: TextIO | None = None) -> None:
    """Fit this command's tables to the terminal, or not at all with `--wide`."""
    _TABLE_WIDTH.set(None if wide else terminal_width(stream))


def output_format(
    args: argparse.Namespace, *, piped: OutputFormat = "jsonl", stream: TextIO | None = None
) -> OutputFormat:
    """The format asked for with `-o`, else a table on a terminal and `piped` otherwise."""
    chosen: OutputFormat | None = getattr(args, "output", None)
    if chosen is not None:
        return chosen
    return "table" if (stream or sys.stdout).isatty() else piped


def to_plain(value: Any) -> Any:
    """Structs, tuples and dicts as plain JSON-able objects."""
    return msgspec.to_builtins(value, order="sorted")


def json_text(value: Any) -> str:
    """One JSON document, keys sorted, no trailing newline."""
    return _JSON.encode(to_plain(value)).decode()


def write_json(value: Any, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json_text(value) + "\n")


def write_jsonl(values: Iterable[Any], stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    for value in values:
        out.write(json_text(value) + "\n")


def render_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, width: int | None = None
) -> str:
    """Left-aligned columns separated by two spaces; numbers right-aligned.

    With a `width` (default: what `configure_tables` set), the widest text columns are narrowed,
    their cells cut with an ellipsis, until the table fits; numeric columns keep their width.
    """
    text_rows = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        bool(text_rows) and all(_is_number(row[i]) for row in text_rows if row[i])
        for i in range(len(headers))
    ]
    limit = _TABLE_WIDTH.get() if width is None else width
    if limit is not None:
        typical = [_median_length([row[i] for row in text_rows]) for i in range(len(headers))]
        widths = _fit(widths, numeric, typical, limit)

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else _cut(cell, widths[i]).ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in text_rows)])


def write_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], stream: TextIO | None = None
) -> None:
    (stream or sys.stdout).write(render_table(headers, rows) + "\n")


def _fit(widths: list[int], numeric: list[bool], typical: list[int], limit: int) -> list[int]:
    """Narrow the widest text column, a character at a time, until the table fits.

    First no column goes below its typical (median) cell, so uniform columns such as times and
    kinds stay whole while free-text columns give way; then, if that is not enough, down to
    MIN_COLUMN_WIDTH.
    """
    widths = list(widths)
    excess = sum(widths) + 2 * (len(widths) - 1) - limit
    for floor in (
        [
            w if n else min(w, max(t, MIN_COLUMN_WIDTH))
            for n, w, t in zip(numeric, widths, typical, strict=True)
        ],
        [w if n else min(w, MIN_COLUMN_WIDTH) for n, w in zip(numeric, widths, strict=True)],
    ):
        while excess > 0:
            shrinkable = [i for i, w in enumerate(widths) if w > floor[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: (widths[i], -i))
            widths[widest] -= 1
            excess -= 1
    return widths  # if still too wide, the terminal wraps the rest


def _median_length(cells: Sequence[str]) -> int:
    lengths = sorted(len(cell) for cell in cells)
    return lengths[len(lengths) // 2] if lengths else 0


def _cut(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: max(width - 1, 0)] + ELLIPSIS


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "-"
    return str(value)


def _is_number(text: str) -> bool:
    return text.lstrip("-").replace(".", "", 1).isdigit()


def format_ts(ts_ns: int) -> str:
    """UTC ISO 8601 with millisecond precision and a Z."""
    moment = _dt.datetime.fromtimestamp(ts_ns // 10**9, tz=_dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ns // 10**6 % 1000:03d}Z"


def human_bytes(size_bytes: int) -> str:
    """1536 MiB → ``1.5Gi``; exact powers stay short (``512Mi``)."""
    value = float(size_bytes)
    for suffix in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024 or suffix == "Pi":
            if suffix == "":
                return str(size_bytes)
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
        value /= 1024
    return str(size_bytes)
