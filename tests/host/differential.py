"""Differential test: the same operation sequences against SimCgroupFS and a real cgroup2 mount.

Theory of operation
-------------------
SimCgroupFS is only worth testing against if it behaves like the kernel. This module states that
as data: a list of scenarios, each a sequence of steps (mkdir, write, read, spawn a process into a
cgroup, cgroup.kill, ...). Each scenario runs twice — once against a fresh private cgroup under a
real cgroup2 mount (``memstate-test-<pid>-<n>``), once against a SimCgroupFS configured like
that cgroup — and every step's outcome is rendered as text (``ok``, ``ok '999424\\n'``,
``EBUSY``, ``exit -9``). The scenario passes when both lists are equal. Pids are replaced by the
names the scenario gave its processes, so real and simulated pids compare.

Scenarios are built from `HostFacts` (page size, hugepage sizes, cpus, nodes, the controllers the
mount offers), so the same module runs on the development host (cgroup2 with only hugetlb) and in
the QEMU VM (memory, cpuset, hugetlb). A scenario needing what the mount lacks is skipped with a
reason such as ``cgroup2 at /sys/fs/cgroup/unified has no memory controller``.

Preparation. Child cgroups only get a controller's files if the mount's root enables it, so
`prepare_mount` writes ``+<controller>`` into the mount root's cgroup.subtree_control for the
controllers the tests use (memory, cpuset, hugetlb, pids) that are available but not yet
enabled. It does not disable them afterwards: another test run may be using them at the same
time, and an enabled controller with no child cgroups changes nothing for the processes in the
root. The JSON report lists what was enabled.

The "mount" may also be a non-root cgroup directory (the VM suite uses
``/sys/fs/cgroup/memstate-differential``): then the test cgroups are created below it, it gets the
controllers enabled instead of the real root, and ``root_files`` is skipped.

Verified on 2026-11-23: every scenario matched Linux 6.1.0-50 in the QEMU VM (2 NUMA nodes,
memory/cpuset/hugetlb/pids, both at the root and below a non-root directory), and the scenarios
the development host allows matched 6.18.44 there. Planted bugs were reported as mismatches on
both.

Safety. Everything is created under the private test cgroup and removed at the end (processes
killed with cgroup.kill, cgroups removed bottom-up). Test processes are ``sleep 300`` so that
even a crashed run leaves nothing running for long.

Run as a script (stdlib + memstate only, for use inside a VM)::

    python -m tests.host.differential /sys/fs/cgroup [--scenario NAME] [--plant BUG]

prints one JSON document and exits 0 when every scenario that ran matched, 1 otherwise, 2 when
no usable mount was found. MEMSTATE_TEST_CGROUP2=<path> selects the mount for the pytest wrapper.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memstate.core.cgroup_values import (
    CONTROLLER_ORDER,
    THREADED_CONTROLLERS,
    format_bitmap_list,
    hugetlb_size_name,
    parse_bitmap_list,
    parse_controller_list,
    parse_flat_keyed,
)
from memstate.core.errors import HostError
from memstate.host.cgroupfs import CgroupFS, RealCgroupFS, parse_cgroup2_mounts, walk
from memstate.host.sim.cgroupsim import PlantedBug, SimCgroupFS, kernel_profile_for_release
from tests.host import kernel_tables as kt

ENV_MOUNT = "MEMSTATE_TEST_CGROUP2"
WANTED_CONTROLLERS = ("cpuset", "memory", "hugetlb", "pids")
DOMAIN_CONTROLLERS = tuple(name for name in CONTROLLER_ORDER if name not in THREADED_CONTROLLERS)
_POLL_INTERVAL_SECONDS = 0.01
_POLL_ATTEMPTS = 500  # bounded waits: at most ~5 s for an exit to show in cgroup.events
_PROCESS_SECONDS = "300"
_base_counter = itertools.count()


# --- scenarios as data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One operation. `proc` names a test process; `keys` selects lines of key/value files."""

    op: str
    path: str = ""
    file: str = ""
    value: str = ""
    proc: str = ""
    keys: tuple[str, ...] = ()

    def describe(self) -> str:
        """A short human-readable form for reports."""
        where = "/".join(part for part in (self.path or "<base>", self.file) if part)
        extra = f" {self.value!r}" if self.op == "write" else ""
        proc = f" [{self.proc}]" if self.proc else ""
        keys = f" {list(self.keys)}" if self.keys else ""
        return f"{self.op} {where}{extra}{proc}{keys}"


def mkdir(path: str) -> Step:
    return Step("mkdir", path)


def rmdir(path: str) -> Step:
    return Step("rmdir", path)


def exists(path: str) -> Step:
    return Step("exists", path)


def children(path: str) -> Step:
    return Step("children", path)


def read(path: str, file: str) -> Step:
    return Step("read", path, file)


def read_keys(path: str, file: str, *keys: str) -> Step:
    return Step("read_keys", path, file, keys=keys)


def write(path: str, file: str, value: str) -> Step:
    return Step("write", path, file, value)


def spawn(proc: str, path: str) -> Step:
    """Start a process outside the test tree, then write its pid to <path>/cgroup.procs."""
    return Step("spawn", path, proc=proc)


def move(proc: str, path: str) -> Step:
    return Step("move", path, proc=proc)


def terminate(proc: str) -> Step:
    """SIGTERM the process (not through cgroups)."""
    return Step("terminate", proc=proc)


def wait_exit(proc: str) -> Step:
    return Step("wait_exit", proc=proc)


def wait_populated(path: str, value: int) -> Step:
    """Poll cgroup.events (bounded) until populated == value; outcome is the last value seen."""
    return Step("wait_populated", path, value=str(value))


@dataclass(frozen=True)
class Scenario:
    """Steps run against a fresh private cgroup (or read-only at the mount root if `on_root`)."""

    name: str
    steps: tuple[Step, ...]
    on_root: bool = False


@dataclass(frozen=True)
class HostFacts:
    """What the environment is, as opposed to how the kernel behaves (which is under test)."""

    mount: str
    kernel_release: str
    page_size_bytes: int
    hugepage_sizes_bytes: tuple[int, ...]
    online_cpus: str
    possible_cpus: str
    online_nodes: str
    possible_nodes: str
    known_controllers: tuple[str, ...]
    mount_controllers: tuple[str, ...]  # the mount root's cgroup.controllers
    base_controllers: tuple[str, ...]  # the mount root's cgroup.subtree_control
    mount_is_root: bool

    @property
    def cpus(self) -> list[int]:
        return sorted(parse_bitmap_list(self.online_cpus, nbits=1 << 16))

    @property
    def nodes(self) -> list[int]:
        return sorted(parse_bitmap_list(self.online_nodes, nbits=1 << 16))

    @property
    def nr_cpu_ids(self) -> int:
        return max(parse_bitmap_list(self.possible_cpus, nbits=1 << 16)) + 1

    def lacks(self, controller: str) -> str | None:
        """A skip reason if the test cgroup cannot get `controller`, else None."""
        if controller in self.base_controllers:
            return None
        return f"cgroup2 at {self.mount} has no {controller} controller"


# The shape of the VM the real-kernel suite boots (every controller, two NUMA nodes), for tests
# that must know the scenarios without such a machine at hand.
VM_SHAPED_FACTS = HostFacts(
    mount="/sys/fs/cgroup",
    kernel_release="6.1.0",
    page_size_bytes=4096,
    hugepage_sizes_bytes=(2 << 20, 1 << 30),
    online_cpus="0-1",
    possible_cpus="0-1",
    online_nodes="0-1",
    possible_nodes="0-1",
    known_controllers=("cpuset", "cpu", "io", "memory", "perf_event", "hugetlb", "pids"),
    mount_controllers=("cpuset", "cpu", "io", "memory", "hugetlb", "pids"),
    base_controllers=("cpuset", "memory", "hugetlb", "pids"),
    mount_is_root=True,
)

Builder = Callable[[HostFacts], Scenario | str]
BUILDERS: dict[str, Builder] = {}


def scenario(builder: Builder) -> Builder:
    """Register a scenario builder under its function name (minus the ``scenario_`` prefix)."""
    BUILDERS[builder.__name__.removeprefix("scenario_")] = builder
    return builder


# --- the scenarios -------------------------------------------------------------------------------


@scenario
def scenario_lifecycle(facts: HostFacts) -> Scenario:
    """mkdir/rmdir errnos: EEXIST, ENOENT, EBUSY with a child, ENOTDIR on files."""
    return Scenario(
        "lifecycle",
        (
            read("", "cgroup.controllers"),
            mkdir("a"),
            mkdir("a"),
            mkdir("cgroup.procs"),
            mkdir("x/y"),
            mkdir("a/cgroup.procs/y"),
            exists("a"),
            exists("a/cgroup.procs"),
            mkdir("a/b"),
            mkdir("a/c"),
            children("a"),
            children(""),
            rmdir("a"),
            rmdir("a/cgroup.procs"),
            rmdir("a/b"),
            rmdir("a/c"),
            rmdir("a"),
            rmdir("a"),
            exists("a"),
            read("a", "cgroup.events"),
            write("a", "cgroup.freeze", "1"),
            children(""),
        ),
    )


@scenario
def scenario_core_files(facts: HostFacts) -> Scenario:
    """Defaults of the core files and the measured write errnos (kernel_tables.CORE_WRITE_ROWS)."""
    steps: list[Step] = [mkdir("a")]
    for file in (
        "cgroup.type",
        "cgroup.events",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.controllers",
        "cgroup.freeze",
        "cgroup.max.depth",
        "cgroup.max.descendants",
        "cgroup.kill",
        "no.such_file",
    ):
        steps.append(read("a", file))
    steps.append(read_keys("a", "cgroup.stat", "nr_descendants", "nr_dying_descendants"))
    steps.append(read("", "cgroup.events"))
    steps.append(write("a", "no.such_file", "1"))
    for file, written, _errno_name in kt.CORE_WRITE_ROWS:
        steps.append(write("a", file, written))
        if file == "cgroup.stat":
            # Newer kernels add nr_subsys_* lines; compare the keys the simulator models.
            steps.append(read_keys("a", file, "nr_descendants", "nr_dying_descendants"))
        elif file not in ("cgroup.procs", "cgroup.kill"):
            steps.append(read("a", file))
    return Scenario("core_files", tuple(steps))


@scenario
def scenario_hierarchy_limits(facts: HostFacts) -> Scenario:
    """cgroup.max.depth / cgroup.max.descendants make mkdir fail with EAGAIN."""
    return Scenario(
        "hierarchy_limits",
        (
            mkdir("a"),
            write("a", "cgroup.max.depth", "0"),
            mkdir("a/b"),
            write("a", "cgroup.max.depth", "1"),
            mkdir("a/b"),
            mkdir("a/b/c"),
            write("a", "cgroup.max.depth", "max"),
            write("a", "cgroup.max.descendants", "2"),
            mkdir("a/b/c"),
            mkdir("a/d"),
            read_keys("a", "cgroup.stat", "nr_descendants"),
            read("a", "cgroup.max.descendants"),
        ),
    )


@scenario
def scenario_freeze(facts: HostFacts) -> Scenario:
    """cgroup.freeze on empty cgroups: frozen shows at once and is inherited by new children."""
    return Scenario(
        "freeze",
        (
            mkdir("a"),
            write("a", "cgroup.freeze", "1"),
            read("a", "cgroup.events"),
            mkdir("a/b"),
            read("a/b", "cgroup.events"),
            read("a/b", "cgroup.freeze"),
            write("a", "cgroup.freeze", "0"),
            read("a/b", "cgroup.events"),
        ),
    )


@scenario
def scenario_membership(facts: HostFacts) -> Scenario:
    """cgroup.procs moves, populated flips (recursive), ESRCH/EINVAL, EBUSY rmdir when populated."""
    return Scenario(
        "membership",
        (
            mkdir("a"),
            mkdir("a/leaf"),
            spawn("p", "a/leaf"),
            read("a/leaf", "cgroup.procs"),
            read("a/leaf", "cgroup.events"),
            read("a", "cgroup.events"),
            read("", "cgroup.events"),
            read("a", "cgroup.procs"),
            rmdir("a/leaf"),
            rmdir("a"),
            write("a", "cgroup.procs", "abc"),
            write("a", "cgroup.procs", "-1"),
            write("a", "cgroup.procs", "99999999"),
            move("p", "a"),
            read("a/leaf", "cgroup.events"),
            read("a", "cgroup.procs"),
            read("a", "cgroup.threads"),
            rmdir("a/leaf"),
            terminate("p"),
            wait_exit("p"),
            wait_populated("a", 0),
            read("a", "cgroup.procs"),
            move("p", "a"),
            rmdir("a"),
        ),
    )


@scenario
def scenario_kill(facts: HostFacts) -> Scenario:
    """cgroup.kill SIGKILLs the whole subtree; populated drops to 0."""
    return Scenario(
        "kill",
        (
            mkdir("a"),
            mkdir("a/b"),
            spawn("inner", "a/b"),
            spawn("outer", "a"),
            read("a", "cgroup.events"),
            write("a", "cgroup.kill", "1"),
            wait_exit("inner"),
            wait_exit("outer"),
            wait_populated("a", 0),
            read("a/b", "cgroup.procs"),
            write("a", "cgroup.kill", "1"),
            rmdir("a/b"),
            rmdir("a"),
        ),
    )


def _domain_controller(facts: HostFacts) -> str | None:
    for name in DOMAIN_CONTROLLERS:
        if name in facts.base_controllers:
            return name
    return None


@scenario
def scenario_subtree_control(facts: HostFacts) -> Scenario | str:
    """ENOENT/EINVAL/EBUSY of cgroup.subtree_control and the no-internal-process rule."""
    domain = _domain_controller(facts)
    if domain is None:
        names = ", ".join(DOMAIN_CONTROLLERS)
        return f"cgroup2 at {facts.mount} offers no domain controller ({names})"
    steps = [
        mkdir("a"),
        mkdir("a/b"),
        write("", "cgroup.subtree_control", "+no_such_controller"),
        write("", "cgroup.subtree_control", domain),
        write("a", "cgroup.subtree_control", f"+{domain}"),
        write("", "cgroup.subtree_control", f"+{domain}"),
        write("", "cgroup.subtree_control", f"+{domain}"),
        read("", "cgroup.subtree_control"),
        read("a", "cgroup.controllers"),
        spawn("p", "a"),
        write("a", "cgroup.subtree_control", f"+{domain}"),
        move("p", "a/b"),
        write("a", "cgroup.subtree_control", f"+{domain}"),
        read("a", "cgroup.subtree_control"),
        read("a/b", "cgroup.controllers"),
        move("p", "a"),
        spawn("q", "a"),
        write("", "cgroup.subtree_control", f"-{domain}"),
        write("a", "cgroup.subtree_control", f"-{domain}"),
        move("p", "a"),
        write("a", "cgroup.subtree_control", "\n"),
        read("a", "cgroup.subtree_control"),
    ]
    # A controller the kernel knows but the mount does not offer: ENOENT, all or nothing.
    missing = [
        name
        for name in facts.known_controllers
        if name not in facts.mount_controllers and name != "perf_event"
    ]
    if missing:
        steps += [
            write("", "cgroup.subtree_control", f"+{missing[0]}"),
            write("", "cgroup.subtree_control", f"-{domain} +{missing[0]}"),
            read("", "cgroup.subtree_control"),
        ]
    return Scenario("subtree_control", tuple(steps))


@scenario
def scenario_threaded_controllers(facts: HostFacts) -> Scenario | str:
    """Threaded-only controllers (cpuset, pids) next to processes: the thread-root rules."""
    threaded = [name for name in ("cpuset", "pids") if name in facts.base_controllers]
    if not threaded:
        return f"cgroup2 at {facts.mount} has no cpuset or pids controller"
    name = threaded[0]
    domain = _domain_controller(facts)
    steps = [
        write("", "cgroup.subtree_control", f"+{name}"),
        mkdir("a"),
        spawn("p", "a"),
        write("a", "cgroup.subtree_control", f"+{name}"),
        read("a", "cgroup.subtree_control"),
        read("a", "cgroup.type"),
        mkdir("a/b"),
        read("a/b", "cgroup.type"),
        spawn("q", "a"),
        move("p", "a/b"),
        write("a/b", "cgroup.subtree_control", f"+{name}"),
        write("a", "cgroup.subtree_control", f"-{name}"),
        read("a/b", "cgroup.type"),
        move("p", "a/b"),
        move("q", "a/b"),
        write("a", "cgroup.subtree_control", f"+{name}"),
        read("a", "cgroup.type"),
        move("q", "a"),
    ]
    if domain is not None:
        steps[3:3] = [write("", "cgroup.subtree_control", f"+{domain}")]
        steps += [write("a", "cgroup.subtree_control", f"-{name}"), move("q", "a")]
        steps += [write("a", "cgroup.subtree_control", f"+{name}")]
        steps += [write("a", "cgroup.subtree_control", f"+{domain}"), read("a", "cgroup.type")]
    return Scenario("threaded_controllers", tuple(steps))


@scenario
def scenario_hugetlb(facts: HostFacts) -> Scenario | str:
    """hugetlb.<size>.max for every huge page size: defaults, parsing, rounding, gating."""
    reason = facts.lacks("hugetlb")
    if reason:
        return reason
    if not facts.hugepage_sizes_bytes:
        return "no huge page sizes in /sys/kernel/mm/hugepages"
    steps = [write("", "cgroup.subtree_control", "+hugetlb"), mkdir("a")]
    for size in facts.hugepage_sizes_bytes:
        name = hugetlb_size_name(size)
        limit, reserved = f"hugetlb.{name}.max", f"hugetlb.{name}.rsvd.max"
        steps += [
            read("", limit),
            read("a", limit),
            read("a", reserved),
            read("a", f"hugetlb.{name}.current"),
            read("a", f"hugetlb.{name}.events"),
            write("a", f"hugetlb.{name}.current", "0"),
        ]
        for value in _hugetlb_inputs(size):
            steps += [write("a", limit, value), read("a", limit)]
        steps += [write("a", reserved, str(size + 1)), read("a", reserved)]
    first = hugetlb_size_name(facts.hugepage_sizes_bytes[0])
    steps += [
        write("", "cgroup.subtree_control", "-hugetlb"),
        read("a", f"hugetlb.{first}.max"),
        write("", "cgroup.subtree_control", "+hugetlb"),
        read("a", f"hugetlb.{first}.max"),
    ]
    return Scenario("hugetlb", tuple(steps))


def _hugetlb_inputs(size: int) -> list[str]:
    """Values around the huge page size plus the fixed table rows."""
    inputs = [
        str(2 * size),
        str(size - 1),
        str(size + size // 2),
        hex(size),
        f" {size}\n",
        oct(2 * size).replace("0o", "0"),  # octal: decimal reading would round differently
    ]
    if size >= 1 << 20:
        inputs.append(f"{size >> 20}M")
    inputs += [written for written, _e, _r, _s in kt.HUGETLB_2MB_WRITE_ROWS]
    return inputs


def _memory_requirement(facts: HostFacts) -> str | None:
    return facts.lacks("memory")


@scenario
def scenario_memory_values(facts: HostFacts) -> Scenario | str:
    """Every memory table row into memory.min/low/high/max, each followed by a read."""
    reason = _memory_requirement(facts)
    if reason:
        return reason
    steps = [write("", "cgroup.subtree_control", "+memory"), mkdir("a")]
    inputs = [written for written, _e, _r, _s in kt.MEMORY_WRITE_ROWS]
    inputs += ["010000", "16E", "0x1E", "1e", "08", "0x", str(2**63 - 4096), str(2**63 - 4097)]
    for file in kt.MEMORY_FILES:
        steps.append(read("a", file))
        for value in inputs:
            steps += [write("a", file, value), read("a", file)]
    return Scenario("memory_values", tuple(steps))


@scenario
def scenario_memory_files(facts: HostFacts) -> Scenario | str:
    """Which memory files exist where, their defaults, read-only files, no cross-checks."""
    reason = _memory_requirement(facts)
    if reason:
        return reason
    steps = [
        read("", "memory.max"),
        mkdir("a"),
        read("a", "memory.max"),
        write("", "cgroup.subtree_control", "+memory"),
    ]
    for file in (
        "memory.min",
        "memory.low",
        "memory.high",
        "memory.max",
        "memory.swap.max",
        "memory.oom.group",
        "memory.current",
    ):
        steps.append(read("a", file))
    steps += [
        read_keys("a", "memory.events", "low", "high", "max", "oom", "oom_kill"),
        write("a", "memory.current", "0"),
        write("a", "memory.events", "0"),
        write("a", "memory.oom.group", "1"),
        read("a", "memory.oom.group"),
        write("a", "memory.oom.group", "2"),
        write("a", "memory.oom.group", "x"),
        write("a", "memory.swap.max", "0"),
        read("a", "memory.swap.max"),
        write("a", "cgroup.subtree_control", "+memory"),
        mkdir("a/c"),
        write("a", "memory.min", "100M"),
        write("a/c", "memory.min", "200M"),
        write("a/c", "memory.max", "50M"),
        write("a/c", "memory.high", "80M"),
        write("a/c", "memory.low", "300M"),
        read("a/c", "memory.low"),
        spawn("p", "a/c"),
        spawn("q", "a"),
        write("", "cgroup.subtree_control", "-memory"),
        read("a", "memory.max"),
    ]
    return Scenario("memory_files", tuple(steps))


@scenario
def scenario_cpuset_values(facts: HostFacts) -> Scenario | str:
    """cpuset.cpus/mems parsing against the machine's cpus and nodes; defaults and effective."""
    reason = facts.lacks("cpuset")
    if reason:
        return reason
    cpus, nodes = facts.cpus, facts.nodes
    cpu_inputs = [
        format_bitmap_list(cpus),
        str(cpus[0]),
        str(cpus[-1]),
        ",".join(str(cpu) for cpu in cpus),
        str(facts.nr_cpu_ids + 3),
        f"0-{facts.nr_cpu_ids + 61}",
        "garbage",
        "-1",
        "1-0",
        f" {cpus[0]} ",
        "\n",
    ]
    node_inputs = [
        format_bitmap_list(nodes),
        str(nodes[0]),
        str(nodes[-1] + 1),
        str(nodes[-1] + 2),
        f"0-{nodes[-1] + 1}",
        "garbage",
        "\n",
    ]
    steps = [write("", "cgroup.subtree_control", "+cpuset"), mkdir("a")]
    for file in (
        "cpuset.cpus",
        "cpuset.mems",
        "cpuset.cpus.effective",
        "cpuset.mems.effective",
        "cpuset.cpus.partition",
    ):
        steps.append(read("a", file))
    for value in cpu_inputs:
        steps += [write("a", "cpuset.cpus", value), read("a", "cpuset.cpus")]
        steps.append(read("a", "cpuset.cpus.effective"))
    for value in node_inputs:
        steps += [write("a", "cpuset.mems", value), read("a", "cpuset.mems")]
        steps.append(read("a", "cpuset.mems.effective"))
    steps += [
        write("a", "cpuset.cpus.effective", "0"),
        write("a", "cpuset.cpus.partition", "bogus"),
        write("a", "cpuset.cpus.partition", "member"),
    ]
    return Scenario("cpuset_values", tuple(steps))


@scenario
def scenario_cpuset_hierarchy(facts: HostFacts) -> Scenario | str:
    """A child may request cpus outside its parent; effective falls back. Emptying a populated
    cpuset is ENOSPC (memory-qos.md §7.4; not yet measured on a VM when this was written)."""
    reason = facts.lacks("cpuset")
    if reason:
        return reason
    cpus = facts.cpus
    if len(cpus) < 2:
        return "needs at least 2 online cpus"
    first, last = str(cpus[0]), str(cpus[-1])
    steps = (
        write("", "cgroup.subtree_control", "+cpuset"),
        mkdir("a"),
        write("a", "cgroup.subtree_control", "+cpuset"),
        mkdir("a/b"),
        write("a", "cpuset.cpus", first),
        write("a/b", "cpuset.cpus", last),
        read("a/b", "cpuset.cpus"),
        read("a/b", "cpuset.cpus.effective"),
        write("a/b", "cpuset.cpus", f"{first},{last}"),
        read("a/b", "cpuset.cpus.effective"),
        write("a", "cpuset.cpus", "\n"),
        read("a/b", "cpuset.cpus.effective"),
        spawn("p", "a/b"),
        write("a/b", "cpuset.cpus", "\n"),
        read("a/b", "cpuset.cpus"),
        write("a/b", "cpuset.mems", str(facts.nodes[0])),
        write("a/b", "cpuset.mems", "\n"),
        read("a/b", "cpuset.mems"),
    )
    return Scenario("cpuset_hierarchy", steps)


@scenario
def scenario_root_files(facts: HostFacts) -> Scenario | str:
    """Read-only look at the mount's root: the files a root cgroup lacks (ENOENT)."""
    if not facts.mount_is_root:
        return f"cgroup2 at {facts.mount} is not a root cgroup"
    steps = [
        read("", "cgroup.controllers"),
        read("", "cgroup.events"),
        read("", "cgroup.kill"),
        read("", "cgroup.type"),
        read("", "cgroup.freeze"),
        read("", "memory.min"),
        read("", "memory.max"),
        read("", "memory.high"),
        read("", "memory.low"),
        read("", "cgroup.max.depth"),
    ]
    for size in facts.hugepage_sizes_bytes:
        steps.append(read("", f"hugetlb.{hugetlb_size_name(size)}.max"))
    return Scenario("root_files", tuple(steps), on_root=True)


# --- running steps -------------------------------------------------------------------------------


class Driver:
    """Process handling for one side of the comparison; `fs` is the CgroupFS under test."""

    fs: CgroupFS

    def start_process(self) -> int:
        raise NotImplementedError

    def terminate(self, pid: int) -> None:
        raise NotImplementedError

    def wait_exit(self, pid: int) -> str:
        raise NotImplementedError

    def settle(self) -> None:
        """Pause between polls (real side only)."""


class SimDriver(Driver):
    def __init__(self, sim: SimCgroupFS) -> None:
        self.fs = self.sim = sim

    def start_process(self) -> int:
        return self.sim.spawn(None)

    def terminate(self, pid: int) -> None:
        self.sim.exit(pid, -signal.SIGTERM)

    def wait_exit(self, pid: int) -> str:
        status = self.sim.exit_status(pid)
        return "running" if status is None else f"exit {status}"


class RealDriver(Driver):
    def __init__(self, fs: RealCgroupFS) -> None:
        self.fs = fs
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._sleep = shutil.which("sleep")

    def start_process(self) -> int:
        command = (
            [self._sleep, _PROCESS_SECONDS]
            if self._sleep
            else [sys.executable, "-c", f"import time; time.sleep({_PROCESS_SECONDS})"]
        )
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes[process.pid] = process
        return process.pid

    def terminate(self, pid: int) -> None:
        self.processes[pid].terminate()

    def wait_exit(self, pid: int) -> str:
        try:
            return f"exit {self.processes[pid].wait(timeout=10)}"
        except subprocess.TimeoutExpired:
            return "running"

    def settle(self) -> None:
        time.sleep(_POLL_INTERVAL_SECONDS)

    def kill_all(self) -> None:
        """Last-resort cleanup for processes a scenario left behind."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def _errno_text(exc: HostError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "error"


def _attempt(action: Callable[[], object]) -> str:
    try:
        result = action()
    except HostError as exc:
        return _errno_text(exc)
    if isinstance(result, str):
        return f"ok {result!r}"
    return "ok" if result is None else f"ok {result}"


def _named_pids(text: str, names: dict[str, int]) -> str:
    by_pid = {pid: name for name, pid in names.items()}
    lines = [by_pid.get(int(line), "?") for line in text.split()]
    return "".join(f"{line}\n" for line in sorted(lines))


def _run_step(driver: Driver, step: Step, names: dict[str, int]) -> str:
    fs = driver.fs
    if step.op == "mkdir":
        return _attempt(lambda: fs.mkdir(step.path))
    if step.op == "rmdir":
        return _attempt(lambda: fs.rmdir(step.path))
    if step.op == "exists":
        return _attempt(lambda: fs.exists(step.path))
    if step.op == "children":
        return _attempt(lambda: fs.list_children(step.path))
    if step.op == "write":
        return _attempt(lambda: fs.write(step.path, step.file, step.value))
    if step.op == "read":
        if step.file in ("cgroup.procs", "cgroup.threads"):
            return _attempt(lambda: _named_pids(fs.read(step.path, step.file), names))
        return _attempt(lambda: fs.read(step.path, step.file))
    if step.op == "read_keys":

        def selected() -> str:
            values = parse_flat_keyed(fs.read(step.path, step.file))
            return " ".join(f"{key}={values.get(key)}" for key in step.keys)

        return _attempt(selected)
    if step.op == "spawn":
        names[step.proc] = driver.start_process()
        return _attempt(lambda: fs.write(step.path, "cgroup.procs", str(names[step.proc])))
    if step.op == "move":
        return _attempt(lambda: fs.write(step.path, "cgroup.procs", str(names[step.proc])))
    if step.op == "terminate":
        driver.terminate(names[step.proc])
        return "ok"
    if step.op == "wait_exit":
        return driver.wait_exit(names[step.proc])
    if step.op == "wait_populated":
        return _wait_populated(driver, step.path, int(step.value))
    raise ValueError(f"unknown step {step.op!r}")


def _wait_populated(driver: Driver, path: str, want: int) -> str:
    """Poll cgroup.events a bounded number of times; report the last value seen."""
    seen = -1
    for _attempt_index in range(_POLL_ATTEMPTS):
        try:
            seen = parse_flat_keyed(driver.fs.read(path, "cgroup.events")).get("populated", -1)
        except HostError as exc:
            return _errno_text(exc)
        if seen == want:
            break
        driver.settle()
    return f"populated {seen}"


def run_steps(driver: Driver, steps: Iterable[Step]) -> list[str]:
    """Outcomes of `steps`, in order."""
    names: dict[str, int] = {}
    return [_run_step(driver, step, names) for step in steps]


# --- host facts, mount preparation, cleanup ------------------------------------------------------


def _read_text(path: str, default: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def find_cgroup2_mount() -> tuple[Path | None, str]:
    """(mount, "") for a writable cgroup2 mount, or (None, reason). MEMSTATE_TEST_CGROUP2 wins."""
    candidates: list[str]
    configured = os.environ.get(ENV_MOUNT)
    if configured:
        candidates = [configured]
    else:
        candidates = parse_cgroup2_mounts(_read_text("/proc/mounts", ""))
        if not candidates:
            return None, "no cgroup2 filesystem is mounted (see /proc/mounts)"
    reasons = []
    for candidate in candidates:
        mount = Path(candidate)
        if not (mount / "cgroup.controllers").is_file():
            reasons.append(f"{mount} is not a cgroup2 directory")
            continue
        probe = mount / f"memstate-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            reasons.append(f"cannot create cgroups under {mount}: {exc.strerror}")
            continue
        return mount, ""
    return None, "; ".join(reasons)


def prepare_mount(mount: Path) -> list[str]:
    """Enable WANTED_CONTROLLERS in the mount root's subtree_control; returns what was enabled."""
    fs = RealCgroupFS(mount)
    available = set(parse_controller_list(fs.read("", "cgroup.controllers")))
    enabled = set(parse_controller_list(fs.read("", "cgroup.subtree_control")))
    newly: list[str] = []
    for name in WANTED_CONTROLLERS:
        if name in available and name not in enabled:
            try:
                fs.write("", "cgroup.subtree_control", f"+{name}")
                newly.append(name)
            except HostError:
                pass  # e.g. EBUSY on a delegated mount with processes: test what there is
    return newly


def probe_facts(mount: Path) -> HostFacts:
    """Read the environment: page size, huge page sizes, cpus, nodes, controllers."""
    fs = RealCgroupFS(mount)
    hugepages = []
    hugepage_dir = Path("/sys/kernel/mm/hugepages")
    if hugepage_dir.is_dir():
        for entry in hugepage_dir.iterdir():
            if entry.name.startswith("hugepages-") and entry.name.endswith("kB"):
                hugepages.append(
                    int(entry.name.removeprefix("hugepages-").removesuffix("kB")) << 10
                )
    known = []
    for line in _read_text("/proc/cgroups", "").splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        name = "io" if name == "blkio" else name
        if name in CONTROLLER_ORDER:
            known.append(name)
    online_cpus = _read_text("/sys/devices/system/cpu/online", "0")
    online_nodes = _read_text("/sys/devices/system/node/online", "0")
    return HostFacts(
        mount=str(mount),
        kernel_release=os.uname().release,
        page_size_bytes=os.sysconf("SC_PAGE_SIZE"),
        hugepage_sizes_bytes=tuple(sorted(hugepages)),
        online_cpus=online_cpus,
        possible_cpus=_read_text("/sys/devices/system/cpu/possible", online_cpus),
        online_nodes=online_nodes,
        possible_nodes=_read_text("/sys/devices/system/node/possible", online_nodes),
        known_controllers=tuple(known),
        mount_controllers=parse_controller_list(fs.read("", "cgroup.controllers")),
        base_controllers=parse_controller_list(fs.read("", "cgroup.subtree_control")),
        mount_is_root=not (mount / "cgroup.type").exists(),
    )


def make_sim(facts: HostFacts, *, on_root: bool, planted: Iterable[PlantedBug] = ()) -> SimCgroupFS:
    """A SimCgroupFS shaped like the test cgroup (or like the mount root when `on_root`)."""
    return SimCgroupFS(
        page_size_bytes=facts.page_size_bytes,
        controllers=facts.mount_controllers if on_root else facts.base_controllers,
        hugepage_sizes_bytes=facts.hugepage_sizes_bytes,
        online_cpus=facts.online_cpus,
        possible_cpus=facts.possible_cpus,
        online_nodes=facts.online_nodes,
        possible_nodes=facts.possible_nodes,
        delegated=not on_root,
        kernel=kernel_profile_for_release(facts.kernel_release),
        known_controllers=facts.known_controllers,
        planted_bugs=planted,
    )


def _new_base(mount: Path) -> str:
    parent = RealCgroupFS(mount)
    while True:
        name = f"memstate-test-{os.getpid()}-{next(_base_counter)}"
        try:
            parent.mkdir(name)
            return name
        except HostError as exc:
            if exc.errno != errno.EEXIST:
                raise


def _remove_base(mount: Path, base: str, driver: RealDriver) -> None:
    """Kill everything in the test cgroup, then remove it bottom-up (bounded retries)."""
    fs = RealCgroupFS(mount / base)
    for path in walk(fs, "", topdown=True):
        # Nothing to thaw, or no freezer: the kill below still works.
        with contextlib.suppress(HostError):
            fs.write(path, "cgroup.freeze", "0")
    # Kernels before 5.14 have no cgroup.kill: kill_all below still ends our own processes.
    with contextlib.suppress(HostError):
        fs.write("", "cgroup.kill", "1")
    driver.kill_all()
    _wait_populated(driver, "", 0)
    for path in walk(fs, "", topdown=False):
        if path:
            fs.rmdir(path)
    RealCgroupFS(mount).rmdir(base)


# --- comparing -----------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """Outcome of one scenario: ``match``, ``mismatch`` or ``skipped`` (with `reason`)."""

    name: str
    status: str
    reason: str = ""
    steps: list[dict[str, str]] = field(default_factory=list)

    @property
    def mismatches(self) -> list[dict[str, str]]:
        return [step for step in self.steps if step["real"] != step["sim"]]


def run_scenario(
    name: str, mount: Path, facts: HostFacts, planted: Iterable[PlantedBug] = ()
) -> ScenarioResult:
    """Build scenario `name` for `facts`, run it on the real mount and on the sim, compare."""
    built = BUILDERS[name](facts)
    if isinstance(built, str):
        return ScenarioResult(name, "skipped", reason=built)
    sim = SimDriver(make_sim(facts, on_root=built.on_root, planted=planted))
    sim_outcomes = run_steps(sim, built.steps)
    if built.on_root:
        real_outcomes = run_steps(RealDriver(RealCgroupFS(mount)), built.steps)
    else:
        base = _new_base(mount)
        driver = RealDriver(RealCgroupFS(mount / base))
        try:
            real_outcomes = run_steps(driver, built.steps)
        finally:
            _remove_base(mount, base, driver)
    steps = [
        {"step": step.describe(), "real": real, "sim": simulated}
        for step, real, simulated in zip(built.steps, real_outcomes, sim_outcomes, strict=True)
    ]
    result = ScenarioResult(name, "match", steps=steps)
    if result.mismatches:
        result.status = "mismatch"
    return result


def format_mismatches(result: ScenarioResult) -> str:
    """A readable diff for assertion messages."""
    lines = [f"scenario {result.name}: real kernel and SimCgroupFS disagree"]
    for index, step in enumerate(result.steps):
        marker = "!!" if step["real"] != step["sim"] else "  "
        lines.append(f"{marker} {index:3d} {step['step']}")
        if marker == "!!":
            lines.append(f"          real: {step['real']}")
            lines.append(f"          sim:  {step['sim']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mount", nargs="?", help=f"cgroup2 mount (default: ${ENV_MOUNT} or probe)")
    parser.add_argument("--scenario", action="append", choices=sorted(BUILDERS), default=None)
    parser.add_argument("--plant", action="append", choices=[bug.value for bug in PlantedBug])
    parser.add_argument("--no-prepare", action="store_true", help="do not enable controllers")
    args = parser.parse_args(argv)
    if args.mount:
        mount: Path | None = Path(args.mount)
    else:
        mount, reason = find_cgroup2_mount()
        if mount is None:
            print(json.dumps({"error": reason}))
            return 2
    assert mount is not None
    prepared = [] if args.no_prepare else prepare_mount(mount)
    facts = probe_facts(mount)
    planted = [PlantedBug(bug) for bug in args.plant or []]
    results = [run_scenario(name, mount, facts, planted) for name in args.scenario or BUILDERS]
    report = {
        "mount": str(mount),
        "facts": asdict(facts),
        "enabled_at_mount_root": prepared,
        "planted_bugs": [bug.value for bug in planted],
        "results": [
            {
                "name": result.name,
                "status": result.status,
                "reason": result.reason,
                "mismatches": result.mismatches,
                "steps": result.steps,
            }
            for result in results
        ],
    }
    print(json.dumps(report, indent=1))
    return 1 if any(result.status == "mismatch" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
