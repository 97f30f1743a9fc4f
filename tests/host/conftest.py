"""Fixtures for the real-kernel tests of tests/host: a writable cgroup2 mount and its facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.host import differential


@pytest.fixture(scope="session")
def cgroup2_mount() -> Path:
    """A writable cgroup2 mount ($MEMSTATE_TEST_CGROUP2 or the first usable one), else skip."""
    mount, reason = differential.find_cgroup2_mount()
    if mount is None:
        pytest.skip(f"no writable cgroup2 mount: {reason}")
    return mount


@pytest.fixture(scope="session")
def host_facts(cgroup2_mount: Path) -> differential.HostFacts:
    """Controllers enabled at the mount root (see differential.prepare_mount), then the facts."""
    differential.prepare_mount(cgroup2_mount)
    return differential.probe_facts(cgroup2_mount)
