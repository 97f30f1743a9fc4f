"""The manifest directory as a pod source.

Goal: every kind of change in the directory becomes exactly the documented input events, a scan
of an unchanged directory produces nothing, and a scan whose events were not accepted is repeated.
Method: real files in a temporary directory, `ManifestDirectory.scan()` and `accept()`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memstate.core.events import ManifestInvalid, PodAdmissionRequested, PodRemovalRequested
from memstate.node.manifests import ManifestDirectory
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
    source = ManifestDirectory(tmp_path, order="sorted")
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
    write(tmp_path, "negative.yaml", bad)  # broken again: the pod goes away
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
