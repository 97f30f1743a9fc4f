"""The `memstate` command line: argument parsing, one module per command group in `commands/`.

Nothing in memstate imports this package; it imports everything else.
"""

from memstate.cli.main import main

__all__ = ["main"]
