"""The import graph of the `memstate` package and the rules it must follow.

Used by tests/test_layering.py (the rules, and a planted violation that must be reported) and by
tests/test_architecture_doc.py (docs/architecture.md draws exactly the package graph found here).

Every import counts: module level or inside a function, absolute or relative, under
`TYPE_CHECKING` or not — a lazy import is still a dependency, it only hides it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Who may import whom, per package (a package may always import itself). "memstate" is the
# top-level package itself (`__version__`). Nothing imports `cli` but `memstate.__main__`.
RULES: Mapping[str, frozenset[str]] = {
    "core": frozenset(),
    "store": frozenset({"core"}),
    "host": frozenset({"core"}),
    "host.sim": frozenset({"core", "host"}),
    "reconcile": frozenset({"core", "host"}),
    "present": frozenset({"core"}),
    "history": frozenset({"core", "store", "present", "memstate"}),
    "nri": frozenset({"core"}),
    "node": frozenset({"core", "store", "host", "host.sim", "reconcile", "nri", "memstate"}),
    "testing": frozenset(
        {"core", "store", "host", "host.sim", "reconcile", "present", "history", "nri", "node"}
    ),
    "cli": frozenset(
        {
            "core",
            "store",
            "host",
            "host.sim",
            "reconcile",
            "present",
            "history",
            "nri",
            "node",
            "memstate",
        }
    ),
    "memstate": frozenset({"cli"}),
}

# Third-party modules a package must not import (directly; indirect use is caught by the core's
# fresh-interpreter probe in test_layering.py).
FORBIDDEN_EXTERNAL: Mapping[str, frozenset[str]] = {
    "core": frozenset({"trio", "anyio", "watchfiles", "prometheus_client", "yaml", "httpx", "h11"}),
    "store": frozenset({"trio", "anyio", "watchfiles", "prometheus_client", "httpx", "h11"}),
    "host": frozenset({"trio", "anyio", "watchfiles", "prometheus_client", "httpx", "h11"}),
    "reconcile": frozenset({"trio", "anyio", "watchfiles", "prometheus_client", "httpx", "h11"}),
    "history": frozenset({"trio", "anyio", "watchfiles", "prometheus_client", "httpx", "h11"}),
    "present": frozenset({"trio", "anyio", "watchfiles", "prometheus_client", "httpx", "h11"}),
}


@dataclass(frozen=True)
class Import:
    """One import statement: which module imports which name, and where."""

    source: str  # dotted module name of the importing file
    target: str  # dotted module imported (absolute, relative imports resolved)
    path: Path
    line: int


def module_name(root: Path, path: Path) -> str:
    """The dotted name of `path` inside the package directory `root` (e.g. memstate.node.daemon)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_in(root: Path) -> list[Import]:
    """Every import in every module under the package directory `root`."""
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        source = module_name(root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.extend(Import(source, a.name, path, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(source, _is_package(path), node.level, node.module)
                # `from pkg import mod` imports the submodule when there is one.
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    target = candidate if _module_exists(root, candidate) else base
                    found.append(Import(source, target, path, node.lineno))
    return found


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    parts = source.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, *([module] if module else [])])


def _module_exists(root: Path, dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != root.name:
        return False
    base = root.parent.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def package_of(module: str) -> str:
    """The layer a memstate module belongs to: "core", "host.sim", ..., or "memstate"."""
    parts = module.split(".")
    if len(parts) < 2:
        return "memstate"
    if parts[1] == "host" and len(parts) > 2 and parts[2] == "sim":
        return "host.sim"
    if parts[1] in {"__main__", "__init__"} or parts[1] not in RULES:
        return "memstate"
    return parts[1]


def rule_violations(imports: Iterable[Import]) -> list[str]:
    """Imports that break RULES or FORBIDDEN_EXTERNAL, one readable line each."""
    problems: list[str] = []
    for item in imports:
        source = package_of(item.source)
        top = item.target.split(".")[0]
        if top == "memstate":
            target = package_of(item.target)
            if target != source and target not in RULES.get(source, frozenset()):
                problems.append(
                    f"{item.path}:{item.line}: {item.source} ({source}) imports "
                    f"{item.target} ({target}), which {source} may not import"
                )
        elif top in FORBIDDEN_EXTERNAL.get(source, frozenset()):
            problems.append(
                f"{item.path}:{item.line}: {item.source} ({source}) imports {item.target}"
            )
    return problems


def package_edges(imports: Iterable[Import]) -> set[tuple[str, str]]:
    """The package-level graph: (importer, imported) pairs between different layers."""
    edges: set[tuple[str, str]] = set()
    for item in imports:
        if item.target.split(".")[0] != "memstate":
            continue
        source, target = package_of(item.source), package_of(item.target)
        if source != target:
            edges.add((source, target))
    return edges


def module_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted, in order."""
    graph: dict[str, set[str]] = {}
    for item in imports:
        if item.target.startswith("memstate") and item.target != item.source:
            # A package's __init__ importing its own submodules is how re-exports work, and
            # a submodule importing its package's __init__ is not a cycle of logic.
            if item.target.startswith(item.source + ".") or item.source.startswith(
                item.target + "."
            ):
                continue
            graph.setdefault(item.source, set()).add(item.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)
