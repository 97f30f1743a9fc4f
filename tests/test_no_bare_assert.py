"""Invariants in product code raise `InvariantViolation`: a bare `assert` vanishes under -O.

An AST walk over every module of the `memstate` package (tests may assert, the product may not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import memstate

PACKAGE_ROOT = Path(memstate.__file__).parent


def bare_asserts(root: Path) -> list[str]:
    """`file:line` of every `assert` statement in the Python files under `root`."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found.extend(
            f"{path.relative_to(root.parent)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Assert)
        )
    return found


def test_no_product_module_contains_a_bare_assert() -> None:
    assert bare_asserts(PACKAGE_ROOT) == []


def test_a_planted_assert_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text(
        "def f(x):\n    if x:\n        assert x > 1, 'nested'\n    return x\n", encoding="utf-8"
    )
    assert bare_asserts(package) == ["pkg/sub/mod.py:3"]
