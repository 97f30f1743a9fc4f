"""docs/architecture.md draws the package graph that the code really has.

Goal: the architecture page cannot go stale. Method: read the mermaid edges from the page, compute
the package-level import graph from the code (tests/architecture.py, every import counted), and
require the two sets to be equal; every edge drawn must also be allowed by the rules table.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.architecture import RULES, imports_in, package_edges

ROOT = Path(__file__).resolve().parents[1]
EDGE = re.compile(r"^\s*([a-z_]+)\s*-->\s*([a-z_]+)\s*$")


def drawn_edges() -> set[tuple[str, str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for line in block.splitlines():
        match = EDGE.match(line)
        if match:
            edges.add((match[1].replace("_", "."), match[2].replace("_", ".")))
    return edges


def test_the_drawing_matches_the_imports() -> None:
    real = {
        (a, b) for a, b in package_edges(imports_in(ROOT / "memstate")) if "memstate" not in (a, b)
    }
    drawn = drawn_edges()
    assert drawn, "no mermaid edges found in docs/architecture.md"
    assert sorted(drawn - real) == [], "drawn but not in the code"
    assert sorted(real - drawn) == [], "in the code but not drawn"


def test_every_drawn_edge_is_allowed() -> None:
    for source, target in drawn_edges():
        assert target in RULES[source], f"{source} --> {target} breaks the rules table"
