"""Shared pytest configuration for the memstate test suite.

Parallel runs: `make test` runs pytest under pytest-xdist (`-n 2 --dist loadgroup`, see
docs/testing.md "Suite time"). Every test is its own unit of work, except the tests that share
something costly built once per process, which go to ONE worker as a group (an `xdist_group`
mark, added here at collection):

* the tests that read the session's VM boot (`vm_batch`, or any other boot through `cgroup_vm`)
  form the group "vm". It is by far the largest group, and xdist hands out the largest units
  first, so one worker starts the boot as soon as collection ends and waits on QEMU while the
  other worker runs the rest; the boot is never made twice.
* the tests of the Go runtime peer (`go_peer_binary`, a `go build` from a cold cache) form the
  group "nri-go", so the peer is built once.
* the tests of one module that share a module- or class-scoped fixture (a recorded log, a demo
  node, the fuzzer's 2,000 inputs) form a group per module, so the fixture is built once.

Without xdist (a plain `pytest ...`) the marks are inert. The VM conftest's summary lines are
made on the worker that ran the VM tests and printed here, by the controller
(`pytest_testnodedown` below).
"""

from __future__ import annotations

from typing import Any

import pytest

# Fixture -> the group of every test that uses it (directly or through another fixture).
SHARED_FIXTURE_GROUPS = {
    "vm_batch": "vm",
    "cgroup_vm": "vm",
    "cgvm_assets": "vm",
    "go_peer_binary": "nri-go",
}
PER_MODULE_SCOPES = frozenset({"module", "class", "package"})
# Key of the summary lines a worker hands back in `workeroutput` (tests/vm/conftest.py).
WORKER_SUMMARY_KEY = "memstate_summary_lines"


def xdist_group_of(item: pytest.Item) -> str | None:
    """The group `item` must run in (one worker for all its members), or None for any worker."""
    names = getattr(item, "fixturenames", ())
    for fixture, group in SHARED_FIXTURE_GROUPS.items():
        if fixture in names:
            return group
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs if info is not None else {}
    for name in names:
        if any(d.scope in PER_MODULE_SCOPES for d in definitions.get(name, ())):
            return "module:" + item.nodeid.split("::", 1)[0]
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist appends the group to each node id
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = xdist_group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


_WORKER_SUMMARIES: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    output = getattr(node, "workeroutput", None) or {}
    _WORKER_SUMMARIES.extend(output.get(WORKER_SUMMARY_KEY, ()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _WORKER_SUMMARIES:
        terminalreporter.write_line(line)
