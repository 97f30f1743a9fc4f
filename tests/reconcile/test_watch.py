"""The cgroup watcher: "resync soon" hints from inotify, under trio.

Method: `watch_cgroups` runs in a nursery and appends its hints to a list; the test changes
the tree and waits (boundedly, polling the list) for the hints it expects. Against a temporary
directory: a root that does not exist yet, cgroups created, interface files written, kernel
counters ignored, the root removed and created again (also with no chance for the watcher to run
in between), directories moved, and prompt cancellation. Against a real
cgroup2 mount (skipped with the reason when there is none): a cgroup created, and `populated`
flipping to 0 when a process exits on its own — a change only the kernel reports, through
cgroup.events. Timeouts are hang guards, never assertions about speed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from memstate.host import RealCgroupFS, is_populated
from memstate.node.cgroup_watch import ROOT_HINT, cgroup_of_change, hints_for_changes, watch_cgroups
from memstate.node.watching import Batch
from tests.host import differential

HINT_TIMEOUT_SECONDS = 10.0


async def until(condition: Callable[[], bool], timeout: float = HINT_TIMEOUT_SECONDS) -> bool:
    """Poll `condition` until it holds or `timeout` passes; returns whether it held."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return True
    return condition()


async def until_watching(root: Path, hints: list[str]) -> None:
    """Wait until the watch on `root` is in place: a probe cgroup created (again and again, as
    the watch may start after it) gives its hint. Leaves no probe behind."""
    probe = root / "probe"
    for _attempt in range(int(HINT_TIMEOUT_SECONDS / 0.5)):
        probe.mkdir()
        seen = await until(lambda: "probe" in hints, timeout=0.5)
        probe.rmdir()
        if seen:
            return
    raise AssertionError(f"the watch on {root} never reported the probe: {hints}")


def test_changes_map_to_their_cgroups() -> None:
    root = Path("/sys/fs/cgroup")
    assert cgroup_of_change(root, "/sys/fs/cgroup/kubepods/memory.max") == "kubepods"
    assert cgroup_of_change(root, "/sys/fs/cgroup/kubepods/pod1/cgroup.events") == "kubepods/pod1"
    assert cgroup_of_change(root, "/sys/fs/cgroup/kubepods/pod1") == "kubepods/pod1"
    assert cgroup_of_change(root, "/sys/fs/cgroup/kubepods.slice") == "kubepods.slice"
    assert cgroup_of_change(root, "/sys/fs/cgroup/cgroup.subtree_control") == ROOT_HINT
    assert cgroup_of_change(root, "/sys/fs/cgroup") == ROOT_HINT
    for counter in ("memory.events", "memory.events.local", "hugetlb.2MB.events", "pids.events"):
        assert cgroup_of_change(root, f"/sys/fs/cgroup/kubepods/{counter}") is None
    assert cgroup_of_change(root, "/elsewhere/memory.max") is None
    assert cgroup_of_change(root, "/sys/fs/cgroupX/memory.max") is None  # a sibling, not inside
    assert cgroup_of_change(Path("/sys/fs/cgroup/"), "/sys/fs/cgroup/a/memory.min") == "a"
    assert cgroup_of_change(Path("/"), "/a/b/cgroup.procs") == "a/b"
    # A directory-backed simulated tree's journal, lock and staging: never a hint.
    assert cgroup_of_change(root, "/sys/fs/cgroup/.journal.jsonl") is None
    assert cgroup_of_change(root, "/sys/fs/cgroup/.memstate-cgroup-sim.d/lock") is None
    assert cgroup_of_change(root, "/sys/fs/cgroup/kubepods/.memstate-cgroup") is None
    changed = [f"/sys/fs/cgroup/pod{i}/memory.max" for i in range(5)]
    assert hints_for_changes(root, changed, limit=5) == [f"pod{i}" for i in range(5)]
    assert hints_for_changes(root, changed, limit=4) == [ROOT_HINT]


async def test_root_that_appears_later_then_changes_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    hints: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: watch_cgroups(root, on_hint=hints.append, root_poll_seconds=0.02)
        )
        await trio.sleep(0.1)
        assert hints == []
        root.mkdir()
        assert await until(lambda: ROOT_HINT in hints), "no hint when the root appeared"
        await trio.sleep(0.3)  # let the watch start on the new root
        hints.clear()
        (root / "kubepods").mkdir()
        assert await until(lambda: "kubepods" in hints), hints
        (root / "kubepods" / "pod1").mkdir()
        assert await until(lambda: "kubepods/pod1" in hints), hints  # new dirs are watched too
        hints.clear()
        (root / "kubepods" / "pod1" / "memory.events").write_text("oom 1\n")
        (root / "kubepods" / "pod1" / "memory.max").write_text("max\n")
        assert await until(lambda: "kubepods/pod1" in hints), hints
        assert hints.count("kubepods/pod1") >= 1 and set(hints) == {"kubepods/pod1"}
        nursery.cancel_scope.cancel()


async def test_root_removed_and_recreated_is_watched_again(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    hints: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: watch_cgroups(root, on_hint=hints.append, root_poll_seconds=0.02)
        )
        await trio.sleep(0.3)
        root.rmdir()
        assert await until(lambda: ROOT_HINT in hints), hints
        hints.clear()
        root.mkdir()
        assert await until(lambda: ROOT_HINT in hints), "no hint when the root came back"
        await trio.sleep(0.3)
        (root / "again").mkdir()
        assert await until(lambda: "again" in hints), hints
        nursery.cancel_scope.cancel()


async def test_root_replaced_before_the_watcher_looks_is_watched_again(tmp_path: Path) -> None:
    """The race behind the flaky test above (issue 10), made certain: the root is removed and
    created again with no chance for the watcher to run in between, so anything that decides
    "the root is gone" by looking at the path sees it unchanged and keeps a dead watch."""
    root = tmp_path / "tree"
    root.mkdir()
    hints: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: watch_cgroups(root, on_hint=hints.append, root_poll_seconds=0.02)
        )
        await until_watching(root, hints)
        root.rmdir()
        root.mkdir()
        # One whole-tree hint for the root going, one once the new watch is in place.
        assert await until(lambda: hints.count(ROOT_HINT) >= 2), hints
        (root / "again").mkdir()
        assert await until(lambda: "again" in hints), hints
        nursery.cancel_scope.cancel()


async def test_a_whole_tree_hint_keeps_its_place_behind_a_batch_being_screened(
    tmp_path: Path,
) -> None:
    """The screen may await (the echo screen judges in steps): the whole-tree hints of the
    root going and of the new watch wait behind the batch being screened, never overtake it."""
    root = tmp_path / "tree"
    root.mkdir()
    hints: list[str] = []
    screening, release = trio.Event(), trio.Event()

    async def screen(batch: Batch) -> Batch:
        if any(change.path.endswith("held") for change in batch.changes):
            screening.set()
            await release.wait()
        return batch

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: watch_cgroups(root, on_hint=hints.append, root_poll_seconds=0.02, screen=screen)
        )
        await until_watching(root, hints)
        hints.clear()
        (root / "held").mkdir()
        with trio.fail_after(HINT_TIMEOUT_SECONDS):  # a hang guard
            await screening.wait()
        (root / "held").rmdir()
        root.rmdir()
        root.mkdir()
        await trio.sleep(0.3)  # the watch may restart meanwhile: its hint must wait
        assert hints == []
        release.set()
        assert await until(lambda: hints.count(ROOT_HINT) >= 2), hints
        assert hints[0] == "held"
        nursery.cancel_scope.cancel()


async def test_a_screen_that_fails_reports_the_batch_unscreened_and_the_watch_goes_on(
    tmp_path: Path,
) -> None:
    """A bug in the screen (it raises) ends neither the watch nor the daemon: the failure is
    reported (`on_error`), the batch's changes are hinted as if unscreened, and the next batch
    is screened again."""
    root = tmp_path / "tree"
    root.mkdir()
    hints: list[str] = []
    errors: list[BaseException] = []
    screened: list[str] = []

    async def screen(batch: Batch) -> Batch:
        await trio.lowlevel.checkpoint()
        names = [Path(change.path).name for change in batch.changes]
        screened.extend(names)
        if "broken" in names:
            raise RuntimeError("a bug in the screen")
        return batch

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: watch_cgroups(root, on_hint=hints.append, on_error=errors.append, screen=screen)
        )
        await until_watching(root, hints)
        (root / "broken").mkdir()
        assert await until(lambda: "broken" in hints), hints
        assert [str(e) for e in errors] == ["a bug in the screen"]
        (root / "after").mkdir()
        assert await until(lambda: "after" in hints), hints
        assert "after" in screened
        nursery.cancel_scope.cancel()


async def test_changes_to_hidden_names_never_reach_the_screen(tmp_path: Path) -> None:
    """A write through a hidden staging file and a rename (how the simulated tree writes), and
    appends to a hidden file at the root (its journal), reach the screen as the one change that
    counts: the rename into place. Hidden names are dropped as the watch reads them."""
    (tmp_path / "pod").mkdir()
    hints: list[str] = []
    screened: list[str] = []

    async def screen(batch: Batch) -> Batch:
        screened.extend(Path(change.path).name for change in batch.changes)
        return batch

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_cgroups(tmp_path, on_hint=hints.append, screen=screen))
        await until_watching(tmp_path, hints)
        hints.clear()
        screened.clear()
        staged = tmp_path / "pod" / ".memory.max.tmp"
        staged.write_text("max\n")
        staged.rename(tmp_path / "pod" / "memory.max")
        with open(tmp_path / ".journal.jsonl", "a") as journal:
            journal.write("{}\n")
        assert await until(lambda: "pod" in hints), hints
        assert "memory.max" in screened
        # (the probe's removal may still arrive meanwhile: it is not hidden)
        assert [name for name in screened if name.startswith(".")] == [], screened
        nursery.cancel_scope.cancel()


async def test_directories_moved_within_the_tree_are_followed(tmp_path: Path) -> None:
    """A cgroup directory renamed within the tree is watched under its new name only."""
    (tmp_path / "a" / "pod").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    hints: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_cgroups(tmp_path, on_hint=hints.append))
        await until_watching(tmp_path, hints)
        (tmp_path / "a" / "pod").rename(tmp_path / "b" / "pod")
        assert await until(lambda: "b/pod" in hints), hints
        hints.clear()
        (tmp_path / "b" / "pod" / "memory.max").write_text("max\n")
        assert await until(lambda: "b/pod" in hints), hints
        assert "a/pod" not in hints
        nursery.cancel_scope.cancel()


async def test_a_tree_moved_in_is_watched_to_its_leaves(tmp_path: Path) -> None:
    """A directory with subdirectories renamed into the tree (its link count says it has some)
    is walked: changes in its deepest cgroup are hinted. Leaves (a link count of 2) are not
    walked, and still watched."""
    root = tmp_path / "tree"
    root.mkdir()
    outside = tmp_path / "outside"
    (outside / "pod" / "container" / "deeper").mkdir(parents=True)
    (outside / "leaf").mkdir()
    hints: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_cgroups(root, on_hint=hints.append))
        await until_watching(root, hints)
        (outside / "pod").rename(root / "pod")
        (outside / "leaf").rename(root / "leaf")
        assert await until(lambda: "pod" in hints and "leaf" in hints), hints
        hints.clear()
        (root / "pod" / "container" / "deeper" / "memory.max").write_text("max\n")
        (root / "leaf" / "memory.max").write_text("max\n")
        assert await until(lambda: "pod/container/deeper" in hints and "leaf" in hints), hints
        nursery.cancel_scope.cancel()


async def test_cancellation_ends_the_watch(tmp_path: Path) -> None:
    """The watch thread is stopped through its stop event; the nursery exits (hang guard)."""
    with trio.fail_after(HINT_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watch_cgroups(tmp_path, on_hint=lambda _hint: None))
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()


@pytest.mark.realcgroup
async def test_real_cgroup_creation_and_populated_flip_give_hints() -> None:
    mount, reason = differential.find_cgroup2_mount()
    if mount is None:
        pytest.skip(f"no writable cgroup2 mount: {reason}")
    name = f"memstate-watch-{os.getpid()}"
    parent = RealCgroupFS(mount)
    parent.mkdir(name)
    root = mount / name
    fs = RealCgroupFS(root)
    hints: list[str] = []
    process: subprocess.Popen[bytes] | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: watch_cgroups(root, on_hint=hints.append))
            await trio.sleep(0.3)
            fs.mkdir("kubepods")
            assert await until(lambda: "kubepods" in hints), hints
            process = subprocess.Popen(["sleep", "1"], stdin=subprocess.DEVNULL)
            fs.write("kubepods", "cgroup.procs", str(process.pid))
            assert await until(lambda: is_populated(fs, "kubepods"))
            await trio.sleep(0.3)  # the hint of our own write to cgroup.procs
            hints.clear()
            # Nobody writes anything now: the process exits by itself, and only the kernel's
            # notification on cgroup.events can tell the watcher.
            assert await until(lambda: process is not None and process.poll() is not None)
            assert await until(lambda: not is_populated(fs, "kubepods"))
            assert await until(lambda: "kubepods" in hints), "populated 1 -> 0 gave no hint"
            nursery.cancel_scope.cancel()
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if fs.exists("kubepods"):
            fs.rmdir("kubepods")
        parent.rmdir(name)
