"""Issue 14, item 6, on every command: `-o json` and `-q` everywhere, and a progress bar on
every operation that reads a whole log.

Method: the argparse tree is walked (replay's own forms included), so a command added later is
covered automatically; each leaf runs in-process (`memstate.cli.main.main`) against a real state
directory imported from a bundled scenario, with real files. The progress bars are checked with
`--progress` (stderr is not a terminal under pytest) and the redraw interval set to zero, so the
check does not depend on how fast the machine is; the terminal default is checked through a
real pty by tests/cli/test_item6_output.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from memstate.cli.commands.demo_cmd import example_dir
from memstate.cli.main import build_parser, main
from memstate.present.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "replay" / "memory-qos-tiered.jsonl"

# Leaf commands without -o/-q, each with the sentence of docs/cli.md that says why.
WITHOUT_OUTPUT = {"run": "`run` has no `-o` and no `-q`"}

# Every other leaf command, run so that it succeeds without a daemon. {state}: a state
# directory holding SCENARIO; {example}: the bundled example node; {manifests}: a manifest
# directory already holding the example's web.yaml (so `admit` replaces it without waiting);
# {tree}: an empty cgroup tree; {new}: a path not used before.
INVOCATIONS: dict[str, str | None] = {
    "admit": "admit {example}/manifests/web.yaml --manifest-dir {manifests} --state-dir {state}",
    "remove": None,  # waits for a daemon's record: tests/cli/test_item2_newcomer_path.py
    "status": "status --state-dir {state}",
    "topology": "topology --topology-file {example}/topology.yaml",
    "plan": "plan --state-dir {state} --cgroup-root {tree}",
    "diff": "diff --state-dir {state} --cgroup-root {tree}",
    "log verify": "log verify --state-dir {state} --full",
    "log dump": "log dump --state-dir {state}",
    "log repair": "log repair --truncate-torn-tail --dry-run --state-dir {state}",
    "log prune": "log prune --dry-run --state-dir {state}",
    "log import": "log import {scenario} --state-dir {new}",
    "log export": "log export --state-dir {state} -f {new}.jsonl",
    "replay": "replay {state}",
    "replay bisect": "replay bisect {state}",
    "replay anonymise": "replay anonymise {state} {new}.jsonl",
    "audit pod": "audit pod app --state-dir {state}",
    "audit numa": "audit numa 0 --state-dir {state}",
    "audit rejections": "audit rejections --state-dir {state}",
    "audit timeline": "audit timeline --state-dir {state}",
    "audit plot": "audit plot -f {new}.png --state-dir {state}",
    "audit export": "audit export --state-dir {state} -f {new}.jsonl",
    "demo": "demo --simulate",
    "shadow report": "shadow report --state-dir {state}",
    # needs a kubelet checkpoint and a machine it fits: tests/kubelet/test_import.py (-o json)
    "import kubelet-state": None,
}

# Commands that read a whole log, and the label of their bar.
LONG_OPERATIONS = {
    "log dump": "dump",
    "log verify": "verify",
    "log import": "import",
    "log export": "export",
    "replay": "replay",
    "replay bisect": "bisect",
    "replay anonymise": "anonymise",
    "audit pod": "audit",
    "audit numa": "audit",
    "audit rejections": "audit",
    "audit timeline": "audit",
    "audit plot": "audit",
    "audit export": "audit",
}


def leaf_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command words, parser) for every leaf of `memstate`'s command tree."""

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> Iterator[Any]:
        forms = parser.get_default("forms")
        if forms is not None:  # a command that parses its own forms (replay)
            for name, form in forms().items():
                yield " ".join([*words, name]).strip(), form
            return
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not groups:
            yield " ".join(words), parser
        for group in groups:
            for name, child in group.choices.items():
                yield from walk(child, [*words, name])

    yield from walk(build_parser(), [])


LEAVES = dict(leaf_parsers())


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def test_item6_the_walk_finds_every_command_family() -> None:
    families = {words.split()[0] for words in LEAVES}
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert families == set(commands.choices)
    assert {"replay", "replay bisect", "replay anonymise", "log export", "audit plot"} <= set(
        LEAVES
    )


@pytest.mark.parametrize("words", sorted(LEAVES))
def test_item6_every_command_accepts_o_json_and_q(words: str) -> None:
    options = options_of(LEAVES[words])
    if words in WITHOUT_OUTPUT:
        assert "-o" not in options and "-q" not in options
        assert WITHOUT_OUTPUT[words] in (ROOT / "docs" / "cli.md").read_text()
        return
    assert "-o" in options and "json" in (options["-o"].choices or ()), words
    assert "-q" in options and options["-q"].option_strings == ["-q", "--quiet"], words


def test_item6_every_command_has_an_invocation_here() -> None:
    assert set(LEAVES) - set(WITHOUT_OUTPUT) == set(INVOCATIONS)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("every-command")
    assert main(["log", "import", str(SCENARIO), "--state-dir", str(work / "state"), "-q"]) == 0
    (work / "manifests").mkdir()
    shutil.copy(example_dir() / "manifests" / "web.yaml", work / "manifests" / "web.yaml")
    (work / "tree").mkdir()
    return {"work": work, "state": work / "state"}


FRESH = count()


def run(node: dict[str, Path], words: str, extra: list[str], capsys: Any) -> tuple[int, str, str]:
    template = INVOCATIONS[words]
    assert template is not None
    argv = template.format(
        state=node["state"],
        example=example_dir(),
        manifests=node["work"] / "manifests",
        tree=node["work"] / "tree",
        scenario=SCENARIO,
        new=node["work"] / f"new-{next(FRESH)}",
    ).split()
    capsys.readouterr()
    code = main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, err


RUNNABLE = sorted(words for words, template in INVOCATIONS.items() if template is not None)


@pytest.mark.parametrize("words", RUNNABLE)
def test_item6_q_prints_nothing(node: dict[str, Path], words: str, capsys: Any) -> None:
    code, out, err = run(node, words, ["-q"], capsys)
    assert code == 0, err
    assert out == "" and err == ""


@pytest.mark.parametrize("words", RUNNABLE)
def test_item6_o_json_prints_one_json_document(
    node: dict[str, Path], words: str, capsys: Any
) -> None:
    code, out, err = run(node, words, ["-o", "json"], capsys)
    assert code == 0, err
    assert err == ""  # notes about written files are part of the document
    assert isinstance(json.loads(out), dict | list)
    quiet_code, quiet_out, _ = run(node, words, ["-q", "-o", "json"], capsys)
    assert quiet_code == 0
    assert isinstance(json.loads(quiet_out), dict | list)  # -q with -o: the summary


def test_item6_q_o_json_of_a_file_command_is_its_report(node: dict[str, Path], capsys: Any) -> None:
    target = node["work"] / "report.jsonl"
    argv = ["log", "export", "--state-dir", str(node["state"]), "-f", str(target), "-o", "json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["file"] == str(target)
    assert document["records"] == len(target.read_text().splitlines()) > 0


def test_item6_export_o_json_without_a_file_is_a_usage_error(
    node: dict[str, Path], capsys: Any
) -> None:
    assert main(["audit", "export", "--state-dir", str(node["state"]), "-o", "json"]) == 2
    assert capsys.readouterr().err.startswith("memstate: error: -o json reports")


@pytest.fixture
def eager_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redraw on every update (the command's work is small; its wiring is what is tested)."""
    original = Progress.__init__

    def eager(self: Progress, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "interval_seconds": 0.0})

    monkeypatch.setattr(Progress, "__init__", eager)


@pytest.mark.parametrize("words", sorted(LONG_OPERATIONS))
def test_item6_long_operations_draw_progress_on_stderr(
    node: dict[str, Path], words: str, capsys: Any, eager_progress: None
) -> None:
    label = LONG_OPERATIONS[words]
    code, out, err = run(node, words, ["-o", "json", "--progress"], capsys)
    assert code == 0, err
    assert f"\r{label} [" in err, err
    assert err.endswith("\r\x1b[K")  # erased before the answer
    json.loads(out)  # stdout untouched by the bar
    # Not a terminal, not asked for: no bar; --no-progress: none either.
    for extra in ([], ["--no-progress"]):
        code, _, err = run(node, words, ["-o", "json", *extra], capsys)
        assert code == 0 and err == ""


def test_item6_every_long_operation_offers_progress_options() -> None:
    for words, parser in LEAVES.items():
        options = options_of(parser)
        if words in LONG_OPERATIONS:
            assert {"--progress", "--no-progress"} <= options.keys(), words
