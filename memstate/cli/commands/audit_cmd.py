"""`memstate audit …`: who held what, when, and why a pod was rejected — from the log.

    memstate audit pod UID|NAME|NAMESPACE/NAME [--since T] [--until T] [--kind K,…]
    memstate audit numa N [--at TIME | --seq N]
    memstate audit rejections [--by-pod] [--pod P] [--since T] [--until T]
    memstate audit timeline [--kind K,…] [--pod P] [--since T] [--until T]
    memstate audit plot -f reserved.png [--resource memory] [--since T] [--until T]
    memstate audit export [-f FILE] [--node NAME] [filters]

Every command reads a log without a lock: the node's state directory (`--state-dir`, else
`$MEMSTATE_STATE_DIR`, else the config's, see docs/cli.md) or any copy of it, or a JSON-lines
scenario or export (`--log PATH` takes either). One forward pass, one state in memory
(memstate.history.audit).
Output: a table on a terminal, `-o json`, `-o jsonl`; times in UTC ISO 8601 with a `Z`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from memstate.cli.commands.common import (
    DEFAULT_STATE_DIR,
    add_config_argument,
    add_progress_arguments,
    allow_relative_times,
    event_kinds,
    missing_command,
    progress_enabled,
    progress_source,
    require_file_for_report,
    require_state_dir,
    seq_number,
    state_dir_of,
    time_value,
)
from memstate.cli.timeparse import FORMS
from memstate.core.errors import EXIT_OK, EXIT_USAGE, MemstateError
from memstate.present.output import (
    add_output_argument,
    human_bytes,
    output_format,
    report,
    write_json,
    write_jsonl,
    write_table,
)

if TYPE_CHECKING:
    from memstate.history.audit import PodSelector, Window
    from memstate.history.replay import LogSource

PLOT_HINT = "pip install 'memstate[plot]'"

EXAMPLES = """\
examples:
  memstate audit pod shop/web-0                      # every event about the pod, and why
  memstate audit numa 1 --at 2026-03-01T03:12:00Z    # who held NUMA node 1's memory at 03:12
  memstate audit rejections --since -24h             # reasons and counts
  memstate audit timeline --kind pod_rejected,pod_removed --since -1h
  memstate audit plot -f reserved.png --log ./node-copy
  memstate audit export -f node-a.jsonl              # for DuckDB / ClickHouse (docs/audit.md)
"""


class AuditQueryError(MemstateError):
    """A question the log cannot answer as asked (a NUMA node that does not exist)."""

    exit_code = EXIT_USAGE


class MissingExtra(MemstateError):
    """An optional dependency is not installed."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="who held what, when, and why pods were rejected (from the log)",
        description=(
            "Answer questions about a node's allocation history from its event log, in one "
            "forward pass that holds one state. Reads the state directory (or --log: a copy of "
            "one, or a .jsonl scenario or export) without a lock."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="audit commands", metavar="COMMAND")
    parser.set_defaults(handler=lambda args: missing_command(parser))

    pod = commands.add_parser(
        "pod",
        help="every event that touched a pod: allocations, cgroup targets, rejections",
        description=(
            "Every record about the pod in log order: requests, admissions (NUMA nodes, bytes "
            "per node, the pod cgroup's targets), rejections with reason and message, "
            "deferrals, revocations, restarts, removals; then where the pod stands at the end. "
            "POD is a UID, a name (any namespace) or namespace/name; names follow every UID "
            "the pod had."
        ),
    )
    pod.add_argument("pod", help="UID, NAME or NAMESPACE/NAME")
    _source_arguments(pod)
    _window_arguments(pod, kinds=True)
    add_output_argument(pod)
    pod.set_defaults(handler=run_pod)

    numa = commands.add_parser(
        "numa",
        help="who held what on a NUMA node, per resource, at a time or seq",
        description=(
            "Replay to the point asked (default: the end) and list, per resource, the pods "
            "holding bytes on NUMA node N (from their exact per-node takes), with the total "
            "they hold and the node's allocatable, reserved and free bytes."
        ),
    )
    numa.add_argument("numa_node", type=int, metavar="N", help="the NUMA node id")
    _source_arguments(numa)
    allow_relative_times(numa)
    point = numa.add_mutually_exclusive_group()
    point.add_argument("--at", type=time_value, default=None, help=f"a time ({FORMS})")
    point.add_argument(
        "--seq", type=seq_number, default=None, help="after the transaction of seq N"
    )
    add_output_argument(numa)
    numa.set_defaults(handler=run_numa)

    rejections = commands.add_parser(
        "rejections",
        help="rejection reasons with counts and the latest message",
        description="Rejections grouped by reason (or by pod and reason), most frequent first.",
    )
    _source_arguments(rejections)
    _window_arguments(rejections, kinds=False)
    rejections.add_argument("--pod", default=None, help="only this pod (UID, NAME, NS/NAME)")
    rejections.add_argument("--by-pod", action="store_true", help="one group per pod and reason")
    add_output_argument(rejections)
    rejections.set_defaults(handler=run_rejections)

    timeline = commands.add_parser(
        "timeline",
        help="admissions, rejections, removals, reconfigurations and restarts over time",
        description=(
            "Decisions and restarts in log order. --kind replaces the default set of kinds "
            "(any event kind may be named)."
        ),
    )
    _source_arguments(timeline)
    _window_arguments(timeline, kinds=True)
    timeline.add_argument("--pod", default=None, help="only this pod (UID, NAME, NS/NAME)")
    add_output_argument(timeline)
    timeline.set_defaults(handler=run_timeline)

    plot = commands.add_parser(
        "plot",
        help="PNG of reserved memory per NUMA node over time, with pod spans",
        description=(
            "Draw reserved bytes of a resource per NUMA node over time (a step plot, "
            "allocatable dashed) above the spans of the pods pinned there (the heaviest by "
            f"bytes × time). Needs matplotlib: {PLOT_HINT}."
        ),
    )
    plot.add_argument("-f", "--file", type=Path, required=True, help="the PNG to write")
    _source_arguments(plot)
    _window_arguments(plot, kinds=False)
    plot.add_argument("--resource", default="memory", help="memory (default) or hugepages-<size>")
    plot.add_argument(
        "--pods", type=int, default=40, help="how many pod spans to draw (default 40)"
    )
    add_output_argument(plot, jsonl=False)
    plot.set_defaults(handler=run_plot)

    export = commands.add_parser(
        "export",
        help="one flat JSON object per record, for DuckDB, ClickHouse, …",
        description=(
            "Write every record as one flat JSON object per line (schema: docs/audit.md): seq, "
            "time, kind, the pod, the decision's NUMA nodes, bytes per node and resource, cgroup "
            "targets, reasons, and the node's name, so exports of many nodes can be loaded into "
            "one table."
        ),
    )
    _source_arguments(export)
    _window_arguments(export, kinds=True)
    export.add_argument("--pod", default=None, help="only this pod (UID, NAME, NS/NAME)")
    export.add_argument("--from-seq", type=seq_number, default=1, help="first sequence number")
    export.add_argument("--to-seq", type=seq_number, default=None, help="last sequence number")
    export.add_argument(
        "--node", default=None, help="the node name to write (default: the daemon's hostname)"
    )
    export.add_argument(
        "-f", "--file", type=Path, default=None, help="write to FILE instead of stdout"
    )
    add_output_argument(export, jsonl=False)
    export.set_defaults(handler=run_export)


# --- arguments ------------------------------------------------------------------------------------


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="the node's state directory (default: $MEMSTATE_STATE_DIR, the config's "
        f"memstate.stateDir, {DEFAULT_STATE_DIR})",
    )
    add_config_argument(parser)
    where.add_argument(
        "--log",
        type=Path,
        default=None,
        help="a state directory (e.g. a copy from a node) or a .jsonl scenario or export",
    )
    add_progress_arguments(parser)


def _window_arguments(parser: argparse.ArgumentParser, *, kinds: bool) -> None:
    allow_relative_times(parser)
    parser.add_argument("--since", type=time_value, default=None, help=f"not before ({FORMS})")
    parser.add_argument("--until", type=time_value, default=None, help="not after (same forms)")
    if kinds:
        parser.add_argument(
            "--kind", type=event_kinds, default=None, help="comma-separated event kinds"
        )


def open_log(args: argparse.Namespace) -> LogSource:
    """`--log PATH`, else the state directory (resolved as every command does, docs/cli.md).
    On a terminal (or with --progress), reading it draws a progress bar on stderr (a
    150k-record pass takes seconds), erased before the command prints."""
    chosen: Path | None = getattr(args, "log", None)
    path = chosen if chosen is not None else require_state_dir(state_dir_of(args))
    return progress_source(path, label="audit", enabled=progress_enabled(args))


def _window(args: argparse.Namespace) -> Window:
    from memstate.history.audit import Window

    return Window(
        since_ns=getattr(args, "since", None),
        until_ns=getattr(args, "until", None),
        kinds=getattr(args, "kind", None),
    )


def _selector(text: str | None) -> PodSelector | None:
    from memstate.history.audit import PodSelector

    return PodSelector(text) if text else None


# --- pod ------------------------------------------------------------------------------------------

POD_HEADERS = ["SEQ", "TIME", "KIND", "NUMA", "PINNED", "DETAIL", "POD CGROUP TARGETS"]


def run_pod(args: argparse.Namespace) -> int:
    from memstate.history.audit import PodSelector, pod_history, pod_rows

    source = open_log(args)
    selector = PodSelector(args.pod)
    chosen = output_format(args)
    if chosen == "jsonl":
        write_jsonl(pod_rows(source, selector, _window(args)))
        return EXIT_OK
    found = pod_history(source, selector, _window(args))
    if chosen == "json":
        write_json(
            {
                "pod": args.pod,
                "uids": found.selector.uids or None,
                "events": found.rows,
                "now": found.final,
                "last_seq": found.last_seq,
            }
        )
        return EXIT_OK
    write_table(POD_HEADERS, (_pod_table_row(row) for row in found.rows))
    out = sys.stdout
    if not found.rows:
        out.write(f"no record about {args.pod}\n")
    out.write(f"\nat the end of the log (seq {found.last_seq}):\n")
    if not found.final:
        out.write(f"  {args.pod}: not on the node (never admitted, or removed)\n")
    for now in found.final:
        line = f"  {now['uid']}: {now['status']}"
        if now["takes"]:
            line += ", holds " + _takes_text(now["takes"])
        if now["rejection"]:
            line += f", last rejection {now['rejection']['reason']}: {now['rejection']['message']}"
        out.write(line + "\n")
    return EXIT_OK


def _takes_text(takes: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"node {t['numa_node']} {t['resource']} {human_bytes(t['size_bytes'])}" for t in takes
    )


def _pod_table_row(row: dict[str, Any]) -> list[Any]:
    detail = row["detail"]
    if row.get("kind") == "pod_rejected":
        detail = f"{row['reason']}: {row['message']}"
    targets = " ".join(
        f"{name}={value}" for name, value in row.get("cgroup_files", {}).items() if value
    )
    return [
        row["seq"],
        row["ts"],
        row["kind"],
        row.get("numa_nodes"),
        _takes_text(row["takes"]) if row.get("takes") else None,
        detail,
        targets or None,
    ]


# --- numa -----------------------------------------------------------------------------------------


def run_numa(args: argparse.Namespace) -> int:
    from memstate.history.audit import numa_holdings, state_at

    point = state_at(open_log(args), seq=args.seq, at_ns=args.at)
    try:
        document = numa_holdings(point, args.numa_node)
    except LookupError as exc:
        raise AuditQueryError(str(exc)) from None
    chosen = output_format(args, piped="json")
    if chosen == "json":
        write_json(document)
        return EXIT_OK
    if chosen == "jsonl":
        write_jsonl(
            {"numa_node": args.numa_node, "seq": document["seq"], "resource": r, **holder}
            for r, table in document["resources"].items()
            for holder in table["holders"]
        )
        return EXIT_OK
    out = sys.stdout
    when = f" ({document['ts']})" if document["ts"] else ""
    out.write(
        f"NUMA node {args.numa_node} after seq {document['seq']}{when}; cells "
        f"{document['cells']}, {document['number_of_assignments']} assignment(s)\n\n"
    )
    write_table(
        ["RESOURCE", "POD", "UID", "STATUS", "CONTAINERS", "NUMA", "BYTES", "SIZE"],
        (
            [
                resource,
                f"{h['namespace']}/{h['name']}",
                h["uid"],
                h["status"],
                h["containers"],
                h["numa_nodes"],
                h["size_bytes"],
                human_bytes(h["size_bytes"]),
            ]
            for resource, table in document["resources"].items()
            for h in table["holders"]
        ),
    )
    out.write("\n")
    write_table(
        ["RESOURCE", "HELD", "RESERVED", "ALLOCATABLE", "FREE"],
        (
            [
                resource,
                human_bytes(t["held"]),
                human_bytes(t["reserved"]),
                human_bytes(t["allocatable"]),
                human_bytes(t["free"]),
            ]
            for resource, t in document["resources"].items()
        ),
    )
    return EXIT_OK


# --- rejections -----------------------------------------------------------------------------------


def run_rejections(args: argparse.Namespace) -> int:
    from memstate.history.audit import rejection_summary

    groups = rejection_summary(
        open_log(args), _window(args), selector=_selector(args.pod), by_pod=args.by_pod
    )
    chosen = output_format(args, piped="json")
    if chosen == "json":
        write_json(groups)
    elif chosen == "jsonl":
        write_jsonl(groups)
    elif args.by_pod:
        write_table(
            ["POD", "REASON", "COUNT", "LAST SEQ", "LAST TIME", "LAST MESSAGE"],
            (
                [g["pod"], g["reason"], g["count"], g["last_seq"], g["last_ts"], g["last_message"]]
                for g in groups
            ),
        )
    else:
        write_table(
            ["REASON", "COUNT", "PODS", "LAST SEQ", "LAST TIME", "LAST POD", "LAST MESSAGE"],
            (
                [
                    g["reason"],
                    g["count"],
                    g["pods"],
                    g["last_seq"],
                    g["last_ts"],
                    g["last_pod"],
                    g["last_message"],
                ]
                for g in groups
            ),
        )
    return EXIT_OK


# --- timeline -------------------------------------------------------------------------------------


def run_timeline(args: argparse.Namespace) -> int:
    from memstate.history.audit import timeline

    rows = timeline(open_log(args), _window(args), selector=_selector(args.pod))
    chosen = output_format(args)
    if chosen == "jsonl":
        write_jsonl(rows)
    elif chosen == "json":
        write_json(list(rows))
    else:
        # Streamed with fixed columns: a timeline can be as long as the log.
        out = sys.stdout
        out.write(f"{'SEQ':>8}  {'TIME':<24}  {'KIND':<29}  DETAIL\n")
        for row in rows:
            out.write(f"{row['seq']:>8}  {row['ts']:<24}  {row['kind']:<29}  {row['detail']}\n")
    return EXIT_OK


# --- plot -----------------------------------------------------------------------------------------


def run_plot(args: argparse.Namespace) -> int:
    try:
        from memstate.history.audit_plot import render_png
    except ImportError as exc:
        raise MissingExtra(
            f"`memstate audit plot` needs matplotlib, which is not installed ({exc}); "
            f"install the plot extra: {PLOT_HINT}"
        ) from None
    from memstate.history.audit import plot_data

    data = plot_data(
        open_log(args), _window(args), resource=args.resource, max_spans=max(args.pods, 0)
    )
    if not data.times_ns:
        raise AuditQueryError(
            f"nothing to plot: no NUMA node reports {args.resource} in the chosen window"
        )
    render_png(data, args.file)
    report(
        args,
        {
            "file": str(args.file),
            "resource": args.resource,
            "numa_nodes": list(data.node_ids),
            "points": len(data.times_ns),
            "pod_spans": len(data.spans),
        },
        f"wrote {args.file}: {len(data.node_ids)} NUMA node(s), {len(data.times_ns)} points, "
        f"{len(data.spans)} pod span(s)",
    )
    return EXIT_OK


# --- export ---------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    from memstate.history.audit import export_records

    require_file_for_report(args)
    records = export_records(
        open_log(args),
        _window(args),
        selector=_selector(args.pod),
        node=args.node,
        from_seq=args.from_seq,
        to_seq=args.to_seq,
    )
    encoder = msgspec.json.Encoder()
    target: TextIO = args.file.open("w", encoding="utf-8") if args.file else sys.stdout
    count = 0
    try:
        for record in records:
            target.write(encoder.encode(record).decode() + "\n")
            count += 1
    finally:
        if target is not sys.stdout:
            target.close()
    if args.file is not None:
        report(
            args,
            {"file": str(args.file), "records": count},
            f"exported {count} records to {args.file}",
        )
    return EXIT_OK
