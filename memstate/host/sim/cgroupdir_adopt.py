"""Taking in what changed behind an instance's back (DirCgroupFS's part).

Before each operation an instance catches up with the journal (entries appended by other
instances: replayed into its model, their files taken as rendered), then looks for changes made
by hand: the files inotify names, or every file when inotify cannot say. A file whose text
differs from what the instance expects is a write by someone else; a directory made or removed
by hand is a mkdir or a removal. What the kernel would accept is applied and journaled with
``"source": "outside"``; what it would refuse is rendered over with the model's value.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from memstate.core.cgroup_paths import is_valid_cgroup_name
from memstate.core.errors import HostError
from memstate.host.cgroupfs import MAX_WRITE_BYTES, join_cgroup_path
from memstate.host.sim.cgroupdir_changes import _ModelChanges
from memstate.host.sim.cgroupdir_journal import JournalEntry, _init_error, _Journal
from memstate.host.sim.cgroupdir_render import _Renderer
from memstate.host.sim.cgroupdir_tree import _ID_NAME, _read_identity, _Region, _write_new_file

# Hand-written files longer than this are refused unread (the kernel caps a write at a page).
_MAX_OUTSIDE_BYTES = MAX_WRITE_BYTES


class _ChangesFromOutside(_Journal, _ModelChanges, _Renderer):
    """Catch up with the journal and adopt edits made by hand."""

    def _sync(self) -> None:
        """Take in news: entries other instances journaled, then edits made by hand."""
        try:
            status = os.stat(self._journal_path)
        except FileNotFoundError:
            status = None
        if (
            status is None
            or self._needs_reload
            or status.st_ino != self._journal_ino
            or status.st_size < self._journal_offset
        ):
            self._reload()
            return
        if status.st_size > self._journal_offset:
            self._replay_tail()
        changed = self._changed_names()
        if changed is None:
            self._full_scan()
            return
        for is_dir, path, name in changed:
            files = self._cache.get(path)
            if files is None:
                continue
            if not is_dir and name in files:
                self._check_file(path, name, full=False)
            else:
                self._check_child(path, name, full=False)

    def _replay(self, entries: list[JournalEntry]) -> tuple[_Region, _Region]:
        """Apply entries to the model: (region of all of them, region of the unrendered ones)."""
        rendered = self._read_counter()
        everything, unrendered = _Region(), _Region()
        for entry in entries:
            if entry.n != self._last_n + 1:
                raise HostError(
                    f"{self._journal_path}: entry #{entry.n} follows #{self._last_n}; the journal "
                    "was edited or mixed with another one",
                    errno=errno.EIO,
                    op="replay",
                )
            region = self._apply(entry)
            everything.merge(region)
            if entry.n > rendered:
                unrendered.merge(region)
            self._last_n = entry.n
        return everything, unrendered

    def _replay_tail(self) -> None:
        everything, unrendered = self._replay(self._read_entries())
        # Another instance rendered these: adopt its files as the baseline.
        self._unwatched_until_now = []
        self._render(everything, write_disk=False)
        self._repair(unrendered)
        if self._inotify is not None:
            for path in self._unwatched_until_now:
                self._scan_dir(path, full=False)
        self._unwatched_until_now = []

    def _repair(self, unrendered: _Region) -> None:
        """Re-render what a writer killed mid-operation may have left half done."""
        if self._read_counter() < self._last_n:
            self._render(unrendered, write_disk=True, force=True)
            self._write_counter(self._last_n)

    def _reload(self) -> None:
        """Rebuild everything from the journal, then compare the whole directory with it."""
        self._needs_reload = False
        self._sim = self._params.make_sim()
        self._cache.clear()
        self._ids.clear()
        self._pending = _Region()
        self._start_watching()
        self._open_journal()
        _everything, unrendered = self._replay(self._read_entries())
        if self._read_counter() > self._last_n:
            self._write_counter(self._last_n)  # the journal was replaced: start counting again
        self._render(_Region(whole=set(self._all_cgroups())), write_disk=False)
        self._unwatched_until_now = []  # the full scan below looks at every directory anyway
        self._repair(unrendered)
        self._full_scan()

    def _all_cgroups(self) -> list[str]:
        return self._subtree("")

    def _path_children(self, path: str) -> list[str]:
        return self._sim.list_children(path) if self._sim.exists(path) else []

    def _full_scan(self) -> None:
        self._scan_dir("", full=True)

    def _scan_dir(self, path: str, *, full: bool) -> None:
        """Compare one cgroup directory (and with `full`, everything below) with the model."""
        if path not in self._cache:
            return
        try:
            with os.scandir(self._disk(path)) as iterator:
                entries = {entry.name: entry for entry in iterator}
        except (FileNotFoundError, NotADirectoryError) as exc:
            if not path:
                raise _init_error(errno.ENOENT, self._root_text, "the root is gone") from exc
            self._outside_remove(path)
            return
        for file in sorted(self._cache[path]):
            self._check_file(path, file, full=full)
        disk_dirs = {
            name
            for name, entry in entries.items()
            if not name.startswith(".") and entry.is_dir(follow_symlinks=False)
        }
        for name in sorted(disk_dirs | set(self._path_children(path))):
            self._check_child(path, name, full=full)

    def _check_child(self, path: str, name: str, *, full: bool) -> None:
        """Bring cgroup `path`'s child `name` in line with the directory (made/removed by hand)."""
        if not is_valid_cgroup_name(name) or not self._sim.exists(path):
            return
        child = join_cgroup_path(path, name)
        directory = self._disk(child)
        try:
            is_dir = stat.S_ISDIR(os.lstat(directory).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_dir = False
        if self._sim.exists(child):
            if is_dir and _read_identity(directory) == self._ids.get(child):
                if child not in self._path_wd:
                    self._watch(directory, child)
                if full:
                    self._scan_dir(child, full=True)
                return
            self._outside_remove(child)  # gone, or replaced by another directory
        if is_dir and self._outside_mkdir(child):
            self._scan_dir(child, full=True)

    def _check_file(self, path: str, file: str, *, full: bool) -> None:
        """Compare one model file with the directory; a difference is a write by someone else."""
        files = self._cache[path]
        content = self._read_disk(path, file)
        if content is None:
            if full:
                # Restored only by full scans: in between, a deleted file may be part of an
                # `rm -r` in progress, which a re-created file would make fail.
                files[file] = None
                self._pending.files.add((path, file))
            return
        if content == files.get(file):
            return
        files[file] = content
        if content == "":
            return  # a zero-length write never reaches the handler (or the text is on its way)
        try:
            region = self._do_write(path, file, content)
        except HostError:
            self._pending.files.add((path, file))  # refused: the file shows the model's value
            return
        self._record_outside(
            "write",
            region,
            path=path,
            file=file,
            value=content,
            stored=self._stored(path, file),
        )

    def _outside_mkdir(self, child: str) -> bool:
        ident = self._last_n + 1
        try:
            region = self._do_mkdir(child, ident)
        except HostError:
            return False  # the kernel would refuse it (EAGAIN...): not a cgroup, left alone
        directory = self._disk(child)
        with contextlib.suppress(OSError):  # gone again: the next pass takes that in
            _write_new_file(os.path.join(directory, _ID_NAME), f"{ident}\n")
        self._watch(directory, child)
        self._record_outside("mkdir", region, path=child)
        return True

    def _outside_remove(self, path: str) -> None:
        self._record_outside("remove", self._do_remove(path), path=path)

    def _note_new_files(self, region: _Region) -> None:
        """Baselines for files an outside change made appear: what the model shows now, so a
        difference found later in this same pass is still a change made by hand."""
        for path in region.whole:
            if self._sim.exists(path):
                cached = self._cache.setdefault(path, {})
                for name, text in self._sim.render(path).items():
                    cached.setdefault(name, text)

    def _read_disk(self, path: str, file: str) -> str | None:
        """Text of a regular file in the tree, None if missing or not a regular file."""
        try:
            fd = os.open(
                os.path.join(self._disk(path), file),
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            )
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks: list[bytes] = []
            total = 0
            while total <= _MAX_OUTSIDE_BYTES:
                chunk = os.read(fd, _MAX_OUTSIDE_BYTES + 1)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        # Undecodable bytes become U+FFFD, which every parser refuses (like the kernel would).
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _record_outside(self, op: str, region: _Region, **fields: object) -> None:
        """Journal a change made by hand, and take the files it made appear as they are now."""
        self._record(op, region, source="outside", **fields)
        self._note_new_files(region)
