"""Small, careful file-system primitives for the store: fsync discipline, atomic files, the lock.

Rules these helpers encode (docs/event-log.md, "Appending: group commit and fsync"):
- a new or renamed or removed directory entry is durable only after the *directory* is fsynced
  (the kubelet's checkpoint store forgot this);
- `write(2)` may write less than asked: loop;
- a failed fsync is never retried here; callers decide what failure means (the log treats it
  as fatal, see `memstate.store.writer`);
- one writer at a time: an exclusive, non-blocking `flock` on `<state_dir>/LOCK`. The kernel
  drops the lock when the holder dies, even on SIGKILL, so there is never a stale lock to clean.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from memstate.core.errors import LockHeld


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, *, fsync: bool) -> None:
    """Create `path` (and parents) if missing, making each new entry durable."""
    if path.is_dir():
        return
    ensure_dir(path.parent, fsync=fsync)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    if fsync:
        fsync_dir(path.parent)


def numbered_files(
    directory: Path, number_of: Callable[[str], int | None]
) -> list[tuple[int, Path]]:
    """(number, path) of the files in `directory` whose name `number_of` reads a number from,
    in order (other names skipped); empty if the directory does not exist."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        number = number_of(name)
        if number is not None:
            found.append((number, directory / name))
    found.sort()
    return found


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of `data` at `offset`, looping over short writes."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # pragma: no cover - the kernel raises instead for regular files
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[written:]
        offset += written


def read_file(path: Path) -> bytes:
    """The whole content of a regular file (looping over short reads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks: list[bytes] = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break  # the file shrank while we read it (a truncation by recovery or repair)
            chunks.append(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Create `path` (replacing a leftover), write `data`, fsync it. No directory fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pwrite_all(fd, data, 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, fsync: bool) -> None:
    """Replace `path` atomically: temp file, fsync, rename, fsync the directory."""
    temp = path.with_name(path.name + ".tmp")
    try:
        write_new_file(temp, data, fsync=fsync)
        os.rename(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    if fsync:
        fsync_dir(path.parent)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def utc_stamp(ts_ns: int | None = None) -> str:
    """`20260102T030405Z`: the suffix of `.broken-*` copies."""
    seconds = (time.time_ns() if ts_ns is None else ts_ns) // 10**9
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def broken_name(path: Path) -> Path:
    """A fresh `<name>.broken-<UTC timestamp>[-n]` path next to `path`."""
    base = f"{path.name}.broken-{utc_stamp()}"
    candidate = path.with_name(base)
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{base}-{counter}")
    return candidate


def keep_broken_copy(path: Path, *, fsync: bool) -> Path:
    """Copy `path` to a `.broken-*` file and make the copy durable before anyone truncates."""
    target = broken_name(path)
    write_new_file(target, read_file(path), fsync=fsync)
    if fsync:
        fsync_dir(path.parent)
    return target


def move_aside(path: Path, *, fsync: bool) -> Path:
    """Rename `path` to a `.broken-*` name (keeps the bytes, removes it from the log)."""
    target = broken_name(path)
    os.rename(path, target)
    if fsync:
        fsync_dir(path.parent)
    return target


def truncate_durably(path: Path, size_bytes: int, *, fsync: bool) -> None:
    """Cut `path` to `size_bytes` and make the new size durable."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size_bytes)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if fsync:
        fsync_dir(path.parent)


class DirLock:
    """The single-writer lock: `flock(LOCK_EX | LOCK_NB)` on `<state_dir>/LOCK`.

    The holder's pid is written into the file for the error message of whoever comes second.
    Readers never take it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, *, purpose: str) -> DirLock:
        """Take the lock or raise `LockHeld` (exit 75) naming the holder's pid if known."""
        path = state_dir / "LOCK"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "another process"
                raise LockHeld(
                    f"{path} is locked by {who} (a running memstate daemon or repair); "
                    f"{purpose} needs the state directory to itself"
                ) from None
            raise
        os.ftruncate(fd, 0)
        pwrite_all(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
