"""Linux inotify through libc (Python wraps none of it; no extra dependency).

The file descriptor is non-blocking: callers either poll `read_events` (the directory-backed
simulated tree does, at each operation) or wait for it to become readable in an event loop
(memstate.node.watching does, with trio, so an idle watch costs no CPU at all).
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_BYTES = 1 << 16
# What os.fsdecode decodes names with (fixed when the interpreter starts).
_FS_CODEC = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
# The largest event: its header and a name of NAME_MAX (255) bytes with its NUL (the kernel pads
# names to 16 bytes: 272 in all). A read into a smaller buffer than the next event fails (EINVAL).
MAX_EVENT_BYTES = _EVENT_HEADER.size + 255 + 1


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for inotify and statfs."""
    # The interpreter's own symbols include libc: no ldconfig subprocess (find_library) needed.
    return ctypes.CDLL(None, use_errno=True)


class Inotify:
    """One non-blocking inotify instance; `mask` is what `add_watch` asks for."""

    def __init__(self, mask: int) -> None:
        library = libc()
        self._add_watch = library.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add_watch.restype = ctypes.c_int
        self._rm_watch = library.inotify_rm_watch
        self._rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm_watch.restype = ctypes.c_int
        fd = int(library.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd = fd
        self.mask = mask

    def add_watch(self, path: str, mask: int | None = None) -> int:
        """Watch `path` for `mask` (default: the instance's); returns the watch descriptor.
        OSError (ENOENT, ENOSPC...) naming the path."""
        wanted = self.mask if mask is None else mask
        wd = int(self._add_watch(self.fd, os.fsencode(path), wanted))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return wd

    def rm_watch(self, wd: int) -> None:
        """Stop watching `wd`; a watch the kernel dropped already (EINVAL) is fine."""
        self._rm_watch(self.fd, wd)

    def read_events(self) -> list[tuple[int, int, str]]:
        """(wd, mask, name) of every queued event; empty when there is none."""
        events: list[tuple[int, int, str]] = []
        while self.read_some(events, _READ_BYTES):
            pass
        return events

    def read_some(self, events: list[tuple[int, int, str]], max_bytes: int) -> bool:
        """Append the (wd, mask, name) of the events one read of at most `max_bytes` returns
        (whole events only; `max_bytes` of at least `MAX_EVENT_BYTES` takes any event, a smaller
        buffer than the next event fails with EINVAL); whether more may be queued.

        The kernel stops copying only when the queue is empty or the next event does not fit:
        a read that left room for the largest event took all there was (reading again would
        only raise EAGAIN: a system call and an exception per wake-up)."""
        try:
            data = os.read(self.fd, max_bytes)
        except BlockingIOError:
            return False
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            start = offset + _EVENT_HEADER.size
            raw = data[start : start + length].rstrip(b"\0")
            events.append((wd, mask, raw.decode(*_FS_CODEC)))  # os.fsdecode's decoding
            offset = start + length
        return len(data) > max_bytes - MAX_EVENT_BYTES

    def close(self) -> None:
        """Close the descriptor (every watch ends with it)."""
        os.close(self.fd)
