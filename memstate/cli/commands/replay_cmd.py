"""`memstate replay`: reproduce a node's decisions from its log, and find where builds part.

    memstate replay PATH [--to-seq N | --at TIME] [--from-checkpoint] [-o table|json]
    memstate replay bisect PATH [--against OTHER] [--linear] [-o table|json]
    memstate replay anonymise IN OUT [--mapping FILE]

PATH is a state directory (it has `log/`, e.g. a copy of /var/lib/memstate) or a JSON-lines
scenario or export. `replay` re-derives every decision from the recorded inputs with this build
and compares it with the recorded one, and every checkpoint's state hash with the replayed
state's; at the first divergence it prints the event, both decisions, a structural diff of the
two states, and exits 1. `bisect` finds the first event where two logs of the same inputs (or a
log and this build's reference run of it) part. `anonymise` rewrites a log for a bug report.

`replay` takes free-form arguments after it (a path or a sub-command), so this module parses
them itself with one parser per form; `memstate replay --help` shows all three.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memstate.cli.commands.common import (
    add_progress_arguments,
    allow_relative_times,
    progress_enabled,
    progress_source,
    seq_number,
    time_value,
)
from memstate.cli.timeparse import FORMS
from memstate.core.errors import EXIT_FAILURE, EXIT_OK
from memstate.core.events import Envelope, Event
from memstate.present.output import (
    add_output_argument,
    format_ts,
    output_format,
    report,
    write_json,
    write_table,
)

if TYPE_CHECKING:
    from memstate.history.replay import Divergence, ReplayReport

EXAMPLES = """\
examples:
  memstate replay /var/lib/memstate                 # the whole log, every checkpoint checked
  memstate replay ./node-copy --at 2026-03-01T03:12:00Z -o json   # the state at 03:12
  memstate replay ./node-copy --to-seq 41000 --from-checkpoint    # fast: start at a checkpoint
  memstate replay replay/restart-any-order.jsonl    # a scenario: lists every decision
  memstate replay bisect ./node-copy                # where this build parts from the recording
  memstate replay bisect ./node-a --against ./node-b
  memstate replay anonymise ./node-copy report.jsonl --mapping private-map.json

exit codes: 0 no divergence, 1 divergence found, 2 usage, 65 damaged log or bad input.
See docs/replay.md.
"""


def register(subparsers: Any) -> None:
    # Everything after `replay` is parsed by `run` (a path, or `bisect`/`anonymise` and theirs):
    # argparse cannot have a positional path and sub-commands side by side. A prefix character
    # no argument uses makes every argument positional here.
    parser = subparsers.add_parser(
        "replay",
        help="re-derive a log's decisions and compare them; bisect; anonymise",
        add_help=False,
        prefix_chars="\x00",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    # The parsers of its forms, for tools that walk the command tree (tests/cli).
    parser.set_defaults(handler=run, forms=form_parsers)


def form_parsers() -> dict[str, argparse.ArgumentParser]:
    """`replay`'s own forms and their parsers ("" is `replay PATH`)."""
    return {"": _replay_parser(), "bisect": _bisect_parser(), "anonymise": _anonymise_parser()}


def run(args: argparse.Namespace) -> int:
    from memstate.present.output import configure_tables, quiet_stdout

    arguments: list[str] = list(args.arguments)
    handler: Callable[[argparse.Namespace], int] = run_replay
    parser_of = _replay_parser
    if arguments and arguments[0] == "bisect":
        handler, parser_of, arguments = run_bisect, _bisect_parser, arguments[1:]
    elif arguments and arguments[0] in ("anonymise", "anonymize"):
        handler, parser_of, arguments = run_anonymise, _anonymise_parser, arguments[1:]
    parsed = parser_of().parse_args(arguments)
    # main() saw only the raw arguments: apply -q and --wide as it does for other commands.
    configure_tables(wide=parsed.wide)
    with quiet_stdout(parsed):
        return handler(parsed)


# --- parsers --------------------------------------------------------------------------------------


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstate replay",
        usage=(
            "memstate replay PATH [options]\n"
            "       memstate replay bisect PATH [--against OTHER] [options]\n"
            "       memstate replay anonymise IN OUT [--mapping FILE]"
        ),
        description=(
            "Replay a log (a state directory with log/, or a .jsonl scenario or export): every "
            "input is decided afresh by this build and compared with the recorded decisions, "
            "and every checkpoint's state hash with the replayed state. At the first "
            "divergence print the event, both decisions and a structural diff of the two "
            "states, and exit 1. `bisect --help` and `anonymise --help` describe the others."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="a state directory or a .jsonl file")
    allow_relative_times(parser)
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument(
        "--to-seq",
        type=seq_number,
        default=None,
        help="stop after the transaction holding this seq and print the state there",
    )
    stop.add_argument(
        "--at",
        type=time_value,
        default=None,
        help=f"print the state at this time: after every input stamped up to it ({FORMS})",
    )
    parser.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="start from the newest usable checkpoint before the stopping point (faster; only "
        "what follows it is compared)",
    )
    parser.add_argument(
        "--no-verify-checkpoints",
        action="store_true",
        help="do not compare checkpoints' state hashes with the replayed state",
    )
    listing = parser.add_mutually_exclusive_group()
    listing.add_argument(
        "--list",
        dest="listing",
        action="store_true",
        default=None,
        help="list every transition and its decisions (default for .jsonl files in a table; "
        "with -o json the list is held in memory)",
    )
    listing.add_argument(
        "--no-list", dest="listing", action="store_false", help="do not list transitions"
    )
    add_progress_arguments(parser)
    add_output_argument(
        parser,
        jsonl=False,
        quiet_help="nothing on stdout; with -o, the summary only (in JSON: no state, pods or NUMA)",
    )
    return parser


def _bisect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstate replay bisect",
        description=(
            "Find the first event where two runs over the same inputs part: PATH's recorded "
            "decisions against this build's reference run of PATH's inputs (default), or "
            "against another log with --against (e.g. the same inputs recorded by another "
            "memstate version). With checkpoints at the same seqs in both state directories, "
            "a binary search over their state hashes narrows the window first; otherwise both "
            "runs go forward in lockstep comparing every decision and, at probe points, the "
            "state hashes. Then the window is walked one transaction at a time. Exit 1 when a "
            "divergence is found."
        ),
        epilog="See docs/replay.md for the search and its assumptions.",
    )
    parser.add_argument("path", type=Path, help="a state directory or a .jsonl file")
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="the other log (default: this build's reference run of PATH)",
    )
    parser.add_argument(
        "--probe-every",
        type=_positive,
        default=1000,
        help="lockstep pass: compare state hashes every N transactions (default 1000)",
    )
    parser.add_argument(
        "--linear",
        action="store_true",
        help="skip the binary search; compare every decision from the start",
    )
    parser.add_argument(
        "--no-verify-earlier",
        action="store_true",
        help="trust the binary search (do not check the checkpoints before its answer)",
    )
    add_progress_arguments(parser)
    add_output_argument(parser, jsonl=False)
    return parser


def _anonymise_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstate replay anonymise",
        description=(
            "Write a copy of a log (state directory or .jsonl) as JSON lines with pod UIDs, "
            "names, namespaces, container names, sources, hostnames and boot ids replaced by "
            "consistent pseudonyms. Sizes, topology, config, timestamps and the order of pods "
            "are kept (they are the bug). The copy is replayed beside the original before it "
            "is kept: it must diverge exactly where the original does, and nowhere else."
        ),
        epilog="Attach OUT to the bug report; keep the mapping file to yourself.",
    )
    parser.add_argument("input", type=Path, help="a state directory or a .jsonl file")
    parser.add_argument(
        "output_file", metavar="OUT", type=Path, help="the anonymised .jsonl file to write"
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        default=None,
        help="also write the pseudonym table (original → pseudonym) as JSON; keep it private",
    )
    add_progress_arguments(parser)
    add_output_argument(parser, jsonl=False)
    return parser


def _positive(text: str) -> int:
    value = seq_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- replay ---------------------------------------------------------------------------------------

LIST_HEADERS = ["SEQ", "EVENT", "DECISION"]


def run_replay(args: argparse.Namespace) -> int:
    from memstate.history.replay import build_version, open_source, replay_log
    from memstate.present.progress import Progress
    from memstate.present.views import describe_event

    source = open_source(args.path)
    chosen = output_format(args, piped="json")
    # Listed by default only where it streams: a table of a scenario. In JSON the list is one
    # document, which grows with the log, so it takes an explicit --list.
    if args.listing is not None:
        listing = args.listing
    else:
        listing = source.kind == "jsonl" and chosen == "table"
    listing = listing and not args.quiet
    listed: list[dict[str, Any]] = []
    # A listing in a table is itself the progress (and a bar would be drawn across it).
    enabled = progress_enabled(args) and not (listing and chosen == "table")
    total = source.last_seq_estimate() if enabled else 0
    progress = Progress(total, label="replay", enabled=enabled)
    if listing and chosen == "table":
        sys.stdout.write(f"{'SEQ':>7}  {'EVENT':<28}  DECISION\n")

    # Sees no states, so the replay keeps one working state (`replay_log`).
    def on_progress(record: Envelope, last_seq: int, decisions: tuple[Event, ...]) -> None:
        progress.update(last_seq)
        if not listing:
            return
        texts = [describe_event(d) for d in decisions]
        if chosen == "json":
            listed.append(
                {
                    "seq": record.seq,
                    "ts": format_ts(record.ts_ns),
                    "event": record.event.kind,
                    "decisions": texts,
                }
            )
            return
        for index, text in enumerate(texts or ["-"]):
            seq = str(record.seq) if index == 0 else ""
            kind = record.event.kind if index == 0 else ""
            sys.stdout.write(f"{seq:>7}  {kind:<28}  {text}\n")

    with progress:
        report = replay_log(
            source,
            to_seq=args.to_seq,
            at_ns=args.at,
            from_checkpoint=args.from_checkpoint,
            verify_checkpoints=not args.no_verify_checkpoints,
            on_progress=on_progress,
        )
    divergence = report.divergence
    if chosen == "json":
        document = _replay_document(report, source.kind, build_version())
        if args.quiet:
            # The summary only, as for the table: the state is the bulk of the document.
            for bulky in ("state", "numa", "pods"):
                document.pop(bulky)
        if listing:
            document["transitions"] = listed
        write_json(document)
        return EXIT_FAILURE if divergence else EXIT_OK
    _replay_table(report, stopped=args.to_seq is not None or args.at is not None, quiet=args.quiet)
    return EXIT_FAILURE if divergence else EXIT_OK


def _replay_document(report: ReplayReport, kind: str, replayed_by: str) -> dict[str, Any]:
    from memstate.present.views import numa_document, pods_document, state_document

    state = report.state
    whole = state_document(state)
    return {
        "source": report.source,
        "source_kind": kind,
        "records": report.records,
        "transitions_replayed": report.transitions,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "state_seq": report.state_seq,
        "last_ts": format_ts(report.last_ts_ns) if report.last_ts_ns is not None else None,
        "started_from_checkpoint": report.started_from_checkpoint,
        "checkpoints_verified": report.checkpoints_verified,
        "warnings": report.warnings,
        "recorded_by": report.recorded_by or None,
        "replayed_by": replayed_by,
        "divergence": divergence_document(report.divergence) if report.divergence else None,
        "state": whole,
        # Kept at the top level for scripts written against the first `memstate replay`.
        "numa": numa_document(state),
        "pods": pods_document(state),
        "state_hash": whole["state_hash"],
    }


def _replay_table(report: ReplayReport, *, stopped: bool, quiet: bool) -> None:
    from memstate.core.state import state_hash
    from memstate.present.views import NUMA_HEADERS, POD_HEADERS, numa_rows, pod_rows

    out = sys.stdout
    for warning in report.warnings:
        out.write(f"warning: {warning}\n")
    if not quiet:
        if stopped:
            when = format_ts(report.last_ts_ns) if report.last_ts_ns is not None else "-"
            out.write(f"\nstate after seq {report.state_seq} ({when}):\n")
        else:
            out.write("\n")
        write_table(NUMA_HEADERS, numa_rows(report.state))
        out.write("\n")
        write_table(POD_HEADERS, pod_rows(report.state))
    start = (
        f" from checkpoint {report.started_from_checkpoint}"
        if report.started_from_checkpoint
        else ""
    )
    checked = len(report.checkpoints_verified)
    out.write(
        f"\n{report.records} records replayed{start} (seq {report.first_seq}..{report.last_seq}, "
        f"{report.transitions} transitions), {checked} checkpoint(s) verified, state hash "
        f"{state_hash(report.state)}\n"
    )
    if report.divergence is not None:
        out.write("\n" + "\n".join(divergence_lines(report.divergence)) + "\n")


# --- divergence rendering -------------------------------------------------------------------------


def divergence_document(divergence: Divergence) -> dict[str, Any]:
    """The `-o json` form of a `memstate.history.replay.Divergence`."""
    from memstate.core.scenario import envelope_to_object
    from memstate.history.statediff import diff_document
    from memstate.present.views import decision_document, describe_event

    record = divergence.record

    def decisions(events: tuple[Event, ...] | None) -> list[str] | None:
        return None if events is None else [describe_event(e) for e in events]

    def raw(events: tuple[Event, ...] | None) -> list[dict[str, Any]] | None:
        return None if events is None else [decision_document(e) for e in events]

    labels = divergence.labels
    return {
        "kind": divergence.kind,
        "seq": divergence.seq,
        "ts": format_ts(divergence.ts_ns),
        "event": record.event.kind if record is not None else None,
        "summary": describe_event(record.event) if record is not None else None,
        "input": envelope_to_object(record) if record is not None else None,
        "message": divergence.message,
        "labels": list(labels),
        "versions": dict(zip(labels, divergence.versions, strict=True)),
        "recorded": decisions(divergence.recorded),
        "derived": decisions(divergence.derived),
        "recorded_events": raw(divergence.recorded),
        "derived_events": raw(divergence.derived),
        "apply_error": divergence.apply_error,
        "hash_recorded": divergence.hash_recorded,
        "hash_derived": divergence.hash_derived,
        "other_seq": divergence.other_seq,
        "other_input": (
            envelope_to_object(divergence.other_record) if divergence.other_record else None
        ),
        "state_diff": diff_document(divergence.changes(), labels=labels),
    }


def divergence_lines(divergence: Divergence) -> list[str]:
    """The human form: the event, both decisions (with who made them), the state diff."""
    from memstate.history.statediff import render_diff
    from memstate.present.views import describe_event

    labels: tuple[str, str] = divergence.labels
    width = max(len(label) for label in (*labels, "input"))
    record = divergence.record
    lines = [
        f"DIVERGENCE ({divergence.kind}) at seq {divergence.seq}, {format_ts(divergence.ts_ns)}",
        f"  {divergence.message}",
    ]
    if record is not None:
        lines.append(f"  {'input':<{width}}  {record.event.kind}: {describe_event(record.event)}")
    if divergence.other_record is not None:
        other = divergence.other_record
        lines.append(f"  {'other':<{width}}  {other.event.kind}: {describe_event(other.event)}")
    for label, events, version in (
        (labels[0], divergence.recorded, divergence.versions[0]),
        (labels[1], divergence.derived, divergence.versions[1]),
    ):
        if events is None:
            continue
        texts = [describe_event(e) for e in events] or ["(no decisions)"]
        by = f"   [{version}]" if version else ""
        lines.append(f"  {label:<{width}}  {texts[0]}{by}")
        lines.extend(f"  {'':<{width}}  {text}" for text in texts[1:])
    if divergence.apply_error:
        lines.append(f"  the recorded decisions do not fit: {divergence.apply_error}")
    if divergence.hash_recorded:
        lines.append(
            f"  state hash: {labels[0]} {divergence.hash_recorded}, "
            f"{labels[1]} {divergence.hash_derived}"
        )
    changes = divergence.changes()
    if changes:
        lines.append(f"  state after the transition, {labels[0]} → {labels[1]}:")
        lines.extend("    " + line for line in render_diff(changes, labels=labels))
    elif divergence.state_recorded is not None and divergence.state_derived is not None:
        lines.append("  the two states are equal (only the decisions differ)")
    return lines


# --- bisect ---------------------------------------------------------------------------------------


def run_bisect(args: argparse.Namespace) -> int:
    from memstate.history.bisect import Run, bisect
    from memstate.history.replay import open_source
    from memstate.present.progress import Progress

    source = open_source(args.path)
    first = Run(source, label="log")
    if args.against is not None:
        second = Run(open_source(args.against), label="other")
    else:
        second = Run(source, reference=True, label="reference")
    enabled = progress_enabled(args)
    total = source.last_seq_estimate() if enabled else 0
    with Progress(total, label="bisect", enabled=enabled) as progress:
        report = bisect(
            first,
            second,
            probe_every=args.probe_every,
            linear=args.linear,
            verify_earlier=not args.no_verify_earlier,
            on_progress=progress.update,
        )
    described = (
        str(source),
        str(args.against)
        if args.against is not None
        else f"this build's reference run of {source}",
    )
    document = {
        "runs": dict(zip(report.runs, described, strict=True)),
        "method": report.method,
        "window": {"after_seq": report.window[0], "through_seq": report.window[1]},
        "probes": report.probes,
        "transactions_walked": report.transactions_walked,
        "non_monotone": report.non_monotone,
        "warnings": report.warnings,
        "divergence": divergence_document(report.divergence) if report.divergence else None,
    }
    if output_format(args, piped="json") == "json":
        write_json(document)
    else:
        out = sys.stdout
        through = report.window[1] if report.window[1] is not None else "end"
        for label, what in zip(report.runs, described, strict=True):
            out.write(f"{label:<11}{what}\n")
        out.write(f"{'method':<11}{report.method}\n")
        out.write(
            f"{'window':<11}after seq {report.window[0]} through {through}; "
            f"{report.transactions_walked} transaction(s) compared one by one\n"
        )
        for warning in report.warnings:
            out.write(f"{'warning':<11}{warning}\n")
        if report.divergence is None:
            out.write("no divergence found\n")
        else:
            out.write("\n" + "\n".join(divergence_lines(report.divergence)) + "\n")
    return EXIT_FAILURE if report.divergence else EXIT_OK


# --- anonymise ------------------------------------------------------------------------------------


def run_anonymise(args: argparse.Namespace) -> int:
    from memstate.history.anonymise import anonymise_log

    # Two passes (the UIDs, then the copy): each draws its bar.
    source = progress_source(args.input, label="anonymise", enabled=progress_enabled(args))
    result = anonymise_log(source, args.output_file)
    if args.mapping is not None:
        args.mapping.write_text(result.mapping_json())
    report(
        args,
        {
            "file": str(args.output_file),
            "mapping": str(args.mapping) if args.mapping is not None else None,
            "records": result.records,
            "pods": result.pods,
            "names": result.names,
            "divergence_seq": result.divergence_seq,
        },
        f"wrote {result.records} records to {args.output_file} ({result.pods} pods, "
        f"{result.names} names pseudonymised); replayed beside the original: "
        + (
            f"both diverge first at seq {result.divergence_seq}"
            if result.divergence_seq is not None
            else "no divergence in either"
        ),
    )
    return EXIT_OK
