"""Directory watches that block in the kernel: inotify, waited on by trio.

Why not watchfiles: its watch thread wakes every `step` milliseconds to look for changes and for
its stop event, whether anything happens or not; three such watches at a 2 ms step cost the idle
daemon ~3 % of a core (docs/performance.md, idle). Here the inotify descriptor is registered with
trio's epoll loop (`trio.lowlevel.wait_readable`): an idle watch costs nothing, a change is seen
the moment the kernel queues it, and cancellation (SIGTERM) is immediate because no thread is
involved.

`watch` watches one directory, or a whole tree (`recursive=True`: every directory gets its own
inotify watch, including the ones created later — found through IN_CREATE/IN_MOVED_TO on their
parent, then walked, since they may have children by the time the watch is added). It calls
`on_batch` with the changes read together (a long queue is read in steps of
`READ_STEP_BYTES` with a trio checkpoint between them, into one batch) and returns when the
watched directory itself goes away (deleted, moved, unmounted) or when the kernel's queue
overflowed (changes were lost: the caller rescans and watches again). The watch is
established (every directory watched) before `on_started` is called, so a caller can announce
"watching now" knowing that any later change will be reported — which is what makes a restart
after the root came back race-free.

The loops built on it (`watch_directory` here, `memstate.node.cgroup_watch.watch_cgroups`) never
die and never fail silently: a watch that cannot be set up (an `OSError`: inotify limits...) is
logged at WARNING, anything else (a bug) at ERROR with its traceback, once per run of failures;
both are passed to `on_error` (the daemon counts them in a metric) and the watch is tried again
after an exponential back-off (`WatchRetry`), reset once a watch is in place again.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import trio

from memstate.host.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Inotify,
)

logger = logging.getLogger(__name__)

# What every watch needs whatever the caller asks for: the end of the watched directory itself.
_SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
# What a recursive watch needs to follow directories appearing and leaving.
_TREE_EVENTS = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO
# One step of reading the inotify queue reads at most this much of it (~25 events of the
# simulated tree, the directories that appeared among them watched: ~0.1 ms of work), then
# lets the event loop run: what queued up during a settle pause of a burst (a thousand events
# and more) is read in steps, not in one, so a manifest renamed meanwhile waits for one step
# (docs/performance.md, stop 25 `watch9`). At least `MAX_EVENT_BYTES` (one event of any name).
READ_STEP_BYTES = 1024


@dataclass(frozen=True)
class Change:
    """One inotify event: the absolute path it is about and its mask (IN_* bits)."""

    path: str
    mask: int


@dataclass(frozen=True)
class Batch:
    """The changes read in one go; `complete` is False when the kernel dropped some."""

    changes: tuple[Change, ...]
    complete: bool = True


class WatchEnd(Enum):
    """Why `watch` returned."""

    STOPPED = "stopped"  # on_batch returned False
    ROOT_GONE = "root gone"  # the watched directory was deleted, moved away or unmounted
    OVERFLOW = "overflow"  # the kernel's event queue overflowed: changes were lost


def is_new_regular_file(change: Change) -> bool:
    """A regular file just created: its content is not written yet (IN_CLOSE_WRITE follows)."""
    if not change.mask & IN_CREATE or change.mask & IN_ISDIR:
        return False
    try:
        return stat.S_ISREG(os.lstat(change.path).st_mode)
    except OSError:
        return False  # gone again: let the caller look


class _Tree:
    """The inotify descriptor and the directories it watches (synchronous, no trio)."""

    def __init__(
        self,
        root: Path,
        mask: int,
        *,
        recursive: bool,
        skip_directory: Callable[[str], bool],
        skip_name: Callable[[str], bool] | None = None,
    ) -> None:
        self.root = str(root)
        self.recursive = recursive
        self.skip_directory = skip_directory
        self.skip_name = skip_name
        self.inotify = Inotify(mask | _SELF_EVENTS | (_TREE_EVENTS if recursive else 0))
        self.path_of: dict[int, str] = {}
        self.wd_of: dict[str, int] = {}
        try:
            # The root may be a symlink to the directory (a manifest directory often is):
            # followed. Directories below are never followed (IN_DONT_FOLLOW, no symlink walk).
            self.root_wd = self._add(self.root, self.inotify.mask)
            if recursive:
                self._add_below(self.root)
        except BaseException:
            self.inotify.close()
            raise

    @property
    def fd(self) -> int:
        return self.inotify.fd

    def _add(self, path: str, mask: int) -> int:
        wd = self.inotify.add_watch(path, mask)
        self.path_of[wd] = path
        self.wd_of[path] = wd
        return wd

    def _add_below(self, directory: str) -> list[str]:
        """Watch every directory below `directory`; returns them (they are news to the caller)."""
        found: list[str] = []
        pending = [directory]
        while pending:
            current = pending.pop()
            if _has_no_subdirectories(current):
                continue  # a new cgroup with its interface files only: no walk of its ~40
            try:
                with os.scandir(current) as entries:
                    children = [
                        entry.path
                        for entry in entries
                        if entry.is_dir(follow_symlinks=False)
                        and not self.skip_directory(entry.name)
                    ]
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked: its parent reports the removal
            for child in children:
                try:
                    self._add(child, self.inotify.mask | IN_DONT_FOLLOW)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                found.append(child)
                pending.append(child)
        return found

    def _drop_below(self, directory: str) -> None:
        """Forget the watches at and below a directory that moved away."""
        prefix = directory + os.sep
        for path in [p for p in self.wd_of if p == directory or p.startswith(prefix)]:
            wd = self.wd_of.pop(path)
            self.path_of.pop(wd, None)
            self.inotify.rm_watch(wd)

    def read(self, max_bytes: int) -> tuple[Batch, WatchEnd | None, bool]:
        """What one read of at most `max_bytes` of the queue returns, whether the watch has
        ended, and whether more may be queued (the read filled its buffer)."""
        events: list[tuple[int, int, str]] = []
        more = self.inotify.read_some(events, max_bytes)
        changes: list[Change] = []
        ended: WatchEnd | None = None
        complete = True
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                complete = False
                ended = ended or WatchEnd.OVERFLOW
                continue
            base = self.path_of.get(wd)
            if base is None:
                continue  # a watch dropped already (its IN_IGNORED, late events)
            if mask & IN_IGNORED:
                del self.path_of[wd]
                if self.wd_of.get(base) == wd:
                    del self.wd_of[base]
                if wd == self.root_wd:
                    ended = WatchEnd.ROOT_GONE
                continue
            path = os.path.join(base, name) if name else base
            if wd == self.root_wd and not name and mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                ended = WatchEnd.ROOT_GONE
            if mask & IN_UNMOUNT and wd == self.root_wd:
                ended = WatchEnd.ROOT_GONE
            if not (name and self.skip_name is not None and self.skip_name(name)):
                changes.append(Change(path, mask))
            if self.recursive and mask & IN_ISDIR and name:
                if mask & IN_MOVED_FROM:
                    self._drop_below(path)
                elif mask & (IN_CREATE | IN_MOVED_TO) and not self.skip_directory(name):
                    try:
                        self._add(path, self.inotify.mask | IN_DONT_FOLLOW)
                    except (FileNotFoundError, NotADirectoryError):
                        continue  # gone again already
                    changes.extend(Change(p, IN_CREATE | IN_ISDIR) for p in self._add_below(path))
        return Batch(tuple(changes), complete), ended, more

    def close(self) -> None:
        self.inotify.close()


def _has_no_subdirectories(path: str) -> bool:
    """`path` is a directory with no subdirectories, known from its link count alone: exactly
    2 ("." and its entry in the parent) on the filesystems that count subdirectories in it
    (kernfs, hence cgroupfs; tmpfs, ext4, xfs). Filesystems that do not (btrfs and overlayfs
    report 1) and anything that cannot be stat()ed answer False: walked as before. Asked
    after the directory's own watch is in place, so a subdirectory made after the stat() is
    reported by that watch."""
    try:
        return os.lstat(path).st_nlink == 2
    except OSError:
        return False


class WatchRetry:
    """Back-off and reporting between attempts of a watch loop (see the module docstring).

    `failed(exc)` logs and reports one failure and returns how long to wait before the next
    attempt: `base_seconds`, doubling per consecutive failure, at most `max_seconds`.
    `established()` (call it once a watch is in place) ends the run of failures.
    """

    def __init__(
        self,
        what: str,
        *,
        base_seconds: float,
        max_seconds: float,
        on_error: Callable[[BaseException], object] | None = None,
        on_restart: Callable[[], object] | None = None,
    ) -> None:
        self.what = what
        self.base_seconds = base_seconds
        self.max_seconds = max(max_seconds, base_seconds)
        self.on_error = on_error
        self.on_restart = on_restart
        self.failures = 0
        self.restarted = False  # set by the loop once a watch ended, failed or waited

    def failed(self, exc: Exception) -> float:
        """Log and report `exc`; the seconds to wait before trying again."""
        self.failures += 1
        delay = min(self.base_seconds * 2.0 ** (self.failures - 1), self.max_seconds)
        if isinstance(exc, OSError):
            logger.warning("%s failed (%s); retrying in %g s", self.what, exc, delay)
        elif self.failures == 1:
            logger.error("%s failed unexpectedly; retrying in %g s", self.what, delay, exc_info=exc)
        else:
            logger.error(
                "%s failed unexpectedly again (%d in a row: %r); retrying in %g s",
                self.what,
                self.failures,
                exc,
                delay,
            )
        if self.on_error is not None:
            self.on_error(exc)
        return delay

    def established(self) -> None:
        """A watch is in place: the next failure starts a new run (short delay, traceback)."""
        self.failures = 0

    def started(self) -> None:
        """`watch`'s `on_started`: `established()`, and after the first watch `on_restart()`
        once the new one is in place (what happened in between was not seen)."""
        self.established()
        if self.restarted and self.on_restart is not None:
            self.on_restart()


async def watch(
    path: Path,
    on_batch: Callable[[Batch], bool | None],
    *,
    mask: int,
    recursive: bool,
    settle_seconds: float = 0.0,
    settle_max_seconds: float = 0.0,
    skip_directory: Callable[[str], bool] = lambda _name: False,
    skip_name: Callable[[str], bool] | None = None,
    on_started: Callable[[], object] | None = None,
) -> WatchEnd:
    """Watch `path` until cancelled or the watch ends (see the module docstring).

    `mask` is the IN_* events wanted. `settle_seconds`: after an event, keep collecting until
    nothing new came for that long (but no longer than `settle_max_seconds` in all), so a burst
    arrives as one batch; 0 delivers every read at once. `skip_directory(name)`: directories (of a
    recursive watch) never watched nor reported below. `skip_name(name)`: entries whose changes
    are never reported (dropped as they are read, before any batch holds them; the watch's own
    bookkeeping of directories still sees them). Raises OSError when the watch cannot be set up
    (FileNotFoundError when `path` does not exist, ENOSPC at the inotify watch limit).
    """
    tree = _Tree(
        path, mask, recursive=recursive, skip_directory=skip_directory, skip_name=skip_name
    )
    try:
        if on_started is not None:
            on_started()
        while True:
            await trio.lowlevel.wait_readable(tree.fd)
            batch, ended = await _read_settled(tree, settle_seconds, settle_max_seconds)
            if (batch.changes or not batch.complete) and on_batch(batch) is False:
                return WatchEnd.STOPPED
            if ended is not None:
                return ended
    finally:
        trio.lowlevel.notify_closing(tree.fd)
        tree.close()


async def _read_queue(tree: _Tree) -> tuple[Batch, WatchEnd | None]:
    """Everything queued now, read in steps of `READ_STEP_BYTES` with a trio checkpoint between
    them, until a read finds less than a full step queued (or the watch ended)."""
    batch, ended, more = tree.read(READ_STEP_BYTES)
    if not more or ended is not None:
        return batch, ended  # the usual case: one read held everything
    changes, complete = list(batch.changes), batch.complete
    while more and ended is None:
        await trio.lowlevel.checkpoint()
        batch, ended, more = tree.read(READ_STEP_BYTES)
        changes += batch.changes
        complete = complete and batch.complete
    return Batch(tuple(changes), complete), ended


async def _read_settled(
    tree: _Tree, settle_seconds: float, settle_max_seconds: float
) -> tuple[Batch, WatchEnd | None]:
    """Read what is queued, then again every `settle_seconds` while more keeps coming (up to
    `settle_max_seconds` in all). Sleeping rather than waiting for each event: a burst costs a
    few wake-ups, not one per event (the reconciler's thread needs the GIL meanwhile)."""
    batch, ended = await _read_queue(tree)
    if settle_seconds <= 0:
        return batch, ended
    changes, complete = list(batch.changes), batch.complete
    deadline = trio.current_time() + max(settle_seconds, settle_max_seconds)
    while ended is None:
        pause = min(settle_seconds, deadline - trio.current_time())
        if pause <= 0:
            break
        await trio.sleep(pause)
        more, ended = await _read_queue(tree)
        if not more.changes and more.complete:
            break  # quiet for a whole pause: the burst is over
        changes += more.changes
        complete = complete and more.complete
    return Batch(tuple(changes), complete), ended


async def watch_directory(
    path: Path,
    on_change: Callable[[], object],
    *,
    only_name: str | None = None,
    missing_poll_seconds: float = 5.0,
    retry_seconds: float = 1.0,
    max_retry_seconds: float = 60.0,
    on_error: Callable[[BaseException], object] | None = None,
    on_names: Callable[[set[str] | None], object] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_change` whenever an entry of `path` (only `only_name`, if given) is written,
    created, renamed or deleted; run until cancelled. A missing `path` is waited for.
    `on_names`, if given, is called first with the names of the entries that changed, or None
    when changes may have been missed (the queue overflowed, the watch was (re)started, the
    directory itself changed): what a caller that rescans only what changed needs.

    A hint for callers that rescan, as the daemon's manifest directory and config file do: a new
    regular file counts once its writer closes it (never half-written), hidden names never; after
    the first watch, each new one (the directory came back, a watch failed) starts with
    `on_change()` once it is in place, since what happened in between was not seen. A failing
    watch is reported (`on_error`, logs) and retried with back-off (`WatchRetry`).

    Started with `nursery.start`, it returns once the first watch is in place (or its first
    attempt failed, or `path` is missing: the restart's `on_change()` then covers the gap), so
    a caller that reads the directory afterwards misses nothing between its read and the watch.
    """
    announced = False

    def announce() -> None:
        nonlocal announced
        if not announced:
            announced = True
            task_status.started()

    def on_started() -> None:
        retry.started()
        announce()

    root = str(path)

    def on_batch(batch: Batch) -> None:
        # One pass: the names of the entries that count, and whether changes may have been
        # missed (the queue overflowed) or the directory itself changed (it went away).
        whole = not batch.complete
        names: set[str] = set()
        for change in batch.changes:
            changed = change.path
            if changed == root:
                whole = True
                continue
            name = changed[changed.rfind(os.sep) + 1 :]  # os.path.basename
            if only_name is not None and name != only_name:
                continue
            # Hidden names are temporary files of atomic writers and editors (the manifest scan
            # ignores them too): only their rename into place counts.
            if not name.startswith(".") and not is_new_regular_file(change):
                names.add(name)
        if not whole and not names:
            return
        if on_names is not None:
            on_names(None if whole else names)
        on_change()

    def on_restart() -> None:
        # Changes may have been missed while no watch ran: everything is a candidate.
        if on_names is not None:
            on_names(None)
        on_change()

    mask = IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
    retry = WatchRetry(
        f"watch on {path}",
        base_seconds=retry_seconds,
        max_seconds=max_retry_seconds,
        on_error=on_error,
        on_restart=on_restart,
    )
    while True:
        if not path.is_dir():
            retry.restarted = True
            announce()
            await trio.sleep(missing_poll_seconds)
            continue
        try:
            await watch(path, on_batch, mask=mask, recursive=False, on_started=on_started)
        except (FileNotFoundError, NotADirectoryError):
            pass  # the directory went away before its watch was set up: wait for it again
        except Exception as exc:  # reported loudly, then retried (module docstring)
            announce()
            await trio.sleep(retry.failed(exc))
        retry.restarted = True
