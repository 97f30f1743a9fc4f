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
  Within a process, the threads sharing an instance take turns the same way (a re-entrant lock
  per instance, around the flock). Inside `snapshot()` a thread's reads skip the look for news
  (made once at its start) and the flock: they only read the model, as of that look.

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

Code layout: this module holds DirCgroupFS's public face (construction, the marker, the lock,
the operation frame, the CgroupFS calls); each job is a part it inherits, one module each:
``cgroupdir_journal`` (format, append, read), ``cgroupdir_changes`` (changes to the model),
``cgroupdir_render`` (files on disk), ``cgroupdir_inotify`` (watches) and ``cgroupdir_adopt``
(catching up with other instances, adopting edits made by hand); ``cgroupdir_tree`` holds the
model and the state they share.

See docs/simulated-cgroups.md for the user's view and the limits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from memstate.core.errors import HostError
from memstate.host.cgroupfs import unescape_mount_field
from memstate.host.inotify import libc
from memstate.host.sim.cgroupdir_adopt import _ChangesFromOutside
from memstate.host.sim.cgroupdir_journal import (
    _MARKER_DECODER,
    JOURNAL_NAME,
    MARKER_FORMAT,
    MARKER_NAME,
    MARKER_VERSION,
    JournalEntry,
    SimParameters,
    _init_error,
    _Marker,
    read_journal,
)
from memstate.host.sim.cgroupdir_tree import _errno_name, _Region, _write_new_file
from memstate.host.sim.cgroupsim import KernelProfile

__all__ = [
    "JOURNAL_NAME",
    "MARKER_NAME",
    "PRIVATE_NAME",
    "DirCgroupFS",
    "JournalEntry",
    "SimParameters",
    "read_journal",
    "refused_filesystem",
]

_T = TypeVar("_T")

PRIVATE_NAME = ".memstate-cgroup-sim.d"
_LOCK_NAME = "lock"
_STAGING_NAME = "staging"

# Filesystems DirCgroupFS refuses to write to: never scribble over the real thing.
_REFUSED_MAGICS = {0x63677270: "cgroup2", 0x0027E0EB: "cgroup", 0x62656572: "sysfs", 0x9FA0: "proc"}
_REFUSED_TYPES = frozenset(_REFUSED_MAGICS.values())


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


# --- DirCgroupFS ---------------------------------------------------------------------------------


class _PerThread(threading.local):
    """What each thread using an instance has of its own."""

    snapshots = 0  # depth of this thread's `snapshot` blocks


class DirCgroupFS(_ChangesFromOutside):
    """A persistent simulated cgroup v2 tree in directory `root` (see the module docstring).

    On a missing or empty directory the tree is created for the machine the keyword arguments
    describe (each defaults to SimCgroupFS's default). On an existing tree the marker decides;
    any argument given must then agree with it (HostError EINVAL otherwise). A non-empty
    directory without the marker, and any directory on a cgroup, cgroup2, sysfs or proc
    filesystem, is refused (HostError EPERM or ENOTEMPTY) before anything is written.

    `watch` uses inotify to notice changes made by hand; without it (or when inotify is
    unavailable) every operation compares the whole tree with the directory, which is correct
    but slow on big trees. An instance may be shared by threads (the daemon reads through the
    reconciler's instance from its event loop while a round runs in a worker thread): its
    operations take turns on a re-entrant lock that one thread holds at a time, and the tree's
    `flock` is taken by that thread's outermost operation. `close` (or a ``with`` block) releases
    the descriptors.
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
        # One thread at a time operates on the instance (the model, the caches, the descriptors
        # are shared); the depth counts that thread's nested operations, and only the thread
        # holding `_thread_lock` reads or changes it. A flock cannot do this alone: it belongs
        # to the open file, so a second thread would "take" it again and its unlock would
        # release the first thread's lock.
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._per_thread = _PerThread()
        self._tmp_counter = 0
        self._inotify = None
        self._wd_path = {}
        self._path_wd = {}
        self._cache = {}
        # cgroup path -> the journal number of the mkdir that made it: written to the hidden
        # identity file of its directory, so a directory replaced by hand is recognised.
        self._ids = {}
        self._unwatched_until_now = []
        # (directory, name) of the renames of the current flush, and events set aside meanwhile.
        self._own_renames = Counter()
        self._backlog = []
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
        with self._thread_lock:  # not under another thread's operation
            self._close_descriptors()

    def _close_descriptors(self) -> None:
        if self._closed:
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
        Calls on this instance by the same thread inside the block work (the lock is re-entrant
        per thread); other threads' calls on this instance wait for the block to end, and a call
        on *another* instance of the same tree inside the block waits forever.
        """
        with self._locked():
            yield

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Take in news once; this thread's reads inside the block (`exists`, `list_children`,
        `read`, `list_files`) then use the model as it is, without catching up each time.

        For a whole observation (the reconciler's full resync: ~3,500 reads at 500 pods): one
        flock and one catch-up with the journal and the inotify queue instead of one per read.
        The reads see the tree as it was at the start of the block plus what this instance did
        since (other threads' operations included); what other instances or hands change
        meanwhile is taken in by the next operation outside a snapshot, as if the reads had all
        happened at the start. Writes inside the block catch up as always. No lock is held
        between calls: other threads and processes go on meanwhile.
        """
        self.refresh()
        self._per_thread.snapshots += 1
        try:
            yield
        finally:
            self._per_thread.snapshots -= 1

    def refresh(self) -> None:
        """Take in what changed since the last call (other instances, edits by hand) now.

        Every operation does this itself; call it to make an idle instance journal and render
        changes made by hand, or to pay the cost of a big change before a timed section.
        """
        self._run(lambda: None)

    # --- CgroupFS --------------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        """True if cgroup `path` exists."""
        return self._look(lambda: self._sim.exists(path))

    def list_children(self, path: str) -> list[str]:
        """Sorted child cgroup names."""
        return self._look(lambda: self._sim.list_children(path))

    def read(self, path: str, file: str) -> str:
        """The file's text as the kernel would print it."""
        return self._look(lambda: self._sim.read(path, file))

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
        return self._look(lambda: self._sim.list_files(path))

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
        """This thread's turn on the instance, and the tree's flock (re-entrant per thread)."""
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self) -> None:
        """Take this thread's turn on the instance, and the tree's flock unless this thread
        holds it already; `_release` gives them back. (`_run` pairs the two itself: a
        generator-based context manager per operation cost more than the pair of flocks.)"""
        self._thread_lock.acquire()
        try:
            if self._closed:
                raise HostError(f"{self!r} is closed", errno=errno.EBADF, op="lock")
            if not self._lock_depth:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def _release(self) -> None:
        try:
            self._lock_depth -= 1
            if not self._lock_depth:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _look(self, action: Callable[[], _T]) -> _T:
        """A read-only call: inside this thread's `snapshot`, the model as it is (this thread's
        turn on the instance, no flock, no catch-up); otherwise a whole operation (`_run`)."""
        if not self._per_thread.snapshots:
            return self._run(action)
        with self._thread_lock:
            if self._closed:
                raise HostError(f"{self!r} is closed", errno=errno.EBADF, op="lock")
            return action()

    def _run(self, action: Callable[[], _T]) -> _T:
        """Lock, take in news, act, render what changed, unlock."""
        self._acquire()
        try:
            self._sync()
            try:
                return action()
            finally:
                self._flush()
        finally:
            self._release()

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

    # --- marker, staging -------------------------------------------------------------------------

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
