"""openat2(2) with RESOLVE_NO_SYMLINKS: a whole path opened in one system call, no symlink
followed anywhere on it.

Python's `os` has no openat2 (Linux 5.6+), so this calls it through libc's `syscall(2)` with
ctypes. `open_no_symlinks(path, flags)` behaves like `os.open(path, flags)` (returns an fd,
raises OSError with the errno) except that the kernel refuses, with ELOOP, any symlink or
/proc magic link on the path, the last component included. `load()` gives that function, or
None where it cannot be had (not Linux, an architecture whose syscall number is not the
generic table's, no libc `syscall`): callers keep their own component-by-component walk then.
A kernel or seccomp filter without openat2 answers ENOSYS (or EPERM): callers probe once.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable

# openat2 is 437 in the generic syscall table and in x86's and s390's (Linux 5.6); only the
# architectures checked here are trusted with that number (mips and alpha number it otherwise).
_SYS_OPENAT2 = 437
_MACHINES = frozenset({"x86_64", "amd64", "i686", "aarch64", "arm64", "s390x", "riscv64"})
_AT_FDCWD = -100
# linux/openat2.h
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04


def load() -> Callable[[bytes, int], int] | None:
    """`open_no_symlinks(path, flags) -> fd`, or None where openat2 cannot be called."""
    if sys.platform != "linux" or platform.machine().lower() not in _MACHINES:
        return None
    try:
        # Imported here: only a real tree needs it, and a Python built without _ctypes still
        # runs memstate (with the walk).
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (ImportError, OSError, AttributeError):
        return None

    class _OpenHow(ctypes.Structure):
        """struct open_how (linux/openat2.h): flags, mode, resolve, each a u64."""

        _fields_ = (
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        )

    # No argtypes: every argument is passed as a ready ctypes value of the C type syscall(2)
    # reads it as (long, long, char *, void *, size_t), which costs ~0.3 us less per call than
    # converting through argtypes (1.0 against 1.3 us; os.open is 0.7).
    syscall.restype = ctypes.c_long
    number = ctypes.c_long(_SYS_OPENAT2)
    directory = ctypes.c_long(_AT_FDCWD)
    size = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
    # One open_how per flags value, kept alive here: a handful of distinct values per process.
    hows: dict[int, tuple[ctypes.Structure, ctypes.c_void_p]] = {}

    def open_no_symlinks(path: bytes, flags: int) -> int:
        """os.open(path, flags), refusing (ELOOP) any symlink on the path."""
        entry = hows.get(flags)
        if entry is None:
            how = _OpenHow(flags, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
            entry = hows[flags] = (how, ctypes.c_void_p(ctypes.addressof(how)))
        fd = syscall(number, directory, path, entry[1], size)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return int(fd)

    return open_no_symlinks
