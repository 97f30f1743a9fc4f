"""Shared pytest configuration for the memstate test suite.

Parallel runs: `make test` runs pytest under pytest-xdist (`-n 2 --dist loadgroup`, see
docs/testing.md "Suite time"). Every test is its own unit of work, except the tests that share
something costly built once per process, which go to ONE worker as a group (an `xdist_group`
mark, added here at collection):

* the tests that read the session's VM boot (`vm_batch`, or any other boot through `cgroup_vm`)
  form the group "vm". It is by far the largest group, and the scheduler hands out the largest
  units first, so one worker starts the boot as soon as collection ends and waits on QEMU while
  the other worker runs the rest; the boot is never made twice.
* the tests of the Go runtime peer (`go_peer_binary`, a `go build` from a cold cache) form the
  group "nri-go", so the peer is built once.
* the tests of one module that share a module- or class-scoped fixture (a recorded log, a demo
  node, the fuzzer's 2,000 inputs) form a group per module, so the fixture is built once.

How the groups reach the scheduler: pytest-xdist 3.8's own loadgroup appends "@group" to each
node id on the worker, which pytest 9.2 no longer lets a plugin do (node ids became structured:
the groups are silently lost, pytest-xdist issue #1386). So here each worker writes its
node id -> group table into a directory the controller made (`pytest_configure_node`), and
`--dist loadgroup` gets a scheduler that reads the table (`GroupTableScheduling`). A test
missing from the table is its own unit: nothing is ever lost, at worst not grouped.

Without xdist (a plain `pytest ...`) the marks are inert. The VM conftest's summary lines are
made on the worker that ran the VM tests and printed here, by the controller
(`pytest_testnodedown` below).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
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
# Key, in each worker's `workerinput`, of the directory of the node id -> group tables.
GROUP_TABLES_KEY = "memstate_group_tables"
# Variables a worker must see as the controller does. By the time a pytest-xdist worker is
# configured it has imported `readline`, and GNU readline exports the terminal size as COLUMNS
# and LINES (80x24 without a terminal): the CLI then cut its tables to 80 columns, in process
# and in every subprocess started with the worker's environment (4 tests failed so).
CONTROLLER_ENVIRONMENT = ("COLUMNS", "LINES")
ENVIRONMENT_KEY = "memstate_controller_environment"


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


def marked_group(item: pytest.Item) -> str | None:
    """The group of `item`'s `xdist_group` marks (several are joined, as pytest-xdist does)."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) if names else None


# --- the group tables: written by each worker, read by the controller's scheduler --------------

_GROUP_TABLES: list[Path] = []  # the controller's directory, made at the first worker


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    if not _GROUP_TABLES:
        _GROUP_TABLES.append(Path(tempfile.mkdtemp(prefix="memstate-xdist-groups-")))
    node.workerinput[GROUP_TABLES_KEY] = str(_GROUP_TABLES[0])
    node.workerinput[ENVIRONMENT_KEY] = {
        name: os.environ.get(name) for name in CONTROLLER_ENVIRONMENT
    }


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    for name, value in (workerinput or {}).get(ENVIRONMENT_KEY, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist sends the collection to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is None or GROUP_TABLES_KEY not in workerinput:
        return
    table = {item.nodeid: group for item in session.items if (group := marked_group(item))}
    directory = Path(workerinput[GROUP_TABLES_KEY])
    partial = directory / f".{workerinput['workerid']}.json"
    partial.write_text(json.dumps(table))
    os.replace(partial, directory / f"{workerinput['workerid']}.json")  # whole or absent


def read_group_tables(directory: Path) -> dict[str, str]:
    """Every worker's node id -> group table, merged (the workers collect the same tests)."""
    merged: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        merged.update(json.loads(path.read_text()))
    return merged


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup" or not _GROUP_TABLES:
        return None
    from xdist.scheduler import LoadScopeScheduling

    directory = _GROUP_TABLES[0]

    class GroupTableScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """pytest-xdist's loadscope with the workers' group tables as the scopes: a grouped test
        goes with its group, any other test is a unit of its own. Units are handed out largest
        first (pytest-xdist's --loadscope-reorder, on by default): the group "vm" first."""

        table: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.table is None:  # first asked once every worker has sent its collection
                self.table = read_group_tables(directory)
            return self.table.get(nodeid, nodeid)

    return GroupTableScheduling(config, log)


def pytest_unconfigure() -> None:
    for directory in _GROUP_TABLES:
        shutil.rmtree(directory, ignore_errors=True)


# --- summaries from the workers -----------------------------------------------------------------

_WORKER_SUMMARIES: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    output = getattr(node, "workeroutput", None) or {}
    _WORKER_SUMMARIES.extend(output.get(WORKER_SUMMARY_KEY, ()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _WORKER_SUMMARIES:
        terminalreporter.write_line(line)
