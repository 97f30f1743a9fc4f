"""memstate.host.inotify: reading the queue."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memstate.host import inotify
from memstate.host.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, Inotify


def test_read_events_takes_a_queue_that_fits_in_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that leaves room for the largest event took the whole queue: no second read to
    hear EAGAIN (the simulated tree reads its queue twice per operation). A queue larger than
    one read is still read to its end."""
    watcher = Inotify(IN_CLOSE_WRITE | IN_MOVED_TO)
    try:
        watcher.add_watch(str(tmp_path))
        reads: list[int] = []
        original = os.read

        def counted(fd: int, size: int) -> bytes:
            if fd == watcher.fd:
                reads.append(size)
            return original(fd, size)

        monkeypatch.setattr(inotify.os, "read", counted)
        (tmp_path / "a").write_text("1\n")
        (tmp_path / "b").write_text("2\n")
        assert [name for _wd, _mask, name in watcher.read_events()] == ["a", "b"]
        assert len(reads) == 1
        reads.clear()
        assert watcher.read_events() == []
        assert len(reads) == 1
        # Long names: more than one read's worth of events (65,536 bytes / ~272 per event).
        names = [f"{index:03d}" + "x" * 240 for index in range(300)]
        for name in names:
            (tmp_path / name).write_bytes(b"")
        reads.clear()
        assert [name for _wd, _mask, name in watcher.read_events()] == names
        assert len(reads) >= 2
    finally:
        watcher.close()
