"""The manifest directory as a pod source.

Goal: every kind of change in the directory becomes exactly the documented input events, a scan
of an unchanged directory produces nothing, and a scan whose events were not accepted is repeated.
Method: real files in a temporary directory, `ManifestDirectory.scan()` and `accept()`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from memstate.core.events import ManifestInvalid, PodAdmissionRequested, PodRemovalRequested
from memstate.node.inputs import manifest_files
from memstate.node.manifests import (
    INLINE_BYTES,
    INLINE_FILES,
    INLINE_PAUSE_SECONDS,
    INLINE_SLOW_SECONDS,
    INVALID_QUIET_SECONDS,
    ManifestDirectory,
)
from tests.factories import container, manifest


def write(directory: Path, name: str, obj: Any) -> Path:
    path = directory / name
    path.write_text(json.dumps(obj) if name.endswith(".json") else _yaml(obj))
    return path


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj)


def kinds(events: list[Any]) -> list[tuple[str, str]]:
    out = []
    for event in events:
        if isinstance(event, PodAdmissionRequested):
            out.append(("admit", event.pod.uid))
        elif isinstance(event, PodRemovalRequested):
            out.append(("remove", event.uid))
        elif isinstance(event, ManifestInvalid):
            out.append(("invalid", Path(event.source).name))
    return out


def scan(source: ManifestDirectory) -> list[tuple[str, str]]:
    events = source.scan()
    source.accept()
    return kinds(events)


def test_lifecycle_of_files(tmp_path: Path) -> None:
    source = ManifestDirectory(tmp_path, order="sorted")
    write(tmp_path, "a.yaml", manifest("ua", [container("c", "1Gi")]))
    write(tmp_path, "b.json", manifest("ub", [container("c", "1Gi")]))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".a.yaml.swp").write_text("ignored")
    assert scan(source) == [("admit", "ua"), ("admit", "ub")]
    assert scan(source) == []  # nothing changed
    write(tmp_path, "a.yaml", manifest("ua", [container("c", "2Gi")]))
    assert scan(source) == [("admit", "ua")]  # changed spec: the reducer replaces the pod
    write(tmp_path, "a.yaml", manifest("ua2", [container("c", "2Gi")]))
    assert scan(source) == [("remove", "ua"), ("admit", "ua2")]
    (tmp_path / "b.json").unlink()
    assert scan(source) == [("remove", "ub")]


def test_malformed_manifests_are_rejected_with_file_and_field(tmp_path: Path) -> None:
    now = [0.0]
    source = ManifestDirectory(tmp_path, order="sorted", clock=lambda: now[0])
    (tmp_path / "broken.yaml").write_text("metadata: {name: x\n")
    bad = manifest("ux", [container("c", "-1Gi")])
    write(tmp_path, "negative.yaml", bad)
    events = source.scan()
    source.accept()
    assert kinds(events) == [("invalid", "broken.yaml"), ("invalid", "negative.yaml")]
    invalid = [e for e in events if isinstance(e, ManifestInvalid)]
    assert "invalid YAML at line" in invalid[0].error
    assert "$.spec.containers[0].resources.requests.memory" in invalid[1].error
    assert "negative" in invalid[1].error
    assert scan(source) == []  # still broken, same bytes: nothing new
    write(tmp_path, "negative.yaml", manifest("ux", [container("c", "1Gi")]))
    assert scan(source) == [("admit", "ux")]
    write(tmp_path, "negative.yaml", bad)  # broken again: the pod goes away...
    assert scan(source) == []  # ...once it stayed so (tests/daemon/test_torn_manifests.py)
    now[0] += INVALID_QUIET_SECONDS
    assert scan(source) == [("remove", "ux"), ("invalid", "negative.yaml")]


def test_duplicate_uid_goes_to_the_file_sorting_first(tmp_path: Path) -> None:
    for order in ("sorted", "reverse"):
        directory = tmp_path / order
        directory.mkdir()
        write(directory, "b.yaml", manifest("same", [container("c", "1Gi")], name="b"))
        write(directory, "a.yaml", manifest("same", [container("c", "1Gi")], name="a"))
        events = ManifestDirectory(directory, order=order).scan()
        admitted = [e for e in events if isinstance(e, PodAdmissionRequested)]
        invalid = [e for e in events if isinstance(e, ManifestInvalid)]
        assert [e.pod.name for e in admitted] == ["a"]
        assert [Path(e.source).name for e in invalid] == ["b.yaml"]
        assert "already declared by" in invalid[0].error
        assert str(directory / "a.yaml") in invalid[0].error
        assert str(directory / "b.yaml") in invalid[0].error


def test_a_new_file_never_takes_the_uid_of_a_running_pod(tmp_path: Path) -> None:
    source = ManifestDirectory(tmp_path, order="sorted")
    original = write(tmp_path, "b.yaml", manifest("ux", [container("c", "1Gi")], name="orig"))
    assert scan(source) == [("admit", "ux")]
    # A newcomer sorting first declares the same UID with another spec: it is rejected, naming
    # both files, and nothing happens to the running pod.
    newcomer = write(tmp_path, "a.yaml", manifest("ux", [container("c", "2Gi")], name="new"))
    events = source.scan()
    source.accept()
    assert kinds(events) == [("invalid", "a.yaml")]
    (invalid,) = events
    assert isinstance(invalid, ManifestInvalid)
    assert str(original) in invalid.error and str(newcomer) in invalid.error
    # Reported once; the running pod's file stays the holder.
    assert scan(source) == []
    # The holder goes: the newcomer's pod is requested under the UID (another spec: the reducer
    # removes the running pod, reason spec_changed, and decides the new one).
    original.unlink()
    events = source.scan()
    source.accept()
    assert kinds(events) == [("admit", "ux")]
    assert [e.pod.name for e in events if isinstance(e, PodAdmissionRequested)] == ["new"]


def test_after_a_restart_the_file_of_the_running_pod_keeps_its_uid(tmp_path: Path) -> None:
    original = write(tmp_path, "b.yaml", manifest("ux", [container("c", "1Gi")], name="orig"))
    write(tmp_path, "a.yaml", manifest("ux", [container("c", "2Gi")], name="new"))
    # Nothing is known after a restart; the state says which file the running pod came from.
    for order in ("sorted", "reverse"):
        events = ManifestDirectory(tmp_path, order=order).scan(holders={"ux": str(original)})
        admitted = [e for e in events if isinstance(e, PodAdmissionRequested)]
        assert [e.pod.name for e in admitted] == ["orig"]
        assert ("invalid", "a.yaml") in kinds(events)


def test_a_uid_given_up_in_a_scan_is_free_for_another_file_in_it(tmp_path: Path) -> None:
    source = ManifestDirectory(tmp_path, order="sorted")
    holder = write(tmp_path, "b.yaml", manifest("ux", [container("c", "1Gi")], name="orig"))
    assert scan(source) == [("admit", "ux")]
    write(tmp_path, "a.yaml", manifest("ux", [container("c", "2Gi")], name="new"))
    assert scan(source) == [("invalid", "a.yaml")]
    # The holder switches to another UID: ux is free for a.yaml's pod in the same scan (another
    # spec under ux: the reducer removes the old pod, reason spec_changed, then decides the new).
    write(tmp_path, holder.name, manifest("uy", [container("c", "1Gi")], name="orig"))
    assert scan(source) == [("admit", "ux"), ("admit", "uy")]


def test_unaccepted_scan_is_repeated(tmp_path: Path) -> None:
    source = ManifestDirectory(tmp_path)
    write(tmp_path, "a.yaml", manifest("ua", [container("c", "1Gi")]))
    assert kinds(source.scan()) == [("admit", "ua")]
    # not accepted (say the disk was full): the next scan asks again
    assert kinds(source.scan()) == [("admit", "ua")]


def test_missing_directory_is_empty(tmp_path: Path) -> None:
    assert ManifestDirectory(tmp_path / "absent").scan() == []


def test_order_hook(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        write(tmp_path, name, manifest(f"u{name[0]}", [container("c", "1Gi")]))
    forward = [uid for _, uid in kinds(ManifestDirectory(tmp_path, order="sorted").scan())]
    backward = [uid for _, uid in kinds(ManifestDirectory(tmp_path, order="reverse").scan())]
    assert forward == ["ua", "ub", "uc"]
    assert backward == ["uc", "ub", "ua"]


class _CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *_: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("spelling", ["absolute", "relative", "dot"])
def test_an_idle_rescan_reads_no_file_and_takes_the_lock_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """The periodic full rescan of an unchanged directory stats every file and reads none, and
    takes the hint lock once (to take the hints), not once per file; the files' keys are their
    paths as the directory is spelled (`str(directory / name)`)."""
    import memstate.node.manifests as manifests_module

    directory = {"absolute": tmp_path / "m", "relative": Path("m"), "dot": Path(".")}[spelling]
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path / "m" if spelling == "dot" else tmp_path)
    source = ManifestDirectory(directory, node_name="n")
    for index in range(20):
        write(directory, f"p{index:02d}.yaml", manifest(f"u{index:02d}", [container("c", "1Gi")]))
    assert len(scan(source)) == 20
    assert sorted(p.locator for p in source.read()) == sorted(
        str(directory / f"p{index:02d}.yaml") for index in range(20)
    )
    opened: list[object] = []
    real_read_head = manifests_module._read_head

    def counting(path: str, limit: int, size: int) -> bytes:
        opened.append(path)
        return real_read_head(path, limit, size)

    monkeypatch.setattr(manifests_module, "_read_head", counting)
    lock = _CountingLock()
    source._hint_lock = lock  # type: ignore[assignment]
    assert scan(source) == []  # no hint: a full rescan
    assert opened == [] and lock.taken == 1
    write(directory, "p07.yaml", manifest("u07", [container("c", "2Gi")]))  # changed in place
    assert scan(source) == [("admit", "u07")]  # another spec: the reducer replaces the pod
    assert opened == [str(directory / "p07.yaml")]


def test_a_hinted_scan_reads_only_the_hinted_names(tmp_path: Path) -> None:
    """Between full rescans a scan looks at the names the watch reported and nothing else; a
    scan without hints, a hint of None and the full-rescan period each bring a full rescan."""
    now = [0.0]
    source = ManifestDirectory(tmp_path, full_rescan_seconds=30.0, clock=lambda: now[0])
    write(tmp_path, "a.yaml", manifest("ua", [container("c", "1Gi")]))
    assert scan(source) == [("admit", "ua")]  # the first scan is full
    write(tmp_path, "b.yaml", manifest("ub", [container("c", "1Gi")]))
    write(tmp_path, "c.yaml", manifest("uc", [container("c", "1Gi")]))
    source.hint({"b.yaml"})
    assert scan(source) == [("admit", "ub")]  # c.yaml was not reported: not looked at
    (tmp_path / "a.yaml").unlink()
    source.hint({"a.yaml", "notes.txt"})
    assert scan(source) == [("remove", "ua")]
    assert scan(source) == [("admit", "uc")]  # no hint: a full rescan
    write(tmp_path, "d.yaml", manifest("ud", [container("c", "1Gi")]))
    source.hint(None)  # changes may have been missed
    source.hint({"e.yaml"})
    assert scan(source) == [("admit", "ud")]
    write(tmp_path, "e.yaml", manifest("ue", [container("c", "1Gi")]))
    write(tmp_path, "f.yaml", manifest("uf", [container("c", "1Gi")]))
    now[0] = 29.0
    source.hint({"e.yaml"})
    assert scan(source) == [("admit", "ue")]
    now[0] = 61.0  # the full rescan is due even though hints keep coming
    source.hint({"e.yaml"})
    assert scan(source) == [("admit", "uf")]


def observations(pods: list[Any]) -> dict[str, tuple[str, str]]:
    return {pod.locator: (pod.uid, pod.error) for pod in pods}


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
@pytest.mark.parametrize("seed", range(6))
def test_hinted_reads_see_what_a_full_read_sees(tmp_path: Path, seed: int, inline: bool) -> None:
    """Random changes — manifests written, rewritten, made invalid, deleted, replaced by a
    directory, a FIFO or a symlink (dangling or not), files with other names — each reported
    by its name: the hinted read's observations (and their order) are what the directory's own
    account and a fresh full read say, and its account names every file whose observation
    changed since the previous read. `inline`: each read is first tried as the event loop's
    (`read_changes_inline`; some manifests are larger than it takes, some hints name more
    files than it takes), then, if it declines, as the worker thread's."""
    rng = random.Random(seed)
    names = [f"m{index}.yaml" for index in range(8)] + ["notes.txt", ".hidden.yaml"]
    # Symlink targets outside the directory, never changed (a change of a target is not
    # reported under the link's name: the periodic full rescan sees it).
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside, "pod.yaml", manifest("u-linked", [container("c", "1Gi")]))
    targets = [outside / "pod.yaml", outside, outside / "missing.yaml"]
    tmp_path = tmp_path / "manifests"
    tmp_path.mkdir()
    # A clock that stands still during a read: no read counts as slow, however loaded the
    # machine is.
    clock = [0.0]
    source = ManifestDirectory(tmp_path, full_rescan_seconds=1e9, clock=lambda: clock[0])
    previous = observations(source.read())
    hinted = 0
    inline_reads = 0
    for step in range(50):
        touched = rng.sample(names, rng.choice([1, 1, 2, 3]))
        for name in touched:
            path = tmp_path / name
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.exists() or path.is_symlink():
                path.unlink()
            roll = rng.random()
            if roll < 0.5:
                uid = f"u{rng.randrange(12)}"
                write(tmp_path, name, manifest(uid, [container("c", rng.choice(["1Gi", "2Gi"]))]))
                if inline and rng.random() < 0.2:  # larger than an inline read takes
                    with path.open("a") as handle:
                        handle.write("# " + "x" * INLINE_BYTES + "\n")
            elif roll < 0.6:
                path.write_text("kind: Pod\nspec: [\n")
            elif roll < 0.67:
                path.mkdir()
            elif roll < 0.74:
                os.mkfifo(path)
            elif roll < 0.85:
                path.symlink_to(rng.choice(targets))
            # else: deleted
        source.hint(touched)
        # A file made invalid is reported once it stayed so (the module docstring's "In-place
        # writes"): then the read the manifest loop makes when it is due (the directory hinted
        # it again), between reads, so no read counts as slow.
        for settle in range(2):
            read = source.read_changes_inline() if inline else None
            if read is None:
                pods, changes = source.read_changes()
            else:
                pods, changes = read
                inline_reads += 1
            now = observations(pods)
            if changes is not None:
                hinted += 1
                differ = {k for k in now.keys() | previous.keys() if now.get(k) != previous.get(k)}
                assert differ <= changes.keys()
                assert [pod.locator for pod in pods] == [
                    *(k for k in previous if k in now),
                    *(k for k in changes if k in now and k not in previous),
                ]
            previous = now
            due = source.unsettled_due_in()
            if due is None:
                break
            assert settle == 0, step
            clock[0] += due
        fresh = ManifestDirectory(tmp_path, order="sorted").read()
        assert now == observations(fresh), step
        assert sorted(now) == sorted(map(str, manifest_files(tmp_path)))  # the regular files
    assert hinted > 40
    assert inline_reads > 20 if inline else inline_reads == 0


def test_an_inline_read_declines_what_is_not_small_and_consumes_nothing(tmp_path: Path) -> None:
    """More hinted names than it takes, a file over its size, a full rescan due, a slow inline
    read (then every inline read for the pause): `read_changes_inline` reads nothing and the
    hints stay for `read_changes`, which sees every change."""
    now = [0.0]
    source = ManifestDirectory(tmp_path, full_rescan_seconds=1e9, clock=lambda: now[0])
    assert source.read_changes_inline() is None  # the first read is a full one
    assert source.read() == []
    names = [f"m{index}.yaml" for index in range(INLINE_FILES + 1)]
    for index, name in enumerate(names):
        write(tmp_path, name, manifest(f"u{index}", [container("c", "1Gi")]))
    source.hint(names)
    assert source.read_changes_inline() is None  # one name too many
    pods, changes = source.read_changes()
    assert changes is not None and sorted(changes) == sorted(str(tmp_path / n) for n in names)
    assert len(pods) == len(names)

    big = write(tmp_path, "big.yaml", manifest("u-big", [container("c", "1Gi")]))
    with big.open("a") as handle:
        handle.write("# " + "x" * INLINE_BYTES + "\n")
    write(tmp_path, "small.yaml", manifest("u-small", [container("c", "1Gi")]))
    source.hint(["big.yaml", "small.yaml"])
    assert source.read_changes_inline() is None  # big.yaml is over the limit
    pods, changes = source.read_changes()
    assert changes is not None and set(changes) == {str(big), str(tmp_path / "small.yaml")}
    assert {pod.uid for pod in pods} >= {"u-big", "u-small"}

    # A slow inline read (the clock moves while it reads): done, then the loop leaves the
    # reads to the thread for the pause.
    write(tmp_path, "slow.yaml", manifest("u-slow", [container("c", "1Gi")]))
    source.hint(["slow.yaml"])
    real_take = source._take

    def slow_take(*args: Any) -> Any:
        now[0] += INLINE_SLOW_SECONDS * 2
        return real_take(*args)

    source._take = slow_take  # type: ignore[method-assign]
    read = source.read_changes_inline()
    assert read is not None and "u-slow" in {pod.uid for pod in read[0]}
    source._take = real_take  # type: ignore[method-assign]
    write(tmp_path, "later.yaml", manifest("u-later", [container("c", "1Gi")]))
    source.hint(["later.yaml"])
    now[0] += INLINE_PAUSE_SECONDS / 2
    assert source.read_changes_inline() is None  # paused
    now[0] += INLINE_PAUSE_SECONDS
    read = source.read_changes_inline()  # the pause is over; the hint is still there
    assert read is not None and read[1] is not None
    assert list(read[1]) == [str(tmp_path / "later.yaml")]

    now[0] += 2e9  # a full rescan is due: the thread's
    source.hint(["later.yaml"])
    assert source.read_changes_inline() is None
    assert source.read_changes()[1] is None
