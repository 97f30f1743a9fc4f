"""CLI subcommands, one module per command family.

Each module exposes `register(subparsers)` which adds its parser(s) and sets `handler` (a function
`(argparse.Namespace) -> int`) with `set_defaults`. Modules import heavy dependencies (trio,
prometheus_client, matplotlib) inside their handlers, never at import time, so
`memstate --help` and the read-only tools start fast.
"""

COMMAND_MODULES = (
    "memstate.cli.commands.run_cmd",
    "memstate.cli.commands.pods_cmd",
    "memstate.cli.commands.plan_cmd",
    "memstate.cli.commands.log_cmd",
    "memstate.cli.commands.replay_cmd",
    "memstate.cli.commands.audit_cmd",
    "memstate.cli.commands.demo_cmd",
    "memstate.cli.commands.kubelet_cmd",
)
