"""Documentation that must track the code.

Goal: the event catalogue documents every event kind, and the README keeps exactly the two Quick
start commands that `.ci/run` relies on. Method: compare the docs' text with the code's registries.
"""

from __future__ import annotations

import re
from pathlib import Path

from memstate.core.events import EVENT_KINDS

ROOT = Path(__file__).resolve().parents[1]


def test_every_event_kind_is_in_the_catalogue() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^### `([a-z_]+)`", text, flags=re.MULTILINE))
    assert documented == set(EVENT_KINDS)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick_start.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.split("\n")[:-1] == ["make demo", "make test"]
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
