"""Noticing changes to the directory of a simulated cgroup tree with inotify (DirCgroupFS's part).

One watch per cgroup directory. Files are replaced by rename, so directories are watched, not
files. The events of an instance's own renames are set aside (`_drain_own_events`) so that it
does not read its own renders back as edits; without inotify (or after a queue overflow) the
caller compares the whole tree instead.
"""

from __future__ import annotations

import errno
from collections import Counter

from memstate.host.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from memstate.host.sim.cgroupdir_tree import _DirState

# IN_MODIFY is left out on purpose: edits are looked at once the writer closes the file, and the
# journal's appends (through a descriptor that stays open) produce no events at all.
_WATCH_MASK = (
    IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)


class _Watches(_DirState):
    """The watch per cgroup directory, and the changes its events name."""

    _watch_wanted: bool
    _inotify: Inotify | None
    _wd_path: dict[int, str]
    _path_wd: dict[str, int]
    # Events read while draining the own renames of a flush, for the next operation.
    _backlog: list[tuple[int, int, str]]
    # (directory, name) of the renames of the current flush.
    _own_renames: Counter[tuple[str | None, str]]

    def _start_watching(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wd_path.clear()
        self._path_wd.clear()
        self._backlog = []
        self._own_renames.clear()
        if not self._watch_wanted:
            return
        try:
            self._inotify = Inotify(_WATCH_MASK)
        except OSError:
            self._inotify = None  # no inotify here: compare the whole tree at every operation

    def _watch(self, directory: str, path: str) -> None:
        if self._inotify is None:
            return
        try:
            wd = self._inotify.add_watch(directory)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            # Out of watches (fs.inotify.max_user_watches): fall back to full comparisons.
            self._inotify.close()
            self._inotify = None
            self._wd_path.clear()
            self._path_wd.clear()
            self._backlog = []
            return
        self._wd_path[wd] = path
        self._path_wd[path] = wd

    def _unwatch(self, path: str) -> None:
        wd = self._path_wd.pop(path, None)
        if wd is None or self._wd_path.get(wd) != path:
            return
        del self._wd_path[wd]
        if self._inotify is not None:
            self._inotify.rm_watch(wd)

    def _drain_own_events(self) -> None:
        """Set aside the inotify events of this flush's own renames (one IN_MOVED_TO each), so
        the next call does not read those files back; everything else waits for that call."""
        if self._inotify is None or not self._own_renames:
            return
        own = self._own_renames
        self._own_renames = Counter()
        for event in self._inotify.read_events():
            wd, mask, name = event
            key = (self._wd_path.get(wd), name)
            if mask & IN_MOVED_TO and own[key] > 0:
                own[key] -= 1
                continue
            self._backlog.append(event)

    def _changed_names(self) -> list[tuple[bool, str, str]] | None:
        """(is a directory, cgroup path, name) of every entry events say changed since the last
        call, each once; None when they cannot say (no inotify, or the queue overflowed), and
        the whole tree must be compared instead."""
        if self._inotify is None:
            return None
        events = self._backlog + self._inotify.read_events()
        self._backlog = []
        if any(mask & IN_Q_OVERFLOW for _wd, mask, _name in events):
            return None
        work: dict[tuple[bool, str, str], None] = {}
        for wd, mask, name in events:
            if mask & IN_IGNORED:
                path = self._wd_path.pop(wd, None)
                if path is not None and self._path_wd.get(path) == wd:
                    del self._path_wd[path]
                continue
            path = self._wd_path.get(wd)
            if path is None or not name or name.startswith("."):
                continue
            work[(bool(mask & IN_ISDIR), path, name)] = None
        return list(work)
