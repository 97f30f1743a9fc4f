"""The inotify wrapper's reads: every queued event, in as few system calls as it takes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memstate.host import inotify
from memstate.host.inotify import IN_CREATE, IN_MOVED_FROM, IN_MOVED_TO, Inotify


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count `os.read` calls on inotify descriptors (the module's `os.read`)."""
    calls: list[int] = []
    real = os.read

    def read(fd: int, size: int) -> bytes:
        calls.append(fd)
        return real(fd, size)

    monkeypatch.setattr(inotify.os, "read", read)
    return calls


def test_a_read_with_room_left_takes_everything_in_one_system_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that left room for the largest event took every queued event: no second read
    (which would only fail with EAGAIN)."""
    watch = Inotify(IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO)
    try:
        wd = watch.add_watch(str(tmp_path))
        (tmp_path / ".pod.yaml.tmp").write_text("x")
        (tmp_path / ".pod.yaml.tmp").rename(tmp_path / "pod.yaml")
        calls = _counting_reads(monkeypatch)
        events = watch.read_events()
        assert events == [
            (wd, IN_CREATE, ".pod.yaml.tmp"),
            (wd, IN_MOVED_FROM, ".pod.yaml.tmp"),
            (wd, IN_MOVED_TO, "pod.yaml"),
        ]
        assert len(calls) == 1
        assert watch.read_events() == []  # nothing queued: one read, EAGAIN
        assert len(calls) == 2
    finally:
        watch.close()


def test_a_full_read_is_followed_by_another_until_the_queue_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that filled the buffer (or left no room for the largest event) may have left
    events queued: it reads again until the kernel has none, and every event is returned in
    order."""
    # Three of these events (32 bytes each) per read, and room for one more counted as none.
    monkeypatch.setattr(inotify, "_READ_BYTES", 100)
    monkeypatch.setattr(inotify, "MAX_EVENT_BYTES", 50)
    watch = Inotify(IN_CREATE)
    try:
        watch.add_watch(str(tmp_path))
        names = [f"pod-{index:02d}.yaml" for index in range(20)]
        for name in names:
            (tmp_path / name).write_text("x")
        calls = _counting_reads(monkeypatch)
        assert [name for _, _, name in watch.read_events()] == names
        assert len(calls) == 8  # seven reads of three events or fewer, then EAGAIN
    finally:
        watch.close()


def test_names_are_decoded_as_os_fsdecode_does(tmp_path: Path) -> None:
    """A name that is not UTF-8 comes back with surrogate escapes, as `os.fsdecode` gives it."""
    watch = Inotify(IN_CREATE)
    try:
        watch.add_watch(str(tmp_path))
        raw = b"caf\xe9.yaml"
        with open(os.path.join(os.fsencode(tmp_path), raw), "w"):
            pass
        assert [name for _, _, name in watch.read_events()] == [os.fsdecode(raw)]
    finally:
        watch.close()
