"""`memstate import kubelet-state FILE` and `memstate shadow report`: moving from, and comparing
with, the kubelet's Memory Manager (docs/operations.md "Running beside the kubelet")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from memstate.cli.commands.common import (
    add_location_arguments,
    missing_command,
    resolve_settings,
    state_dir_of,
)
from memstate.core.errors import EXIT_OK, InputError
from memstate.present.output import (
    add_output_argument,
    format_ts,
    output_format,
    write_json,
    write_table,
)

IMPORT_EXAMPLES = """\
examples:
  memstate import kubelet-state /var/lib/kubelet/memory_manager_state
  memstate import kubelet-state ./memory_manager_state --state-dir /var/lib/memstate

Exit codes: 65 a wrong checksum, an unknown policy name or an assignment that does not fit this
machine (nothing is recorded); 75 a daemon holds the state directory (stop it first); 78 the
config does not allow the import (memoryManagerPolicy must be Static to keep pinned pods).
"""

SHADOW_EXAMPLES = """\
examples:
  memstate shadow report
  memstate shadow report -o json
"""


def register(subparsers: Any) -> None:
    importer = subparsers.add_parser(
        "import",
        help="take over state from another manager (kubelet-state)",
        description="Take over state from another manager.",
    )
    importer.set_defaults(handler=lambda _args: missing_command(importer))
    kinds = importer.add_subparsers(title="what", metavar="WHAT")
    kubelet = kinds.add_parser(
        "kubelet-state",
        help="record the kubelet Memory Manager's assignments as the starting allocation",
        description=(
            "Read a kubelet Memory Manager checkpoint (memory_manager_state, layouts v1, v2 "
            "and v3), verify its checksum as the kubelet does and record its pods' memory "
            "blocks in the event log, so that after the next `memstate run` every pod that "
            "comes back keeps its NUMA nodes. Takes the writer's lock: stop the daemon first."
        ),
        epilog=IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kubelet.add_argument("file", type=Path, metavar="FILE", help="the checkpoint file")
    add_location_arguments(kubelet)
    kubelet.add_argument(
        "--topology-file",
        type=Path,
        default=None,
        help="the NUMA topology (default: the config's memstate.topologyFile, else sysfs)",
    )
    add_output_argument(kubelet, jsonl=False)
    kubelet.set_defaults(handler=run_import_kubelet_state)

    shadow = subparsers.add_parser(
        "shadow",
        help="shadow mode: where memstate and the kubelet disagree",
        description="Shadow mode (memstate.mode: shadow): memstate decides and writes nothing.",
    )
    shadow.set_defaults(handler=lambda _args: missing_command(shadow))
    actions = shadow.add_subparsers(title="actions", metavar="ACTION")
    report = actions.add_parser(
        "report",
        help="the open disagreements between memstate's decisions and the kubelet's",
        description=(
            "Every disagreement still open between memstate's decisions and what the kubelet "
            "did (its Memory Manager checkpoint, the pod cgroups' values), from the event log: "
            "pod, what differs, memstate's value, the kubelet's value and since when. Read-only."
        ),
        epilog=SHADOW_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location_arguments(report)
    add_output_argument(report, jsonl=False)
    report.set_defaults(handler=run_shadow_report)


def run_import_kubelet_state(args: argparse.Namespace) -> int:
    from memstate.node.inputs import load_topology
    from memstate.node.kubelet_state import import_kubelet_state, read_checkpoint
    from memstate.node.loops.config import load_settings_and_config

    checkpoint = read_checkpoint(args.file)  # the input first: its checksum, its policy
    settings, config = load_settings_and_config(resolve_settings(args))
    topology_file = args.topology_file or settings.topology_file
    if topology_file is not None:
        topology = load_topology(topology_file)
        topology_source = str(topology_file)
    else:
        from memstate.host.sysfs import observe_topology

        topology = observe_topology()
        topology_source = "/sys/devices/system/node"
    result = import_kubelet_state(
        checkpoint,
        source=str(args.file),
        state_dir=settings.state_dir,
        topology=topology,
        config=config,
        topology_source=topology_source,
        config_source=str(settings.config_file or ""),
    )
    if output_format(args, piped="json") == "json":
        write_json(
            {
                "file": str(args.file),
                "layout": checkpoint.layout,
                "policy": checkpoint.policy_name,
                "checksum": checkpoint.checksum,
                "pods": list(result.pods),
                "seq": [result.first_seq, result.last_seq],
            }
        )
        return EXIT_OK
    sys.stdout.write(
        f"{args.file}: checkpoint {checkpoint.layout}, policy {checkpoint.policy_name}, "
        f"checksum {checkpoint.checksum} verified; {len(result.pods)} pinned pod(s) recorded as "
        f"seq {result.first_seq}..{result.last_seq} in {settings.state_dir}\n"
        "Start memstate (memstate run): each pod that comes back keeps its NUMA nodes.\n"
    )
    return EXIT_OK


def run_shadow_report(args: argparse.Namespace) -> int:
    from memstate.core.shadow import open_disagreements
    from memstate.store.reader import LogReader

    state_dir = state_dir_of(args)
    if not (state_dir / "log").is_dir():
        raise InputError(
            f"no event log here (no {state_dir / 'log'} directory)", source=str(state_dir)
        )
    rows = open_disagreements(LogReader(state_dir).read())
    if output_format(args, piped="json") == "json":
        write_json(
            [
                {
                    "pod": row.uid,
                    "what": row.subject,
                    "memstate": row.memstate,
                    "kubelet": row.kubelet,
                    "where": row.where,
                    "since": format_ts(row.since_ns),
                    "seq": row.seq,
                }
                for row in rows
            ]
        )
        return EXIT_OK
    if not rows:
        sys.stdout.write("no open disagreements between memstate and the kubelet\n")
        return EXIT_OK
    write_table(
        ["POD", "WHAT", "MEMSTATE", "KUBELET", "SINCE"],
        [[r.uid, r.subject, r.memstate, r.kubelet, format_ts(r.since_ns)] for r in rows],
    )
    return EXIT_OK
