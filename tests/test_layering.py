"""Dependencies point inward: the core does no I/O and imports nothing from the shell.

Goal: `memstate.core` stays a pure functional core (style.md §4). Method: (1) walk every module's
AST and check each import against its layer's allow-list; (2) import the whole core in a fresh
interpreter and check that none of the I/O, concurrency and shell modules got loaded, which
catches indirect imports too; (3) no `.now()`/`.today()`/`time.time()` style clock reads in the
core.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
SHELL_ONLY = {"trio", "watchfiles", "prometheus_client", "h11"}


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


@pytest.mark.parametrize("layer", ["store", "host"], ids=lambda name: f"memstate.{name}")
def test_inner_layers_do_not_import_the_shell(layer: str) -> None:
    directory = PACKAGE / layer
    if not directory.exists():
        pytest.skip(f"memstate/{layer} does not exist yet")
    for path in modules_in(directory):
        names = imports_of(path)
        assert not (names & SHELL_ONLY), f"{path} imports {names & SHELL_ONLY}"
        shell = {
            n for n in names if n.startswith("memstate.") and n.split(".")[1] not in ("core", layer)
        }
        assert not shell, f"{path} imports shell modules {shell}"


def test_importing_the_core_loads_no_io_module() -> None:
    core_modules = [
        "memstate.core." + p.stem for p in modules_in(PACKAGE / "core") if p.stem != "__init__"
    ]
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
