"""Changes to the model of a simulated cgroup tree (DirCgroupFS's part).

One function per kind of change, shared by live calls, changes made by hand and journal replay,
so that a replayed entry does exactly what the recorded call did. Each returns the `_Region` of
files on disk the change may have affected, for rendering.
"""

from __future__ import annotations

import errno

from memstate.core.cgroup_values import CgroupValueError, kernel_strip, parse_kstrtoint
from memstate.core.errors import HostError
from memstate.host.cgroupfs import join_cgroup_path
from memstate.host.sim.cgroupdir_inotify import _Watches
from memstate.host.sim.cgroupdir_journal import JournalEntry
from memstate.host.sim.cgroupdir_tree import _ancestors, _errno_name, _Region


class _ModelChanges(_Watches):
    """Apply one change to the model and say what it may have changed on disk."""

    def _apply(self, entry: JournalEntry) -> _Region:
        """Redo a journaled change; it must end as it did when it was recorded."""
        try:
            path = entry.path
            if entry.op == "mkdir" and path is not None:
                return self._do_mkdir(path, entry.n)
            if entry.op == "rmdir" and path is not None:
                return self._do_rmdir(path)
            if entry.op == "remove" and path is not None:
                return self._do_remove(path)
            if entry.op == "write" and path is not None and entry.file and entry.value is not None:
                return self._do_write(path, entry.file, entry.value)
            if entry.op == "spawn":
                return self._replay_spawn(entry)
            if entry.op == "exit" and entry.process is not None:
                return self._do_exit(entry.process, entry.status or 0)
            if entry.op == "memory_usage" and path is not None and entry.usage_bytes is not None:
                return self._do_memory_usage(path, entry.usage_bytes)
            if entry.op == "memory_event" and path is not None and entry.event is not None:
                return self._do_memory_event(path, entry.event, entry.count or 1)
            raise ValueError(f"unknown or incomplete entry {entry}")
        except (HostError, KeyError, ValueError) as exc:
            raise HostError(
                f"{self._journal_path}: entry #{entry.n} ({entry.op} {entry.path}) no longer "
                f"replays: {exc}. The simulator's rules changed since it was written; start "
                "from an empty directory",
                errno=errno.EIO,
                path=entry.path or "",
                op="replay",
            ) from exc

    def _replay_spawn(self, entry: JournalEntry) -> _Region:
        try:
            pid = self._sim.spawn(entry.path)
        except HostError as exc:
            if _errno_name(exc) != entry.error:
                raise
            return _Region()
        if entry.error is not None or pid != entry.process:
            raise ValueError(f"spawn gave pid {pid}, the journal says {entry.process}")
        return self._procs_region(entry.path) if entry.path is not None else _Region()

    def _do_mkdir(self, path: str, ident: int) -> _Region:
        """mkdir in the model; `ident` is the number of the journal entry that records it."""
        self._sim.mkdir(path)
        self._ids[path] = ident
        files = {(ancestor, "cgroup.stat") for ancestor in _ancestors(path, include_self=False)}
        return _Region(whole={path}, files=files)

    def _do_rmdir(self, path: str) -> _Region:
        self._sim.rmdir(path)
        ident = self._forget([path])
        files = {(ancestor, "cgroup.stat") for ancestor in _ancestors(path, include_self=False)}
        return _Region(files=files, removed={path: ident})

    def _do_remove(self, path: str) -> _Region:
        """A cgroup directory deleted by hand: kill what runs below, remove the subtree."""
        subtree = self._subtree(path)
        self._sim.write(path, "cgroup.kill", "1")
        for descendant in reversed(subtree):
            self._sim.rmdir(descendant)
        ident = self._forget(subtree)
        region = _Region(removed={path: ident})
        for ancestor in _ancestors(path, include_self=False):
            region.files |= {(ancestor, "cgroup.stat"), (ancestor, "cgroup.events")}
        return region

    def _do_write(self, path: str, file: str, value: str) -> _Region:
        moved_from = self._source_of_move(value) if file == "cgroup.procs" else None
        self._sim.write(path, file, value)
        # The file itself always: a hand-written ``1`` in cgroup.kill must read back empty.
        region = _Region(files={(path, file)})
        if file == "cgroup.subtree_control":
            region.whole.update(self._subtree(path))  # files appear/vanish in the children
        elif file == "cgroup.procs":
            region.merge(self._procs_region(path))
            if moved_from is not None:
                region.merge(self._procs_region(moved_from))
        elif file == "cgroup.kill":
            for descendant in self._subtree(path):
                region.merge(self._procs_region(descendant))
        elif file == "cgroup.freeze":
            region.files.add((path, file))
            region.files |= {(descendant, "cgroup.events") for descendant in self._subtree(path)}
        elif file in ("cpuset.cpus", "cpuset.mems"):
            region.files.add((path, file))
            for descendant in self._subtree(path):
                region.files.add((descendant, "cpuset.cpus.effective"))
                region.files.add((descendant, "cpuset.mems.effective"))
        else:
            region.files.add((path, file))
        return region

    def _source_of_move(self, value: str) -> str | None:
        """The cgroup the pid written to cgroup.procs is in now (None: outside or unknown)."""
        try:
            return self._sim.cgroup_of(parse_kstrtoint(kernel_strip(value)))
        except (CgroupValueError, KeyError):
            return None

    def _do_exit(self, pid: int, status: int) -> _Region:
        cgroup = self._sim.cgroup_of(pid)  # KeyError when not running, as SimCgroupFS.exit
        self._sim.exit(pid, status)
        return self._procs_region(cgroup) if cgroup is not None else _Region()

    def _do_memory_usage(self, path: str, usage_bytes: int) -> _Region:
        self._sim.set_memory_usage(path, usage_bytes)
        files = {(node, "memory.current") for node in _ancestors(path, include_self=True)}
        return _Region(files=files)

    def _do_memory_event(self, path: str, event: str, count: int) -> _Region:
        self._sim.add_memory_event(path, event, count)
        files = {(node, "memory.events") for node in _ancestors(path, include_self=True)}
        return _Region(files=files | {(path, "memory.events.local")})

    def _procs_region(self, path: str) -> _Region:
        """Files a change of the processes directly in `path` can change: its process lists,
        ``populated`` up the tree, and ``cgroup.type`` of its subtree (thread-root rules)."""
        files = {(path, "cgroup.procs"), (path, "cgroup.threads")}
        files |= {(node, "cgroup.events") for node in _ancestors(path, include_self=True)}
        files |= {(node, "cgroup.type") for node in self._subtree(path)}
        return _Region(files=files)

    def _subtree(self, path: str) -> list[str]:
        """`path` and every cgroup below it, parents first."""
        found = [path]
        for child in self._sim.list_children(path):
            found.extend(self._subtree(join_cgroup_path(path, child)))
        return found

    def _forget(self, paths: list[str]) -> int | None:
        """Drop what the instance knew about removed cgroups; the first one's identity."""
        ident = self._ids.get(paths[0]) if paths else None
        for path in paths:
            self._cache.pop(path, None)
            self._ids.pop(path, None)
            self._unwatch(path)
        return ident

    def _stored(self, path: str, file: str) -> str | None:
        try:
            return self._sim.read(path, file)
        except HostError:
            return None  # write-only (cgroup.kill)
