"""The model a DirCgroupFS renders, and the state its parts share.

DirCgroupFS (memstate.host.sim.cgroupdir) is built from one part per job, each a mixin over
`_DirState`: the journal (cgroupdir_journal), inotify watches (cgroupdir_inotify), changes to the
model (cgroupdir_changes), rendering (cgroupdir_render) and taking in changes made by others
(cgroupdir_adopt). This module holds what they all use: the renderable SimCgroupFS, the
`_Region` an operation changed, path helpers and the per-directory identity file. Names with a
leading underscore are private to the cgroupdir modules.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memstate.core.cgroup_values import CONTROLLER_ORDER
from memstate.core.errors import HostError
from memstate.host.sim.cgroupsim import SimCgroupFS

# Hidden file in each cgroup directory: the journal number of the mkdir that made the cgroup.
# Inode numbers cannot tell a directory replaced by hand (rm -r a; mkdir a) from the original:
# ext4 hands the freed number out again at once.
_ID_NAME = ".memstate-cgroup"
# File-name prefixes of interface files; only such files are ever deleted from a cgroup directory.
_INTERFACE_PREFIXES = frozenset({"cgroup", *CONTROLLER_ORDER})


class _TreeSim(SimCgroupFS):
    """SimCgroupFS plus the two questions rendering asks: which files, and all their texts.

    `render` produces exactly what `read` returns, through the same reader functions, but
    looks the cgroup up once per call and keeps the reader of each file name (it depends only on
    the name and the instance) instead of rebuilding the table for every file.
    """

    def __init__(self, **parameters: Any) -> None:
        super().__init__(**parameters)
        self._render_readers: dict[str, Callable[..., str] | None] = {}

    def list_files(self, path: str) -> list[str]:
        """Sorted names of the interface files cgroup `path` shows (what ``ls`` lists)."""
        return sorted(self._files(self._node(path, "list_files")))

    def render(self, path: str, only: Iterable[str] | None = None) -> dict[str, str]:
        """File name → text of every interface file of `path` (or of those in `only` that
        exist), exactly as `read` returns them; write-only files (cgroup.kill) render empty."""
        node = self._node(path, "render")
        present = self._files(node)
        names = present if only is None else [name for name in only if name in present]
        readers = self._render_readers
        texts: dict[str, str] = {}
        for name in names:
            if name not in readers:
                readers[name] = self._reader(name)
            reader = readers[name]
            texts[name] = "" if reader is None else reader(node, name)
        return texts


@dataclass
class _Region:
    """What an operation may have changed on disk.

    `whole`: cgroups whose every file is rendered (their directory created if missing, files the
    model no longer shows deleted); `files`: single files; `removed`: cgroup directories to
    delete, with the identity they had (the journal number of their mkdir; None: unknown).
    """

    whole: set[str] = field(default_factory=set)
    files: set[tuple[str, str]] = field(default_factory=set)
    removed: dict[str, int | None] = field(default_factory=dict)

    def merge(self, other: _Region) -> None:
        self.whole |= other.whole
        self.files |= other.files
        self.removed.update(other.removed)

    def __bool__(self) -> bool:
        return bool(self.whole or self.files or self.removed)


def _depth(path: str) -> int:
    return 0 if not path else path.count("/") + 1


def _ancestors(path: str, *, include_self: bool) -> list[str]:
    """Paths from the root down to `path` (``"a/b"`` → ``["", "a"]`` or ``["", "a", "a/b"]``)."""
    parts = path.split("/") if path else []
    found = [""] + ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return found if include_self else found[:-1]


def _is_interface_name(name: str) -> bool:
    return not name.startswith(".") and name.split(".", 1)[0] in _INTERFACE_PREFIXES and "." in name


def _write_new_file(target: str, text: str, *, dir_fd: int | None = None) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        data = text.encode("utf-8")
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def _read_identity(directory: str) -> int | None:
    """The mkdir journal number in a cgroup directory's identity file (None if absent)."""
    try:
        with open(os.path.join(directory, _ID_NAME), "rb") as identity:
            text = identity.read(32).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _errno_name(exc: HostError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


class _DirState:
    """The attributes every part of DirCgroupFS reads; DirCgroupFS.__init__ sets them all.

    `_sim` is the model; `_cache` maps each cgroup to the text each of its files holds on disk
    as far as this instance knows (None: missing); `_ids` maps each cgroup to the journal number
    of its mkdir; `_pending` is what the current operation changed and must still render;
    `_last_n` the number of the last journal entry in the model.
    """

    _root: Path
    _root_text: str
    _private: str
    _staging: str
    _journal_path: str
    _marker_path: str
    _sim: _TreeSim
    _cache: dict[str, dict[str, str | None]]
    _ids: dict[str, int]
    _pending: _Region
    _last_n: int
    _unwatched_until_now: list[str]
