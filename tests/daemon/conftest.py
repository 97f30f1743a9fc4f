"""Fixtures for the daemon tests: every daemon a test starts is reaped, even when it fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import Node


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(**kwargs: Any) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.alive():
            node.kill()
