"""Build a compiled copy of memstate with mypyc, for measuring only (stop 22, "tried, not adopted").

    python scripts/mypyc_trial.py DEST [--tier replay|decide|core] [--ref HEAD]

Exports `--ref` of this repository into DEST, applies the changes mypyc needs there (never in
the worktree), and compiles the tier's modules in place with the mypyc that ships with mypy:

- replay: memstate/history/replay.py and memstate/core/qos.py (they define no msgspec.Struct);
- decide: also core/reducer.py, core/numa_policy.py, core/predicate.py;
- core:   also core/machine.py, core/pod.py, core/cgroup_paths.py, core/topology_hints.py.

What mypyc needs, and why each is done in the copy only (docs/performance.md, "stop 22: the
core compiled with mypyc"):

- No msgspec.Struct may be defined in a compiled module: mypyc builds such a class as a plain
  Python class but drops the class keywords (`frozen=True`, `tag=...`, `forbid_unknown_fields`,
  `omit_defaults`, `dict=True`: python/mypy#21938), turns annotations such as `int | None` or
  `tuple[Block, ...]` into bare types (what msgspec decodes against), loses `ClassVar`, and
  compiles `==` between two such structs as identity. The tier's Struct classes are moved to
  `<module>_structs.py` (not compiled) and imported back.
- mypyc evaluates a generator expression eagerly, as a list: `LogSource.envelopes` becomes a
  generator function, or a JSON-lines replay holds the whole log (tests/replay/test_memory.py).
- A compiled class's `__new__` runs `__init__`: `MachineBuilder.scratch` builds its copy through
  `__init__` with an empty machine.

Run the benchmark or tests from DEST with `PYTHONPATH=DEST`, as for any exported tree:

    cd DEST && PYTHONPATH=$PWD python -m benchmarks.log_replay --numa-nodes 4,8 --clock cpu
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import sys
import tarfile
from pathlib import Path

TIERS = {
    "replay": ["memstate/history/replay.py", "memstate/core/qos.py"],
    "decide": [
        "memstate/core/reducer.py",
        "memstate/core/numa_policy.py",
        "memstate/core/predicate.py",
    ],
    "core": [
        "memstate/core/machine.py",
        "memstate/core/pod.py",
        "memstate/core/cgroup_paths.py",
        "memstate/core/topology_hints.py",
    ],
}
ORDER = ["replay", "decide", "core"]

# (file, text, replacement): the copy's changes other than the Struct moves.
REWRITES = [
    (
        "memstate/history/replay.py",
        "        return (envelope for envelope, _ in self.records(from_seq))\n",
        "        for envelope, _ in self.records(from_seq):\n            yield envelope\n",
    ),
    (
        "memstate/core/machine.py",
        "        copy = MachineBuilder.__new__(MachineBuilder)\n",
        "        copy = MachineBuilder(Machine())\n",
    ),
]


def modules_of(tier: str) -> list[str]:
    """The modules a tier compiles (each tier includes the ones before it)."""
    return [m for t in ORDER[: ORDER.index(tier) + 1] for m in TIERS[t]]


def export(ref: str, dest: Path) -> None:
    repository = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "archive", ref], cwd=repository, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def move_structs(root: Path, name: str) -> list[str]:
    """Move the module's msgspec.Struct classes to `<module>_structs.py` (with a copy of its
    imports and of the assignments above the first of them) and import them back."""
    path = root / name
    source = path.read_text()
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    names: list[str] = []
    moved: list[ast.ClassDef] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            _base_name(b) in {"Struct", *names} for b in node.bases
        ):
            names.append(node.name)
            moved.append(node)
    if not moved:
        return []
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    above = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign | ast.AnnAssign) and n.lineno < moved[0].lineno
    ]

    def start(node: ast.stmt) -> int:
        decorators = getattr(node, "decorator_list", [])
        return int(decorators[0].lineno if decorators else node.lineno)

    def text(node: ast.stmt) -> str:
        return "".join(lines[start(node) - 1 : node.end_lineno])

    parts = [f'"""The Struct classes of {path.stem} (mypyc trial copy)."""\n']
    parts += [text(n) for n in imports] + ["\n"] + [text(n) for n in above]
    parts += [f"\n\n{text(n)}" for n in moved]
    (path.parent / f"{path.stem}_structs.py").write_text("".join(parts))
    kept = lines[:]
    for node in sorted(moved, key=lambda n: -n.lineno):
        del kept[start(node) - 1 : node.end_lineno]
    package = ".".join(Path(name).parent.parts)
    back = ", ".join(f"{n} as {n}" for n in names)
    kept.insert(
        max(n.end_lineno or n.lineno for n in imports),
        f"from {package}.{path.stem}_structs import {back}\n",
    )
    path.write_text("".join(kept))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--tier", choices=ORDER, default="core")
    parser.add_argument("--ref", default="HEAD")
    args = parser.parse_args()
    dest: Path = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=False)
    export(args.ref, dest)
    modules = modules_of(args.tier)
    for name, old, new in REWRITES:
        path = dest / name
        if name in modules:
            text = path.read_text()
            if old not in text:
                raise SystemExit(f"{name}: the text to rewrite for mypyc is not there any more")
            path.write_text(text.replace(old, new))
    for name in modules:
        moved = move_structs(dest, name)
        if moved:
            print(f"{name}: moved {', '.join(moved)}")
    # setuptools (under mypyc's command line) refuses a flat layout with several top-level
    # directories when it finds a pyproject.toml: compile without it.
    (dest / "pyproject.toml").rename(dest / "pyproject.toml.aside")
    try:
        with (dest / "mypyc-build.log").open("w") as log:
            subprocess.run(
                [sys.executable, "-m", "mypyc", *modules],
                cwd=dest,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    finally:
        (dest / "pyproject.toml.aside").rename(dest / "pyproject.toml")
    print(f"compiled {len(modules)} modules in {dest} (log: {dest / 'mypyc-build.log'})")


if __name__ == "__main__":
    main()
