"""Disk full on a real, size-limited tmpfs: a clear error, nothing acknowledged lost, recoverable.

Goal: ENOSPC during append (inside a batch's write, or when starting a new segment) reaches the
caller as `LogDiskFull` (exit 74) without poisoning the log; every acknowledged record stays
readable; once space is freed the same log object appends again, and a reopen finds a clean log.

Method: mount a 160 KiB tmpfs (needs root; the test is skipped with the reason otherwise), put
a ballast file and the state directory on it, append until the disk is full, check, delete the
ballast, append again. The mount is removed in a `finally`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstate.core.errors import EXIT_IOERR, LogDiskFull
from memstate.core.events import Envelope
from memstate.store.reader import LogReader
from memstate.store.verify import verify
from memstate.store.writer import EventLog
from tests.store.helpers import BASE_TS_NS, Node


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a size-limited tmpfs (not running as root)")
    if shutil.which("mount") is None:
        pytest.skip("disk-full test needs the mount(8) command, which is not installed")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_disk_full_is_an_error_and_loses_nothing_acknowledged(small_tmpfs: Path) -> None:
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\xff" * 48 * 1024)
    state_dir = small_tmpfs / "state"
    node = Node(42)
    acknowledged: list[Envelope] = []
    failures: list[LogDiskFull] = []
    log = EventLog.open(state_dir, fsync=True, segment_bytes=16 * 1024)
    try:
        for batch in node.start():
            acknowledged.extend(log.append(batch, ts_ns=BASE_TS_NS))
        for index in range(10_000):
            try:
                acknowledged.extend(log.append(node.group(3), ts_ns=BASE_TS_NS + index))
            except LogDiskFull as error:
                failures.append(error)
                if len(failures) >= 5:
                    break
        assert failures, "the tmpfs never filled up"
        assert all(f.exit_code == EXIT_IOERR for f in failures)
        assert any("nothing of it was acknowledged" in str(f) for f in failures)  # inside a write
        # The log is full but intact: exactly what was acknowledged, no partial batch.
        assert list(LogReader(state_dir).read()) == acknowledged
        report = verify(state_dir)
        assert report.ok and report.tail is None and report.last_seq == acknowledged[-1].seq

        ballast.unlink()
        later = log.append(node.group(2), ts_ns=BASE_TS_NS + 99_999)  # same object, not poisoned
        assert later[0].seq == acknowledged[-1].seq + 1
        acknowledged.extend(later)
    finally:
        log.close()
    with EventLog.open(state_dir) as reopened:
        assert not reopened.recovery.truncated
        assert reopened.last_seq == acknowledged[-1].seq
    assert list(LogReader(state_dir).read()) == acknowledged
