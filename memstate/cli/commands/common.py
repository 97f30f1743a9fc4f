"""Options and helpers shared by the commands that work on a node's state directory."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from memstate.core.errors import EXIT_USAGE, ConfigError, InputError, MemstateError
from memstate.node.inputs import read_document
from memstate.node.settings import Settings, config_directory, settings_from_object

if TYPE_CHECKING:
    from memstate.history.replay import LogSource

DEFAULT_CONFIG = Path("/etc/memstate/config.yaml")
DEFAULT_STATE_DIR = "/var/lib/memstate"


def add_location_arguments(parser: argparse.ArgumentParser, *, manifests: bool = False) -> None:
    """`--config`, `--state-dir` (and `--manifest-dir`): where a node's memstate lives."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the config file (KubeletConfiguration fields plus a `memstate:` section); its "
        "memstate.stateDir/manifestDir are used unless given here; relative paths in it are "
        "relative to its directory, those given here to the working directory "
        f"(default: $MEMSTATE_CONFIG, else {DEFAULT_CONFIG} if it exists)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the state directory (default: $MEMSTATE_STATE_DIR, the config, /var/lib/memstate)",
    )
    if manifests:
        parser.add_argument(
            "--manifest-dir",
            type=Path,
            default=None,
            help="the manifest directory the daemon watches (default: the config, "
            "/etc/memstate/pods)",
        )


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """`--config` alone, for commands that take their state directory in their own way."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the config file whose memstate.stateDir is used unless --state-dir is given "
        f"(default: $MEMSTATE_CONFIG, else {DEFAULT_CONFIG} if it exists)",
    )


def state_dir_of(args: argparse.Namespace) -> Path:
    """The state directory, resolved like every command does (docs/cli.md "Where a node's files
    are"): `--state-dir`, else `$MEMSTATE_STATE_DIR`, else the config's `memstate.stateDir`
    (`--config`, else `$MEMSTATE_CONFIG`, else /etc/memstate/config.yaml if it exists), else
    /var/lib/memstate."""
    return resolve_settings(args).state_dir


class NoStateDir(InputError):
    """The state directory a command reads does not exist or holds no event log: an operator
    input error (a wrong --state-dir or config), exit 65 like every other input that cannot be
    read (docs/cli.md "Conventions")."""


class UsageError(MemstateError):
    """Options that parse but do not go together (exit 2, as argparse's own errors)."""

    exit_code = EXIT_USAGE


def require_state_dir(state_dir: Path) -> Path:
    """`state_dir`, if it is a memstate state directory (it has `log/`); else `NoStateDir`."""
    if not state_dir.is_dir():
        raise NoStateDir(
            "no such state directory (give --state-dir or --config, docs/cli.md)",
            source=str(state_dir),
        )
    if not (state_dir / "log").is_dir():
        raise NoStateDir(
            f"not a memstate state directory: no event log (no {state_dir / 'log'} directory)",
            source=str(state_dir),
        )
    return state_dir


def require_file_for_report(args: argparse.Namespace) -> None:
    """An export's `-o json` is the report of what it wrote to `-f FILE`; without a file the
    records themselves are stdout, and a report there would corrupt them."""
    if args.file is None and args.output == "json":
        raise UsageError(
            "-o json reports what an export wrote to -f FILE; without -f the JSON lines on "
            "stdout are the output"
        )


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """`--progress` / `--no-progress` for a command that can take more than a second."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="draw the progress bar on stderr even when stderr is not a terminal",
    )
    choice.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: one line on stderr, drawn only when stderr is a "
        "terminal and -q is not given, erased when done)",
    )


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether to draw a progress bar: `--progress`/`--no-progress`, else on a terminal unless
    `-q`."""
    chosen: bool | None = getattr(args, "progress", None)
    if chosen is not None:
        return chosen
    return sys.stderr.isatty() and not getattr(args, "quiet", False)


def progress_source(path: Path, *, label: str, enabled: bool) -> LogSource:
    """A `LogSource` over `path` that draws a progress bar (`label`) on stderr while a pass
    reads it, erased at the end of the pass; a plain `LogSource` when not `enabled`."""
    from memstate.history.replay import LogSource, Record
    from memstate.present.progress import Progress

    class ReportingSource(LogSource):
        """A LogSource that reports each record read to a progress bar."""

        def records(self, from_seq: int = 1) -> Iterator[Record]:
            progress = Progress(self.last_seq_estimate(), label=label, enabled=True)
            try:
                for record in super().records(from_seq):
                    progress.update(record[0].seq)
                    yield record
            finally:
                progress.close()

    return ReportingSource(path) if enabled else LogSource(path)


def memstate_command() -> str:
    """How to run memstate again from this shell, for hints meant to be pasted: `memstate` when
    that is on PATH, else the console script beside this interpreter (`.venv/bin/memstate`,
    relative to the working directory when it lies below it), else `python -m memstate`."""
    import shutil

    if shutil.which("memstate") is not None:
        return "memstate"
    script = Path(sys.executable).parent / "memstate"
    if not script.exists():
        return f"{sys.executable} -m memstate"
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def missing_command(parser: argparse.ArgumentParser) -> int:
    """`memstate` or a command group (`memstate log`) called without a command: argparse's form
    of a usage error (the usage line, then one error line, on stderr) and exit 2. `--help` is
    the way to the full help (stdout, exit 0)."""
    parser.print_usage(sys.stderr)
    print(
        f"{parser.prog}: error: a command is required ({parser.prog} --help lists them)",
        file=sys.stderr,
    )
    return EXIT_USAGE


def config_path(args: argparse.Namespace) -> Path | None:
    explicit: Path | None = getattr(args, "config", None)
    if explicit is not None:
        return explicit
    env = os.environ.get("MEMSTATE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Settings from defaults, the config file's `memstate:` section, env and flags."""
    settings = Settings()
    path = config_path(args)
    if path is not None:
        document = read_document(path, ConfigError)
        section = document.get("memstate") if isinstance(document, dict) else None
        settings = settings_from_object(
            section, source=str(path), base=settings, relative_to=config_directory(path)
        )
        settings = _replace(settings, config_file=path)
    env_state = os.environ.get("MEMSTATE_STATE_DIR")
    if env_state and getattr(args, "state_dir", None) is None:
        settings = _replace(settings, state_dir=Path(env_state))
    if getattr(args, "state_dir", None) is not None:
        settings = _replace(settings, state_dir=args.state_dir)
    if getattr(args, "manifest_dir", None) is not None:
        settings = _replace(settings, manifest_dir=args.manifest_dir)
    return settings


def _replace(settings: Settings, **changes: object) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, **changes)


# argparse treats `-1h` after `--since` as an unknown option unless it looks like a negative
# number; teach a parser that relative times are values too (`--since=-1h` always worked).
_RELATIVE_OR_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$|^-(\d+(\.\d+)?(ns|us|ms|s|m|h|d|w))+$")


def allow_relative_times(parser: argparse.ArgumentParser) -> None:
    """Let `--since -1h` parse: relative times are values, not options."""
    if hasattr(parser, "_negative_number_matcher"):  # CPython's argparse since 2.7
        parser._negative_number_matcher = _RELATIVE_OR_NUMBER


# --- argument types shared by the log, replay and audit commands ----------------------------------


def seq_number(text: str) -> int:
    """An argparse type: a sequence number (>= 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("sequence numbers are >= 0")
    return value


def time_value(text: str) -> int:
    """An argparse type: ISO 8601 or a time relative to now (`-1h`), as ns since the epoch."""
    import time

    from memstate.cli.timeparse import TimeFormatError, parse_time_ns

    try:
        return parse_time_ns(text, now_ns=time.time_ns())
    except TimeFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def event_kinds(text: str) -> frozenset[str]:
    """An argparse type: a comma-separated list of event kinds, all known."""
    from memstate.core.events import EVENT_KINDS

    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(kinds - EVENT_KINDS.keys())
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(unknown) or '(none given)'}; known: "
            + ", ".join(sorted(EVENT_KINDS))
        )
    return kinds
