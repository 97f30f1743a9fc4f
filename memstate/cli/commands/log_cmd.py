"""`memstate log …`: verify, dump, repair, import and export the event log.

Every subcommand takes `--state-dir` and `--config` (resolved as docs/cli.md says).
`verify`, `dump` and `export` are read-only and take no lock: they work beside a running daemon
and stop cleanly at a tail that is still being written. `repair` and `import` take the writer's
lock and refuse (exit 75) while a daemon holds it. docs/event-log.md has the formats and the
recovery policy these commands implement.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from memstate.cli.commands.common import (
    DEFAULT_STATE_DIR,
    add_config_argument,
    add_progress_arguments,
    allow_relative_times,
    event_kinds,
    missing_command,
    progress_enabled,
    require_file_for_report,
    require_state_dir,
    seq_number,
    state_dir_of,
    time_value,
)
from memstate.cli.timeparse import FORMS
from memstate.core.errors import (
    EXIT_OK,
    InvariantViolation,
    ScenarioError,
)
from memstate.core.events import Envelope, Event, pod_uid_of
from memstate.present.output import (
    add_output_argument,
    format_ts,
    output_format,
    report,
    to_plain,
    write_json,
    write_table,
)

EXAMPLES = """\
examples:
  memstate log verify
  memstate log dump --kind pod_admitted,pod_rejected --since -1h
  memstate log dump --pod prod/web-0 -o jsonl | jq .event.kind
  memstate log dump --from-seq 1200 --to-seq 1300
  memstate log repair --truncate-torn-tail --dry-run
  memstate log repair --point-in-time
  memstate log export > node.jsonl && memstate log import node.jsonl --state-dir /tmp/copy
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "log",
        help="verify, dump, repair, import and export the event log",
        description=(
            "Work with the binary event log under <state-dir>/log. Read-only commands take no "
            "lock; repair and import refuse while a daemon holds the state directory."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="log commands", metavar="COMMAND")
    parser.set_defaults(handler=lambda args: missing_command(parser))

    verify_parser = commands.add_parser(
        "verify",
        help="apply start-up's checks to the log (exit 65 where start-up would refuse)",
        description=(
            "Apply exactly the checks `memstate run` applies at start-up, without changing "
            "anything: every segment header and seal, every frame of the unsealed segments, "
            "the acknowledged mark, checkpoints beyond the end, and the records start-up reads "
            "(after the checkpoint it would use), decoded. Exit 0 where start-up would start (a "
            "torn tail of unacknowledged records that it will cut is reported, not damage), 65 "
            "with the same problem, file, offset and seq where it would refuse. --full also "
            "reads every sealed segment (frames, body CRC) and decodes every record. "
            "Checkpoints are listed with whether start-up could use them."
        ),
    )
    _state_dir_argument(verify_parser)
    verify_parser.add_argument(
        "--full",
        action="store_true",
        help="also check every sealed segment's frames and body CRC and decode every record",
    )
    verify_parser.add_argument(
        "--no-decode", action="store_true", help="check framing and CRCs only (faster)"
    )
    add_output_argument(verify_parser, jsonl=False)
    add_progress_arguments(verify_parser)
    verify_parser.set_defaults(handler=run_verify)

    dump_parser = commands.add_parser(
        "dump",
        help="print records, filtered",
        description=(
            "Print log records. A table on a terminal, JSON lines when piped (the export "
            "form: seq, ts_ns, ts, schema_v, event, decisions). Filters combine with AND."
        ),
    )
    _state_dir_argument(dump_parser)
    _seq_arguments(dump_parser)
    dump_parser.add_argument(
        "--kind",
        type=event_kinds,
        default=None,
        help="comma-separated event kinds (pod_admitted,…)",
    )
    dump_parser.add_argument(
        "--pod",
        default=None,
        help="a pod UID or namespace/name (names match every record about that pod's UIDs)",
    )
    allow_relative_times(dump_parser)
    dump_parser.add_argument("--since", type=time_value, default=None, help=f"not before ({FORMS})")
    dump_parser.add_argument(
        "--until", type=time_value, default=None, help="not after (same forms)"
    )
    dump_parser.add_argument(
        "--include-incomplete",
        action="store_true",
        help="also show an input at the tail whose decisions are not (yet) all written",
    )
    add_output_argument(dump_parser)
    add_progress_arguments(dump_parser)
    dump_parser.set_defaults(handler=run_dump)

    repair_parser = commands.add_parser(
        "repair",
        help="offline repair: cut a torn tail, or everything from the first problem",
        description=(
            "Repair the log offline (the daemon must be stopped). Nothing is deleted: a segment "
            "that is shortened is first copied to <name>.broken-<UTC time>, segments and "
            "checkpoints that are dropped are renamed that way. A transaction is never split."
        ),
    )
    _state_dir_argument(repair_parser)
    mode = repair_parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--truncate-torn-tail",
        action="store_const",
        dest="mode",
        const="torn_tail",
        help="cut an incomplete write at the end (what start-up does); refuse anything else",
    )
    mode.add_argument(
        "--point-in-time",
        action="store_const",
        dest="mode",
        const="point_in_time",
        help="keep everything before the first problem, drop the rest",
    )
    mode.add_argument(
        "--truncate-after-seq",
        type=seq_number,
        dest="truncate_after",
        metavar="SEQ",
        help="keep records up to SEQ (whole transactions only), drop the rest",
    )
    repair_parser.add_argument("--dry-run", action="store_true", help="show what would change")
    add_output_argument(repair_parser, jsonl=False)
    repair_parser.set_defaults(handler=run_repair)

    prune_parser = commands.add_parser(
        "prune",
        help="delete whole segments before the oldest kept checkpoint (explicit, offline)",
        description=(
            "Delete the segments whose records all precede the oldest checkpoint that loads "
            "and verifies. Start-up then begins at a checkpoint, so nothing it needs is lost, "
            "but audit and replay lose the history before it. Segments are kept by default; "
            "this command (or the daemon setting memstate.pruneLog) is the explicit way to drop "
            "them. Takes the writer's lock: stop the daemon first (exit 75 otherwise); "
            "--dry-run takes none."
        ),
    )
    _state_dir_argument(prune_parser)
    prune_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the segments that would be deleted (takes no lock)",
    )
    add_output_argument(prune_parser, jsonl=False, quiet_help="print nothing")
    prune_parser.set_defaults(handler=run_prune)

    import_parser = commands.add_parser(
        "import",
        help="append a JSON-lines scenario or export to the binary log",
        description=(
            "Append the records of a JSON-lines file (hand-written scenario lines as in "
            "replay/, or `memstate log export` output) to the log. The log must be empty "
            "unless --append, which renumbers the records to continue it."
        ),
    )
    import_parser.add_argument("file", type=Path, help="the .jsonl file ('-' for stdin)")
    _state_dir_argument(import_parser)
    import_parser.add_argument(
        "--append", action="store_true", help="renumber and append to a non-empty log"
    )
    add_output_argument(import_parser, jsonl=False)
    add_progress_arguments(import_parser)
    import_parser.set_defaults(handler=run_import)

    export_parser = commands.add_parser(
        "export",
        help="write the log as JSON lines (the form `import` and `replay` read)",
        description=(
            "Write records as JSON lines in the export form (seq, ts_ns, ts, schema_v, event, "
            "decisions), readable by `memstate replay` and `memstate log import`."
        ),
    )
    _state_dir_argument(export_parser)
    _seq_arguments(export_parser)
    export_parser.add_argument(
        "-f", "--file", type=Path, default=None, help="write to FILE instead of stdout"
    )
    add_output_argument(export_parser, jsonl=False)
    add_progress_arguments(export_parser)
    export_parser.set_defaults(handler=run_export)


# --- argument helpers -----------------------------------------------------------------------------


def _state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default: $MEMSTATE_STATE_DIR, the config's memstate.stateDir, "
        f"{DEFAULT_STATE_DIR})",
    )
    add_config_argument(parser)


def _seq_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-seq", type=seq_number, default=1, help="first sequence number")
    parser.add_argument("--to-seq", type=seq_number, default=None, help="last sequence number")


# --- verify ---------------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    from memstate.history.replay import LogSource
    from memstate.present.progress import Progress
    from memstate.store.checkpoint import assess_checkpoint, list_checkpoints
    from memstate.store.reader import LogReader
    from memstate.store.verify import verify

    state_dir = state_dir_of(args)
    require_state_dir(state_dir)
    # Only --full reads the whole log; the default pass reads the tail start-up reads.
    enabled = args.full and progress_enabled(args)
    total = LogSource(state_dir).last_seq_estimate() if enabled else 0
    with Progress(total, label="verify", enabled=enabled) as progress:
        report = verify(
            state_dir, decode=not args.no_decode, full=args.full, on_progress=progress.update
        )
    reader = LogReader(state_dir)
    checkpoints = []
    for seq, path in list_checkpoints(state_dir):
        checkpoint, reason = (
            assess_checkpoint(path, seq, reader.chain_crc_at) if report.ok else (None, "")
        )
        checkpoints.append(
            {
                "file": str(path),
                "seq": seq,
                "usable": checkpoint is not None,
                "reason": reason or ("" if report.ok else "not checked: the log is damaged"),
            }
        )
    document = {
        "state_dir": str(state_dir),
        "ok": report.ok,
        "segments": len(report.segments),
        "records": report.records,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "chain_crc": f"{report.chain_crc:08x}",
        "decoded": report.decoded,
        "full": report.full,
        "sealed_unread": report.sealed_unread,
        "problem": to_plain(report.problem) if report.problem else None,
        "tail": to_plain(report.tail) if report.tail else None,
        "checkpoints": checkpoints,
    }
    if output_format(args, piped="json") == "json":
        write_json(document)
    else:
        _verify_table(document)
    report.raise_for_problem()
    return EXIT_OK


def _verify_table(document: dict[str, Any]) -> None:
    rows: list[list[Any]] = [
        ["state dir", document["state_dir"]],
        ["segments", document["segments"]],
        ["records", f"{document['records']} (seq {document['first_seq']}..{document['last_seq']})"],
        ["chain CRC", document["chain_crc"]],
        ["records decoded", "yes" if document["decoded"] else "no (--no-decode)"],
        [
            "sealed segments",
            "all read (--full)"
            if document["full"]
            else f"{document['sealed_unread']} checked from their seal (as start-up; --full reads "
            "them)",
        ],
    ]
    tail = document["tail"]
    if tail:
        rows.append(
            [
                "tail",
                f"{tail['kind']} at {tail['file']} offset {tail['offset']} (seq {tail['seq']}): "
                f"{tail['message']}; start-up or `log repair --truncate-torn-tail` will cut it "
                "(or a daemon is writing it right now)",
            ]
        )
    else:
        rows.append(["tail", "clean"])
    for checkpoint in document["checkpoints"]:
        verdict = "usable" if checkpoint["usable"] else f"skipped: {checkpoint['reason']}"
        rows.append([f"checkpoint {checkpoint['seq']}", verdict])
    problem = document["problem"]
    rows.append(["status", "ok" if problem is None else f"DAMAGED: {problem['message']}"])
    for label, value in rows:
        sys.stdout.write(f"{label:<18}{value}\n")


# --- dump -----------------------------------------------------------------------------------------

DUMP_HEADERS = ["SEQ", "TIME", "KIND", "POD", "DETAIL"]


def run_dump(args: argparse.Namespace) -> int:
    from memstate.core.scenario import envelope_to_object
    from memstate.history.replay import LogSource
    from memstate.present.progress import Progress
    from memstate.store.reader import LogReader

    state_dir = state_dir_of(args)
    require_state_dir(state_dir)
    reader = LogReader(state_dir)
    chosen = output_format(args)
    # Tables and JSON are written once the log is read (the bar is erased by then); JSON lines
    # stream, so on a terminal a bar would be drawn across them.
    enabled = progress_enabled(args) and (chosen != "jsonl" or not sys.stdout.isatty())
    total = (args.to_seq or LogSource(state_dir).last_seq_estimate()) if enabled else 0

    def reading(records: Iterator[Envelope]) -> Iterator[Envelope]:
        with Progress(total, label="dump", enabled=enabled) as progress:
            for envelope in records:
                progress.update(envelope.seq)
                yield envelope

    selected = select_records(
        reading(
            reader.read(
                1 if _pod_by_name(args.pod) else args.from_seq,
                args.to_seq,
                complete_transactions=not args.include_incomplete,
            )
        ),
        from_seq=args.from_seq,
        kinds=args.kind,
        pod=args.pod,
        since_ns=args.since,
        until_ns=args.until,
    )
    if chosen == "table":
        write_table(DUMP_HEADERS, (dump_row(e) for e in selected))
    elif chosen == "jsonl":
        out = sys.stdout
        for envelope in selected:
            out.write(msgspec.json.encode(envelope_to_object(envelope)).decode() + "\n")
    else:
        write_json([envelope_to_object(e) for e in selected])
    return EXIT_OK


def _pod_by_name(pod: str | None) -> bool:
    return pod is not None and "/" in pod


def select_records(
    envelopes: Iterator[Envelope],
    *,
    from_seq: int = 1,
    kinds: frozenset[str] | None = None,
    pod: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> Iterator[Envelope]:
    """The dump filters (AND). `pod` is a UID or `namespace/name`; a name is mapped to the UIDs
    it had while scanning, so removals (which carry only the UID) still match."""
    matches_pod = pod_matcher(pod) if pod is not None else None
    for envelope in envelopes:
        event = envelope.event
        if matches_pod is not None and not matches_pod(event):
            continue
        if envelope.seq < from_seq:
            continue
        if kinds is not None and event.kind not in kinds:
            continue
        if since_ns is not None and envelope.ts_ns < since_ns:
            continue
        if until_ns is not None and envelope.ts_ns > until_ns:
            continue
        yield envelope


def pod_matcher(spec: str) -> Callable[[Event], bool]:
    """A predicate for `--pod` (stateful for names: it learns UIDs as records go by)."""
    if "/" not in spec:
        return lambda event: pod_uid_of(event) == spec
    namespace, name = spec.split("/", 1)
    uids: set[str] = set()

    def matches(event: Event) -> bool:
        uid = pod_uid_of(event)
        if _pod_key(event) == (namespace, name):
            if uid:
                uids.add(uid)
            return True
        return bool(uid) and uid in uids

    return matches


def _pod_key(event: Event) -> tuple[str, str] | None:
    pod = getattr(event, "pod", None)
    if pod is not None:
        return (pod.namespace, pod.name)
    name = getattr(event, "name", None)
    if isinstance(name, str) and name:
        return (str(getattr(event, "namespace", "")), name)
    return None


def dump_row(envelope: Envelope) -> list[Any]:
    """One table row: seq, UTC time, kind, pod, a short description."""
    from memstate.present.views import describe_decision

    event = envelope.event
    key = _pod_key(event)
    pod = f"{key[0]}/{key[1]}" if key else pod_uid_of(event)
    if event.role == "decision":
        detail = describe_decision(event)
    else:
        parts = [_summary(event)]
        if envelope.decisions:
            parts.append(f"→ {envelope.decisions} decision(s)")
        detail = " ".join(p for p in parts if p)
    return [envelope.seq, format_ts(envelope.ts_ns), event.kind, pod or "-", detail]


def _summary(event: Event) -> str:
    fields = to_plain(event)
    fields.pop("kind", None)
    parts = []
    for field, value in fields.items():
        if isinstance(value, dict | list):
            continue  # nested documents (pods, topologies, configs) are for -o json
        parts.append(f"{field}={value}")
    return " ".join(parts)


# --- repair ---------------------------------------------------------------------------------------


def run_repair(args: argparse.Namespace) -> int:
    from memstate.store.repair import RepairMode, repair_log

    state_dir = state_dir_of(args)
    require_state_dir(state_dir)
    mode: RepairMode = args.mode or "truncate_after"
    report = repair_log(
        state_dir,
        mode=mode,
        seq=args.truncate_after if mode == "truncate_after" else None,
        dry_run=args.dry_run,
    )
    if output_format(args, piped="json") == "json":
        write_json(report)
        return EXIT_OK
    problem = report.problem
    if problem is not None:
        sys.stdout.write(
            f"found: {problem.kind} at {problem.file} offset {problem.offset} (seq {problem.seq}):"
            f" {problem.message}\n"
        )
    if not report.actions:
        sys.stdout.write(f"nothing to repair; the log ends at seq {report.last_seq}\n")
        return EXIT_OK
    write_table(
        ["ACTION", "FILE", "NEW SIZE", "BYTES DROPPED", "KEPT AS"],
        (
            [a.action, a.file, a.new_size_bytes or "-", a.bytes_dropped, a.broken_copy or "-"]
            for a in report.actions
        ),
    )
    verb = "would keep" if report.dry_run else "kept"
    sys.stdout.write(
        f"{verb} seq {report.last_seq} and before; {report.records_dropped} valid record(s) "
        f"dropped{' (dry run: nothing changed)' if report.dry_run else ''}\n"
    )
    return EXIT_OK


def run_prune(args: argparse.Namespace) -> int:
    from memstate.store.checkpoint import oldest_checkpoint_seq
    from memstate.store.scan import prunable_segments
    from memstate.store.writer import EventLog

    state_dir = state_dir_of(args)
    require_state_dir(state_dir)
    through = oldest_checkpoint_seq(state_dir)
    deleted: list[str] = []
    if through is not None and args.dry_run:
        # Names only: no lock, so it works beside a running daemon.
        deleted = [p.name for p in prunable_segments(state_dir / "log", through_seq=through)]
    elif through is not None:
        with EventLog.open(state_dir) as log:
            deleted = log.prune_segments(through_seq=through)
    if args.quiet and args.output is None:
        return EXIT_OK  # -q: nothing at all unless a format is asked for explicitly
    if output_format(args, piped="json") == "json":
        write_json(
            {
                "state_dir": str(state_dir),
                "dry_run": bool(args.dry_run),
                "checkpoint_seq": through,
                "segments": deleted,
            }
        )
        return EXIT_OK
    if through is None:
        sys.stdout.write("no valid checkpoint: nothing can be pruned (start-up would need it)\n")
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    for name in deleted:
        sys.stdout.write(f"{verb} {name}\n")
    sys.stdout.write(
        f"{len(deleted)} segment(s) {verb}; the oldest kept checkpoint is at seq {through}\n"
    )
    return EXIT_OK


# --- import / export ------------------------------------------------------------------------------


def run_import(args: argparse.Namespace) -> int:
    from memstate.core.scenario import read_scenario
    from memstate.present.progress import Progress
    from memstate.store.scan import MAX_BATCH_RECORDS
    from memstate.store.writer import EventLog, check_batch, check_transactions

    path: Path = args.file
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if source == "<stdin>" else path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror}", source=source) from None
    envelopes = read_scenario(text, source=source)
    if not envelopes:
        raise ScenarioError("no records to import", source=source)
    state_dir = state_dir_of(args)
    with EventLog.open(state_dir) as log:
        if log.last_seq and not args.append:
            raise ScenarioError(
                f"{state_dir} already holds {log.last_seq} records; use --append to renumber "
                "and add these after them",
                source=source,
            )
        first = log.last_seq + 1
        renumbered = [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(envelopes)]
        try:
            check_transactions(renumbered)  # whole transactions: batching cannot split one
            batches = transaction_batches(renumbered, MAX_BATCH_RECORDS)
            for batch in batches:
                check_batch(batch)
        except InvariantViolation as exc:
            raise ScenarioError(str(exc), source=source) from None
        enabled = progress_enabled(args)
        with Progress(len(renumbered), label="import", enabled=enabled) as progress:
            for batch in batches:
                log.append_envelopes(batch)
                progress.update(batch[-1].seq - first + 1)
        last = log.last_seq
    report(
        args,
        {
            "file": source,
            "state_dir": str(state_dir),
            "records": len(envelopes),
            "first_seq": first,
            "last_seq": last,
        },
        f"imported {len(envelopes)} records as seq {first}..{last} into {state_dir}",
    )
    return EXIT_OK


def transaction_batches(envelopes: Sequence[Envelope], limit: int) -> list[list[Envelope]]:
    """Split whole transactions (`check_transactions`) into batches of at most `limit` records
    without splitting one (grouped by the store's one rule, memstate.store.transactions)."""
    from memstate.store.transactions import envelope_itself, group_transactions

    batches: list[list[Envelope]] = []
    current: list[Envelope] = []
    for transaction in group_transactions(envelopes, envelope_itself):
        members = transaction.members
        if current and len(current) + len(members) > limit:
            batches.append(current)
            current = []
        current.extend(members)
    if current:
        batches.append(current)
    return batches


def run_export(args: argparse.Namespace) -> int:
    from memstate.core.scenario import envelope_to_object
    from memstate.history.replay import LogSource
    from memstate.present.progress import Progress
    from memstate.store.reader import LogReader

    state_dir = state_dir_of(args)
    require_state_dir(state_dir)
    require_file_for_report(args)
    encoder = msgspec.json.Encoder()
    target: TextIO
    if args.file is not None:
        target = args.file.open("w", encoding="utf-8")
    else:
        target = sys.stdout
    count = 0
    enabled = progress_enabled(args)
    total = (args.to_seq or LogSource(state_dir).last_seq_estimate()) if enabled else 0
    try:
        with Progress(total, label="export", enabled=enabled) as progress:
            for envelope in LogReader(state_dir).read(args.from_seq, args.to_seq):
                target.write(encoder.encode(envelope_to_object(envelope)).decode() + "\n")
                count += 1
                progress.update(envelope.seq)
    finally:
        if target is not sys.stdout:
            target.close()
    if args.file is not None:
        report(
            args,
            {"file": str(args.file), "state_dir": str(state_dir), "records": count},
            f"exported {count} records to {args.file}",
        )
    return EXIT_OK
