"""Fixtures for the pod source tests: certificates, credentials and an event recorder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio

from memstate.core.events import (
    Event,
    ManifestInvalid,
    PodAdmissionRequested,
    PodInitCompleted,
    PodRemovalRequested,
)
from tests.sources.standins import Certificates

TOKEN = "s3cr3t-token"


@pytest.fixture(scope="session")
def certificates() -> Certificates:
    return Certificates()


@pytest.fixture
def ca_file(certificates: Certificates, tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    certificates.ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


class Recorder:
    """Plays the daemon's writer: keeps every submitted event, can be told to fail."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail_with: Exception | None = None

    async def submit(self, events: Sequence[Event]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.events.extend(events)

    def summary(self) -> list[tuple[str, str]]:
        out = []
        for event in self.events:
            if isinstance(event, PodAdmissionRequested):
                out.append(("admit", event.pod.uid))
            elif isinstance(event, PodRemovalRequested):
                out.append(("remove", event.uid))
            elif isinstance(event, PodInitCompleted):
                out.append(("init", event.uid))
            elif isinstance(event, ManifestInvalid):
                out.append(("invalid", event.source))
        return out


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait until `condition()` holds (generous timeout: the machine may be loaded)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")
