"""DirCgroupFS: a simulated cgroup v2 tree that lives in a directory, shared between processes.

Theory of operation
-------------------
The daemon must run without root and without cgroup v2 (the README demo, the end-to-end tests),
and the tests must be able to look at what it did from another process (``cat
demo/cgroup/kubepods/memory.min``), kill it with SIGKILL, start it again, or edit the tree behind
its back. An in-memory SimCgroupFS cannot do that; a plain directory written with RealCgroupFS
follows none of the kernel's rules. DirCgroupFS combines the two:

* **The kernel's rules come from SimCgroupFS**, unchanged. Each instance keeps a SimCgroupFS (the
  *model*) and forwards every operation to it, so results and errnos are those of the sim by
  construction.
* **The journal is the memory of the tree.** Every change to the model is appended, before it
  is made visible, as one JSON line to ``<root>/.journal.jsonl`` (mkdir, rmdir, write with the
  text written and the text stored, fake processes, changes made by hand). Replaying the journal
  through a fresh SimCgroupFS rebuilds the exact model (pids included, since the sim numbers
  them deterministically). That is how a new instance (a restarted daemon, a test, ``memstate
  diff``) gets the state, and how an instance catches up with changes made by another one: it
  remembers how far it read and applies the new lines.
* **The directory is the kernel's view.** After each change the instance *renders* what changed:
  every interface file the model shows holds exactly what `read` returns, newline included. Only
  the files an operation can affect are re-rendered (the `_Region` of the operation: the file
  itself, plus e.g. the cpuset ``*.effective`` files of the subtree for a cpuset write, the
  ``cgroup.events`` of the ancestors for a process move). Files are written to a staging
  directory and renamed into place, and a new cgroup directory is filled in staging and renamed
  into place as a whole, so a reader never sees a half-written value or a half-filled cgroup.
* **Changes made by others** (a person, a test) are noticed with inotify (one watch per cgroup
  directory) or, where inotify is unavailable, by comparing every file at every operation. A
  file whose text differs from what DirCgroupFS last put there is taken as a write of that text
  by someone else: if the kernel would accept the write it is applied (and journaled with
  ``"source": "outside"``) and the file is re-rendered in the kernel's normalised form (``1G`` →
  ``1073741824``); if the kernel would refuse it, the model keeps its value and the file is
  rewritten with it. An *empty* file is left alone (a zero-length write never reaches the
  kernel's handler, and it is what a shell's ``>`` shows before the text arrives); reads still
  return the model's value. A directory made by hand becomes a cgroup (mkdir; its files are
  filled in), a cgroup directory removed by hand disappears (its simulated processes are killed
  first, like ``cgroup.kill`` then ``rmdir``). ``echo 1 > cgroup.kill`` and ``echo PID >
  cgroup.procs`` work as on the kernel. Each cgroup directory holds a hidden identity file (the
  journal number of its mkdir), so that ``rm -r a; mkdir a`` is seen as a new cgroup even when
  the filesystem reuses the inode number. Only differences matter: the comparison is against
  the text the instance expects (what it rendered, or what the journal says another instance
  rendered), so renders by other instances are never mistaken for edits.
* **One operation at a time.** Each operation holds an exclusive `flock` on
  ``.memstate-cgroup-sim.d/lock`` from the moment it looks for news until its files are
  rendered. The lock file also records the number of the last journal entry whose files were
  completely rendered; an instance that finds it behind the journal (the writer was killed in
  the middle of an operation) re-renders what that entry touched. A torn last journal line (the
  writer died inside the append) is cut off. Nothing is fsynced: this is a simulator, and after
  a power loss the journal and the files are simply what the page cache had written.

Layout::

    <root>/.memstate-cgroup-sim.json    marker: format, version, the SimParameters
    <root>/.journal.jsonl               the journal (see JournalEntry)
    <root>/.memstate-cgroup-sim.d/      lock file and staging area (private)
    <root>/cgroup.controllers ...       the root cgroup's interface files
    <root>/kubepods/memory.min ...      one directory per cgroup, as in /sys/fs/cgroup
    <root>/kubepods/.memstate-cgroup    its identity (hidden)

Because files are replaced by rename, watch directories rather than files with inotify (a watch
on a file's inode ends at its first update). The hidden entries at the root change on every
operation; watchers should ignore names starting with a dot.

See docs/simulated-cgroups.md for the user's view and the limits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from memstate.core.cgroup_values import (
    CONTROLLER_ORDER,
    DEFAULT_PAGE_SIZE_BYTES,
    CgroupValueError,
    format_bitmap_list,
    kernel_strip,
    parse_bitmap_list,
    parse_kstrtoint,
)
from memstate.core.errors import HostError
from memstate.host.cgroupfs import (
    MAX_WRITE_BYTES,
    host_error,
    is_valid_cgroup_name,
    join_cgroup_path,
    unescape_mount_field,
)
from memstate.host.cgroupsim import (
    DEFAULT_CONTROLLERS,
    DEFAULT_HUGEPAGE_SIZES_BYTES,
    KERNEL_6_1,
    KernelProfile,
    SimCgroupFS,
)
from memstate.host.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DONT_FOLLOW,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
    libc,
)

_T = TypeVar("_T")

MARKER_NAME = ".memstate-cgroup-sim.json"
JOURNAL_NAME = ".journal.jsonl"
PRIVATE_NAME = ".memstate-cgroup-sim.d"
MARKER_FORMAT = "memstate-cgroup-sim"
MARKER_VERSION = 1
_LOCK_NAME = "lock"
# Hidden file in each cgroup directory: the journal number of the mkdir that made the cgroup.
# Inode numbers cannot tell a directory replaced by hand (rm -r a; mkdir a) from the original:
# ext4 hands the freed number out again at once.
_ID_NAME = ".memstate-cgroup"
_STAGING_NAME = "staging"
_COUNTER_WIDTH = 20
# Hand-written files longer than this are refused unread (the kernel caps a write at a page).
_MAX_OUTSIDE_BYTES = MAX_WRITE_BYTES
# File-name prefixes of interface files; only such files are ever deleted from a cgroup directory.
_INTERFACE_PREFIXES = frozenset({"cgroup", *CONTROLLER_ORDER})
_BIG_BITMAP = 1 << 16

# Filesystems DirCgroupFS refuses to write to: never scribble over the real thing.
_REFUSED_MAGICS = {0x63677270: "cgroup2", 0x0027E0EB: "cgroup", 0x62656572: "sysfs", 0x9FA0: "proc"}
_REFUSED_TYPES = frozenset(_REFUSED_MAGICS.values())

# IN_MODIFY is left out on purpose: edits are looked at once the writer closes the file, and the
# journal's appends (through a descriptor that stays open) produce no events at all.
_WATCH_MASK = (
    IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)


# --- parameters and journal entries --------------------------------------------------------------


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


def protection_violations(
    entries: Iterable[JournalEntry], files: Iterable[str] = ("memory.min", "memory.low")
) -> list[str]:
    """Moments in a journal where a cgroup's protection was below the sum of its children's.

    Replays the tree's shape and the stored values of `files` (``max`` counts as infinite),
    and after every entry checks the cgroups it touched: a parent whose value is below the sum
    of its children's is a violation, reported as ``"#n: path/memory.min 0 < children 1048576"``.
    Only cgroups that have the file are checked (the parent enables ``memory``); the root never
    is. An empty list means no write ever lowered a protection below what the children hold.
    """
    checked = tuple(files)
    values: dict[str, dict[str, float]] = {name: {} for name in checked}
    children: dict[str, set[str]] = {"": set()}
    memory_enabled: dict[str, bool] = {"": False}
    problems: list[str] = []

    def parent_of(path: str) -> str:
        return path.rpartition("/")[0]

    def has_files(path: str) -> bool:
        return bool(path) and memory_enabled.get(parent_of(path), False)

    def check(path: str, entry: JournalEntry) -> None:
        if path not in children or not has_files(path):
            return
        for name in checked:
            own = values[name].get(path, 0.0)
            total = sum(values[name].get(child, 0.0) for child in children[path])
            if own < total:
                problems.append(
                    f"#{entry.n}: {path}/{name} {_number_text(own)} < children "
                    f"{_number_text(total)}"
                )

    def drop(path: str) -> None:
        for child in list(children.get(path, ())):
            drop(child)
        children.pop(path, None)
        memory_enabled.pop(path, None)
        for table in values.values():
            table.pop(path, None)
        children.get(parent_of(path), set()).discard(path)

    for entry in entries:
        path = entry.path
        if path is None:
            continue
        if entry.op == "mkdir":
            children.setdefault(parent_of(path), set()).add(path)
            children[path] = set()
            memory_enabled[path] = False
        elif entry.op in ("rmdir", "remove"):
            drop(path)
        elif entry.op == "write" and entry.file == "cgroup.subtree_control":
            enabled = "memory" in (entry.stored or "").split()
            memory_enabled[path] = enabled
            if not enabled:
                for child in children.get(path, ()):
                    for table in values.values():
                        table.pop(child, None)
        elif entry.op == "write" and entry.file in values:
            stored = kernel_strip(entry.stored or "0")
            values[entry.file][path] = float("inf") if stored == "max" else float(int(stored))
            check(path, entry)
            check(parent_of(path), entry)
    return problems


def _number_text(value: float) -> str:
    return "max" if value == float("inf") else str(int(value))


# --- the model -----------------------------------------------------------------------------------


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


# --- filesystem checks ---------------------------------------------------------------------------


def _statfs_magic(path: str) -> int | None:
    """statfs(2) f_type of `path`, None when libc's statfs cannot be called."""
    try:
        library = libc()
        buffer = ctypes.create_string_buffer(512)  # larger than any struct statfs
        if library.statfs(os.fsencode(path), buffer) != 0:
            return None
    except (OSError, AttributeError):
        return None
    (magic,) = struct.unpack_from("l", buffer.raw)
    return int(magic) & 0xFFFFFFFF


def _mount_type(path: str, mounts_text: str) -> str | None:
    """Filesystem type of the mount holding `path` (longest mount-point prefix)."""
    best_point, best_type = "", None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = unescape_mount_field(fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best_point):
            best_point, best_type = point, fields[2]
    return best_type


def refused_filesystem(path: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem holding `path` if DirCgroupFS must not write there (cgroup,
    cgroup2, sysfs, proc), else None. Checks statfs magic and /proc/mounts; either suffices."""
    resolved = os.path.realpath(path)
    magic = _statfs_magic(resolved)
    if magic in _REFUSED_MAGICS:
        return _REFUSED_MAGICS[magic]
    try:
        with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
            kind = _mount_type(resolved, mounts.read())
    except OSError:
        return None
    return kind if kind in _REFUSED_TYPES else None


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _init_error(code: int, root: str, message: str) -> HostError:
    return HostError(f"simulated cgroup tree {root}: {message}", errno=code, path=root, op="init")


# --- DirCgroupFS ---------------------------------------------------------------------------------


class DirCgroupFS:
    """A persistent simulated cgroup v2 tree in directory `root` (see the module docstring).

    On a missing or empty directory the tree is created for the machine the keyword arguments
    describe (each defaults to SimCgroupFS's default). On an existing tree the marker decides;
    any argument given must then agree with it (HostError EINVAL otherwise). A non-empty
    directory without the marker, and any directory on a cgroup, cgroup2, sysfs or proc
    filesystem, is refused (HostError EPERM or ENOTEMPTY) before anything is written.

    `watch` uses inotify to notice changes made by hand; without it (or when inotify is
    unavailable) every operation compares the whole tree with the directory, which is correct
    but slow on big trees. Instances are not thread-safe; use one per thread. `close` (or a
    ``with`` block) releases the descriptors.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        page_size_bytes: int | None = None,
        controllers: Iterable[str] | None = None,
        hugepage_sizes_bytes: Iterable[int] | None = None,
        online_cpus: str | None = None,
        possible_cpus: str | None = None,
        online_nodes: str | None = None,
        possible_nodes: str | None = None,
        max_numnodes: int | None = None,
        delegated: bool | None = None,
        kernel: KernelProfile | None = None,
        known_controllers: Iterable[str] | None = None,
        watch: bool = True,
    ) -> None:
        self._closed = True  # until every descriptor is open; close() and __del__ check it
        requested: dict[str, object] = {
            "page_size_bytes": page_size_bytes,
            "controllers": None if controllers is None else tuple(controllers),
            "hugepage_sizes_bytes": (
                None if hugepage_sizes_bytes is None else tuple(hugepage_sizes_bytes)
            ),
            "online_cpus": online_cpus,
            "possible_cpus": possible_cpus,
            "online_nodes": online_nodes,
            "possible_nodes": possible_nodes,
            "max_numnodes": max_numnodes,
            "delegated": delegated,
            "kernel": kernel,
            "known_controllers": None if known_controllers is None else tuple(known_controllers),
        }
        given = {name: value for name, value in requested.items() if value is not None}
        wanted = msgspec.convert(given, SimParameters, from_attributes=False).normalised()
        # Validates the parameters (ValueError for an impossible machine) before touching disk.
        wanted.make_sim()

        root_text = os.path.abspath(os.fspath(root))
        refused = refused_filesystem(_nearest_existing(root_text))
        if refused is not None:
            raise _init_error(
                errno.EPERM, root_text, f"is on a {refused} filesystem; use RealCgroupFS there"
            )
        try:
            os.makedirs(root_text, exist_ok=True)
        except OSError as exc:
            raise _init_error(exc.errno or errno.EIO, root_text, exc.strerror or str(exc)) from exc
        resolved = os.path.realpath(root_text)
        if not os.path.isdir(resolved):
            raise _init_error(errno.ENOTDIR, resolved, "is not a directory")
        refused = refused_filesystem(resolved)
        if refused is not None:
            raise _init_error(
                errno.EPERM, resolved, f"is on a {refused} filesystem; use RealCgroupFS there"
            )
        entries = set(os.listdir(resolved))
        if MARKER_NAME not in entries and PRIVATE_NAME not in entries and entries:
            raise _init_error(
                errno.ENOTEMPTY,
                resolved,
                f"is not empty and holds no simulated cgroup tree (no {MARKER_NAME}); "
                "refusing to write into it",
            )

        self._root = Path(resolved)
        self._root_text = resolved
        self._private = os.path.join(resolved, PRIVATE_NAME)
        self._staging = os.path.join(self._private, _STAGING_NAME)
        self._journal_path = os.path.join(resolved, JOURNAL_NAME)
        self._marker_path = os.path.join(resolved, MARKER_NAME)
        self._watch_wanted = watch
        self._lock_depth = 0
        self._tmp_counter = 0
        self._inotify: Inotify | None = None
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._cache: dict[str, dict[str, str | None]] = {}
        # cgroup path -> the journal number of the mkdir that made it: written to the hidden
        # identity file of its directory, so a directory replaced by hand is recognised.
        self._ids: dict[str, int] = {}
        self._unwatched_until_now: list[str] = []
        # (directory, name) of the renames of the current flush, and events set aside meanwhile.
        self._own_renames: Counter[tuple[str | None, str]] = Counter()
        self._backlog: list[tuple[int, int, str]] = []
        self._pending = _Region()
        self._appended = False
        self._needs_reload = False
        self._journal_fd = -1
        self._journal_ino = -1
        self._journal_offset = 0
        self._last_n = 0
        os.makedirs(self._staging, exist_ok=True)
        self._lock_fd = os.open(
            os.path.join(self._private, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        self._closed = False
        try:
            with self._locked():
                self._params = self._open_or_create(wanted, given)
                self._sim = self._params.make_sim()
                self._clear_staging()
                self._reload()
                self._flush()
        except BaseException:
            self.close()
            raise

    # --- public properties -----------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The resolved root directory of the tree."""
        return self._root

    @property
    def parameters(self) -> SimParameters:
        """The simulated machine, as recorded in the marker."""
        return self._params

    @property
    def page_size_bytes(self) -> int:
        """The base page size memory values are rounded to."""
        return self._params.page_size_bytes

    @property
    def kernel(self) -> KernelProfile:
        """The kernel profile the tree simulates."""
        return self._params.kernel

    @property
    def journal_path(self) -> Path:
        """``<root>/.journal.jsonl``."""
        return Path(self._journal_path)

    @property
    def change_detection(self) -> str:
        """``"inotify"`` or ``"scan"`` (every operation compares the whole directory)."""
        return "inotify" if self._inotify is not None else "scan"

    def __repr__(self) -> str:
        return f"DirCgroupFS({self._root_text!r})"

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lock file, journal and inotify descriptors; later calls raise EBADF."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._journal_fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._journal_fd = self._lock_fd = -1

    def __enter__(self) -> DirCgroupFS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the tree's lock: other DirCgroupFS users (other processes included) wait.

        For tests that edit several files by hand and want no instance to see half of the edit.
        Calls on this instance inside the block work (the lock is re-entrant per instance);
        a call on *another* instance of the same tree inside the block waits forever.
        """
        with self._locked():
            yield

    def refresh(self) -> None:
        """Take in what changed since the last call (other instances, edits by hand) now.

        Every operation does this itself; call it to make an idle instance journal and render
        changes made by hand, or to pay the cost of a big change before a timed section.
        """
        self._run(lambda: None)

    # --- CgroupFS --------------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        """True if cgroup `path` exists."""
        return self._run(lambda: self._sim.exists(path))

    def list_children(self, path: str) -> list[str]:
        """Sorted child cgroup names."""
        return self._run(lambda: self._sim.list_children(path))

    def read(self, path: str, file: str) -> str:
        """The file's text as the kernel would print it."""
        return self._run(lambda: self._sim.read(path, file))

    def write(self, path: str, file: str, value: str) -> None:
        """Apply one write as the kernel's handler would; journaled and rendered on success."""

        def action() -> None:
            region = self._do_write(path, file, value)
            self._record(
                "write", region, path=path, file=file, value=value, stored=self._stored(path, file)
            )

        self._run(action)

    def mkdir(self, path: str) -> None:
        """Create a cgroup (its directory appears complete, with every interface file)."""
        self._run(lambda: self._record("mkdir", self._do_mkdir(path, self._last_n + 1), path=path))

    def rmdir(self, path: str) -> None:
        """Remove an empty leaf cgroup; EBUSY when populated or when it has children."""
        self._run(lambda: self._record("rmdir", self._do_rmdir(path), path=path))

    # --- test hooks (as SimCgroupFS) -------------------------------------------------------------

    def list_files(self, path: str) -> list[str]:
        """Sorted interface file names of cgroup `path` (what its directory holds)."""
        return self._run(lambda: self._sim.list_files(path))

    def spawn(self, path: str | None = None) -> int:
        """Create a fake process, placed in `path` like a write to its cgroup.procs (None: outside
        the tree); returns its pid. Persisted: every instance sees it. A failed placement raises
        the write's HostError and discards the process, as in SimCgroupFS."""

        def action() -> int:
            try:
                pid = self._sim.spawn(path)
            except HostError as exc:
                # The sim used up a pid; replay must do the same to hand out the same pids.
                self._record("spawn", _Region(), path=path, error=_errno_name(exc))
                raise
            region = self._procs_region(path) if path is not None else _Region()
            self._record("spawn", region, path=path, process=pid)
            return pid

        return self._run(action)

    def exit(self, pid: int, status: int = 0) -> None:
        """End fake process `pid` with `status` (-9 for SIGKILL); KeyError if it is not running."""
        self._run(
            lambda: self._record("exit", self._do_exit(pid, status), process=pid, status=status)
        )

    def exit_status(self, pid: int) -> int | None:
        """None while `pid` runs, else its status; KeyError for a pid never spawned."""
        return self._run(lambda: self._sim.exit_status(pid))

    def cgroup_of(self, pid: int) -> str | None:
        """The cgroup of running process `pid` (None: outside the tree); KeyError otherwise."""
        return self._run(lambda: self._sim.cgroup_of(pid))

    def set_memory_usage(self, path: str, usage_bytes: int) -> None:
        """Charge `usage_bytes` to `path` itself (memory.current sums the subtree)."""
        self._run(
            lambda: self._record(
                "memory_usage",
                self._do_memory_usage(path, usage_bytes),
                path=path,
                usage_bytes=usage_bytes,
            )
        )

    def add_memory_event(self, path: str, event: str, count: int = 1) -> None:
        """Count a memory event (``oom_kill``...) in `path` (memory.events up the tree)."""
        self._run(
            lambda: self._record(
                "memory_event",
                self._do_memory_event(path, event, count),
                path=path,
                event=event,
                count=count,
            )
        )

    # --- operation frame -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._closed:
            raise HostError(f"{self!r} is closed", errno=errno.EBADF, op="lock")
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _run(self, action: Callable[[], _T]) -> _T:
        """Lock, take in news, act, render what changed, unlock."""
        with self._locked():
            self._sync()
            try:
                return action()
            finally:
                self._flush()

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
        if source == "outside":
            self._note_new_files(region)
        self._pending.merge(region)

    def _flush(self) -> None:
        """Render the pending region and advance the lock file's rendered counter."""
        region, self._pending = self._pending, _Region()
        try:
            self._render(region, write_disk=True)
        except BaseException:
            self._pending.merge(region)  # retried at the next operation
            raise
        if self._appended:
            self._write_counter(self._last_n)
            self._appended = False
        self._drain_own_events()

    def _drain_own_events(self) -> None:
        """Set aside the inotify events of this flush's own renames (one IN_MOVED_TO each), so
        the next call does not read those files back; everything else waits for that call."""
        if self._inotify is None or not self._own_renames:
            return
        own = self._own_renames
        self._own_renames = Counter()
        for event in self._inotify.read_events():
            wd, mask, name = event
            key = (self._wd_path.get(wd), name)
            if mask & IN_MOVED_TO and own[key] > 0:
                own[key] -= 1
                continue
            self._backlog.append(event)

    # --- taking in news --------------------------------------------------------------------------

    def _sync(self) -> None:
        try:
            status = os.stat(self._journal_path)
        except FileNotFoundError:
            status = None
        if (
            status is None
            or self._needs_reload
            or status.st_ino != self._journal_ino
            or status.st_size < self._journal_offset
        ):
            self._reload()
            return
        if status.st_size > self._journal_offset:
            self._replay_tail()
        if self._inotify is None:
            self._full_scan()
            return
        events = self._backlog + self._inotify.read_events()
        self._backlog = []
        if any(mask & IN_Q_OVERFLOW for _wd, mask, _name in events):
            self._full_scan()
            return
        self._process_events(events)

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

    def _replay(self, entries: list[JournalEntry]) -> tuple[_Region, _Region]:
        """Apply entries to the model: (region of all of them, region of the unrendered ones)."""
        rendered = self._read_counter()
        everything, unrendered = _Region(), _Region()
        for entry in entries:
            if entry.n != self._last_n + 1:
                raise HostError(
                    f"{self._journal_path}: entry #{entry.n} follows #{self._last_n}; the journal "
                    "was edited or mixed with another one",
                    errno=errno.EIO,
                    op="replay",
                )
            region = self._apply(entry)
            everything.merge(region)
            if entry.n > rendered:
                unrendered.merge(region)
            self._last_n = entry.n
        return everything, unrendered

    def _replay_tail(self) -> None:
        everything, unrendered = self._replay(self._read_entries())
        # Another instance rendered these: adopt its files as the baseline.
        self._unwatched_until_now = []
        self._render(everything, write_disk=False)
        self._repair(unrendered)
        if self._inotify is not None:
            for path in self._unwatched_until_now:
                self._scan_dir(path, full=False)
        self._unwatched_until_now = []

    def _repair(self, unrendered: _Region) -> None:
        """Re-render what a writer killed mid-operation may have left half done."""
        if self._read_counter() < self._last_n:
            self._render(unrendered, write_disk=True, force=True)
            self._write_counter(self._last_n)

    def _reload(self) -> None:
        """Rebuild everything from the journal, then compare the whole directory with it."""
        self._needs_reload = False
        self._sim = self._params.make_sim()
        self._cache.clear()
        self._ids.clear()
        self._pending = _Region()
        self._start_watching()
        self._open_journal()
        _everything, unrendered = self._replay(self._read_entries())
        if self._read_counter() > self._last_n:
            self._write_counter(self._last_n)  # the journal was replaced: start counting again
        self._render(_Region(whole=set(self._all_cgroups())), write_disk=False)
        self._unwatched_until_now = []  # the full scan below looks at every directory anyway
        self._repair(unrendered)
        self._full_scan()

    def _start_watching(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wd_path.clear()
        self._path_wd.clear()
        self._backlog = []
        self._own_renames.clear()
        if not self._watch_wanted:
            return
        try:
            self._inotify = Inotify(_WATCH_MASK)
        except OSError:
            self._inotify = None  # no inotify here: compare the whole tree at every operation

    def _all_cgroups(self) -> list[str]:
        return self._subtree("")

    def _process_events(self, events: list[tuple[int, int, str]]) -> None:
        work: dict[tuple[bool, str, str], None] = {}
        for wd, mask, name in events:
            if mask & IN_IGNORED:
                path = self._wd_path.pop(wd, None)
                if path is not None and self._path_wd.get(path) == wd:
                    del self._path_wd[path]
                continue
            path = self._wd_path.get(wd)
            if path is None or not name or name.startswith("."):
                continue
            work[(bool(mask & IN_ISDIR), path, name)] = None
        for is_dir, path, name in work:
            files = self._cache.get(path)
            if files is None:
                continue
            if not is_dir and name in files:
                self._check_file(path, name, full=False)
            else:
                self._check_child(path, name, full=False)

    def _path_children(self, path: str) -> list[str]:
        return self._sim.list_children(path) if self._sim.exists(path) else []

    def _full_scan(self) -> None:
        self._scan_dir("", full=True)

    def _scan_dir(self, path: str, *, full: bool) -> None:
        """Compare one cgroup directory (and with `full`, everything below) with the model."""
        if path not in self._cache:
            return
        try:
            with os.scandir(self._disk(path)) as iterator:
                entries = {entry.name: entry for entry in iterator}
        except (FileNotFoundError, NotADirectoryError) as exc:
            if not path:
                raise _init_error(errno.ENOENT, self._root_text, "the root is gone") from exc
            self._outside_remove(path)
            return
        for file in sorted(self._cache[path]):
            self._check_file(path, file, full=full)
        disk_dirs = {
            name
            for name, entry in entries.items()
            if not name.startswith(".") and entry.is_dir(follow_symlinks=False)
        }
        for name in sorted(disk_dirs | set(self._path_children(path))):
            self._check_child(path, name, full=full)

    def _check_child(self, path: str, name: str, *, full: bool) -> None:
        """Bring cgroup `path`'s child `name` in line with the directory (made/removed by hand)."""
        if not is_valid_cgroup_name(name) or not self._sim.exists(path):
            return
        child = join_cgroup_path(path, name)
        directory = self._disk(child)
        try:
            is_dir = stat.S_ISDIR(os.lstat(directory).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_dir = False
        if self._sim.exists(child):
            if is_dir and _read_identity(directory) == self._ids.get(child):
                if child not in self._path_wd:
                    self._watch(directory, child)
                if full:
                    self._scan_dir(child, full=True)
                return
            self._outside_remove(child)  # gone, or replaced by another directory
        if is_dir and self._outside_mkdir(child):
            self._scan_dir(child, full=True)

    def _check_file(self, path: str, file: str, *, full: bool) -> None:
        """Compare one model file with the directory; a difference is a write by someone else."""
        files = self._cache[path]
        content = self._read_disk(path, file)
        if content is None:
            if full:
                # Restored only by full scans: in between, a deleted file may be part of an
                # `rm -r` in progress, which a re-created file would make fail.
                files[file] = None
                self._pending.files.add((path, file))
            return
        if content == files.get(file):
            return
        files[file] = content
        if content == "":
            return  # a zero-length write never reaches the handler (or the text is on its way)
        try:
            region = self._do_write(path, file, content)
        except HostError:
            self._pending.files.add((path, file))  # refused: the file shows the model's value
            return
        self._record(
            "write",
            region,
            source="outside",
            path=path,
            file=file,
            value=content,
            stored=self._stored(path, file),
        )

    def _outside_mkdir(self, child: str) -> bool:
        ident = self._last_n + 1
        try:
            region = self._do_mkdir(child, ident)
        except HostError:
            return False  # the kernel would refuse it (EAGAIN...): not a cgroup, left alone
        directory = self._disk(child)
        with contextlib.suppress(OSError):  # gone again: the next pass takes that in
            _write_new_file(os.path.join(directory, _ID_NAME), f"{ident}\n")
        self._watch(directory, child)
        self._record("mkdir", region, source="outside", path=child)
        return True

    def _outside_remove(self, path: str) -> None:
        self._record("remove", self._do_remove(path), source="outside", path=path)

    def _note_new_files(self, region: _Region) -> None:
        """Baselines for files an outside change made appear: what the model shows now, so a
        difference found later in this same pass is still a change made by hand."""
        for path in region.whole:
            if self._sim.exists(path):
                cached = self._cache.setdefault(path, {})
                for name, text in self._sim.render(path).items():
                    cached.setdefault(name, text)

    def _read_disk(self, path: str, file: str) -> str | None:
        """Text of a regular file in the tree, None if missing or not a regular file."""
        try:
            fd = os.open(
                os.path.join(self._disk(path), file),
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            )
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks: list[bytes] = []
            total = 0
            while total <= _MAX_OUTSIDE_BYTES:
                chunk = os.read(fd, _MAX_OUTSIDE_BYTES + 1)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        # Undecodable bytes become U+FFFD, which every parser refuses (like the kernel would).
        return b"".join(chunks).decode("utf-8", errors="replace")

    # --- changes to the model (shared by live calls, outside changes and replay) -----------------

    def _apply(self, entry: JournalEntry) -> _Region:
        """Redo a journaled change; it must end as it did when it was recorded."""
        try:
            path = entry.path
            if entry.op == "mkdir" and path is not None:
                return self._do_mkdir(path, entry.n)
            if entry.op == "rmdir" and path is not None:
                return self._do_rmdir(path)
            if entry.op == "remove" and path is not None:
                return self._do_remove(path)
            if entry.op == "write" and path is not None and entry.file and entry.value is not None:
                return self._do_write(path, entry.file, entry.value)
            if entry.op == "spawn":
                return self._replay_spawn(entry)
            if entry.op == "exit" and entry.process is not None:
                return self._do_exit(entry.process, entry.status or 0)
            if entry.op == "memory_usage" and path is not None and entry.usage_bytes is not None:
                return self._do_memory_usage(path, entry.usage_bytes)
            if entry.op == "memory_event" and path is not None and entry.event is not None:
                return self._do_memory_event(path, entry.event, entry.count or 1)
            raise ValueError(f"unknown or incomplete entry {entry}")
        except (HostError, KeyError, ValueError) as exc:
            raise HostError(
                f"{self._journal_path}: entry #{entry.n} ({entry.op} {entry.path}) no longer "
                f"replays: {exc}. The simulator's rules changed since it was written; start "
                "from an empty directory",
                errno=errno.EIO,
                path=entry.path or "",
                op="replay",
            ) from exc

    def _replay_spawn(self, entry: JournalEntry) -> _Region:
        try:
            pid = self._sim.spawn(entry.path)
        except HostError as exc:
            if _errno_name(exc) != entry.error:
                raise
            return _Region()
        if entry.error is not None or pid != entry.process:
            raise ValueError(f"spawn gave pid {pid}, the journal says {entry.process}")
        return self._procs_region(entry.path) if entry.path is not None else _Region()

    def _do_mkdir(self, path: str, ident: int) -> _Region:
        """mkdir in the model; `ident` is the number of the journal entry that records it."""
        self._sim.mkdir(path)
        self._ids[path] = ident
        files = {(ancestor, "cgroup.stat") for ancestor in _ancestors(path, include_self=False)}
        return _Region(whole={path}, files=files)

    def _do_rmdir(self, path: str) -> _Region:
        self._sim.rmdir(path)
        ident = self._forget([path])
        files = {(ancestor, "cgroup.stat") for ancestor in _ancestors(path, include_self=False)}
        return _Region(files=files, removed={path: ident})

    def _do_remove(self, path: str) -> _Region:
        """A cgroup directory deleted by hand: kill what runs below, remove the subtree."""
        subtree = self._subtree(path)
        self._sim.write(path, "cgroup.kill", "1")
        for descendant in reversed(subtree):
            self._sim.rmdir(descendant)
        ident = self._forget(subtree)
        region = _Region(removed={path: ident})
        for ancestor in _ancestors(path, include_self=False):
            region.files |= {(ancestor, "cgroup.stat"), (ancestor, "cgroup.events")}
        return region

    def _do_write(self, path: str, file: str, value: str) -> _Region:
        moved_from = self._source_of_move(value) if file == "cgroup.procs" else None
        self._sim.write(path, file, value)
        # The file itself always: a hand-written ``1`` in cgroup.kill must read back empty.
        region = _Region(files={(path, file)})
        if file == "cgroup.subtree_control":
            region.whole.update(self._subtree(path))  # files appear/vanish in the children
        elif file == "cgroup.procs":
            region.merge(self._procs_region(path))
            if moved_from is not None:
                region.merge(self._procs_region(moved_from))
        elif file == "cgroup.kill":
            for descendant in self._subtree(path):
                region.merge(self._procs_region(descendant))
        elif file == "cgroup.freeze":
            region.files.add((path, file))
            region.files |= {(descendant, "cgroup.events") for descendant in self._subtree(path)}
        elif file in ("cpuset.cpus", "cpuset.mems"):
            region.files.add((path, file))
            for descendant in self._subtree(path):
                region.files.add((descendant, "cpuset.cpus.effective"))
                region.files.add((descendant, "cpuset.mems.effective"))
        else:
            region.files.add((path, file))
        return region

    def _source_of_move(self, value: str) -> str | None:
        """The cgroup the pid written to cgroup.procs is in now (None: outside or unknown)."""
        try:
            return self._sim.cgroup_of(parse_kstrtoint(kernel_strip(value)))
        except (CgroupValueError, KeyError):
            return None

    def _do_exit(self, pid: int, status: int) -> _Region:
        cgroup = self._sim.cgroup_of(pid)  # KeyError when not running, as SimCgroupFS.exit
        self._sim.exit(pid, status)
        return self._procs_region(cgroup) if cgroup is not None else _Region()

    def _do_memory_usage(self, path: str, usage_bytes: int) -> _Region:
        self._sim.set_memory_usage(path, usage_bytes)
        files = {(node, "memory.current") for node in _ancestors(path, include_self=True)}
        return _Region(files=files)

    def _do_memory_event(self, path: str, event: str, count: int) -> _Region:
        self._sim.add_memory_event(path, event, count)
        files = {(node, "memory.events") for node in _ancestors(path, include_self=True)}
        return _Region(files=files | {(path, "memory.events.local")})

    def _procs_region(self, path: str) -> _Region:
        """Files a change of the processes directly in `path` can change: its process lists,
        ``populated`` up the tree, and ``cgroup.type`` of its subtree (thread-root rules)."""
        files = {(path, "cgroup.procs"), (path, "cgroup.threads")}
        files |= {(node, "cgroup.events") for node in _ancestors(path, include_self=True)}
        files |= {(node, "cgroup.type") for node in self._subtree(path)}
        return _Region(files=files)

    def _subtree(self, path: str) -> list[str]:
        """`path` and every cgroup below it, parents first."""
        found = [path]
        for child in self._sim.list_children(path):
            found.extend(self._subtree(join_cgroup_path(path, child)))
        return found

    def _forget(self, paths: list[str]) -> int | None:
        """Drop what the instance knew about removed cgroups; the first one's identity."""
        ident = self._ids.get(paths[0]) if paths else None
        for path in paths:
            self._cache.pop(path, None)
            self._ids.pop(path, None)
            self._unwatch(path)
        return ident

    def _stored(self, path: str, file: str) -> str | None:
        try:
            return self._sim.read(path, file)
        except HostError:
            return None  # write-only (cgroup.kill)

    # --- rendering -------------------------------------------------------------------------------

    def _disk(self, path: str) -> str:
        return os.path.join(self._root_text, path) if path else self._root_text

    def _render(self, region: _Region, *, write_disk: bool, force: bool = False) -> None:
        """Make the files of `region` show the model (or, without `write_disk`, only take the
        model's texts as what the files hold: another instance rendered them)."""
        for path, ident in sorted(region.removed.items(), key=lambda item: -_depth(item[0])):
            if write_disk and not self._sim.exists(path):
                self._remove_directory(path, ident)
        wanted: dict[str, set[str] | None] = dict.fromkeys(region.whole)
        for path, file in region.files:
            if path not in region.whole:
                wanted.setdefault(path, set())
                names = wanted[path]
                if names is not None:
                    names.add(file)
        for path in sorted(wanted, key=lambda item: (_depth(item), item)):
            names = wanted[path]
            try:
                texts = self._sim.render(path, names)
            except HostError:
                continue  # no longer in the model
            if names is None:
                if write_disk:
                    self._write_directory(path, texts, force=force)
                else:
                    self._adopt_directory(path, texts)
                continue
            files = self._cache.get(path)
            if files is None:
                continue
            for file, text in texts.items():
                if write_disk and (force or files.get(file) != text):
                    self._write_file(path, file, text)
                files[file] = text

    def _adopt_directory(self, path: str, texts: dict[str, str]) -> None:
        self._cache[path] = dict(texts)
        directory = self._disk(path)
        if path not in self._path_wd and os.path.isdir(directory):
            self._watch(directory, path)
            # Edits made in it before the watch existed produced no event for this instance.
            self._unwatched_until_now.append(path)

    def _next_temporary(self, prefix: str) -> str:
        self._tmp_counter += 1
        return os.path.join(self._staging, f"{prefix}-{os.getpid()}-{self._tmp_counter}")

    def _write_directory(self, path: str, texts: dict[str, str], *, force: bool) -> None:
        directory = self._disk(path)
        try:
            status: os.stat_result | None = os.lstat(directory)
        except FileNotFoundError:
            status = None
        except NotADirectoryError:
            return  # the parent was replaced by hand; the next pass removes it
        if status is not None and not stat.S_ISDIR(status.st_mode):
            os.unlink(directory)  # a stray file where the model has a cgroup
            status = None
        if status is None and self._create_directory(path, texts):
            return
        try:
            with os.scandir(directory) as iterator:
                on_disk = {entry.name for entry in iterator if entry.is_file(follow_symlinks=False)}
        except (FileNotFoundError, NotADirectoryError):
            return  # removed by hand meanwhile; the next pass takes that in
        if path not in self._path_wd:
            self._watch(directory, path)
        ident = self._ids.get(path)
        if ident is not None and (force or _read_identity(directory) != ident):
            _write_new_file(os.path.join(directory, _ID_NAME), f"{ident}\n")
        cached = self._cache.get(path, {})
        for name in sorted(on_disk - texts.keys()):
            if _is_interface_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
        for name, text in texts.items():
            if force or name not in on_disk or cached.get(name) != text:
                self._write_file(path, name, text)
        self._cache[path] = dict(texts)

    def _create_directory(self, path: str, texts: dict[str, str]) -> bool:
        """Fill a new cgroup directory in staging and rename it into place; False if something
        is already there (then it is filled in place)."""
        staged = self._next_temporary("dir")
        os.mkdir(staged, 0o755)
        staged_fd = os.open(staged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, text in texts.items():
                _write_new_file(name, text, dir_fd=staged_fd)
            ident = self._ids.get(path)
            if ident is not None:
                _write_new_file(_ID_NAME, f"{ident}\n", dir_fd=staged_fd)
        finally:
            os.close(staged_fd)
        # Watch before the rename: the watch follows the inode, so no edit made right after the
        # directory appears can be missed.
        self._watch(staged, path)
        try:
            os.rename(staged, self._disk(path))
        except OSError as exc:
            self._unwatch(path)
            shutil.rmtree(staged, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return True  # the parent was removed by hand; the next pass takes that in
            raise host_error(exc.errno or errno.EIO, "mkdir", path, detail="render") from exc
        parent, _slash, name = path.rpartition("/")
        self._own_renames[(parent, name)] += 1
        self._cache[path] = dict(texts)
        return True

    def _write_file(self, path: str, file: str, text: str) -> None:
        staged = self._next_temporary("file")
        _write_new_file(staged, text)
        try:
            os.rename(staged, os.path.join(self._disk(path), file))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                return  # the directory went away by hand; the next pass takes that in
            raise host_error(exc.errno or errno.EIO, "write", path, file, detail="render") from exc
        self._own_renames[(path, file)] += 1

    def _remove_directory(self, path: str, ident: int | None) -> None:
        directory = self._disk(path)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return
        if ident is not None and _read_identity(directory) != ident:
            return  # not the directory the model removed (replaced by hand meanwhile)
        graveyard = self._next_temporary("removed")
        try:
            os.rename(directory, graveyard)  # disappears at once for readers
        except OSError:
            return
        shutil.rmtree(graveyard, ignore_errors=True)

    def _watch(self, directory: str, path: str) -> None:
        if self._inotify is None:
            return
        try:
            wd = self._inotify.add_watch(directory)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            # Out of watches (fs.inotify.max_user_watches): fall back to full comparisons.
            self._inotify.close()
            self._inotify = None
            self._wd_path.clear()
            self._path_wd.clear()
            self._backlog = []
            return
        self._wd_path[wd] = path
        self._path_wd[path] = wd

    def _unwatch(self, path: str) -> None:
        wd = self._path_wd.pop(path, None)
        if wd is None or self._wd_path.get(wd) != path:
            return
        del self._wd_path[wd]
        if self._inotify is not None:
            self._inotify.rm_watch(wd)

    # --- marker, counter, staging ----------------------------------------------------------------

    def _open_or_create(self, wanted: SimParameters, given: dict[str, object]) -> SimParameters:
        """The tree's parameters: from the marker, or a new tree made with `wanted`."""
        try:
            with open(self._marker_path, "rb") as marker_file:
                raw = marker_file.read()
        except FileNotFoundError:
            return self._create(wanted)
        try:
            marker = _MARKER_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise _init_error(errno.EINVAL, self._root_text, f"{MARKER_NAME}: {exc}") from exc
        if marker.format != MARKER_FORMAT or marker.version != MARKER_VERSION:
            raise _init_error(
                errno.EINVAL,
                self._root_text,
                f"{MARKER_NAME} is format {marker.format!r} version {marker.version}; this "
                f"memstate reads {MARKER_FORMAT!r} version {MARKER_VERSION}",
            )
        stored = marker.parameters
        differences = [
            f"{name} is {getattr(stored, name)!r}, asked for {getattr(wanted, name)!r}"
            for name in given
            if getattr(stored, name) != getattr(wanted, name)
        ]
        if differences:
            raise _init_error(
                errno.EINVAL,
                self._root_text,
                "was created for another machine: "
                + "; ".join(differences)
                + " (use another directory, or remove this one)",
            )
        return stored

    def _create(self, parameters: SimParameters) -> SimParameters:
        """Initialise an empty directory; the marker comes last, so a crash leaves a directory
        that is initialised again (it holds the private directory, so it is not refused)."""
        with open(self._journal_path, "wb"):
            pass  # empty (also after an interrupted earlier attempt)
        self._write_counter(0)
        sim = parameters.make_sim()
        self._sim = sim
        self._cache = {}
        self._write_directory("", sim.render(""), force=True)
        encoded = msgspec.json.format(
            msgspec.json.encode(
                _Marker(format=MARKER_FORMAT, version=MARKER_VERSION, parameters=parameters)
            ),
            indent=2,
        )
        staged = self._next_temporary("marker")
        _write_new_file(staged, encoded.decode() + "\n")
        os.rename(staged, self._marker_path)
        return parameters

    def _clear_staging(self) -> None:
        """Leftovers of writers killed mid-render (we hold the lock: nobody is staging now)."""
        for name in os.listdir(self._staging):
            target = os.path.join(self._staging, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(target)

    def _read_counter(self) -> int:
        text = os.pread(self._lock_fd, _COUNTER_WIDTH + 1, 0).strip()
        return int(text) if text.isdigit() else 0

    def _write_counter(self, number: int) -> None:
        os.pwrite(self._lock_fd, f"{number:0{_COUNTER_WIDTH}d}\n".encode(), 0)


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
