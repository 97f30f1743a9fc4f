"""Dependencies point inward: the packages follow one rules table, the core stays pure.

Goal: the package layout is the architecture (docs/architecture.md), and it cannot rot. Method:
(1) every import of every module (relative, lazy and TYPE_CHECKING ones included) is checked
against the rules table in tests/architecture.py — who may import whom, which packages may not
use trio; (2) no import cycles between modules; (3) planted violations in a scratch tree must be
reported, so the checker is not vacuous; (4) the core's own allow-list of standard modules, a
fresh-interpreter import of the whole core that must load no I/O module, and no clock reads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.architecture import (
    RULES,
    imports_in,
    module_cycles,
    module_name,
    rule_violations,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "memstate"

CORE_ALLOWED = {
    "__future__",
    "typing",
    "dataclasses",
    "enum",
    "hashlib",
    "itertools",
    "functools",
    "math",
    "bisect",
    "operator",
    "re",
    "fractions",
    "collections",
    "collections.abc",
    "datetime",  # parsing ISO 8601 text only; clock reads are refused below
    "msgspec",
    "msgspec.json",
    "msgspec.msgpack",
    "msgspec.structs",
}
# What must never be imported, directly or indirectly, by the core.
IO_MODULES = {
    "os",
    "io",
    "pathlib",
    "time",
    "random",
    "socket",
    "subprocess",
    "threading",
    "logging",
    "trio",
    "watchfiles",
    "prometheus_client",
    "h11",
    "yaml",
}


def modules_in(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", modules_in(PACKAGE / "core"), ids=lambda p: p.name)
def test_core_imports_only_pure_modules(path: Path) -> None:
    bad = sorted(
        name
        for name in imports_of(path)
        if name not in CORE_ALLOWED and not name.startswith("memstate.core")
    )
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules_in(PACKAGE / "core"), ids=lambda p: p.name)
def test_core_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert not {"now", "today", "utcnow", "time_ns", "monotonic"} & set(calls), path.name


def test_every_import_follows_the_rules_table() -> None:
    """Each package imports only what RULES allows (relative and lazy imports count)."""
    problems = rule_violations(imports_in(PACKAGE))
    assert not problems, "\n".join(problems)


def test_no_import_cycles_anywhere() -> None:
    cycles = module_cycles(imports_in(PACKAGE))
    assert not cycles, cycles


def test_every_package_is_in_the_rules_table() -> None:
    """A new sub-package must be given its rules, not slip through as "memstate"."""
    packages = {
        module_name(PACKAGE, p).removeprefix("memstate.")
        for p in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in p.parts and p.parent != PACKAGE
    }
    # Packages nested inside a layer belong to it (node.sources is node), except host.sim.
    layers = {name if name == "host.sim" else name.split(".")[0] for name in packages}
    assert layers <= set(RULES), sorted(layers - set(RULES))


PLANTED = {
    # reconcile must not use trio, nor import the node agent; core imports nothing from the shell;
    # a relative import counts like an absolute one; nobody imports cli; the product does not
    # import the test oracles, and they may not import cli either.
    "reconcile/bad.py": "import trio\nfrom memstate.node import daemon\n",
    "core/bad.py": "from ..store import log\n",
    "history/bad.py": "def later() -> None:\n    from memstate.cli import main\n",
    "node/bad.py": "from memstate.testing import protection\n",
    "testing/bad.py": "from memstate.cli import main\n",
    "store/a.py": "from memstate.store import b\n",
    "store/b.py": "def f() -> None:\n    from memstate.store import a\n",
}


def test_planted_violations_are_reported(tmp_path: Path) -> None:
    """The checker is not vacuous: each planted violation and the planted cycle are found."""
    root = tmp_path / "memstate"
    for name in ("", "core", "store", "reconcile", "history", "node", "cli", "testing"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text("")
    (root / "node" / "daemon.py").write_text("")
    (root / "store" / "log.py").write_text("")
    (root / "cli" / "main.py").write_text("")
    (root / "testing" / "protection.py").write_text("")
    for relative, text in PLANTED.items():
        (root / relative).write_text(text)
    imports = imports_in(root)
    problems = "\n".join(rule_violations(imports))
    assert "memstate.reconcile.bad (reconcile) imports trio" in problems
    assert "memstate.reconcile.bad (reconcile) imports memstate.node.daemon (node)" in problems
    assert "memstate.core.bad (core) imports memstate.store.log (store)" in problems
    assert "memstate.history.bad (history) imports memstate.cli.main (cli)" in problems
    assert "memstate.node.bad (node) imports memstate.testing.protection (testing)" in problems
    assert "memstate.testing.bad (testing) imports memstate.cli.main (cli)" in problems
    assert module_cycles(imports) == [["memstate.store.a", "memstate.store.b"]]
    # And the real tree, checked by the same functions, is clean (the tests above).


def test_importing_the_core_loads_no_io_module() -> None:
    # Nested packages (core/plan/) included: module_name spells each one's dotted name.
    core_modules = [module_name(PACKAGE, p) for p in modules_in(PACKAGE / "core")]
    probe = (
        "import json, sys\n"
        "import msgspec, msgspec.json, msgspec.msgpack, msgspec.structs\n"
        "baseline = set(sys.modules)\n"
        f"for name in {core_modules!r}:\n"
        "    __import__(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - baseline)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    loaded = set(json.loads(result.stdout))
    assert not (loaded & IO_MODULES), sorted(loaded & IO_MODULES)
