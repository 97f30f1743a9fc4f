"""`memstate run`: start the node daemon (see memstate.node.daemon and docs/operations.md)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from memstate.cli.commands.common import add_location_arguments, resolve_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the node daemon",
        description=(
            "Run memstate as a node daemon: recover the event log, observe the NUMA topology, "
            "load the config, readmit the pods of the manifest directory, converge the cgroup "
            "tree, then keep doing so as manifests, the config and the tree change. Stops "
            "cleanly on SIGTERM/SIGINT (final checkpoint, exit 0); SIGHUP reloads the config. "
            "Under systemd (Type=notify) it reports READY=1 once the tree has converged."
        ),
        epilog=(
            "example (the bundled demo node, no root needed):\n"
            "  memstate run --config memstate/examples/node/kubelet-config.yaml \\\n"
            "      --topology-file memstate/examples/node/topology.yaml \\\n"
            "      --manifest-dir demo/manifests --cgroup-sim demo/cgroup --state-dir demo/state"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location_arguments(parser, manifests=True)
    tree = parser.add_mutually_exclusive_group()
    tree.add_argument(
        "--cgroup-root",
        type=Path,
        default=None,
        help="the cgroup v2 tree memstate owns: the cgroup2 mount or a delegated subtree "
        "(default /sys/fs/cgroup)",
    )
    tree.add_argument(
        "--cgroup-sim",
        type=Path,
        default=None,
        help="converge a directory-backed simulated cgroup v2 tree instead (demo, tests)",
    )
    parser.add_argument(
        "--topology-file",
        type=Path,
        default=None,
        help="read the NUMA topology from this file instead of /sys/devices/system/node",
    )
    parser.add_argument(
        "--metrics-address",
        default=None,
        help='host:port of the Prometheus endpoint, or "off" (default 127.0.0.1:9473)',
    )
    parser.add_argument(
        "--pod-removal",
        choices=["wait", "kill"],
        default=None,
        help="a removed pod whose cgroup is still populated: wait for it to empty, or "
        "cgroup.kill it (default wait)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="stderr log level (default info; info has one line per decision)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="stderr log lines as text or as JSON objects for log shippers (default text)",
    )
    parser.set_defaults(handler=run)


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """Settings given on the command line (or `$MEMSTATE_STATE_DIR`) win over the config file,
    at start and at every reload (docs/cli.md "Where a node's files are")."""
    env_state = os.environ.get("MEMSTATE_STATE_DIR")
    mapping = {
        "cgroup_root": args.cgroup_root,
        "cgroup_sim": args.cgroup_sim,
        "topology_file": args.topology_file,
        "metrics_address": args.metrics_address,
        "pod_removal": args.pod_removal,
        "state_dir": args.state_dir or (Path(env_state) if env_state else None),
        "manifest_dir": args.manifest_dir,
    }
    chosen: dict[str, object] = {
        name: value for name, value in mapping.items() if value is not None
    }
    if args.cgroup_root is not None:
        # The flag names the real tree: a `cgroupSim` in the config must not win over it.
        chosen["cgroup_sim"] = None
    return chosen


def run(args: argparse.Namespace) -> int:
    from memstate.node.journal import configure_logging

    configure_logging(args.log_level, args.log_format)
    # httpx logs every request at INFO: a kubelet poll every few seconds would flood the journal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from memstate.node.daemon import Daemon, run_daemon

    settings = resolve_settings(args)
    cli = {
        name: value.absolute() if isinstance(value, Path) else value
        for name, value in overrides(args).items()
    }
    import msgspec

    settings = msgspec.structs.replace(settings, **cli)
    run_daemon(Daemon(settings, cli_overrides=cli))
    return 0
