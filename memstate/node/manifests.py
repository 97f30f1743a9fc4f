"""The manifest directory as a source of pods, like the kubelet's static pod directory.

`ManifestDirectory.read()` reads the directory and returns one observation per manifest file (see
memstate.node.sources.observation); `scan()` hands them to the shared `PodTracker`, which turns
what changed into input events (the same rules for every pod source):

- a new file with a valid pod: `pod_admission_requested`;
- a file whose pod spec changed, same UID: `pod_admission_requested` (the reducer turns a changed
  spec into `pod_removed` plus a new decision);
- a file whose pod now has another UID: `pod_removal_requested` for the old UID, then
  `pod_admission_requested` (every removal of a scan comes before its other events, so a UID
  given up by one file is free for another in the same scan);
- a deleted file: `pod_removal_requested`;
- a file that does not parse or validate: `manifest_invalid` naming the file, the field and the
  reason (the pod it held before, if any, is removed) — once it has stayed unchanged for
  `INVALID_QUIET_SECONDS` (see "In-place writes" below);
- two files declaring one UID: the file that already holds it keeps it — the one the last scan
  accepted for it, else the one the running pod came from (`scan(holders=...)`, from the state,
  so this holds after a restart too), else the one whose name sorts first — and every other is
  `manifest_invalid` with a reason naming both files. A pod is never taken over by another
  file: it keeps its UID, spec and allocation. Such a file is read again at every scan, and
  admitted once the UID is free (its holder deleted or changed).

A manifest without `metadata.uid` is a kubelet-style static pod: its UID is derived from its
content, the node name and its path (memstate.node.sources.static documents the rule).

Unchanged files (same bytes) produce nothing, so a periodic full rescan is cheap and idempotent:
watch events are only hints, the rescan is the source of truth. Between full rescans a read looks
only at the names the watch reported (`hint`), so one new manifest costs one stat and one read,
not a stat of every file; a full rescan runs at least every `full_rescan_seconds`, whenever a
read comes without hints (the periodic rescan, a nudge) and after a hint that changes may have
been missed. A hinted read also says which files it looked at (`read_changes`), so the tracker
need not compare the whole list either. The daemon reads a small hinted change (a few files of
at most 64 KiB) on its event loop (`read_changes_inline`) rather than in a worker thread, whose
hand-off costs more CPU than the read; a read that was slow sends the next ones back to the
thread for a minute. After a restart nothing is known,
so every file is requested again — that is the readmission. Files are visited in the order the
directory lists them; `MEMSTATE_TEST_MANIFEST_ORDER=sorted|reverse` (tests only) forces an order.

In-place writes: a writer that rewrites a file in place (`cat > pod.yaml`, `kubectl get -o yaml >
pod.yaml`, most editors) truncates it, then writes it, and the watch reports only the close. A
read already due (a full rescan, the hint of an earlier write) can read the file in between,
empty or half-written; reporting that would remove a running pod (its protection, its NUMA
allocation) and admit it again, maybe elsewhere, at the next read. So a file that does not parse
or validate keeps its previous observation (a new file stays unseen) until the same bytes at the
same identity (inode, size, mtime) have been read again `INVALID_QUIET_SECONDS` later, by the
directory's `clock`; only then is it reported. Until then it is re-hinted, and
`unsettled_due_in()` tells the manifest loop when to read it again, so a file that stays
invalid is reported once, without a further event; the writer's close usually comes first and
the file is simply read valid. The first read (start-up) reports an invalid file at once: there
is no earlier observation to keep, and leaving the file out would end readmission without it,
which removes its pod just the same (memstate.node.startup.readmit closes readmission right
after that read); a start-up that overlaps a rewrite is corrected by the writer's close.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstate.core.errors import InputError, ManifestError
from memstate.core.events import Event
from memstate.core.pod import pod_from_manifest, spec_hash
from memstate.node.inputs import (
    MAX_FILE_BYTES,
    UNSETTLED_INPUT_SECONDS,
    is_manifest_name,
    parse_document,
)
from memstate.node.sources.observation import ObservedPod, SourceName
from memstate.node.sources.static import derive_static_uid, static_pod_key
from memstate.node.sources.tracker import PodTracker
from memstate.node.worker_threads import InlineWhileFast

ORDER_HOOK = "MEMSTATE_TEST_MANIFEST_ORDER"
# `read_changes_inline` reads on the event loop at most this many hinted files, each at most
# this large (a usual manifest is a few KiB: reading and parsing one costs less CPU than handing
# the read to a worker thread and back)...
INLINE_FILES = 4
INLINE_BYTES = 64 * 1024
# ...and, once an inline read took longer than this (a slow disk or a remote directory), leaves
# the reads to the worker thread for `INLINE_PAUSE_SECONDS`: a slow directory blocks the loop
# once per pause at most, not on every admission.
INLINE_SLOW_SECONDS = 0.02
INLINE_PAUSE_SECONDS = 60.0
# How long a file that does not parse or validate must stay unchanged before it is reported (see
# "In-place writes" in the module docstring); the same rule as the config file's.
INVALID_QUIET_SECONDS = UNSETTLED_INPUT_SECONDS
# stat errors that mean "no file here" (what `Path.is_file` answers False to).
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF})


class _NotSmall(Exception):
    """An inline read found a file larger than its limit: the worker thread reads it."""


@dataclass(frozen=True)
class _Look:
    """What one stat (and, for a changed file, one read) found at a path, before any
    bookkeeping: `observed` when that is already known (gone, not a regular file, unreadable),
    `unchanged` when the file is the one last read, else the bytes read and the identity they
    were read at."""

    observed: ObservedPod | None = None
    data: bytes | None = None
    identity: tuple[int, int, int] = (0, 0, 0)
    unchanged: bool = False  # the identity `seen` was read at: its observation stands


# What `_look` finds at most paths of a rescan: the file `seen` describes, unchanged (one shared
# value: a rescan of an unchanged directory builds nothing per file).
_UNCHANGED = _Look(unchanged=True)


@dataclass(frozen=True)
class _Read:
    """What a file held when it was last read."""

    digest: str
    observed: ObservedPod
    # (inode, size, mtime in ns) when it was read: unchanged identity means unchanged bytes, so
    # a rescan of an unchanged directory stats files instead of reading them. Atomic renames give
    # a new inode; in-place edits change the size or the nanosecond mtime.
    identity: tuple[int, int, int] = (0, 0, 0)
    # The UID this file declares but another file holds ("" otherwise): such a file is read
    # again at every scan, to be admitted once the UID is free.
    conflict: str = ""


@dataclass(frozen=True)
class _Unsettled:
    """A file whose last read did not parse or validate and that is not reported yet: `name`
    (to hint it again), what it held (`fingerprint`) and when (by the directory's clock) that
    was first read."""

    name: str
    fingerprint: tuple[object, ...]
    since: float


class ManifestDirectory:
    """The manifest directory as a pod source (see the module docstring)."""

    name: SourceName = "manifests"

    def __init__(
        self,
        directory: Path,
        *,
        order: str | None = None,
        node_name: str = "",
        tracker: PodTracker | None = None,
        full_rescan_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.order = order if order is not None else os.environ.get(ORDER_HOOK, "listing")
        self.node_name = node_name or socket.gethostname().lower()
        self.tracker = tracker if tracker is not None else PodTracker()
        # key (the file's path) → what it held when last read.
        self._cache: dict[str, _Read] = {}
        # key → the file's observation, in the order scans found the files.
        self._observed: dict[str, ObservedPod] = {}
        self._hinted: set[str] | None = set()  # names the watch reported since the last read
        # `hint` runs in the event loop, `read` in a worker thread (`read_changes_inline` in
        # the event loop).
        self._hint_lock = threading.Lock()
        # What a file's key (``str(directory / name)``) is its name appended to: pathlib's own
        # spelling of the directory ("" for ".", "/" for the root); made once (pathlib's join
        # and spelling cost ~3 µs hot, on every hinted read).
        self._key_prefix = str(directory / "_")[:-1]
        self._full_done = False
        self._last_full = 0.0
        self.full_rescan_seconds = full_rescan_seconds
        self.clock = clock
        # Whether the hinted read may run on the event loop (see INLINE_SLOW_SECONDS).
        self._inline = InlineWhileFast(
            slow_seconds=INLINE_SLOW_SECONDS, pause_seconds=INLINE_PAUSE_SECONDS, clock=clock
        )
        # key → the file that failed to parse or validate but is not reported yet.
        self._unsettled: dict[str, _Unsettled] = {}

    def _listing(self) -> list[str]:
        """The manifest names in the directory, in the listing's order (or `order`'s)."""
        try:
            # Names only (no `Path` per file: a rescan lists hundreds); `_look`'s one stat per
            # file says whether it is a regular file.
            names = [name for name in os.listdir(self.directory) if is_manifest_name(name)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            message = f"cannot list: {exc.strerror}"
            raise ManifestError(message, source=str(self.directory)) from None
        if self.order == "sorted":
            return sorted(names)
        if self.order == "reverse":
            return sorted(names, reverse=True)
        return names

    def scan(self, holders: Mapping[str, str] | None = None) -> list[Event]:
        """Read the directory; return the events for every change since the last accepted scan.

        `holders` maps the UID of each pod in the state to the file it came from (see
        `PodTracker.update`). The caller commits the events and then calls `accept`, so a scan
        whose events were not recorded is repeated next time.
        """
        pods, changes = self.read_changes()
        return self.tracker.update(self.name, pods, holders=holders, changes=changes)

    def accept(self) -> None:
        """Remember the last scan's view (its events are durable now)."""
        self.tracker.accept()

    def hint(self, names: Iterable[str] | None) -> None:
        """The watch saw these entries change (None: it may have missed changes, e.g. its queue
        overflowed or it was restarted): the next `read` looks at them only, unless a full
        rescan is due (see `read`)."""
        with self._hint_lock:
            if names is None or self._hinted is None:
                self._hinted = None
            else:
                self._hinted.update(names)

    def unsettled_due_in(self) -> float | None:
        """Seconds (by `clock`) until a file that does not parse or validate has stayed
        unchanged long enough to be reported, at the next read (0 when one is due now); None
        when there is none. Such a file is already hinted: the caller reads again then."""
        with self._hint_lock:
            if not self._unsettled:
                return None
            since = min(entry.since for entry in self._unsettled.values())
        return max(0.0, since + INVALID_QUIET_SECONDS - self.clock())

    def read(self) -> list[ObservedPod]:
        """One observation per manifest file, in listing order (see `read_changes`)."""
        return self.read_changes()[0]

    def read_changes(self) -> tuple[list[ObservedPod], dict[str, ObservedPod | None] | None]:
        """One observation per manifest file, in listing order (unchanged files are not read),
        and the account of what may have changed since the previous read for
        `PodTracker.update(changes=...)`: file → its observation now (None: gone) for the files
        looked at; None after a full rescan (the tracker then compares the whole list).

        A full rescan lists the directory and stats every file: at the first read, when no
        hint came since the last read (a periodic or nudged rescan), after a hint of None, and
        once `full_rescan_seconds` passed since the last full one (the safety net against
        missed hints). Otherwise only the hinted names are looked at, and every other file
        keeps its last observation, so an admission does not cost a walk over all manifests.
        """
        with self._hint_lock:
            hinted, self._hinted = self._hinted, set()
        now = self.clock()
        if not hinted or self._full_due(now):
            first = not self._full_done
            self._last_full = now
            self._full_done = True
            return self._read_all(first=first), None
        return self._read_hinted(hinted, limit=None)

    def read_changes_inline(
        self,
    ) -> tuple[list[ObservedPod], dict[str, ObservedPod | None] | None] | None:
        """`read_changes` when it is small enough to run on the event loop, else None, having
        read and consumed nothing (the caller then hands `read_changes` to a worker thread).

        Small: a hinted read (no full rescan due) of at most `INLINE_FILES` names, each file at
        most `INLINE_BYTES` (by its stat, and by what its read returns: a file that grew in
        between is left to the thread), and no inline read took longer than
        `INLINE_SLOW_SECONDS` in the last `INLINE_PAUSE_SECONDS`. Same observations, account
        and errors as `read_changes`."""
        if not self._inline.available():
            return None
        now = self.clock()
        with self._hint_lock:
            hinted = self._hinted
            if not hinted or len(hinted) > INLINE_FILES or self._full_due(now):
                return None
            self._hinted = set()
        try:
            return self._inline.run(
                functools.partial(self._read_hinted, hinted, limit=INLINE_BYTES)
            )
        except _NotSmall:
            self.hint(hinted)  # for the worker thread's `read_changes`
            return None

    def _full_due(self, now: float) -> bool:
        return (
            not self._full_done
            or now - self._last_full >= self.full_rescan_seconds
            or self.order != "listing"
        )

    def _read_hinted(
        self, hinted: set[str], *, limit: int | None
    ) -> tuple[list[ObservedPod], dict[str, ObservedPod | None]]:
        """The hinted names' observations, the others' kept. All I/O comes first, so a file
        over `limit` (`_NotSmall`) leaves the directory's account as it was."""
        looks: list[tuple[str, str, _Read | None, _Look]] = []
        prefix = self._key_prefix
        for name in sorted(hinted):
            key = prefix + name
            seen = self._cache.get(key)
            # The name here, the file type with the one stat `_look` makes.
            look = self._look(key, seen, limit) if is_manifest_name(name) else _Look()
            looks.append((name, key, seen, look))
        changes: dict[str, ObservedPod | None] = {}
        for name, key, seen, look in looks:
            self._cache.pop(key, None)
            observed = self._take(key, seen, look)
            previous = self._observed.get(key)
            if self._unsettled_read(name, key, observed, previous, first=False):
                continue  # keeps its previous observation (a new file stays unseen)
            if observed is None:
                self._observed.pop(key, None)  # gone, or not (any more) a manifest
            else:
                self._observed[key] = observed  # keeps its place if it was known
            changes[key] = observed
        return list(self._observed.values()), changes

    def _read_all(self, *, first: bool = False) -> list[ObservedPod]:
        previous, self._cache = self._cache, {}
        before, self._observed = self._observed, {}
        listed: set[str] = set()
        prefix = self._key_prefix
        for name in self._listing():
            key = prefix + name
            listed.add(key)
            observed = self._observe(key, previous.get(key))
            if self._unsettled_read(name, key, observed, before.get(key), first=first):
                observed = before.get(key)
            if observed is not None:
                self._observed[key] = observed
        if self._unsettled:
            with self._hint_lock:
                for key in self._unsettled.keys() - listed:
                    del self._unsettled[key]  # gone
        return list(self._observed.values())

    def _unsettled_read(
        self,
        name: str,
        key: str,
        observed: ObservedPod | None,
        previous: ObservedPod | None,
        *,
        first: bool,
    ) -> bool:
        """Whether `observed`, a fresh read of file `name` (`key`), must not be reported yet: it
        is an error (the file does not parse or validate, or cannot be read), is not the error
        reported already, and has not stayed unchanged for `INVALID_QUIET_SECONDS` (see
        "In-place writes" in the module docstring). Such a file is hinted again, for the next
        read."""
        if (
            first
            or observed is None
            or not observed.error
            or (previous is not None and previous.error == observed.error)
        ):
            # The usual case (a valid file): no lock unless there is an entry to drop. Only the
            # reading thread changes `_unsettled`; the lock is for the event loop's look at it.
            if key in self._unsettled:
                with self._hint_lock:
                    del self._unsettled[key]
            return False
        with self._hint_lock:
            cached = self._cache.get(key)
            # Same bytes at the same identity; a read error has no bytes, only its message.
            fingerprint: tuple[object, ...] = (
                (cached.identity, cached.digest)
                if cached is not None and cached.observed is observed
                else (observed.error,)
            )
            now = self.clock()
            entry = self._unsettled.get(key)
            if entry is None or entry.fingerprint != fingerprint:
                self._unsettled[key] = _Unsettled(name, fingerprint, now)
            elif now - entry.since >= INVALID_QUIET_SECONDS:
                del self._unsettled[key]
                return False
            if self._hinted is not None:
                self._hinted.add(name)
            return True

    def _observe(self, key: str, seen: _Read | None) -> ObservedPod | None:
        """What the file at `key` (its path) holds now (None: it is gone, or not a regular
        file); remembered in `_cache` if read. One stat, and for a changed file an open, a read
        and a close."""
        return self._take(key, seen, self._look(key, seen, None))

    def _look(self, key: str, seen: _Read | None, limit: int | None) -> _Look:
        """The I/O of `_observe`: one stat, and an open, a read and a close when the file's
        identity is not `seen`'s. Raises `_NotSmall` for a file over `limit` (None: no limit
        but `MAX_FILE_BYTES`)."""
        try:
            info = os.stat(key)
        except OSError as exc:
            if exc.errno in _GONE:
                return _Look()
            return _Look(ObservedPod(key, error=f"cannot stat: {exc.strerror}"))
        if not stat.S_ISREG(info.st_mode):
            return _Look()
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen is not None and seen.identity == identity:
            return _UNCHANGED
        if limit is not None and info.st_size > limit:
            raise _NotSmall
        read_limit = MAX_FILE_BYTES + 1 if limit is None else limit + 1
        try:
            data = _read_head(key, read_limit, info.st_size)
        except FileNotFoundError:
            return _Look()  # deleted between listing and reading: the next scan sees it gone
        except OSError as exc:
            return _Look(ObservedPod(key, error=f"cannot read: {exc.strerror}"))
        if limit is not None and len(data) > limit:
            raise _NotSmall  # it grew (or was replaced) since its stat
        return _Look(data=data, identity=identity)

    def _take(self, key: str, seen: _Read | None, look: _Look) -> ObservedPod | None:
        """The observation `look` makes, remembered in `_cache` when the file was looked at."""
        data = look.data
        if data is None:
            if look.unchanged and seen is not None:
                self._cache[key] = seen  # not read again
                return seen.observed
            return look.observed
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        if seen is not None and seen.digest == digest:
            item = seen.observed
        else:
            item = self._parse(key, data)
        self._cache[key] = _Read(digest, item, look.identity)
        return item

    def _parse(self, source: str, data: bytes) -> ObservedPod:
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ManifestError(f"larger than {MAX_FILE_BYTES} bytes", source=source)
            document = parse_document(data, source=source, error=ManifestError)
            document, derived = self._with_uid(document, source)
            pod = pod_from_manifest(document, source=source)
        except InputError as exc:
            where = f"{exc.path}: " if exc.path else ""
            return ObservedPod(source, error=where + exc.message)
        static_key = static_pod_key(pod.namespace, pod.name, self.node_name) if derived else ""
        return ObservedPod(
            source,
            pod=pod,
            spec_hash=spec_hash(pod),
            derived_uid=derived,
            static_key=static_key,
        )

    def _with_uid(self, document: Any, source: str) -> tuple[Any, bool]:
        """A static pod manifest without `metadata.uid` gets its derived UID."""
        if not isinstance(document, dict):
            return document, False
        metadata = document.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("uid") not in (None, ""):
            return document, False
        try:
            uid = derive_static_uid(document, node_name=self.node_name, path=source)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"cannot derive a UID: {exc}", source=source) from None
        return {**document, "metadata": {**metadata, "uid": uid}}, True


def _read_head(path: str, limit: int, size: int) -> bytes:
    """At most `limit` bytes of a regular file of `size` bytes (at its stat), in as few system
    calls as it takes (usually one read): no buffered file object. Non-blocking, in case the
    file was replaced by a FIFO since its stat."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        data = os.read(descriptor, limit)
        wanted = min(size, limit)
        while len(data) < wanted:  # a short read: what is left, up to EOF
            chunk = os.read(descriptor, limit - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(descriptor)
