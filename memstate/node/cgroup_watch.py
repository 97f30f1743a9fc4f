"""Watching the managed cgroup tree: "resync soon" hints for the reconcile loop.

Theory of operation
-------------------
The periodic full resync is the source of truth; watching only makes it come early. When
someone else changes the tree — creates or removes a cgroup, writes a managed file, or a pod
cgroup's processes exit (``populated`` flips in its cgroup.events) — the daemon should reconcile
now rather than at the next period. `watch_cgroups` watches the root recursively with inotify
(memstate.node.watching: a watch on every directory, including the ones created later, waited on by
trio's event loop, so an idle tree costs no CPU) and calls ``on_hint(path)`` for every cgroup
that changed, with `path` relative to the root; ``""`` means "the whole tree" (the root appeared,
too many cgroups changed at once, the kernel's event queue overflowed, or the watch had to be
restarted and changes may have been missed).

Why inotify works on cgroupfs: a mkdir/rmdir goes through the VFS and notifies the parent
directory; a write to an interface file notifies like any write; and the kernel itself raises a
modify notification on cgroup.events when ``populated`` or ``frozen`` changes (kernfs_notify),
delivered to the directory's watch with the file's name. Polling is never used: stat()ing
thousands of kernfs files every few hundred milliseconds would cost more than the resync it
replaces, and polling cannot see cgroup.events flips anyway (kernfs mtimes do not change).

Filtering is done here. Counter files the kernel notifies on by itself (memory.events, pids.events,
hugetlb.*.events ...) are ignored: under memory pressure they change constantly and say nothing
about the state memstate manages. So are hidden names (a leading dot): cgroupfs has none, and the
directory-backed simulated tree (memstate.host.sim.cgroupdir) keeps its journal and lock there,
touched by every operation — watching them would turn each resync into the next one's trigger
(hidden directories are not even watched, and changes to hidden names are dropped as the watch
reads them: the simulated tree writes every file through a hidden staging file, three of every
four events it causes, which would otherwise fill the batches the echo screen judges).
Of the other interface files only those that say something about what memstate manages count:
the files it writes (memory.min/low/high/max, cpuset.mems, hugetlb.<size>.max,
cgroup.subtree_control), cgroup.events (``populated`` decides when a removed pod's cgroup can go),
and cgroup.procs / cgroup.kill. Derived files (cgroup.stat, which every mkdir below changes,
*.effective, memory.current, memory.stat...) are ignored: reacting to them would make every
creation of a pod cgroup a resync of the whole tree. Directories (cgroups appearing or vanishing)
always count. memstate's own writes are recognised and dropped when the daemon passes `screen`
(memstate.node.cgroup_echo: only those that still read what memstate wrote), so they schedule no
extra round; anyone else's change to the same files still does. The screen is async: it judges a
batch in steps that let the event loop run between them (a 0.2 s batch of admissions back to back
takes ~3.4 ms to judge), so the watch hands its batches, in order, to a task of its own through a
memory channel; the whole-tree hints of a restart or a vanished root go through the same channel,
so they keep their place after the batches of the watch before. A screen that raises (a bug) ends
nothing: it is logged at ERROR and reported to `on_error`, and that batch is reported unscreened.

Shape for trio: `watch_cgroups` is a plain coroutine that runs until cancelled; start it in a
nursery. It handles a root that does not exist yet (checks every `root_poll_seconds`), a root that
disappears (the kernel's IN_DELETE_SELF/IN_IGNORED on the root's own watch, never a stat() that a
quick re-creation would fool; back to waiting), and watcher failures (logged — an unexpected one
at ERROR with its traceback —, reported to `on_error`, restarted after an exponential back-off
from `retry_seconds`, see `memstate.node.watching.WatchRetry`). Every watch after the first
starts with a whole-tree hint, given only once the new watch is in place. `on_hint` must not
block; a trio memory channel's ``send_nowait`` or an Event's ``set`` fit. Cancellation is
immediate: no thread is involved.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import trio

from memstate.host.inotify import IN_CREATE, IN_DELETE, IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO
from memstate.node.watching import Batch, WatchEnd, WatchRetry, watch

logger = logging.getLogger(__name__)

ROOT_HINT = ""
# A batch ends after this long without a new change (or at the maximum): a burst (a pod cgroup,
# its files and container cgroups, a reconcile round's own writes) becomes one batch.
DEFAULT_SETTLE_SECONDS = 0.05
DEFAULT_SETTLE_MAX_SECONDS = 0.2
# How often a missing root is looked for.
DEFAULT_ROOT_POLL_SECONDS = 1.0
DEFAULT_RETRY_SECONDS = 5.0
DEFAULT_MAX_RETRY_SECONDS = 60.0
# More distinct cgroups than this in one batch: one "whole tree" hint instead.
MAX_HINTS_PER_BATCH = 32
# Writes (IN_MODIFY: also what the kernel raises on cgroup.events), cgroups appearing or leaving,
# and files replaced by rename (the directory-backed simulated tree writes that way).
_WATCH_MASK = IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO

# Interface files are "<controller or cgroup>.<name>"; directories (cgroups) are anything else.
_INTERFACE_FILE_RE = re.compile(r"(cgroup|memory|cpuset|cpu|io|hugetlb|pids|rdma|misc)\..+")
# The interface files whose changes matter (see the module docstring); every other one is
# ignored, including the counters the kernel notifies on by itself (memory.events...).
_WATCHED_FILE_RE = re.compile(
    r"memory\.(min|low|high|max)|cpuset\.mems|hugetlb\.[0-9]+[KMG]B\.max"
    r"|cgroup\.(subtree_control|events|procs|kill)"
)


def cgroup_of_change(root: Path, changed: str) -> str | None:
    """The cgroup (relative to `root`) a changed path belongs to, or None to ignore it.

    A change to an interface file belongs to the cgroup holding it; a created or removed
    directory is a cgroup itself. Paths outside `root` are ignored.
    """
    # Plain string work, no pathlib: a batch holds hundreds of changes. The watch's paths are
    # the root joined with names (memstate.node.watching), never with "." or doubled slashes.
    base = str(root).rstrip("/")
    if changed == base:
        return ROOT_HINT
    if not changed.startswith(base + "/"):
        return None
    parts = [part for part in changed[len(base) + 1 :].split("/") if part]
    if not parts:
        return ROOT_HINT
    if any(part.startswith(".") for part in parts):
        # cgroupfs has no hidden names; a directory-backed simulated tree keeps its journal,
        # lock and staging there, touched by every operation (reads included).
        return None
    name = parts[-1]
    if _INTERFACE_FILE_RE.fullmatch(name):
        if not _WATCHED_FILE_RE.fullmatch(name):
            return None
        return "/".join(parts[:-1])
    return "/".join(parts)


def hints_for_changes(root: Path, changed: Iterable[str], *, limit: int) -> list[str]:
    """Distinct cgroups of a batch of changes, sorted; ``[""]`` when more than `limit`."""
    cgroups = sorted({c for path in changed if (c := cgroup_of_change(root, path)) is not None})
    if len(cgroups) > limit:
        return [ROOT_HINT]
    return cgroups


async def watch_cgroups(
    root: Path | str,
    *,
    on_hint: Callable[[str], object],
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    settle_max_seconds: float = DEFAULT_SETTLE_MAX_SECONDS,
    root_poll_seconds: float = DEFAULT_ROOT_POLL_SECONDS,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS,
    max_hints_per_batch: int = MAX_HINTS_PER_BATCH,
    on_error: Callable[[BaseException], object] | None = None,
    screen: Callable[[Batch], Awaitable[Batch]] | None = None,
) -> None:
    """Call ``on_hint(cgroup_path)`` whenever the tree under `root` changes; run until cancelled.

    See the module docstring. ``on_hint("")`` asks for a resync of the whole tree. `screen`, if
    given, takes each batch first and returns what is left to report (the daemon drops the echo
    of its own writes there, `memstate.node.cgroup_echo.OwnWrites.foreign_in_steps`); it may
    await, and batches wait for it in order.
    """
    directory = Path(root)
    # Batches to screen and report, in order; None is a whole-tree hint (keeping its place
    # after the batches before it). Unbounded: a batch comes at most every `settle_seconds`,
    # and screening one takes milliseconds.
    send, receive = trio.open_memory_channel[Batch | None](math.inf)

    def whole_tree() -> None:
        send.send_nowait(None)

    def on_batch(batch: Batch) -> None:
        send.send_nowait(batch)

    async def report() -> None:
        async for batch in receive:
            if batch is not None and screen is not None:
                try:
                    batch = await screen(batch)
                except Exception as exc:  # a bug in the screen: never the end of the watch
                    # Reported loudly, as a failed watch is; the batch goes on unscreened
                    # (keeping a change is always safe: at worst a round more).
                    logger.error(
                        "cgroup watch on %s: screening a batch failed; its changes are reported "
                        "unscreened",
                        directory,
                        exc_info=exc,
                    )
                    if on_error is not None:
                        on_error(exc)
            if batch is None or not batch.complete:
                on_hint(ROOT_HINT)
                continue
            changed = [change.path for change in batch.changes]
            for hint in hints_for_changes(directory, changed, limit=max_hints_per_batch):
                on_hint(hint)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        await _watch_tree(
            directory,
            on_batch,
            whole_tree,
            settle_seconds=settle_seconds,
            settle_max_seconds=settle_max_seconds,
            root_poll_seconds=root_poll_seconds,
            retry_seconds=retry_seconds,
            max_retry_seconds=max_retry_seconds,
            on_error=on_error,
        )


async def _watch_tree(
    directory: Path,
    on_batch: Callable[[Batch], None],
    whole_tree: Callable[[], None],
    *,
    settle_seconds: float,
    settle_max_seconds: float,
    root_poll_seconds: float,
    retry_seconds: float,
    max_retry_seconds: float,
    on_error: Callable[[BaseException], object] | None,
) -> None:
    """Watch `directory` for ever: `on_batch` for each settled batch, `whole_tree()` where
    changes may have been missed (see the module docstring)."""
    # After the first watch, every new one starts with a whole-tree hint, given once the new
    # watch is in place: whatever happened between two watches is covered by that resync, and
    # every change after the hint is reported. It does not depend on having seen the root
    # missing: a root removed and created again in between looks unchanged to a stat().
    retry = WatchRetry(
        f"cgroup watch on {directory}",
        base_seconds=retry_seconds,
        max_seconds=max_retry_seconds,
        on_error=on_error,
        on_restart=whole_tree,
    )
    while True:
        while not directory.is_dir():
            retry.restarted = True
            await trio.sleep(root_poll_seconds)
        try:
            ended = await watch(
                directory,
                on_batch,
                mask=_WATCH_MASK,
                recursive=True,
                settle_seconds=settle_seconds,
                settle_max_seconds=settle_max_seconds,
                skip_directory=_is_hidden,
                skip_name=_is_hidden,
                on_started=retry.started,
            )
        except (FileNotFoundError, NotADirectoryError):
            retry.restarted = True  # the root went away before its watch was set up
            continue
        except Exception as exc:  # reported loudly, then retried (module docstring)
            # The watch could not be set up (inotify limits...) or failed (a bug). Changes may
            # be missed: ask for a full resync, then try again later.
            delay = retry.failed(exc)
            whole_tree()
            retry.restarted = True
            await trio.sleep(delay)
            continue
        retry.restarted = True
        if ended is WatchEnd.ROOT_GONE:
            whole_tree()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")
