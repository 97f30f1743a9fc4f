"""Fixtures shared by the NRI tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import Node
from tests.nri.daemon_node import daemon_node
from tests.nri.gopeer_runtime import build_go_peer


@pytest.fixture(scope="session")
def go_peer_binary() -> Iterator[Path]:
    """The Go runtime peer, built once per session (skips without the Debian Go packages)."""
    directory = Path(tempfile.mkdtemp(prefix="nri-go-"))
    try:
        yield build_go_peer(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for the runtime's socket (a unix socket path must fit in 108 bytes:
    pytest's tmp_path may not)."""
    path = Path(tempfile.mkdtemp(prefix="nri", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path, socket_dir: Path) -> Iterator[Node]:
    """A node with `nri:` on `socket_dir`/nri.sock, its pods in the manifest directory; the
    daemon is killed at the end whatever happened."""
    made = daemon_node(tmp_path / "node", socket_dir / "nri.sock")
    yield made
    if made.alive():
        made.kill()
