"""The cgroup watch drops the echo of memstate's own writes, never someone else's change.

Method: `watch_cgroups` runs over a directory-backed simulated tree (real inotify, real files)
with `OwnWrites.foreign_in_steps` as its screen; memstate's operations go through
`RecordingCgroupFS`, as the daemon's reconciler's do, and "someone else" writes the tree's files
directly. A change
that cannot be an echo (a cgroup made by hand, "barrier") is made last: inotify reports one
watch's events in order, so once its hint is in, every change made before it has been judged.
No durations are asserted; timeouts are hang guards.

Without the screen (the watch as it was) each test's first assertion fails: the own writes
give the hints ``kubepods`` and ``kubepods/pod-a``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import trio

from memstate.host.inotify import IN_CREATE, IN_DELETE, IN_ISDIR, IN_MODIFY
from memstate.host.sim.cgroupdir import DirCgroupFS
from memstate.node import cgroup_echo
from memstate.node.cgroup_echo import STEP_READS, OwnWrites, RecordingCgroupFS
from memstate.node.cgroup_watch import watch_cgroups
from memstate.node.watching import Batch, Change
from tests.reconcile.test_watch import until

PAGE = 4096
POD = "kubepods/pod-a"
Gi = str(2**30)


class Tree:
    """A simulated tree with kubepods, memstate's recording view of it, and the hints."""

    def __init__(self, root: Path, *, screened: bool = True) -> None:
        self.root = root
        self.sim = DirCgroupFS(
            root, page_size_bytes=PAGE, hugepage_sizes_bytes=(), online_nodes="0,1"
        )
        self.sim.write("", "cgroup.subtree_control", "+memory +cpuset")
        self.sim.mkdir("kubepods")
        self.sim.write("kubepods", "cgroup.subtree_control", "+memory +cpuset")
        self.own = OwnWrites(root, page_size_bytes=PAGE, clock=time.monotonic)
        self.fs = RecordingCgroupFS(self.sim, self.own)
        self.hints: list[str] = []
        self.screened = screened
        self._barriers = 0

    def watch(self) -> Callable[[], object]:
        return lambda: watch_cgroups(
            self.root,
            on_hint=self.hints.append,
            screen=self.own.foreign_in_steps if self.screened else None,
        )

    def admit(self, pod: str = POD) -> None:
        """What a round admitting a pod writes: the parent's protection, the pod cgroup and
        its files."""
        self.fs.write("kubepods", "memory.min", Gi)
        self.fs.mkdir(pod)
        self.fs.write(pod, "memory.min", Gi)
        self.fs.write(pod, "memory.max", Gi)
        self.fs.write(pod, "cpuset.mems", "0")

    def by_hand(self, path: str, file: str, text: str) -> None:
        """Someone else writes a file of the tree (no DirCgroupFS call: a plain write)."""
        (self.root / path / file).write_text(text)

    async def barrier(self) -> list[str]:
        """The hints given for every change made so far (then forgotten), the barriers' own
        left out (the simulated tree adopts a hand-made directory at its next operation and
        fills in its files: more hints for it)."""
        self._barriers += 1
        name = f"barrier{self._barriers}"
        (self.root / name).mkdir()
        # A whole-tree hint ("") swallows the barrier's: it ends the wait too (and fails the
        # caller's comparison at once).
        assert await until(lambda: name in self.hints or "" in self.hints), self.hints
        seen = [hint for hint in self.hints if not hint.startswith(("barrier", "probe"))]
        self.hints.clear()
        return seen

    async def started(self) -> None:
        """Until the watch is in place (its first barrier is reported)."""
        for _attempt in range(50):
            probe = self.root / "probe"
            probe.mkdir()
            seen = await until(lambda: "probe" in self.hints, timeout=0.2)
            probe.rmdir()
            if seen:
                await self.barrier()
                return
        raise AssertionError("the watch never started")


async def test_own_writes_give_no_hint(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "cg")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.watch())
        await tree.started()
        await trio.to_thread.run_sync(tree.admit)  # the reconciler's worker thread
        assert await tree.barrier() == []
        assert tree.own.echoes >= 2  # the pod cgroup created, kubepods' memory.min at least
        # Written again with the same value (a drift correction, a repeated round): no hint.
        tree.fs.write(POD, "memory.min", Gi)
        assert await tree.barrier() == []
        nursery.cancel_scope.cancel()


async def test_a_write_by_someone_else_after_ours_is_reported(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "cg")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.watch())
        await tree.started()
        tree.admit()
        assert await tree.barrier() == []
        # In a later batch than ours.
        tree.by_hand(POD, "memory.min", "0\n")
        assert await tree.barrier() == [POD]
        # Between our write and the watch reading its event: both in one batch.
        tree.fs.write(POD, "memory.min", Gi)
        tree.by_hand(POD, "memory.min", "4096\n")
        assert await tree.barrier() == [POD]
        # The parent's protection too (a file of a cgroup we did not create this time).
        tree.fs.write("kubepods", "memory.min", Gi)
        tree.by_hand("kubepods", "memory.min", "0\n")
        assert await tree.barrier() == ["kubepods"]
        # In a cgroup we just created, before the watch on it is in place (no await between:
        # that write is never reported): its creation is not taken for our echo then.
        tree.fs.mkdir("kubepods/pod-b")
        tree.fs.write("kubepods/pod-b", "memory.min", Gi)
        tree.by_hand("kubepods/pod-b", "memory.min", "0\n")
        assert await tree.barrier() == ["kubepods/pod-b"]
        # Someone else's write before ours, ours last: the file reads what we wrote.
        tree.by_hand(POD, "memory.max", "max\n")
        tree.fs.write(POD, "memory.max", Gi)
        assert await tree.barrier() == []
        nursery.cancel_scope.cancel()


async def test_cgroups_removed_or_made_by_someone_else_are_reported(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "cg")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.watch())
        await tree.started()
        tree.admit()
        assert await tree.barrier() == []
        # Removed by someone else, and made again (a new cgroup at our path).
        shutil.rmtree(tree.root / POD)
        assert await tree.barrier() == [POD]
        os.mkdir(tree.root / POD)
        assert await tree.barrier() == [POD]
        # Ours removed, then made again: no hint; someone else's removal and creation after
        # that: hinted (each record of ours is used up by its event).
        tree.sim.refresh()  # the simulated tree adopts the hand-made cgroup (fills in its files)
        await tree.barrier()
        tree.fs.write(POD, "memory.min", "0")
        tree.fs.rmdir(POD)
        assert await tree.barrier() == []
        tree.fs.mkdir(POD)
        assert await tree.barrier() == []
        shutil.rmtree(tree.root / POD)
        os.mkdir(tree.root / POD)
        assert await tree.barrier() == [POD]
        nursery.cancel_scope.cancel()


# Admissions back to back: more than the old budget's 256 reads in one batch (each admission's
# created cgroup is judged by reading its value files: ~5 reads in the simulated tree).
BURST = 60


async def test_a_burst_of_admissions_is_judged_and_gives_no_hint(tmp_path: Path) -> None:
    """Admissions with no await between them reach the watch as one batch; judging it takes
    more reads than the old budget (256), within the new one: no hint at all (with 256 the batch
    was kept whole and its 60 cgroups became a whole-tree hint, ``""``)."""
    tree = Tree(tmp_path / "cg")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.watch())
        await tree.started()
        reads = _count_reads()
        for index in range(BURST):
            tree.admit(f"kubepods/pod-{index}")
        assert await tree.barrier() == []
        assert reads[0] > 256
        assert tree.own.echoes >= BURST + 1  # each pod cgroup created, kubepods' memory.min
        nursery.cancel_scope.cancel()


async def test_a_write_by_someone_else_in_a_burst_is_reported(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "cg")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.watch())
        await tree.started()
        for index in range(BURST):
            tree.admit(f"kubepods/pod-{index}")
            if index == BURST // 2:
                tree.by_hand(f"kubepods/pod-{index}", "memory.max", "max\n")
        assert await tree.barrier() == [f"kubepods/pod-{BURST // 2}"]
        nursery.cancel_scope.cancel()


_REAL_READ = cgroup_echo._read


def _count_reads() -> list[int]:
    """Counts the screen's file reads from now on (restored by the fixture below)."""
    count = [0]

    def counting(path: str) -> str | None:
        count[0] += 1
        return _REAL_READ(path)

    cgroup_echo._read = counting
    return count


@pytest.fixture(autouse=True)
def _restore_read() -> Iterator[None]:
    yield
    cgroup_echo._read = _REAL_READ


async def test_a_large_batch_is_judged_in_steps_other_tasks_run_between(tmp_path: Path) -> None:
    """`foreign_in_steps` reads at most `STEP_READS` files in one task step (a trio Instrument
    counts the reads at the end of each step), another task runs between those steps, and the
    echoes are dropped."""
    files = 5 * STEP_READS
    own = _own(tmp_path, [0.0])
    changes = []
    for index in range(files):
        (tmp_path / f"pod{index}").mkdir()
        (tmp_path / f"pod{index}" / "memory.min").write_text(Gi + "\n")
        own.wrote(f"pod{index}", "memory.min", Gi)
        changes.append(Change(str(tmp_path / f"pod{index}" / "memory.min"), IN_MODIFY))
    reads = _count_reads()
    judged: list[Batch] = []
    steps: list[tuple[str, int]] = []  # (task, reads so far) at the end of each task step

    class Steps(trio.abc.Instrument):
        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name in ("judge", "other"):
                steps.append((task.name, reads[0]))

    async def judge() -> None:
        judged.append(await own.foreign_in_steps(Batch(tuple(changes))))

    async def other() -> None:
        while not judged:
            await trio.lowlevel.checkpoint()

    trio.lowlevel.add_instrument(Steps())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(judge, name="judge")
        nursery.start_soon(other, name="other")
    assert judged[0].changes == ()
    assert reads[0] == files
    judge_reads = [count for name, count in steps if name == "judge"]
    per_step = [after - before for before, after in pairwise([0, *judge_reads])]
    assert max(per_step) <= STEP_READS
    assert sum(1 for count in per_step if count) >= files // STEP_READS
    # The other task ran while the judging was under way (after some reads, before the last).
    assert any(name == "other" and 0 < count < files for name, count in steps)


async def test_the_steps_keep_the_rules(tmp_path: Path) -> None:
    """Judged in steps of one read: a foreign value kept, an echo dropped, the budget still
    the whole batch's (over it: kept whole), an incomplete batch kept whole."""
    own = _own(tmp_path, [0.0], max_reads=3)
    changes = []
    for index, text in enumerate([Gi, "0", Gi]):
        (tmp_path / f"pod{index}").mkdir()
        (tmp_path / f"pod{index}" / "memory.min").write_text(text + "\n")
        own.wrote(f"pod{index}", "memory.min", Gi)
        changes.append(Change(str(tmp_path / f"pod{index}" / "memory.min"), IN_MODIFY))
    batch = Batch(tuple(changes))
    assert (await own.foreign_in_steps(batch, step_reads=1)).changes == (changes[1],)
    assert (await own.foreign_in_steps(batch, step_changes=1)).changes == (changes[1],)
    longer = Batch((*changes, Change(str(tmp_path / "pod3" / "memory.min"), IN_MODIFY)))
    own.wrote("pod3", "memory.min", Gi)
    assert await own.foreign_in_steps(longer, step_reads=1) is longer
    overflowed = Batch(tuple(changes), complete=False)
    assert await own.foreign_in_steps(overflowed) is overflowed


async def test_without_the_screen_own_writes_are_hinted(tmp_path: Path) -> None:
    """The watch as it was (no screen): what the tests above would see without the change."""
    tree = Tree(tmp_path / "cg", screened=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tree.watch())
        await tree.started()
        tree.admit()
        assert set(await tree.barrier()) == {"kubepods", POD}
        nursery.cancel_scope.cancel()


# --- OwnWrites alone: synthetic batches over real files ------------------------------------------


def _own(root: Path, clock: list[float], **kwargs: int) -> OwnWrites:
    return OwnWrites(root, page_size_bytes=PAGE, clock=lambda: clock[0], **kwargs)


def test_an_incomplete_batch_is_kept_whole(tmp_path: Path) -> None:
    (tmp_path / "kubepods").mkdir()
    (tmp_path / "kubepods" / "memory.min").write_text(Gi + "\n")
    own = _own(tmp_path, [0.0])
    own.wrote("kubepods", "memory.min", Gi)
    change = Change(str(tmp_path / "kubepods" / "memory.min"), IN_MODIFY)
    overflowed = Batch((change,), complete=False)
    assert own.foreign(overflowed) is overflowed  # the whole-tree resync, as before
    assert own.foreign(Batch((change,))).changes == ()


def test_records_expire(tmp_path: Path) -> None:
    (tmp_path / "kubepods" / "pod").mkdir(parents=True)
    (tmp_path / "kubepods" / "memory.min").write_text(Gi + "\n")
    clock = [100.0]
    own = _own(tmp_path, clock)
    own.wrote("kubepods", "memory.min", Gi)
    own.created("kubepods/pod")
    clock[0] += 5.0 + 0.001  # past KEEP_SECONDS
    batch = Batch(
        (
            Change(str(tmp_path / "kubepods" / "memory.min"), IN_MODIFY),
            Change(str(tmp_path / "kubepods" / "pod"), IN_CREATE | IN_ISDIR),
        )
    )
    assert own.foreign(batch) is batch


@pytest.mark.parametrize("reads", [2, 3])
def test_a_batch_with_too_many_files_to_read_is_kept_whole(tmp_path: Path, reads: int) -> None:
    own = _own(tmp_path, [0.0], max_reads=2)
    changes = []
    for index in range(reads):
        (tmp_path / f"pod{index}").mkdir()
        (tmp_path / f"pod{index}" / "memory.min").write_text("0\n")
        own.wrote(f"pod{index}", "memory.min", "0")
        changes.append(Change(str(tmp_path / f"pod{index}" / "memory.min"), IN_MODIFY))
    changes.append(changes[0])  # the same file again (a parent's, once per pod): read once
    batch = Batch(tuple(changes))
    kept = own.foreign(batch)
    assert kept.changes == (() if reads <= 2 else batch.changes)


def test_a_removal_is_ours_only_while_the_cgroup_is_gone(tmp_path: Path) -> None:
    own = _own(tmp_path, [0.0])
    own.removed("pod")
    removal = Batch((Change(str(tmp_path / "pod"), IN_DELETE | IN_ISDIR),))
    (tmp_path / "pod").mkdir()  # made again by someone else before the event was judged
    assert own.foreign(removal) is removal
    own.removed("pod")
    (tmp_path / "pod").rmdir()
    assert own.foreign(removal).changes == ()


def test_a_batch_too_long_to_judge_is_kept_whole_before_any_read(tmp_path: Path) -> None:
    """More than 4 changes per read of the budget (a full resync's burst): let through as it
    is, without judging (no reads on the event loop); up to that, judged."""
    (tmp_path / "kubepods").mkdir()
    (tmp_path / "kubepods" / "memory.min").write_text(Gi + "\n")
    own = _own(tmp_path, [0.0], max_reads=1)
    own.wrote("kubepods", "memory.min", Gi)
    change = Change(str(tmp_path / "kubepods" / "memory.min"), IN_MODIFY)
    assert own.foreign(Batch((change,) * 4)).changes == ()  # one read, four echoes
    long = Batch((change,) * 5)
    assert own.foreign(long) is long


async def test_a_batch_with_more_creations_than_the_budget_can_judge_is_kept_before_reading(
    tmp_path: Path,
) -> None:
    """More cgroups created than a quarter of the budget (each costs at least its four memory.*
    reads): let through whole before any read; up to that, judged."""
    own = _own(tmp_path, [0.0], max_reads=8)
    changes = []
    for index in range(3):
        (tmp_path / f"pod{index}").mkdir()
        for name in ("memory.min", "memory.low", "memory.high", "memory.max"):
            default = "max" if name in ("memory.high", "memory.max") else "0"
            (tmp_path / f"pod{index}" / name).write_text(default + "\n")
        own.created(f"pod{index}")
        changes.append(Change(str(tmp_path / f"pod{index}"), IN_CREATE | IN_ISDIR))
    reads = _count_reads()
    three = Batch(tuple(changes))
    assert await own.foreign_in_steps(three) is three
    assert reads[0] == 0
    assert own.foreign(three) is three
    assert reads[0] == 0
    two = Batch(tuple(changes[:2]))
    assert (await own.foreign_in_steps(two)).changes == ()
    assert reads[0] == 8
