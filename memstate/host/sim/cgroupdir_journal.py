"""The journal of a simulated cgroup tree: its format, reading it, appending to it.

Every change to the model of a DirCgroupFS is appended, before it is made visible, as one JSON
line (a `JournalEntry`) to ``<root>/.journal.jsonl``; replaying the journal through a fresh
SimCgroupFS rebuilds the exact model. The marker ``<root>/.memstate-cgroup-sim.json`` records
the simulated machine (`SimParameters`). The lock file's first line counts the entries whose
files were completely rendered (see memstate.host.sim.cgroupdir for the whole design).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from memstate.core.cgroup_values import (
    CONTROLLER_ORDER,
    DEFAULT_PAGE_SIZE_BYTES,
    CgroupValueError,
    format_bitmap_list,
    parse_bitmap_list,
)
from memstate.core.errors import HostError
from memstate.host.cgroupfs import host_error
from memstate.host.sim.cgroupdir_tree import _DirState, _Region, _TreeSim
from memstate.host.sim.cgroupsim import (
    DEFAULT_CONTROLLERS,
    DEFAULT_HUGEPAGE_SIZES_BYTES,
    KERNEL_6_1,
    KernelProfile,
)

MARKER_NAME = ".memstate-cgroup-sim.json"
JOURNAL_NAME = ".journal.jsonl"
MARKER_FORMAT = "memstate-cgroup-sim"
MARKER_VERSION = 1
_COUNTER_WIDTH = 20
_BIG_BITMAP = 1 << 16


class SimParameters(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the simulated machine is: the SimCgroupFS constructor arguments, stored in the marker.

    Planted bugs are deliberately not among them (they exist for testing the differential test).
    """

    page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES
    controllers: tuple[str, ...] = DEFAULT_CONTROLLERS
    hugepage_sizes_bytes: tuple[int, ...] = DEFAULT_HUGEPAGE_SIZES_BYTES
    online_cpus: str = "0-1"
    possible_cpus: str | None = None
    online_nodes: str = "0"
    possible_nodes: str | None = None
    max_numnodes: int = 1024
    delegated: bool = False
    kernel: KernelProfile = KERNEL_6_1
    known_controllers: tuple[str, ...] = CONTROLLER_ORDER

    def normalised(self) -> SimParameters:
        """The same machine in canonical spelling (kernel order, ``0,1`` → ``0-1``)."""
        return msgspec.structs.replace(
            self,
            controllers=_in_kernel_order(self.controllers),
            known_controllers=_in_kernel_order(self.known_controllers),
            hugepage_sizes_bytes=tuple(sorted(set(self.hugepage_sizes_bytes))),
            online_cpus=_canonical_list(self.online_cpus),
            possible_cpus=_canonical_list(self.possible_cpus),
            online_nodes=_canonical_list(self.online_nodes),
            possible_nodes=_canonical_list(self.possible_nodes),
        )

    def make_sim(self) -> _TreeSim:
        """A fresh SimCgroupFS (the renderable subclass) for this machine."""
        return _TreeSim(
            page_size_bytes=self.page_size_bytes,
            controllers=self.controllers,
            hugepage_sizes_bytes=self.hugepage_sizes_bytes,
            online_cpus=self.online_cpus,
            possible_cpus=self.possible_cpus,
            online_nodes=self.online_nodes,
            possible_nodes=self.possible_nodes,
            max_numnodes=self.max_numnodes,
            delegated=self.delegated,
            kernel=self.kernel,
            known_controllers=self.known_controllers,
        )


def _in_kernel_order(names: Iterable[str]) -> tuple[str, ...]:
    chosen = set(names)
    return tuple(name for name in CONTROLLER_ORDER if name in chosen) + tuple(
        sorted(chosen.difference(CONTROLLER_ORDER))
    )


def _canonical_list(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return format_bitmap_list(parse_bitmap_list(text, nbits=_BIG_BITMAP))
    except CgroupValueError:
        return text  # SimCgroupFS refuses it with its own message


class _Marker(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    version: int
    parameters: SimParameters


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of ``.journal.jsonl``: a change to the simulated tree.

    `n` counts from 1 without gaps. `op` is one of ``mkdir``, ``rmdir``, ``write`` (``value`` as
    written, ``stored`` as the file reads back afterwards, newline included; None for the
    write-only cgroup.kill), ``remove`` (a cgroup directory deleted by hand: its processes were
    killed and its subtree removed), ``spawn`` (fake process ``process`` started in ``path``,
    None = outside the tree; a failed placement is journaled too, with ``error``, because it
    used up a pid), ``exit`` (``process`` ended with ``status``), ``memory_usage``
    (``usage_bytes`` charged to ``path``) and ``memory_event`` (``count`` × ``event``).
    `source` is ``api`` (a DirCgroupFS call) or ``outside`` (a change made by hand, noticed by
    the instance of process `writer`). `time_ns` is the wall clock, for people only.
    """

    n: int
    op: str
    source: str
    path: str | None = None
    file: str | None = None
    value: str | None = None
    stored: str | None = None
    process: int | None = None
    status: int | None = None
    error: str | None = None
    usage_bytes: int | None = None
    event: str | None = None
    count: int | None = None
    writer: int
    time_ns: int


_ENTRY_ENCODER = msgspec.json.Encoder()
_ENTRY_DECODER = msgspec.json.Decoder(JournalEntry)
_MARKER_DECODER = msgspec.json.Decoder(_Marker)


def read_journal(root: str | os.PathLike[str]) -> list[JournalEntry]:
    """Every complete entry of the journal of the simulated tree at `root`, oldest first.

    A torn last line (a writer killed inside the append) is left out. Reads without the lock:
    the entries may stop short of an operation in progress, but are never half an entry.
    """
    data = (Path(root) / JOURNAL_NAME).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [_ENTRY_DECODER.decode(line) for line in complete.splitlines() if line.strip()]


def _init_error(code: int, root: str, message: str) -> HostError:
    return HostError(f"simulated cgroup tree {root}: {message}", errno=code, path=root, op="init")


class _Journal(_DirState):
    """Appending to the journal and reading what others appended (DirCgroupFS's part).

    `_journal_offset` is how far this instance has read (and written); `_needs_reload` is set
    when the model got ahead of the journal (a failed append), so the next operation rebuilds it.
    """

    _journal_fd: int
    _journal_ino: int
    _journal_offset: int
    _appended: bool
    _needs_reload: bool
    _lock_fd: int
    _params: SimParameters

    def _record(self, op: str, region: _Region, *, source: str = "api", **fields: object) -> None:
        """Journal a change already made to the model and schedule its rendering."""
        self._last_n += 1
        entry = msgspec.convert(
            {
                "n": self._last_n,
                "op": op,
                "source": source,
                "writer": os.getpid(),
                "time_ns": time.time_ns(),
                **fields,
            },
            JournalEntry,
        )
        data = _ENTRY_ENCODER.encode(entry) + b"\n"
        where = str(fields.get("path") or "")
        try:
            written = os.write(self._journal_fd, data)
        except OSError as exc:
            self._needs_reload = True  # the model is ahead of the journal: rebuild it next time
            raise host_error(
                exc.errno or errno.EIO, op, where, detail="journal append failed"
            ) from exc
        self._journal_offset += written
        if written != len(data):
            self._needs_reload = True
            raise host_error(errno.EIO, op, where, detail="short journal append")
        self._appended = True
        self._pending.merge(region)

    def _open_journal(self) -> None:
        if not os.path.exists(self._marker_path):
            raise _init_error(errno.ENOENT, self._root_text, f"{MARKER_NAME} is gone")
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1
        self._journal_fd = os.open(
            self._journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        self._journal_ino = os.fstat(self._journal_fd).st_ino
        self._journal_offset = 0
        self._last_n = 0

    def _read_entries(self) -> list[JournalEntry]:
        """Entries from the current offset to the end; a torn last line is cut off."""
        size = os.fstat(self._journal_fd).st_size
        data = os.pread(self._journal_fd, size - self._journal_offset, self._journal_offset)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # The writer died inside its append (we hold the lock, so nobody is appending).
            os.ftruncate(self._journal_fd, self._journal_offset + end)
        entries: list[JournalEntry] = []
        for number, line in enumerate(data[:end].splitlines()):
            try:
                entries.append(_ENTRY_DECODER.decode(line))
            except msgspec.DecodeError as exc:
                raise HostError(
                    f"{self._journal_path}: unreadable entry after #{self._last_n + number}: {exc}",
                    errno=errno.EIO,
                    op="replay",
                ) from exc
        self._journal_offset += end
        return entries

    def _read_counter(self) -> int:
        text = os.pread(self._lock_fd, _COUNTER_WIDTH + 1, 0).strip()
        return int(text) if text.isdigit() else 0

    def _write_counter(self, number: int) -> None:
        os.pwrite(self._lock_fd, f"{number:0{_COUNTER_WIDTH}d}\n".encode(), 0)
