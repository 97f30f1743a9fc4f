"""The `memstate` command line: argument parsing, error reporting and exit codes.

Subcommands live in `memstate.cli.commands.*` (see `COMMAND_MODULES`); a module that is not present
yet is skipped, so the CLI grows with the project. Every `MemstateError` is printed as one line
on stderr and mapped to its exit code, and so is an `OSError` (a file the command cannot use:
exit 74); anything else is a bug and gets a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from memstate import __version__
from memstate.cli.commands import COMMAND_MODULES
from memstate.cli.commands.common import missing_command
from memstate.core.errors import EXIT_FAILURE, FileAccessError, MemstateError
from memstate.present.output import configure_tables, quiet_stdout

EPILOG = """\
exit codes:
  0   ok
  1   failure, or a divergence found by replay/verify
  2   usage error
  65  log, checkpoint or input data corruption, or no state directory where one was
      named (EX_DATAERR)
  69  cgroup v2 or a required controller missing (EX_UNAVAILABLE)
  70  internal invariant violated: a bug (EX_SOFTWARE)
  74  I/O error on the log (a failed fsync), or a file a command reads or writes cannot be
      used: permission denied, disk full (EX_IOERR)
  75  the state directory, or the cgroup tree `run` converges, is locked by another
      memstate (EX_TEMPFAIL)
  78  bad configuration (EX_CONFIG)

See docs/ for the model, the on-disk format and operations.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="memstate",
        description=(
            "NUMA memory pinning (kubelet Memory Manager, Static policy) and cgroup v2 Memory QoS "
            "for one node, as an event-sourced state machine."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memstate {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command family not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `memstate` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    configure_tables(wide=bool(getattr(args, "wide", False)))
    if handler is None:
        return missing_command(parser)
    try:
        with quiet_stdout(args):
            result = handler(args)
    except MemstateError as exc:
        print(f"memstate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `memstate log dump | head`: not an error.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # A file a command reads or writes (permission denied, disk full, not a directory): the
        # operator needs the path and the reason, not a traceback.
        error = FileAccessError.from_os_error(exc)
        print(f"memstate: error: {error}", file=sys.stderr)
        return error.exit_code
    return int(result) if result is not None else EXIT_FAILURE
