"""`memstate demo`: the daemon on the bundled example node, without root.

By default it lays out a node in a local directory (`./demo`): the example manifests, a config
pointing at a simulated cgroup tree in `demo/cgroup`, the example two-NUMA-node topology; then it
runs the real daemon there in the foreground, prints what was decided once it is ready and where
to look (status command, metrics URL, the cgroup files), and keeps running until Ctrl-C (or
`--for SECONDS`). Running it again restarts the same node: pods come back from the log.

`--simulate` skips the daemon: it feeds the example to the reducer as events (first boot, then a
restart with the pods coming back in reverse order) and prints the decisions and cgroup targets.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from memstate import __version__
from memstate.cli.commands.common import memstate_command
from memstate.core.errors import ConfigError
from memstate.core.events import (
    ConfigLoaded,
    DaemonRestarted,
    DaemonStarted,
    Event,
    PodAdmissionRequested,
    ReadmissionCompleted,
    TopologyObserved,
)
from memstate.core.reducer import step
from memstate.core.state import REDUCER_VERSION, State, state_hash
from memstate.core.state_targets import state_targets
from memstate.node.inputs import load_config, load_manifest, load_topology, manifest_files
from memstate.present.output import add_output_argument, output_format, write_json, write_table
from memstate.present.views import (
    NUMA_HEADERS,
    POD_HEADERS,
    TARGET_HEADERS,
    describe_decision,
    numa_document,
    numa_rows,
    pod_rows,
    pods_document,
    target_rows,
    targets_document,
)
from memstate.store.fsio import atomic_write

DEMO_METRICS_PORT = 9473


def example_dir() -> Path:
    """The example node shipped inside the package."""
    return Path(str(resources.files("memstate") / "examples" / "node"))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the daemon on the bundled example node (no root needed)",
        description=(
            "Lay out the bundled example node (2 NUMA nodes, 5 pods) in a local directory and "
            "run the memstate daemon on it, with a simulated cgroup tree in that directory. "
            "Prints the decisions once the daemon is ready and where to look; stops on Ctrl-C. "
            "With --simulate, no daemon: the example is fed to the reducer (first boot, then a "
            "restart with the pods in reverse order) and the decisions and targets are printed."
        ),
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("demo"),
        help="where to lay out the demo node (default ./demo; reused if it exists)",
    )
    parser.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop the daemon after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="do not start the daemon; show the reducer's decisions for the example",
    )
    parser.add_argument(
        "--example-dir",
        type=Path,
        default=None,
        help="a directory with topology.yaml, kubelet-config.yaml and manifests/ "
        "(default: the bundled example)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help=f"serve metrics on 127.0.0.1:PORT; 0: any free port, picked when the daemon binds "
        f"(default: the config's metricsAddress, written as {DEMO_METRICS_PORT} or, if that is "
        "taken, a free port when the demo lays out its directory)",
    )
    add_output_argument(parser, jsonl=False)
    parser.set_defaults(handler=run)


def events_for(directory: Path) -> list[Event]:
    """First boot from the example files, then a restart with reverse-order readmission."""
    topology = load_topology(directory / "topology.yaml")
    config = load_config(directory / "kubelet-config.yaml")
    pods = [load_manifest(path) for path in sorted(manifest_files(directory / "manifests"))]
    started = DaemonStarted(memstate_version=__version__, reducer_version=REDUCER_VERSION)
    events: list[Event] = [
        started,
        TopologyObserved(topology=topology, source=str(directory / "topology.yaml")),
        ConfigLoaded(config=config, source=str(directory / "kubelet-config.yaml")),
    ]
    events.extend(PodAdmissionRequested(pod=p, source=f"manifests/{p.name}.yaml") for p in pods)
    events.extend([started, DaemonRestarted()])
    events.extend(
        PodAdmissionRequested(pod=p, source=f"manifests/{p.name}.yaml") for p in reversed(pods)
    )
    events.append(ReadmissionCompleted())
    return events


def run(args: argparse.Namespace) -> int:
    if args.simulate:
        return run_simulation(args)
    return run_daemon_demo(args)


def run_simulation(args: argparse.Namespace) -> int:
    directory = args.example_dir or example_dir()
    state = State()
    transitions: list[dict[str, Any]] = []
    for seq, event in enumerate(events_for(directory), start=1):
        transition = step(state, event)
        state = transition.state
        transitions.append(
            {
                "seq": seq,
                "event": event.kind,
                "decisions": [describe_decision(d) for d in transition.decisions],
            }
        )
    targets = state_targets(state)
    if targets is None:
        # The reducer refused the example's topology or config (its reasons are in the
        # transitions): there is nothing to show.
        raise ConfigError(
            "the example's topology and config did not come into force; nothing to simulate",
            source=str(directory),
        )
    if output_format(args, piped="json") == "json":
        write_json(
            {
                "transitions": transitions,
                "numa": numa_document(state),
                "pods": pods_document(state),
                "targets": targets_document(targets),
                "state_hash": state_hash(state),
            }
        )
        return 0
    out = sys.stdout
    out.write(f"memstate demo: example node from {directory}\n\n")
    rows = []
    for item in transitions:
        decisions = item["decisions"] or ["-"]
        for index, text in enumerate(decisions):
            rows.append(
                [item["seq"] if index == 0 else "", item["event"] if index == 0 else "", text]
            )
    write_table(["SEQ", "EVENT", "DECISION"], rows)
    out.write("\nNUMA nodes after the restart (identical to before it):\n")
    write_table(NUMA_HEADERS, numa_rows(state))
    out.write("\nPods:\n")
    write_table(POD_HEADERS, pod_rows(state))
    out.write("\nCgroup targets (what `memstate run` converges the tree to):\n")
    write_table(TARGET_HEADERS, target_rows(targets))
    for warning in targets.warnings:
        out.write(f"warning: {warning}\n")
    out.write(
        f"\nstate hash {state_hash(state)}. Next: `{memstate_command()} replay "
        "replay/restart-any-order.jsonl`"
        " replays a recorded scenario; docs/model.md explains what you see.\n"
    )
    return 0


# --- the daemon demo ------------------------------------------------------------------------------


def lay_out(node_dir: Path, example: Path, metrics_port: int) -> Path:
    """Create (or reuse) the demo node; returns its config file."""
    import shutil

    import yaml

    manifests = node_dir / "manifests"
    if not manifests.exists():
        manifests.mkdir(parents=True)
        for path in sorted(manifest_files(example / "manifests")):
            shutil.copy(path, manifests / path.name)
    topology = node_dir / "topology.yaml"
    if not topology.exists():
        shutil.copy(example / "topology.yaml", topology)
    path = node_dir / "config.yaml"
    if path.exists():
        # Written by an earlier demo and perhaps edited since: the user's file wins, and a second
        # demo refused by the lock (exit 75) must not touch the running one's config either.
        return path
    config = yaml.safe_load((example / "kubelet-config.yaml").read_text())
    config["memstate"] = {
        "stateDir": str((node_dir / "state").absolute()),
        "manifestDir": str(manifests.absolute()),
        "cgroupSim": str((node_dir / "cgroup").absolute()),
        "topologyFile": str(topology.absolute()),
        "metricsAddress": f"127.0.0.1:{metrics_port}",
        "rescanSeconds": 2,
        "resyncSeconds": 10,
    }
    text = (
        "# Written once by `memstate demo`: the example KubeletConfiguration plus memstate's own\n"
        "# section pointing at this directory. Edit it while the demo runs to see a reload; a\n"
        "# later `memstate demo` keeps your edits (delete the file to get the defaults back).\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    atomic_write(path, text.encode(), fsync=True)
    return path


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535)")
    return int(text)


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def run_daemon_demo(args: argparse.Namespace) -> int:
    import logging

    from memstate.cli.commands.common import resolve_settings
    from memstate.node.daemon import Daemon, run_daemon

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    node_dir: Path = args.dir
    port = args.metrics_port
    config = lay_out(
        node_dir,
        args.example_dir or example_dir(),
        port if port is not None else _free_port(DEMO_METRICS_PORT),
    )
    settings = resolve_settings(argparse.Namespace(config=config, state_dir=None))
    flags: dict[str, object] = {}
    if port is not None:
        # The flag beats the config (an earlier demo's, perhaps edited), as everywhere
        # (docs/cli.md).
        flags["metrics_address"] = f"127.0.0.1:{port}"
        settings = msgspec.structs.replace(settings, **flags)
    me = memstate_command()
    out = sys.stdout
    as_json = args.output == "json"
    if not as_json:
        out.write(f"memstate demo: running the daemon on the example node in {node_dir}/\n")

    def ready(daemon: Daemon) -> None:
        state = daemon.state
        metrics = daemon.metrics_bound
        if as_json:
            write_json(
                {
                    "node_dir": str(node_dir),
                    "config": str(config),
                    "state_dir": str(settings.state_dir),
                    "manifest_dir": str(settings.manifest_dir),
                    "cgroup_tree": str(settings.cgroup_sim or settings.cgroup_root),
                    "metrics_address": metrics,
                    "seq": daemon.last_seq,
                    "pods": pods_document(state),
                    "numa": numa_document(state),
                }
            )
            out.flush()
            return
        out.write("\nReady. What was decided:\n")
        write_table(POD_HEADERS, pod_rows(state))
        out.write("\nNUMA nodes:\n")
        write_table(NUMA_HEADERS, numa_rows(state))
        state_dir = settings.state_dir
        out.write(
            "\nWhere to look (in another terminal):\n"
            f"  {me} status --state-dir {state_dir}       pods, NUMA accounting, targets\n"
            + (f"  curl -s http://{metrics}/metrics        Prometheus metrics\n" if metrics else "")
            + f"  cat {settings.cgroup_sim or settings.cgroup_root}/kubepods/memory.min"
            "       the simulated cgroup tree\n"
            f"  {me} log dump --state-dir {state_dir}     the event log\n"
            f"  {me} audit timeline --state-dir {state_dir}\n"
            f"Drop a Pod manifest into {settings.manifest_dir}/ to admit it, delete one to remove "
            f"it; edit {config} to reload.\n"
            f"Stop with Ctrl-C; run `{me} demo` again to restart the node from its log.\n"
        )
        out.flush()

    run_daemon(
        Daemon(settings, cli_overrides=flags, on_ready=ready, stop_after_seconds=args.duration)
    )
    if not as_json:
        out.write(f"stopped; the log and a final checkpoint are in {node_dir}/state\n")
    return 0
