"""The NRI plugin as its own process (for the SIGKILL test): python -m tests.nri.plugin_process
SOCKET. Decisions come from the core reducer over tests.nri.scenario's node."""

from __future__ import annotations

import sys

import trio

from memstate.nri.adapter import TargetsDecider
from memstate.nri.plugin import NriPlugin, PluginSettings
from tests.nri.scenario import node_decisions


def main() -> None:
    decisions = node_decisions()
    settings = PluginSettings(socket=sys.argv[1], index="42", backoff_initial=0.01)
    trio.run(NriPlugin(settings, TargetsDecider(lambda: decisions)).run)


if __name__ == "__main__":
    main()
