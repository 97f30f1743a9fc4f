"""Rendering a simulated cgroup tree into its directory (DirCgroupFS's part).

After each change, the files of its `_Region` are made to hold exactly what `read` returns.
Files are written to a staging directory and renamed into place, and a new cgroup directory is
filled in staging and renamed into place as a whole, so a reader never sees a half-written value
or a half-filled cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from memstate.core.errors import HostError
from memstate.host.cgroupfs import host_error
from memstate.host.sim.cgroupdir_inotify import _Watches
from memstate.host.sim.cgroupdir_tree import (
    _ID_NAME,
    _depth,
    _is_interface_name,
    _read_identity,
    _Region,
    _write_new_file,
)


class _Renderer(_Watches):
    """Make the files on disk show the model."""

    _tmp_counter: int

    def _disk(self, path: str) -> str:
        return os.path.join(self._root_text, path) if path else self._root_text

    def _render(self, region: _Region, *, write_disk: bool, force: bool = False) -> None:
        """Make the files of `region` show the model (or, without `write_disk`, only take the
        model's texts as what the files hold: another instance rendered them)."""
        for path, ident in sorted(region.removed.items(), key=lambda item: -_depth(item[0])):
            if write_disk and not self._sim.exists(path):
                self._remove_directory(path, ident)
        wanted: dict[str, set[str] | None] = dict.fromkeys(region.whole)
        for path, file in region.files:
            if path not in region.whole:
                wanted.setdefault(path, set())
                names = wanted[path]
                if names is not None:
                    names.add(file)
        for path in sorted(wanted, key=lambda item: (_depth(item), item)):
            names = wanted[path]
            try:
                texts = self._sim.render(path, names)
            except HostError:
                continue  # no longer in the model
            if names is None:
                if write_disk:
                    self._write_directory(path, texts, force=force)
                else:
                    self._adopt_directory(path, texts)
                continue
            files = self._cache.get(path)
            if files is None:
                continue
            for file, text in texts.items():
                if write_disk and (force or files.get(file) != text):
                    self._write_file(path, file, text)
                files[file] = text

    def _adopt_directory(self, path: str, texts: dict[str, str]) -> None:
        self._cache[path] = dict(texts)
        directory = self._disk(path)
        if path not in self._path_wd and os.path.isdir(directory):
            self._watch(directory, path)
            # Edits made in it before the watch existed produced no event for this instance.
            self._unwatched_until_now.append(path)

    def _next_temporary(self, prefix: str) -> str:
        self._tmp_counter += 1
        return os.path.join(self._staging, f"{prefix}-{os.getpid()}-{self._tmp_counter}")

    def _write_directory(self, path: str, texts: dict[str, str], *, force: bool) -> None:
        directory = self._disk(path)
        try:
            status: os.stat_result | None = os.lstat(directory)
        except FileNotFoundError:
            status = None
        except NotADirectoryError:
            return  # the parent was replaced by hand; the next pass removes it
        if status is not None and not stat.S_ISDIR(status.st_mode):
            os.unlink(directory)  # a stray file where the model has a cgroup
            status = None
        if status is None and self._create_directory(path, texts):
            return
        try:
            with os.scandir(directory) as iterator:
                on_disk = {entry.name for entry in iterator if entry.is_file(follow_symlinks=False)}
        except (FileNotFoundError, NotADirectoryError):
            return  # removed by hand meanwhile; the next pass takes that in
        if path not in self._path_wd:
            self._watch(directory, path)
        ident = self._ids.get(path)
        if ident is not None and (force or _read_identity(directory) != ident):
            _write_new_file(os.path.join(directory, _ID_NAME), f"{ident}\n")
        cached = self._cache.get(path, {})
        for name in sorted(on_disk - texts.keys()):
            if _is_interface_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
        for name, text in texts.items():
            if force or name not in on_disk or cached.get(name) != text:
                self._write_file(path, name, text)
        self._cache[path] = dict(texts)

    def _create_directory(self, path: str, texts: dict[str, str]) -> bool:
        """Fill a new cgroup directory in staging and rename it into place; False if something
        is already there (then it is filled in place)."""
        staged = self._next_temporary("dir")
        os.mkdir(staged, 0o755)
        staged_fd = os.open(staged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, text in texts.items():
                _write_new_file(name, text, dir_fd=staged_fd)
            ident = self._ids.get(path)
            if ident is not None:
                _write_new_file(_ID_NAME, f"{ident}\n", dir_fd=staged_fd)
        finally:
            os.close(staged_fd)
        # Watch before the rename: the watch follows the inode, so no edit made right after the
        # directory appears can be missed.
        self._watch(staged, path)
        try:
            os.rename(staged, self._disk(path))
        except OSError as exc:
            self._unwatch(path)
            shutil.rmtree(staged, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return True  # the parent was removed by hand; the next pass takes that in
            raise host_error(exc.errno or errno.EIO, "mkdir", path, detail="render") from exc
        parent, _slash, name = path.rpartition("/")
        self._own_renames[(parent, name)] += 1
        self._cache[path] = dict(texts)
        return True

    def _write_file(self, path: str, file: str, text: str) -> None:
        staged = self._next_temporary("file")
        _write_new_file(staged, text)
        try:
            os.rename(staged, os.path.join(self._disk(path), file))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                return  # the directory went away by hand; the next pass takes that in
            raise host_error(exc.errno or errno.EIO, "write", path, file, detail="render") from exc
        self._own_renames[(path, file)] += 1

    def _remove_directory(self, path: str, ident: int | None) -> None:
        directory = self._disk(path)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return
        if ident is not None and _read_identity(directory) != ident:
            return  # not the directory the model removed (replaced by hand meanwhile)
        graveyard = self._next_temporary("removed")
        try:
            os.rename(directory, graveyard)  # disappears at once for readers
        except OSError:
            return
        shutil.rmtree(graveyard, ignore_errors=True)
