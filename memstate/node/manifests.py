"""The manifest directory as a source of pods, like the kubelet's static pod directory.

`ManifestDirectory.scan()` compares the directory with what it saw last time and returns the input
events for what changed:

- a new file with a valid pod: `pod_admission_requested`;
- a file whose content changed, same UID: `pod_admission_requested` (the reducer turns a changed
  spec into `pod_removed` plus a new decision);
- a file whose pod now has another UID: `pod_removal_requested` for the old UID, then
  `pod_admission_requested` (every removal of a scan comes before its other events, so a UID
  given up by one file is free for another in the same scan);
- a deleted file: `pod_removal_requested`;
- a file that does not parse or validate: `manifest_invalid` naming the file, the field and the
  reason (the pod it held before, if any, is removed);
- two files declaring one UID: the file that already holds it keeps it — the one the last scan
  accepted for it, else the one the running pod came from (`scan(holders=...)`, from the state,
  so this holds after a restart too), else the one whose name sorts first — and every other is
  `manifest_invalid` with a reason naming both files. A pod is never taken over by another
  file: it keeps its UID, spec and allocation. Such a file is read again at every scan, and
  admitted once the UID is free (its holder deleted or changed).

Unchanged files (same bytes) produce nothing, so a periodic full rescan is cheap and idempotent:
watch events are only hints, the rescan is the source of truth. After a restart nothing is known,
so every file is requested again — that is the readmission. Files are visited in the order the
directory lists them; `MEMSTATE_TEST_MANIFEST_ORDER=sorted|reverse` (tests only) forces an order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from memstate.core.errors import InputError, ManifestError
from memstate.core.events import (
    Event,
    ManifestInvalid,
    PodAdmissionRequested,
    PodRemovalRequested,
)
from memstate.core.pod import Pod, pod_from_manifest, spec_hash
from memstate.node.inputs import MAX_FILE_BYTES, manifest_files, parse_document

ORDER_HOOK = "MEMSTATE_TEST_MANIFEST_ORDER"


@dataclass(frozen=True)
class Seen:
    """What a file held when it was last read."""

    digest: str
    uid: str  # "" when the file was invalid
    spec_hash: str
    # (inode, size, mtime in ns) when it was read: unchanged identity means unchanged bytes, so
    # a rescan of an unchanged directory stats files instead of reading them. Atomic renames give
    # a new inode; in-place edits change the size or the nanosecond mtime.
    identity: tuple[int, int, int] = (0, 0, 0)
    # The UID this file declares but another file holds ("" otherwise): such a file is read
    # again at every scan, to be admitted once the UID is free.
    conflict: str = ""


@dataclass(frozen=True)
class Observed:
    """One file as read by a scan."""

    path: Path
    digest: str
    pod: Pod | None = None
    error: str = ""
    unchanged: Seen | None = None  # same bytes as last time: nothing to do
    identity: tuple[int, int, int] = (0, 0, 0)


class ManifestDirectory:
    """Turns the manifest directory's changes into input events."""

    def __init__(self, directory: Path, *, order: str | None = None) -> None:
        self.directory = directory
        self.order = order if order is not None else os.environ.get(ORDER_HOOK, "listing")
        self.known: dict[str, Seen] = {}
        self._pending: dict[str, Seen] = {}

    def _listing(self) -> list[Path]:
        try:
            files = manifest_files(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            message = f"cannot list: {exc.strerror}"
            raise ManifestError(message, source=str(self.directory)) from None
        if self.order == "sorted":
            return sorted(files)
        if self.order == "reverse":
            return sorted(files, reverse=True)
        return files

    def scan(self, holders: Mapping[str, str] | None = None) -> list[Event]:
        """Read the directory; return the events for every change since the last scan.

        `holders` maps the UID of each pod in the state to the file it came from: when two
        files declare a UID, the one the running pod came from keeps it (after a restart,
        before any scan was accepted, this is what tells the original from a newcomer).
        The caller commits the events and then calls `accept` with the same result, so a scan
        whose events were not recorded is repeated next time.
        """
        events, self._pending = self._diff(self._read_changed(), holders or {})
        return events

    def accept(self) -> None:
        """Remember the last scan's view (its events are durable now)."""
        self.known = self._pending

    def _read_changed(self) -> list[Observed]:
        observed = []
        for path in self._listing():
            seen = self.known.get(str(path))
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                error = f"cannot stat: {exc.strerror}"
                observed.append(Observed(path, f"unreadable:{exc.errno}", error=error))
                continue
            identity = (info.st_ino, info.st_size, info.st_mtime_ns)
            if seen is not None and seen.identity == identity and not seen.conflict:
                observed.append(Observed(path, seen.digest, unchanged=seen))
                continue
            try:
                with path.open("rb") as handle:
                    data = handle.read(MAX_FILE_BYTES + 1)
            except FileNotFoundError:
                continue  # deleted between listing and reading: the next scan sees it gone
            except OSError as exc:
                error = f"cannot read: {exc.strerror}"
                observed.append(Observed(path, f"unreadable:{exc.errno}", error=error))
                continue
            digest = hashlib.blake2b(data, digest_size=16).hexdigest()
            if seen is not None and seen.digest == digest and not seen.conflict:
                seen = Seen(seen.digest, seen.uid, seen.spec_hash, identity)
                observed.append(Observed(path, digest, unchanged=seen))
            else:
                observed.append(_parse(path, data, digest, identity))
        return observed

    def _diff(
        self, observed: Sequence[Observed], holders: Mapping[str, str]
    ) -> tuple[list[Event], dict[str, Seen]]:
        owners = self._owners(observed, holders)
        # Removals go first: a UID a file gives up (deleted, invalid, changed) may be taken by
        # another file in the same scan, and must be free before that file's admission.
        removals: list[Event] = []
        events: list[Event] = []
        known: dict[str, Seen] = {}
        present = set()
        for item in observed:
            key = str(item.path)
            present.add(key)
            before = self.known.get(key)
            if item.unchanged is not None:
                known[key] = item.unchanged
                continue
            error = item.error
            if item.pod is not None and owners[item.pod.uid] != key:
                uid, owner = item.pod.uid, owners[item.pod.uid]
                if before is not None and before.conflict == uid and before.digest == item.digest:
                    known[key] = before  # still the same conflict: reported once
                    continue
                if before is not None and before.uid:
                    removals.append(PodRemovalRequested(uid=before.uid, source=key))
                events.append(
                    ManifestInvalid(
                        source=key,
                        error=(
                            f"$.metadata.uid: uid {uid} is already declared by {owner}, which "
                            f"holds the pod; {key} is ignored while it does"
                        ),
                    )
                )
                known[key] = Seen(item.digest, "", "", item.identity, conflict=uid)
                continue
            if error or item.pod is None:
                if before is not None and before.uid:
                    removals.append(PodRemovalRequested(uid=before.uid, source=key))
                events.append(ManifestInvalid(source=key, error=error))
                known[key] = Seen(item.digest, "", "", item.identity)
                continue
            pod = item.pod
            if before is not None and before.uid and before.uid != pod.uid:
                removals.append(PodRemovalRequested(uid=before.uid, source=key))
            events.append(PodAdmissionRequested(pod=pod, source=key))
            known[key] = Seen(item.digest, pod.uid, spec_hash(pod), item.identity)
        for key, before in self.known.items():
            if key not in present:
                removals.append(PodRemovalRequested(uid=before.uid, source=key))
        return removals + events, known

    def _owners(self, observed: Sequence[Observed], holders: Mapping[str, str]) -> dict[str, str]:
        """UID → the file that holds it, among the files that declare it (module docstring)."""
        claims: dict[str, list[str]] = {}
        for item in observed:
            uid = item.pod.uid if item.pod else item.unchanged.uid if item.unchanged else ""
            if uid:
                claims.setdefault(uid, []).append(str(item.path))
        owners: dict[str, str] = {}
        for uid, files in claims.items():
            accepted = [f for f in files if (seen := self.known.get(f)) and seen.uid == uid]
            running = holders.get(uid)
            if accepted:
                owners[uid] = min(accepted)
            elif running in files:
                owners[uid] = running
            else:
                owners[uid] = min(files)
        return owners


def _parse(path: Path, data: bytes, digest: str, identity: tuple[int, int, int]) -> Observed:
    source = str(path)
    try:
        document = parse_document(data, source=source, error=ManifestError)
        pod = pod_from_manifest(document, source=source)
    except InputError as exc:
        where = f"{exc.path}: " if exc.path else ""
        return Observed(path, digest, error=where + exc.message, identity=identity)
    return Observed(path, digest, pod=pod, identity=identity)
