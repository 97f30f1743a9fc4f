"""`memstate replay`: re-derive every decision of a recorded log or scenario and compare.

For a JSON-lines scenario (hand-written or exported) every input is decided afresh; recorded
decisions, where present, are compared with the re-derived ones and the first divergence stops
the replay with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from memstate.core.errors import ScenarioError
from memstate.core.scenario import read_scenario
from memstate.core.state import State, state_hash
from memstate.output import add_output_argument, output_format, write_json, write_table
from memstate.replay import transitions
from memstate.views import (
    NUMA_HEADERS,
    POD_HEADERS,
    describe_decision,
    numa_document,
    numa_rows,
    pod_rows,
    pods_document,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="re-derive the decisions of a scenario or log and compare them",
        description=(
            "Replay a JSON-lines scenario (replay/*.jsonl, or `memstate log export` output): "
            "every input is decided afresh by this build's reducer and compared with the "
            "recorded decisions. Exit 1 at the first divergence."
        ),
    )
    parser.add_argument("path", type=Path, help="a .jsonl scenario or export")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the final summary")
    add_output_argument(parser, jsonl=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read: {exc.strerror}", source=str(path)) from None
    envelopes = read_scenario(text, source=str(path))
    rows: list[list[Any]] = []
    decided: list[dict[str, Any]] = []
    state = State()
    divergence: dict[str, Any] | None = None
    for transition in transitions(envelopes):
        state = transition.after
        texts = [describe_decision(d) for d in transition.decisions]
        decided.append(
            {
                "seq": transition.record.seq,
                "event": transition.record.event.kind,
                "decisions": texts,
            }
        )
        for index, text_line in enumerate(texts or ["-"]):
            first = index == 0
            rows.append(
                [
                    transition.record.seq if first else "",
                    transition.record.event.kind if first else "",
                    text_line,
                ]
            )
        if transition.diverges:
            assert transition.recorded is not None
            divergence = {
                "seq": transition.record.seq,
                "event": transition.record.event.kind,
                "recorded": [describe_decision(e.event) for e in transition.recorded],
                "derived": [describe_decision(d) for d in transition.derived],
                "apply_error": transition.apply_error,
            }
            break
    if output_format(args, piped="json") == "json":
        write_json(
            {
                "transitions": decided,
                "divergence": divergence,
                "numa": numa_document(state),
                "pods": pods_document(state),
                "state_hash": state_hash(state),
            }
        )
        return 1 if divergence else 0
    if not args.quiet:
        write_table(["SEQ", "EVENT", "DECISION"], rows)
        sys.stdout.write("\n")
        write_table(NUMA_HEADERS, numa_rows(state))
        sys.stdout.write("\n")
        write_table(POD_HEADERS, pod_rows(state))
    if divergence:
        sys.stdout.write(
            f"\ndivergence at seq {divergence['seq']} ({divergence['event']}):\n"
            f"  recorded: {divergence['recorded']}\n  derived:  {divergence['derived']}\n"
        )
        if divergence["apply_error"]:
            sys.stdout.write(f"  the recorded decisions do not fit: {divergence['apply_error']}\n")
        return 1
    sys.stdout.write(f"\n{len(envelopes)} records replayed, state hash {state_hash(state)}\n")
    return 0
