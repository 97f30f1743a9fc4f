"""A manifest rewritten in place must not lose its running pod to a read of the torn file.

Goal: a writer that rewrites a manifest in place (`cat > pod.yaml`, `kubectl get -o yaml >
pod.yaml`, an editor) truncates it, then writes it; a read already due (the hint of an earlier
write, a full rescan) can read it empty or half-written. Such a read changes nothing: only a file
that stays invalid for `INVALID_QUIET_SECONDS` is reported (`manifest_invalid`, its pod removed),
once, without any further event (memstate.node.manifests, "In-place writes").
Method: real files, the real `ManifestDirectory` and its `PodTracker`, a fake clock; the torn
file is written as the writer leaves it between its truncation and its last write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from memstate.core.events import (
    Envelope,
    ManifestInvalid,
    PodRemoved,
)
from memstate.node.manifests import INVALID_QUIET_SECONDS, ManifestDirectory
from tests.daemon.harness import Node, pod_manifest
from tests.daemon.test_e2e import admitted
from tests.daemon.test_manifests import kinds
from tests.factories import container, manifest

POD = yaml.safe_dump(manifest("u-run", [container("c", "1Gi")]))
RESIZED = yaml.safe_dump(manifest("u-run", [container("c", "2Gi")]))
# What a reader can find while the writer is at work: nothing yet, or a part, here cut inside a
# quoted scalar. (A part cut at a line end can be a valid pod with a smaller spec: that read
# admits it, as any valid write would; docs/operations.md says to write atomically.)
TORN = {"empty": "", "half": POD[: POD.index("cpu: '1'") + len("cpu: '")]}


class Directory:
    """The manifest directory with a fake clock; `scan` commits what it finds, as the daemon
    does, and takes the watch's hints (None: no hint, so a full rescan)."""

    def __init__(self, path: Path) -> None:
        self.now = 0.0
        self.source = ManifestDirectory(path, full_rescan_seconds=1e9, clock=lambda: self.now)

    def scan(self, *hint: str) -> list[tuple[str, str]]:
        if hint:
            self.source.hint(hint)
        events = self.source.scan()
        self.source.accept()
        return kinds(events)


@pytest.fixture
def running(tmp_path: Path) -> tuple[Directory, Path]:
    """A directory whose pod.yaml runs (admitted by the first, full, read)."""
    path = tmp_path / "pod.yaml"
    path.write_text(POD)
    directory = Directory(tmp_path)
    assert directory.scan() == [("admit", "u-run")]
    return directory, path


@pytest.mark.parametrize("torn", sorted(TORN))
@pytest.mark.parametrize("read", ["hinted", "full"])
def test_a_torn_read_does_not_remove_the_running_pod(
    running: tuple[Directory, Path], torn: str, read: str
) -> None:
    # Fails on the code before this rule: [("remove", "u-run"), ("invalid", "pod.yaml")], and
    # the writer's close then admits the pod again.
    directory, path = running
    path.write_text(TORN[torn])  # truncated (and maybe partly written); not closed yet
    assert directory.scan(*(["pod.yaml"] if read == "hinted" else [])) == []
    directory.now += INVALID_QUIET_SECONDS / 5
    path.write_text(POD)  # the writer finishes; its close is the watch's hint
    assert directory.scan("pod.yaml") == []
    directory.now += 10 * INVALID_QUIET_SECONDS
    assert directory.scan() == []
    assert directory.source.unsettled_due_in() is None


def test_a_torn_read_then_a_changed_spec_replaces_the_pod_once(
    running: tuple[Directory, Path],
) -> None:
    directory, path = running
    path.write_text(RESIZED[: RESIZED.index("cpu: '1'") + len("cpu: '")])
    assert directory.scan("pod.yaml") == []
    path.write_text(RESIZED)
    assert directory.scan("pod.yaml") == [("admit", "u-run")]  # no removal, one new request
    directory.now += 10 * INVALID_QUIET_SECONDS
    assert directory.scan() == []


@pytest.mark.parametrize("read", ["hinted", "full"])
def test_a_file_that_stays_invalid_is_reported_once_after_the_quiet_period(
    running: tuple[Directory, Path], read: str
) -> None:
    directory, path = running
    path.write_text(TORN["half"])  # the writer died half-way: it stays so
    hint = ["pod.yaml"] if read == "hinted" else []
    assert directory.scan(*hint) == []
    assert directory.source.unsettled_due_in() == INVALID_QUIET_SECONDS
    directory.now += INVALID_QUIET_SECONDS / 2
    # Read again without any event (the directory hinted it again itself), not yet due.
    assert directory.scan() == []
    assert directory.source.unsettled_due_in() == INVALID_QUIET_SECONDS / 2
    directory.now += INVALID_QUIET_SECONDS / 2
    assert directory.scan() == [("remove", "u-run"), ("invalid", "pod.yaml")]
    assert directory.source.unsettled_due_in() is None
    directory.now += 10 * INVALID_QUIET_SECONDS
    assert directory.scan() == []
    assert directory.scan("pod.yaml") == []
    path.write_text(POD)
    assert directory.scan("pod.yaml") == [("admit", "u-run")]


def test_the_quiet_period_restarts_when_the_file_changes(running: tuple[Directory, Path]) -> None:
    directory, path = running
    path.write_text(POD[:10])
    assert directory.scan("pod.yaml") == []
    directory.now += INVALID_QUIET_SECONDS * 0.8
    path.write_text(POD[:20])  # still being written, slowly
    assert directory.scan("pod.yaml") == []
    directory.now += INVALID_QUIET_SECONDS * 0.8
    assert directory.scan() == []  # 0.8 of the period since the last change
    directory.now += INVALID_QUIET_SECONDS * 0.2
    assert directory.scan() == [("remove", "u-run"), ("invalid", "pod.yaml")]


def test_a_new_invalid_file_is_reported_after_the_quiet_period(
    running: tuple[Directory, Path],
) -> None:
    directory, path = running
    new = path.with_name("new.yaml")
    new.write_text("metadata: {name: x\n")
    assert directory.scan("new.yaml") == []
    assert [pod.locator for pod in directory.source.read()] == [str(path)]  # not seen yet
    directory.now += INVALID_QUIET_SECONDS
    assert directory.scan() == [("invalid", "new.yaml")]
    assert directory.scan() == []
    # A new file deleted before its quiet period ended is forgotten.
    gone = path.with_name("gone.yaml")
    gone.write_text("")
    assert directory.scan("gone.yaml") == []
    gone.unlink()
    assert directory.scan("gone.yaml") == []
    assert directory.source.unsettled_due_in() is None


def test_the_first_read_reports_an_invalid_file_at_once(tmp_path: Path) -> None:
    # Start-up: no earlier observation to keep (memstate.node.manifests, "In-place writes").
    (tmp_path / "pod.yaml").write_text(TORN["half"])
    directory = Directory(tmp_path)
    assert directory.scan() == [("invalid", "pod.yaml")]
    assert directory.source.unsettled_due_in() is None


@pytest.mark.slow
def test_the_daemon_reports_a_file_that_stays_invalid_without_another_event(
    make_node: Any,
) -> None:
    """The real daemon, its watch and manifest loop: a manifest rewritten in place by a writer
    that stops half-way is reported (and its pod removed) once, with no event after the
    writer's close and the periodic rescan an hour away: the loop wakes for it by itself."""
    node: Node = make_node(extra_settings={"rescanSeconds": 3600})
    node.start()
    path = node.drop("run.yaml", pod_manifest("u-run", "1Gi"))
    node.wait_for(admitted("u-run"))
    text = path.read_text()
    path.write_text(text[: text.index("image:") + len("ima")])  # in place, cut inside a key

    def reported(records: list[Envelope]) -> bool:
        return any(isinstance(r.event, ManifestInvalid) for r in records) and any(
            isinstance(r.event, PodRemoved) and r.event.uid == "u-run" for r in records
        )

    node.wait_for(reported, timeout=120.0)  # a hang guard
    # Another pod makes the daemon read the directory again: the torn file stays reported once.
    node.drop("other.yaml", pod_manifest("u-other", "1Gi"))
    records = node.wait_for(admitted("u-other"), timeout=120.0)
    invalid = [r.event for r in records if isinstance(r.event, ManifestInvalid)]
    assert [Path(event.source).name for event in invalid] == ["run.yaml"]
    assert "$.spec.containers[0]" in invalid[0].error, invalid[0].error
    assert node.terminate() == 0
