"""A whole observation through RealCgroupFS on real files: one open per call, and the walk's
answers when the tree changes under it.

Goal: RealCgroupFS opens a path in one openat2(RESOLVE_NO_SYMLINKS) call where the kernel has
it, and falls back to its component-by-component walk (whose answer then counts) when that call
fails; an observation must come out exactly as with the walk alone, also when the tree changes
between a listing and the reads that follow it (a symlink planted, a directory replaced, a cgroup
removed), and must never read anything through a symlink. Method: memstate renders a small
mixed node with the directory-backed simulator (plain files), `observe_tree` reads it through
RealCgroupFS with openat2 and with the walk alone (`_openat2` patched to offer none), a wrapper
changes the tree right after the first listing of the victim's parent, and the two observations
(trees and read errors, messages included) are compared, with the property each scenario must
have. The open count wraps `os.open` and the openat2 entry point.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from memstate.core.targets import NodeTargets
from memstate.host import RealCgroupFS, cgroupfs
from memstate.host.sim.cgroupdir import DirCgroupFS
from memstate.reconcile.observe import ReadError, observe_tree
from memstate.reconcile.reconciler import Reconciler
from tests.reconcile.helpers import PAGE, mixed_pod, targets_of_pods, uid_for

MODES = ("openat2", "walk")
SECRET = "666\n"


def render(directory: Path) -> tuple[Path, NodeTargets, str]:
    """A converged 6-pod mixed node rendered as plain files: (root, targets, a Burstable pod)."""
    targets = targets_of_pods([mixed_pod(uid_for(index), index) for index in range(6)])
    root = directory / "cgroup"
    with DirCgroupFS(root, page_size_bytes=PAGE, online_nodes="0-1") as fs:
        reconciler = Reconciler(fs, page_size_bytes=PAGE)
        reconciler.reconcile(targets)
        if not reconciler.reconcile(targets).converged:
            raise AssertionError("the rendered tree did not converge")
    burstable = sorted(
        t.path for t in targets.cgroups if t.path.startswith("kubepods/burstable/pod")
    )
    return root, targets, burstable[0]


def real_fs(root: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> RealCgroupFS:
    """RealCgroupFS over `root`, with openat2 (skipped where the kernel has none) or without."""
    with monkeypatch.context() as patch:
        if mode == "walk":
            patch.setattr(cgroupfs, "_openat2", lambda: None, raising=False)
        fs = RealCgroupFS(root)
    if mode == "openat2" and getattr(fs, "_open_no_symlinks", None) is None:
        pytest.skip("openat2 is not available here")
    return fs


class AfterListing:
    """`fs`, with `change` run once, right after the first listing of `parent` returned."""

    def __init__(self, fs: RealCgroupFS, parent: str, change: Callable[[], None]) -> None:
        self.fs = fs
        self.parent = parent
        self.change: Callable[[], None] | None = change

    def list_children(self, path: str) -> list[str]:
        names = self.fs.list_children(path)
        if path == self.parent and self.change is not None:
            change, self.change = self.change, None
            change()
        return names

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


Scenario = Callable[[Path, Path], None]  # (the victim's directory, a directory outside the root)


def plant_symlink(victim: Path, outside: Path) -> None:
    """The pod directory moved out of the root, a symlink to it left in its place."""
    moved = outside / "moved"
    os.rename(victim, moved)
    (moved / "memory.high").write_text(SECRET)
    victim.symlink_to(moved, target_is_directory=True)


def plant_file_symlink(victim: Path, outside: Path) -> None:
    """One of the pod's files replaced by a symlink to a file outside."""
    (outside / "memory.high").write_text(SECRET)
    (victim / "memory.high").unlink()
    (victim / "memory.high").symlink_to(outside / "memory.high")


def replace_directory(victim: Path, outside: Path) -> None:
    """The pod directory replaced by another directory (a new cgroup of the same name)."""
    os.rename(victim, outside / "old")
    shutil.copytree(outside / "old", victim)
    (victim / "memory.high").write_text("4096\n")


def replace_with_file(victim: Path, outside: Path) -> None:
    """The pod directory replaced by a regular file."""
    shutil.rmtree(victim)
    victim.write_text(SECRET)


def remove(victim: Path, outside: Path) -> None:
    """The pod cgroup removed (as a kubelet racing memstate would)."""
    shutil.rmtree(victim)


SCENARIOS: dict[str, Scenario] = {
    "symlinked directory": plant_symlink,
    "symlinked file": plant_file_symlink,
    "directory replaced": replace_directory,
    "replaced by a file": replace_with_file,
    "removed": remove,
}


def observe_changed(
    tmp_path: Path, mode: str, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[ReadError], str]:
    """Render a node, observe it through RealCgroupFS (`mode`) while `scenario` changes the
    victim right after its parent was listed: (tree, read errors, the victim's path)."""
    root, targets, victim = render(tmp_path / "node")
    outside = tmp_path / "outside"
    outside.mkdir()
    fs = AfterListing(
        real_fs(root, mode, monkeypatch),
        victim.rpartition("/")[0],
        lambda: scenario(root / victim, outside),
    )
    tree, errors, _calls = observe_tree(fs, targets)  # type: ignore[arg-type]
    return tree, errors, victim


@pytest.fixture
def outcomes(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, tuple[Any, list[ReadError], str]]]:
    """The scenario's observation in each mode (the test's `scenario` parameter)."""
    scenario = SCENARIOS[request.param]
    yield {mode: observe_changed(tmp_path / mode, mode, scenario, monkeypatch) for mode in MODES}


def _errnos(errors: list[ReadError], path: str) -> set[int]:
    return {e.errno for e in errors if e.path == path}


@pytest.mark.parametrize("outcomes", sorted(SCENARIOS), indirect=True)
def test_a_change_during_the_observation_ends_as_with_the_walk(
    outcomes: dict[str, tuple[Any, list[ReadError], str]],
) -> None:
    """Same tree, same read errors (errno, op, path, message) with openat2 as with the walk."""
    tree, errors, _victim = outcomes["openat2"]
    walked_tree, walked_errors, _ = outcomes["walk"]
    assert errors == walked_errors
    assert tree == walked_tree


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["symlinked directory", "symlinked file", "replaced by a file"])
def test_nothing_is_read_through_a_symlink_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, name: str
) -> None:
    """A symlink planted after the listing is refused (ENOTDIR for a directory, ELOOP for a
    file), a directory replaced by a file is ENOTDIR; the value outside is never seen."""
    tree, errors, victim = observe_changed(tmp_path, mode, SCENARIOS[name], monkeypatch)
    found = tree.get(victim)
    assert found is not None
    assert SECRET not in found.files.values()
    expected = {errno.ELOOP} if name == "symlinked file" else {errno.ENOTDIR}
    assert _errnos(errors, victim) == expected
    if name != "symlinked file":
        assert found.files == {} and found.children is None


@pytest.mark.parametrize("mode", MODES)
def test_a_replaced_directory_is_read_afresh_and_a_removed_one_is_quietly_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Each call resolves its path anew: the new directory's value is read; a cgroup removed
    after the listing has every value unknown and no read error (it vanished)."""
    tree, errors, victim = observe_changed(
        tmp_path / "replaced", mode, replace_directory, monkeypatch
    )
    assert not errors
    assert tree.get(victim).files["memory.high"] == "4096\n"
    tree, errors, victim = observe_changed(tmp_path / "removed", mode, remove, monkeypatch)
    assert not errors
    found = tree.get(victim)
    assert found.files == {} and found.children is None and found.unreadable


def test_an_observation_opens_each_path_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full observation makes at most one open (or openat2) per call, not one per path
    component (the walk: ~4.6 per call)."""
    root, targets, _victim = render(tmp_path)
    opens = 0

    def counted(function: Callable[..., int]) -> Callable[..., int]:
        def call(*args: Any, **kwargs: Any) -> int:
            nonlocal opens
            opens += 1
            return function(*args, **kwargs)

        return call

    loader = getattr(cgroupfs, "_openat2", None)  # absent before openat2 was used
    opener = loader() if loader is not None else None
    if opener is not None:
        monkeypatch.setattr(cgroupfs, "_openat2", lambda: counted(opener))
    fs = RealCgroupFS(root)
    if loader is not None and getattr(fs, "_open_no_symlinks", None) is None:
        pytest.skip("openat2 is not available here")
    monkeypatch.setattr(os, "open", counted(os.open))
    opens = 0
    tree, errors, calls = observe_tree(fs, targets)
    monkeypatch.undo()
    assert not errors and tree.get("kubepods") is not None
    assert calls > 40 and opens <= calls
