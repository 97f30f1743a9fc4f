"""The CgroupFS interface and its implementation on the real cgroup v2 filesystem.

Theory of operation
-------------------
The reconciler talks to the cgroup tree only through `CgroupFS`, a deliberately narrow protocol
of six operations (`exists`, `list_children`, `read`, `write`, `mkdir`, `rmdir`). Three things
implement it: `RealCgroupFS` here, `SimCgroupFS` (an in-memory tree that models the kernel's
rules, memstate.host.sim.cgroupsim) and `FaultInjectingCgroupFS` (a wrapper that makes chosen
operations fail, memstate.host.sim.cgroupfaults). Everything else (populated checks, controller
lists) is a helper function written *on top of* the protocol, so every implementation gets it
for free and the protocol stays small enough to simulate faithfully.

Paths. Every path is a cgroup path relative to the adapter's root: components joined with
``"/"``, ``""`` meaning the root itself (``"kubepods/burstable/pod1234"``). Files are named
separately (``read("kubepods", "memory.max")``). `split_cgroup_path` validates each component
(no empty component, no ``.``/``..``, no ``/`` or NUL, a conservative character set, at most
255 bytes) and `check_file_name` does the same for file names. Both implementations call them, so
a bad path fails the same way everywhere: HostError with errno EINVAL.

Values. `write` sends exactly one write(2) of the given text. A zero-length write never reaches a
cgroup file's handler (the kernel returns 0 and changes nothing), so `write` refuses ``""``
(EINVAL) instead of silently doing nothing. To write an *empty* value — clearing cpuset.cpus or
cpuset.mems — write `EMPTY_WRITE` (``"\\n"``), which the kernel strips to the empty string.

Errors. Every failure raises `memstate.core.errors.HostError` with ``errno`` (an `errno` module
constant), ``op`` (the method name: ``exists``, ``list_children``, ``read``, ``write``,
``mkdir``, ``rmdir``), ``path`` (the cgroup path, plus ``/<file>`` when a file was involved; just
the file at the root) and ``value`` (what was being written, for writes).

Safety of RealCgroupFS. It never touches anything outside its root. Besides validating names, it
walks the path one component at a time with ``openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)``, so a
symlink anywhere under the root (impossible in cgroupfs, possible in a temp-dir test root) makes
the operation fail with ENOTDIR instead of being followed, and no ``..`` can ever be resolved.
Files are opened with O_NOFOLLOW and without O_CREAT: writing a file that does not exist is
ENOENT, as in cgroupfs. All I/O is unbuffered ``os.open``/``os.read``/``os.write`` with
O_CLOEXEC.

One call instead of a walk. Where the kernel has openat2(2) (Linux 5.6+; probed once, at
construction), every operation first opens its whole path in one call with
``RESOLVE_NO_SYMLINKS`` (`memstate.host.openat2`): the kernel walks the same components and
refuses any symlink on the way, the last one included, so nothing is reached that the walk would
not reach, and no ``..`` is ever resolved (none passes validation). Only success is taken from
it: when that call fails, for whatever reason, the operation is done again by the walk, whose
answer (the value, or the HostError with its errno, op and path) is the one returned, so the
errors are the walk's exactly and a race (a cgroup removed meanwhile) ends as it always did.
Each path is resolved afresh per operation: nothing is cached between calls. A 500-pod
observation (~3,500 calls) makes ~3,500 opens instead of ~16,000 (docs/performance.md, "Idle
CPU", stop 22).
"""

from __future__ import annotations

import errno
import functools
import os
import pathlib
import re
import stat
from collections.abc import Callable, Iterator
from typing import Protocol

from memstate.core.cgroup_paths import MAX_NAME_BYTES, is_valid_cgroup_name
from memstate.core.cgroup_values import (
    parse_controller_list,
    parse_flat_keyed,
    parse_procs,
)
from memstate.core.errors import HostError
from memstate.host import openat2

# Deeper than any real hierarchy (kubepods/qos/pod/container is 4); a bound on path work.
MAX_PATH_DEPTH = 32
# Longest value `write` accepts; kernfs refuses cgroup writes longer than a page with E2BIG.
MAX_WRITE_BYTES = 65536
_READ_CHUNK_BYTES = 65536
_MAX_READ_BYTES = 16 * 1024 * 1024

# Interface file names: "<prefix>.<rest>", e.g. cgroup.procs, memory.swap.max, hugetlb.2MB.max.
_FILE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[A-Za-z0-9_]+)+")

OPS = ("exists", "list_children", "read", "write", "mkdir", "rmdir")


class CgroupFS(Protocol):
    """The six operations the reconciler uses on a cgroup v2 tree (see the module docstring)."""

    def exists(self, path: str) -> bool:
        """True if the cgroup `path` exists (False also when a component is a file)."""
        ...

    def list_children(self, path: str) -> list[str]:
        """Names of the child cgroups of `path`, sorted."""
        ...

    def read(self, path: str, file: str) -> str:
        """The whole text of `file` in cgroup `path`, as the kernel prints it (newline included)."""
        ...

    def write(self, path: str, file: str, value: str) -> None:
        """Write `value` to `file` in cgroup `path` with exactly one write(2). ``""`` is refused."""
        ...

    def mkdir(self, path: str) -> None:
        """Create cgroup `path`; its parent must exist."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove cgroup `path`; it must have no processes and no child cgroups."""
        ...


# --- validation shared by every implementation ---------------------------------------------------


def error_path(path: str, file: str = "") -> str:
    """The ``HostError.path`` for an operation on `file` in cgroup `path`."""
    if not file:
        return path
    return f"{path}/{file}" if path else file


def host_error(
    code: int,
    op: str,
    path: str,
    file: str = "",
    *,
    value: str | None = None,
    detail: str = "",
) -> HostError:
    """A HostError for `op` on `path`/`file` failing with errno `code`."""
    where = error_path(path, file) or "<root>"
    text = f"{op} {where}: {errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
    if detail:
        text = f"{text}: {detail}"
    return HostError(text, errno=code, path=error_path(path, file), op=op, value=value)


def split_cgroup_path(path: str, *, op: str = "") -> tuple[str, ...]:
    """Validate a relative cgroup path and return its components (``""`` → ``()``).

    Raises HostError(EINVAL) for anything unsafe: empty components (leading, trailing or double
    ``/``), ``.``/``..``, NUL, characters outside the allowed set, overlong names or paths.
    """
    if not isinstance(path, str):
        raise TypeError(f"cgroup path must be str, got {type(path).__name__}")
    if _is_safe_path(path):
        return tuple(path.split("/")) if path else ()
    components = tuple(path.split("/"))
    if len(components) > MAX_PATH_DEPTH:
        raise host_error(errno.EINVAL, op, path[:200], detail=f"deeper than {MAX_PATH_DEPTH}")
    unsafe = next(c for c in components if not is_valid_cgroup_name(c))
    raise host_error(errno.EINVAL, op, path[:200], detail=f"unsafe component {unsafe!r}")


def _check_cgroup_path(path: str, *, op: str) -> None:
    """`split_cgroup_path`'s check without building the components (the one-call open needs
    none)."""
    if not isinstance(path, str) or not _is_safe_path(path):
        split_cgroup_path(path, op=op)  # raises the precise error


# A node's rounds check the same few thousand paths and dozen file names again and again (a
# 500-pod observation: ~3,500 calls over ~500 paths), so the answers are kept (a bool per path:
# ~0.3 MB for 1,500 paths).
@functools.lru_cache(maxsize=4096)
def _is_safe_path(path: str) -> bool:
    """True if `path` is a safe cgroup path (see `split_cgroup_path`)."""
    if path == "":
        return True
    components = path.split("/")
    return len(components) <= MAX_PATH_DEPTH and all(map(is_valid_cgroup_name, components))


def check_file_name(file: str, *, op: str, path: str) -> None:
    """Raise HostError(EINVAL) unless `file` looks like a cgroup interface file name."""
    if not isinstance(file, str):
        raise TypeError(f"file name must be str, got {type(file).__name__}")
    if not _is_interface_file_name(file):
        raise host_error(errno.EINVAL, op, path, detail=f"unsafe file name {file[:100]!r}")


@functools.lru_cache(maxsize=256)
def _is_interface_file_name(file: str) -> bool:
    return _FILE_RE.fullmatch(file) is not None and len(file) <= MAX_NAME_BYTES


def check_write_value(value: str, *, path: str, file: str) -> bytes:
    """The bytes of one write of `value`; refuses ``""``, NUL and oversized values (EINVAL)."""
    if not isinstance(value, str):
        raise TypeError(f"value must be str, got {type(value).__name__}")
    if value == "":
        raise host_error(
            errno.EINVAL,
            "write",
            path,
            file,
            value=value,
            detail="a zero-length write changes nothing; write EMPTY_WRITE ('\\n') to clear",
        )
    if "\0" in value:
        raise host_error(errno.EINVAL, "write", path, file, value=value, detail="NUL in value")
    data = value.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise host_error(
            errno.EINVAL, "write", path, file, value=value[:100], detail="value too long"
        )
    return data


def join_cgroup_path(*parts: str) -> str:
    """Join cgroup path pieces, skipping empty ones: ``join_cgroup_path("", "a", "b") == "a/b"``."""
    return "/".join(part for part in parts if part)


def parent_and_name(path: str, *, op: str) -> tuple[tuple[str, ...], str]:
    """Split a non-root path into its parent components and its last name."""
    components = split_cgroup_path(path, op=op)
    if not components:
        raise host_error(errno.EPERM, op, path, detail="refusing to operate on the adapter root")
    return components[:-1], components[-1]


# --- the real filesystem -------------------------------------------------------------------------

# What an exists, a mkdir's or rmdir's parent, and a listing open their directory with.
_DIRECTORY_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_LISTING_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


@functools.cache
def _openat2() -> Callable[[bytes, int], int] | None:
    return openat2.load()


def _usable_openat2(root: bytes) -> Callable[[bytes, int], int] | None:
    """openat2 if it opens the root here (kernel, seccomp filter and architecture allow it)."""
    open_no_symlinks = _openat2()
    if open_no_symlinks is None:
        return None
    try:
        fd = open_no_symlinks(root, _DIRECTORY_PATH_FLAGS)
    except OSError:
        return None
    os.close(fd)
    return open_no_symlinks


class RealCgroupFS:
    """CgroupFS over a real directory tree: /sys/fs/cgroup, a delegated subtree, or a test dir.

    `root` must be an absolute path to an existing directory; it is resolved once (symlinks in
    the root path itself are allowed and fixed at construction). See the module docstring for
    the safety rules.
    """

    def __init__(self, root: pathlib.Path | str) -> None:
        root_path = pathlib.Path(root)
        if not root_path.is_absolute():
            raise HostError(f"cgroup root {root} is not absolute", errno=errno.EINVAL, op="init")
        resolved = pathlib.Path(os.path.realpath(root_path))
        try:
            mode = os.stat(resolved).st_mode
        except OSError as exc:
            raise HostError(
                f"cgroup root {resolved}: {exc.strerror}", errno=exc.errno, op="init"
            ) from exc
        if not stat.S_ISDIR(mode):
            raise HostError(f"cgroup root {resolved} is not a directory", errno=errno.ENOTDIR)
        self._root = resolved
        self._root_bytes = os.fsencode(resolved)
        self._prefix = self._root_bytes.rstrip(b"/") + b"/"
        self._open_no_symlinks = _usable_openat2(self._root_bytes)

    @property
    def root(self) -> pathlib.Path:
        """The resolved root directory."""
        return self._root

    def __repr__(self) -> str:
        return f"RealCgroupFS({str(self._root)!r})"

    def _open_at_once(self, relative: str, flags: int) -> int | None:
        """An fd on `relative` (validated, ``""`` for the root) opened by one openat2 call that
        follows no symlink, or None when that call is unavailable or fails (the caller then
        walks, and the walk's answer counts: see the module docstring)."""
        open_no_symlinks = self._open_no_symlinks
        if open_no_symlinks is None:
            return None
        try:
            return open_no_symlinks(
                self._prefix + relative.encode() if relative else self._root_bytes, flags
            )
        except OSError:
            return None

    def _open_directory(
        self, components: tuple[str, ...], op: str, path: str, file: str = ""
    ) -> int:
        """An O_PATH fd on the cgroup directory, walked component by component without symlinks."""
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            fd = os.open(self._root, flags)
        except OSError as exc:
            raise host_error(
                exc.errno or errno.EIO, op, path, file, detail=str(self._root)
            ) from exc
        try:
            for component in components:
                next_fd = os.open(component, flags | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except OSError as exc:
            os.close(fd)
            raise host_error(exc.errno or errno.EIO, op, path, file) from exc
        return fd

    def exists(self, path: str) -> bool:
        """True if cgroup `path` exists; ENOENT or ENOTDIR on the way mean False."""
        _check_cgroup_path(path, op="exists")
        fd = self._open_at_once(path, _DIRECTORY_PATH_FLAGS)
        if fd is not None:
            os.close(fd)
            return True
        try:
            fd = self._open_directory(split_cgroup_path(path), "exists", path)
        except HostError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise
        os.close(fd)
        return True

    def list_children(self, path: str) -> list[str]:
        """Sorted names of the sub-directories of `path` (symlinks and files are left out)."""
        _check_cgroup_path(path, op="list_children")
        fd = self._open_at_once(path, _LISTING_FLAGS)
        if fd is None:
            fd = self._open_listing(split_cgroup_path(path), path)
        try:
            # scandir(fd) works on a duplicate of fd; d_type comes from kernfs, no extra stat.
            with os.scandir(fd) as entries:
                return sorted(
                    entry.name for entry in entries if entry.is_dir(follow_symlinks=False)
                )
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, "list_children", path) from exc
        finally:
            os.close(fd)

    def _open_listing(self, components: tuple[str, ...], path: str) -> int:
        """The walk's readable fd on the directory `path`, for listing it."""
        directory_fd = self._open_directory(components, "list_children", path)
        try:
            return os.open(".", _LISTING_FLAGS, dir_fd=directory_fd)
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, "list_children", path) from exc
        finally:
            os.close(directory_fd)

    def _open_file(
        self, path: str, file: str, op: str, flags: int, value: str | None = None
    ) -> int:
        _check_cgroup_path(path, op=op)
        check_file_name(file, op=op, path=path)
        flags |= os.O_CLOEXEC | os.O_NOFOLLOW
        fd = self._open_at_once(f"{path}/{file}" if path else file, flags)
        if fd is not None:
            return fd
        directory_fd = self._open_directory(split_cgroup_path(path), op, path, file)
        try:
            return os.open(file, flags, dir_fd=directory_fd)
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, op, path, file, value=value) from exc
        finally:
            os.close(directory_fd)

    def read(self, path: str, file: str) -> str:
        """The whole file, read with os.read until EOF (large files like cgroup.procs loop)."""
        fd = self._open_file(path, file, "read", os.O_RDONLY)
        chunks: list[bytes] = []
        total_bytes = 0
        try:
            while True:
                chunk = os.read(fd, _READ_CHUNK_BYTES)
                if not chunk:
                    break
                total_bytes += len(chunk)
                if total_bytes > _MAX_READ_BYTES:
                    raise host_error(errno.EFBIG, "read", path, file, detail="file too large")
                chunks.append(chunk)
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, "read", path, file) from exc
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", errors="surrogateescape")

    def write(self, path: str, file: str, value: str) -> None:
        """One os.write of `value`. O_TRUNC keeps plain-file test roots sane; kernfs ignores it."""
        data = check_write_value(value, path=path, file=file)
        fd = self._open_file(path, file, "write", os.O_WRONLY | os.O_TRUNC, value)
        try:
            written = os.write(fd, data)
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, "write", path, file, value=value) from exc
        finally:
            os.close(fd)
        if written != len(data):
            # kernfs writes a cgroup value in one go or fails; a short write means we are not
            # talking to cgroupfs, and a partial value must not be taken for success.
            raise host_error(
                errno.EIO,
                "write",
                path,
                file,
                value=value,
                detail=f"short write: {written} of {len(data)}",
            )

    def _parent_directory(self, parent: tuple[str, ...], op: str, path: str) -> int:
        """An O_PATH fd on the directory holding `path` (components `parent`)."""
        fd = self._open_at_once("/".join(parent), _DIRECTORY_PATH_FLAGS)
        return fd if fd is not None else self._open_directory(parent, op, path)

    def mkdir(self, path: str) -> None:
        """mkdirat() in the parent directory; mode 0755 like the kernel's default."""
        parent, name = parent_and_name(path, op="mkdir")
        parent_fd = self._parent_directory(parent, "mkdir", path)
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, "mkdir", path) from exc
        finally:
            os.close(parent_fd)

    def rmdir(self, path: str) -> None:
        """unlinkat(AT_REMOVEDIR) in the parent directory (never follows a symlink)."""
        parent, name = parent_and_name(path, op="rmdir")
        parent_fd = self._parent_directory(parent, "rmdir", path)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            raise host_error(exc.errno or errno.EIO, "rmdir", path) from exc
        finally:
            os.close(parent_fd)


# --- helpers built on the protocol ---------------------------------------------------------------


def read_flat_keyed(fs: CgroupFS, path: str, file: str) -> dict[str, int]:
    """A ``key value`` file (cgroup.events, cgroup.stat, memory.events) as a dict."""
    return parse_flat_keyed(fs.read(path, file))


def is_populated(fs: CgroupFS, path: str) -> bool:
    """True if `path` or any descendant holds a process (``populated`` in cgroup.events).

    The root cgroup has no cgroup.events; reading it raises HostError(ENOENT).
    """
    return read_flat_keyed(fs, path, "cgroup.events").get("populated", 0) == 1


def available_controllers(fs: CgroupFS, path: str) -> frozenset[str]:
    """Controllers `path` may enable for its children (its cgroup.controllers)."""
    return frozenset(parse_controller_list(fs.read(path, "cgroup.controllers")))


def enabled_controllers(fs: CgroupFS, path: str) -> frozenset[str]:
    """Controllers enabled for the children of `path` (its cgroup.subtree_control)."""
    return frozenset(parse_controller_list(fs.read(path, "cgroup.subtree_control")))


def read_pids(fs: CgroupFS, path: str) -> tuple[int, ...]:
    """Pids directly in `path` (cgroup.procs), sorted."""
    return tuple(sorted(parse_procs(fs.read(path, "cgroup.procs"))))


def walk(fs: CgroupFS, path: str = "", *, topdown: bool = True) -> Iterator[str]:
    """Every cgroup path in the subtree at `path` (itself included), like os.walk's order.

    With ``topdown=False`` children come before their parent: the order removal needs. A
    cgroup that vanishes during the walk is skipped (ENOENT), anything else propagates.
    """
    if topdown:
        yield path
    try:
        children = fs.list_children(path)
    except HostError as exc:
        if exc.errno != errno.ENOENT:
            raise
        children = []
    for child in children:
        yield from walk(fs, join_cgroup_path(path, child), topdown=topdown)
    if not topdown:
        yield path


def unescape_mount_field(field: str) -> str:
    """Undo the octal escapes (``\\040`` for space) of /proc/mounts fields."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def parse_cgroup2_mounts(mounts_text: str) -> list[str]:
    """Mount points of cgroup2 filesystems in /proc/mounts text, in file order."""
    points: list[str] = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            points.append(unescape_mount_field(fields[1]))
    return points
