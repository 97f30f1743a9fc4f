"""`memstate demo`: the bundled example node, decided and explained, without root.

It reads the example topology, kubelet config and pod manifests shipped with memstate, feeds them
to the reducer as events (first boot, then a restart where the pods come back in reverse order),
and prints every decision, the per-NUMA-node accounting, the pods and the cgroup targets the
reconciler would converge a tree to.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from memstate import __version__
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
from memstate.inputs import load_config, load_manifest, load_topology, manifest_files
from memstate.output import add_output_argument, output_format, write_json, write_table
from memstate.views import (
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
    targets_of,
)


def example_dir() -> Path:
    """The example node shipped inside the package."""
    return Path(str(resources.files("memstate") / "examples" / "node"))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="decide the bundled example node and show the result",
        description=(
            "Feed the bundled example node (2 NUMA nodes, 5 pods) through memstate's reducer: "
            "first boot, then a restart in which the pods come back in reverse order. Prints "
            "the decisions, the per-NUMA-node accounting and the cgroup targets."
        ),
    )
    parser.add_argument(
        "--example-dir",
        type=Path,
        default=None,
        help="a directory with topology.yaml, kubelet-config.yaml and manifests/ "
        "(default: the bundled example)",
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
    targets = targets_of(state)
    assert targets is not None
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
        f"\nstate hash {state_hash(state)}. Next: `memstate replay replay/restart-any-order.jsonl`"
        " replays a recorded scenario; docs/model.md explains what you see.\n"
    )
    return 0
