"""Oracles for the protection invariant: no parent protects less than its children.

memory.min and memory.low only protect a child as far as its parent's own value covers it
(memory-qos.md §12.3); memstate's planner orders its writes so that this holds after every write.
These functions check it from the outside, for tests (ours, and tests of a deployment): over a
journal of the directory-backed simulator (every moment), or over one observed tree.
"""

from __future__ import annotations

from collections.abc import Iterable

from memstate.core.cgroup_values import kernel_strip, uncovered_parents
from memstate.core.plan import (
    PROTECTION_FILES,
    ObservedCgroup,
    ObservedTree,
    ValueModel,
    join_path,
    value_model,
)
from memstate.host.sim.cgroupdir import JournalEntry


def protection_violations(
    entries: Iterable[JournalEntry], files: Iterable[str] = ("memory.min", "memory.low")
) -> list[str]:
    """Moments in a journal where a cgroup's protection was below the sum of its children's.

    Replays the tree's shape and the stored values of `files` (``max`` counts as infinite),
    and after every entry checks the cgroups it touched: a parent whose value is below the sum
    of its children's is a violation, reported as ``"#n: path/memory.min 0 < children 1048576"``.
    Only cgroups that have the file are checked (the parent enables ``memory``); the root never
    is. An empty list means no write ever lowered a protection below what the children hold.
    """
    checked = tuple(files)
    values: dict[str, dict[str, float]] = {name: {} for name in checked}
    children: dict[str, set[str]] = {"": set()}
    memory_enabled: dict[str, bool] = {"": False}
    problems: list[str] = []

    def parent_of(path: str) -> str:
        return path.rpartition("/")[0]

    def has_files(path: str) -> bool:
        return bool(path) and memory_enabled.get(parent_of(path), False)

    def check(path: str, entry: JournalEntry) -> None:
        if path not in children or not has_files(path):
            return
        for name in checked:
            table = values[name]

            def value_of(cgroup: str, table: dict[str, float] = table) -> float:
                return table.get(cgroup, 0.0)

            problems.extend(
                f"#{entry.n}: {path}/{name} {_number_text(own)} < children {_number_text(total)}"
                for _path, own, total in uncovered_parents([path], children.__getitem__, value_of)
            )

    def drop(path: str) -> None:
        for child in list(children.get(path, ())):
            drop(child)
        children.pop(path, None)
        memory_enabled.pop(path, None)
        for table in values.values():
            table.pop(path, None)
        children.get(parent_of(path), set()).discard(path)

    for entry in entries:
        path = entry.path
        if path is None:
            continue
        if entry.op == "mkdir":
            children.setdefault(parent_of(path), set()).add(path)
            children[path] = set()
            memory_enabled[path] = False
        elif entry.op in ("rmdir", "remove"):
            drop(path)
        elif entry.op == "write" and entry.file == "cgroup.subtree_control":
            enabled = "memory" in (entry.stored or "").split()
            memory_enabled[path] = enabled
            if not enabled:
                for child in children.get(path, ()):
                    for table in values.values():
                        table.pop(child, None)
        elif entry.op == "write" and entry.file in values:
            stored = kernel_strip(entry.stored or "0")
            values[entry.file][path] = float("inf") if stored == "max" else float(int(stored))
            check(path, entry)
            check(parent_of(path), entry)
    return problems


def _number_text(value: float) -> str:
    return "max" if value == float("inf") else str(int(value))


def protection_shortfalls(
    tree: ObservedTree, *, page_size_bytes: int = 4096
) -> dict[tuple[str, str], int]:
    """For every cgroup whose memory.min (memory.low) is below the sum of its children's: by how
    many bytes, keyed by (path, file). Files not observed are not checked; "max" counts as
    PAGE_COUNTER_MAX pages."""
    values = value_model(page_size_bytes)
    parents = [p for p, found in sorted(tree.cgroups.items()) if found.exists and found.children]

    def children_of(path: str) -> list[str]:
        return [join_path(path, name) for name in tree.cgroups[path].children or ()]

    result: dict[tuple[str, str], int] = {}
    for path in parents:
        for file in PROTECTION_FILES:

            def value_of(cgroup: str, file: str = file) -> int | None:
                found = tree.cgroups.get(cgroup)
                if found is None or not found.exists:
                    return None
                return _number_of(values, found, file)

            for _path, own, total in uncovered_parents([path], children_of, value_of):
                if values.clamp(int(total)) > own:  # the kernel caps the children's sum too
                    result[(path, file)] = values.clamp(int(total)) - int(own)
    return result


def _number_of(values: ValueModel, found: ObservedCgroup, file: str) -> int | None:
    text = found.files.get(file)
    if text is None:
        return None
    normalised = values.normalise(file, text)
    return None if normalised is None else values.number(normalised)


def check_protection(tree: ObservedTree, *, page_size_bytes: int = 4096) -> list[str]:
    """Sentences naming each parent whose memory.min or memory.low is below the sum of its
    children's (empty when the invariant of memory-qos.md §12.3 holds)."""
    return [
        f"{path or '<root>'}: {file} is {shortfall} bytes below the sum of its children's"
        for (path, file), shortfall in sorted(
            protection_shortfalls(tree, page_size_bytes=page_size_bytes).items()
        )
    ]
