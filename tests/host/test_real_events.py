"""A real inotify watch on cgroup.events fires when ``populated`` flips.

Goal: the daemon may rely on file-modified notifications of cgroup.events (kernfs_notify) to
learn that a cgroup emptied, instead of polling. Method: a private cgroup under a real cgroup2
mount, an inotify watch (via ctypes; no extra dependency) on its cgroup.events, then a process
moved in (populated 0 → 1) and killed (1 → 0). Each flip must produce an IN_MODIFY event on the
watch within a generous timeout; nothing asserts on elapsed time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstate.host import RealCgroupFS, is_populated

pytestmark = pytest.mark.realcgroup

IN_MODIFY = 0x00000002
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_TIMEOUT_SECONDS = 10.0


class Inotify:
    """The three inotify calls, through libc."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path: Path, mask: int) -> int:
        wd = self._add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return int(wd)

    def wait(self, timeout_seconds: float) -> list[tuple[int, int]]:
        """(wd, mask) of the events that arrive before the timeout (empty if none)."""
        ready, _, _ = select.select([self.fd], [], [], timeout_seconds)
        if not ready:
            return []
        data = os.read(self.fd, 65536)
        events = []
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            events.append((wd, mask))
            offset += _EVENT_HEADER.size + length
        return events

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def private_cgroup(cgroup2_mount: Path) -> Iterator[tuple[RealCgroupFS, Path]]:
    """A fresh ``memstate-test-<pid>-<n>`` cgroup, removed afterwards."""
    parent = RealCgroupFS(cgroup2_mount)
    name = f"memstate-test-{os.getpid()}-events"
    parent.mkdir(name)
    try:
        yield RealCgroupFS(cgroup2_mount / name), cgroup2_mount / name
    finally:
        fs = RealCgroupFS(cgroup2_mount / name)
        try:
            fs.write("", "cgroup.kill", "1")
        finally:
            parent.rmdir(name)


def _wait_for_modify(inotify: Inotify, wd: int) -> bool:
    for _ in range(20):  # a few unrelated wake-ups are tolerated, never an endless loop
        events = inotify.wait(_TIMEOUT_SECONDS)
        if not events:
            return False
        if any(event_wd == wd and mask & IN_MODIFY for event_wd, mask in events):
            return True
    return False


def test_cgroup_events_watch_fires_on_populated_flips(
    private_cgroup: tuple[RealCgroupFS, Path],
) -> None:
    """Moving a process in and killing it each produce IN_MODIFY on cgroup.events."""
    fs, directory = private_cgroup
    inotify = Inotify()
    process = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        wd = inotify.watch(directory / "cgroup.events", IN_MODIFY)
        assert not is_populated(fs, "")
        fs.write("", "cgroup.procs", str(process.pid))
        assert _wait_for_modify(inotify, wd), "no inotify event when populated went 0 -> 1"
        assert is_populated(fs, "")
        fs.write("", "cgroup.kill", "1")
        assert process.wait(timeout=_TIMEOUT_SECONDS) == -9
        assert _wait_for_modify(inotify, wd), "no inotify event when populated went 1 -> 0"
        # An event left over from the first flip could arrive late; the flip to 0 must still
        # come with an event of its own, so wait for events (boundedly) until it shows.
        for _ in range(20):
            if not is_populated(fs, ""):
                break
            assert _wait_for_modify(inotify, wd), "no inotify event when populated went 1 -> 0"
        assert not is_populated(fs, "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        inotify.close()
