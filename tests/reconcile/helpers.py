"""Builders and checkers shared by the reconciler tests.

- `node` / `targets_of_pods`: realistic `NodeTargets` decided by the real reducer (so Static-policy
  pods get NUMA pinning and `cpuset.mems`), for either reservation policy and either driver.
- `new_sim`: a SimCgroupFS shaped like the test topology (2 NUMA nodes, 2 MiB hugepages).
- `tree_snapshot`: the whole tree as an `ObservedTree` read through the public CgroupFS API, for
  the protection invariant and for comparing trees.
- `CheckingCgroupFS`: wraps a CgroupFS and, after every operation that changes the tree, checks
  that no parent's memory.min/low fell further below the sum of its children's than it was at
  the start (`baseline`): the "at every instant" invariant of memory-qos.md §12.3. Its `failing`
  set makes writes of chosen (path, file) fail with EIO; `checking=False` makes it a plain
  forwarding wrapper with those failures only.
- `FakeClock`: an injectable monotonic clock.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memstate.core.cgroup_paths import pod_paths_of_uid
from memstate.core.config import NodeConfig
from memstate.core.errors import HostError
from memstate.core.events import ConfigLoaded, Event, PodAdmissionRequested, TopologyObserved
from memstate.core.plan import (
    PROTECTION_FILES,
    ObservedCgroup,
    ObservedTree,
    ValueModel,
    kernel_default,
)
from memstate.core.pod import Pod
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.state_targets import state_targets
from memstate.core.targets import NodeTargets
from memstate.core.topology import Topology
from memstate.host import CgroupFS, walk
from memstate.host.sim import KERNEL_6_1, KernelProfile, SimCgroupFS
from memstate.testing import protection_shortfalls
from tests.factories import container, pod, pod_of, static_config, topology

PAGE = 4096
Mi = 2**20
Gi = 2**30


def node_topology() -> Topology:
    """2 NUMA nodes of 8 GiB, 64 × 2 MiB hugepages each, 4 KiB pages."""
    return topology("8Gi", "8Gi", hugepages={"2Mi": 64})


def node_config(
    policy: str = "TieredReservation",
    *,
    static: bool = True,
    driver: str = "cgroupfs",
    cgroup_root: str = "/",
) -> NodeConfig:
    """A config for `node_topology`: Static (NUMA pinning) or None Memory Manager policy."""
    extra: dict[str, Any] = {
        "memoryReservationPolicy": policy,
        "cgroupDriver": driver,
        "cgroupRoot": cgroup_root,
    }
    if static:
        return static_config(["256Mi", "256Mi"], **extra)
    from memstate.core.config import config_from_object

    return config_from_object(
        {
            "memoryManagerPolicy": "None",
            "systemReserved": {"memory": "512Mi"},
            "evictionHard": {"memory.available": "0"},
            **extra,
        }
    )


def mixed_pod(uid: str, index: int, *, scale: int = 1) -> Pod:
    """Guaranteed, Burstable, BestEffort, Guaranteed with hugepages, Burstable with two
    containers, in turn (by `index`). `scale` multiplies the memory sizes."""
    kind = index % 5
    size = f"{64 * scale * (1 + index % 3)}Mi"
    if kind == 0:
        return pod(uid, size, cpu="100m")
    if kind == 1:
        return pod_of(uid, [container("app", size, limit_memory="1Gi", guaranteed=False)])
    if kind == 2:
        return pod_of(uid, [container("app", None, None)])
    if kind == 3:
        return pod_of(uid, [container("app", size, "100m", hugepages={"hugepages-2Mi": "4Mi"})])
    return pod_of(
        uid,
        [
            container("app", size, guaranteed=False),
            container("side", "32Mi", limit_memory="64Mi", guaranteed=False),
        ],
    )


def uid_for(index: int, prefix: str = "p") -> str:
    return f"{prefix}{index:04d}-aaaa"


def retired(*uids: str, config: NodeConfig | None = None) -> list[str]:
    """Every pod cgroup path the UIDs can have (what a test retires when pods go)."""
    naming = config or node_config()
    return [path for uid in uids for path in pod_paths_of_uid(naming, uid)]


def admit_all(pods: Sequence[Pod], config: NodeConfig, topo: Topology) -> State:
    """The state after the real reducer decided every pod (rejections stay out of it)."""
    state = State()
    events: list[Event] = [TopologyObserved(topology=topo), ConfigLoaded(config=config)]
    events.extend(PodAdmissionRequested(pod=p) for p in pods)
    for event in events:
        state = step(state, event).state
    return state


def targets_of_pods(
    pods: Sequence[Pod], config: NodeConfig | None = None, topo: Topology | None = None
) -> NodeTargets:
    """NodeTargets for the admitted subset of `pods`."""
    state = admit_all(pods, config or node_config(), topo or node_topology())
    targets = state_targets(state)
    assert targets is not None
    return targets


def new_sim(*, kernel: KernelProfile = KERNEL_6_1, delegated: bool = False) -> SimCgroupFS:
    """A SimCgroupFS shaped like `node_topology` (2 nodes, 2 CPUs, 2 MiB + 1 GiB hugepages)."""
    return SimCgroupFS(
        page_size_bytes=PAGE,
        online_nodes="0-1",
        kernel=kernel,
        delegated=delegated,
    )


def tree_snapshot(fs: CgroupFS, files: Iterable[str] = PROTECTION_FILES) -> ObservedTree:
    """Every cgroup under the root with the given files (where they exist) and its children."""
    wanted = tuple(files)
    cgroups: dict[str, ObservedCgroup] = {}
    for path in walk(fs):
        values: dict[str, str] = {}
        for file in wanted:
            try:
                values[file] = fs.read(path, file)
            except HostError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        cgroups[path] = ObservedCgroup(files=values, children=tuple(fs.list_children(path)))
    return ObservedTree(cgroups=cgroups)


def managed_values(fs: CgroupFS, targets: NodeTargets) -> dict[str, dict[str, str | None]]:
    """Each target cgroup's managed files as read from `fs` (None: cgroup or file missing)."""
    result: dict[str, dict[str, str | None]] = {}
    for target in targets.cgroups:
        values: dict[str, str | None] = {}
        for file in target.files:
            try:
                values[file] = fs.read(target.path, file).strip()
            except HostError:
                values[file] = None
        result[target.path] = values
    return result


def assert_tree_matches(fs: CgroupFS, targets: NodeTargets) -> None:
    """Every target cgroup exists, enables its controllers, and every managed file reads back
    what writing its target gives (kernel-normalised)."""
    values = ValueModel(PAGE)
    for target in targets.cgroups:
        assert fs.exists(target.path), f"{target.path!r} missing"
        enabled = set(fs.read(target.path, "cgroup.subtree_control").split())
        assert set(target.controllers) <= enabled, (target.path, enabled)
        for file, wanted in target.files.items():
            found = fs.read(target.path, file)
            assert values.normalise(file, found) == values.normalise(file, wanted), (
                target.path,
                file,
                found,
                wanted,
            )


def pod_cgroups(fs: CgroupFS, targets: NodeTargets) -> set[str]:
    """Paths of the children of kubepods and the QoS cgroups (pods, foreign, orphans)."""
    holders = [t.path for t in targets.cgroups if t.level in ("node", "qos")]
    found: set[str] = set()
    for holder in holders:
        if fs.exists(holder):
            found.update(f"{holder}/{name}" for name in fs.list_children(holder))
    return found - {t.path for t in targets.cgroups if t.level == "qos"}


def default_normalised(file: str) -> str | None:
    default = kernel_default(file)
    return None if default is None else ValueModel(PAGE).normalise(file, default)


@dataclass
class FakeClock:
    """A monotonic clock tests move by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Writes that can change a protection sum: the protections themselves, and what makes memory
# files appear or processes die. Limits, cpusets and hugetlb cannot.
PROTECTION_CHANGING_FILES = frozenset(
    {*PROTECTION_FILES, "cgroup.subtree_control", "cgroup.kill", "cgroup.procs"}
)


@dataclass
class CheckingCgroupFS:
    """Checks the protection invariant after every change (see the module docstring).

    `baseline` is the shortfall per (path, file) allowed (what the tree had before the round);
    `violations` collects every breach with the operation that caused it. `ignore_paths` are
    parents not checked (a delegated root whose own protection is the operator's business).
    `failing`: (path, file) pairs whose writes fail with EIO (injected, the tree untouched).
    `checking` False: no check at all (a forwarding wrapper that only injects `failing`).
    """

    inner: CgroupFS
    failing: set[tuple[str, str]] = field(default_factory=set)
    checking: bool = True
    baseline: dict[tuple[str, str], int] = field(default_factory=dict)
    ignore_paths: frozenset[str] = frozenset()
    # Check only after changes that can move a protection sum (where each check is costly, as
    # on a real kernel under emulation); `passed_over` counts the writes not checked.
    relevant_only: bool = False
    violations: list[str] = field(default_factory=list)
    checks: int = 0
    passed_over: int = 0

    def rebaseline(self) -> None:
        """Allow what the tree has now, and count checks from here."""
        self.checks = 0
        self.passed_over = 0
        self.baseline = protection_shortfalls(tree_snapshot(self.inner), page_size_bytes=PAGE)

    def _check(self, what: str) -> None:
        if not self.checking:
            return
        self.checks += 1
        now = protection_shortfalls(tree_snapshot(self.inner), page_size_bytes=PAGE)
        for key, shortfall in now.items():
            if key[0] not in self.ignore_paths and shortfall > self.baseline.get(key, 0):
                self.violations.append(
                    f"after {what}: {key[0]} {key[1]} short by {shortfall} "
                    f"(was {self.baseline.get(key, 0)})"
                )

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def list_children(self, path: str) -> list[str]:
        return self.inner.list_children(path)

    def read(self, path: str, file: str) -> str:
        return self.inner.read(path, file)

    def write(self, path: str, file: str, value: str) -> None:
        if (path, file) in self.failing:
            raise HostError(f"write {path}/{file}: injected", errno=errno.EIO, path=path)
        try:
            self.inner.write(path, file, value)
        finally:
            if self.relevant_only and file not in PROTECTION_CHANGING_FILES:
                self.passed_over += 1
            else:
                self._check(f"write {path}/{file}={value!r}")

    def mkdir(self, path: str) -> None:
        try:
            self.inner.mkdir(path)
        finally:
            self._check(f"mkdir {path}")

    def rmdir(self, path: str) -> None:
        try:
            self.inner.rmdir(path)
        finally:
            self._check(f"rmdir {path}")


# The interface files a cgroup of the test machine can have (SimCgroupFS decides which exist).
INTERFACE_FILES = (
    "cgroup.controllers",
    "cgroup.subtree_control",
    "cgroup.events",
    "cgroup.procs",
    "cgroup.type",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.max",
    "memory.current",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.mems.effective",
    "hugetlb.2MB.max",
    "hugetlb.1GB.max",
)


def materialise(fs: CgroupFS, directory: Path) -> None:
    """Copy a tree into plain directories and files (what RealCgroupFS reads in a test root):
    every cgroup becomes a directory holding its interface files' current text."""
    for path in walk(fs):
        target = directory / path if path else directory
        target.mkdir(parents=True, exist_ok=True)
        for file in INTERFACE_FILES:
            try:
                (target / file).write_text(fs.read(path, file))
            except HostError as exc:
                if exc.errno != errno.ENOENT:
                    raise


def directory_contents(directory: Path) -> dict[str, str]:
    """Every file under `directory` with its text (to prove a command wrote nothing)."""
    return {
        str(p.relative_to(directory)): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
