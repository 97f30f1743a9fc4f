"""SimCgroupFS: an in-memory cgroup v2 tree that follows the kernel's rules.

Theory of operation
-------------------
Unit tests, simulations and machines without cgroup v2 need a CgroupFS that fails where the
kernel fails and reads back what the kernel reads back, or the reconciler would be tested against
a friendlier world than the one it will meet. This module models the parts of cgroup v2 that
memstate touches, as measured on Linux 6.1 and 6.18 (real-kernel-vm.md, memory-qos.md §7):

* **Tree and lifecycle.** mkdir (ENOENT without parent, EEXIST for an existing cgroup or a file
  name, EAGAIN past cgroup.max.depth / cgroup.max.descendants), rmdir (EBUSY when populated or
  when it has children, ENOTDIR on a file, ENOENT when gone).
* **Interface files per cgroup.** The root has cgroup.controllers, .max.depth, .max.descendants,
  .procs, .stat, .subtree_control, .threads (and cpuset.*.effective); a non-root cgroup adds
  cgroup.events, .freeze, .kill, .type. Controller files exist only where the *parent* enables the
  controller in cgroup.subtree_control: memory.{current,min,low,high,max,swap.current,swap.max,
  oom.group,events,events.local}, cpuset.{cpus,mems,cpus.effective,mems.effective,
  cpus.partition}, hugetlb.<size>.{max,rsvd.max,current,rsvd.current,events,events.local,
  numa_stat}. The root never has memory.min/low/high/max (ENOENT).
* **Values** are parsed by memstate.core.cgroup_values, the same code the planner uses to
  normalise: memparse with page rounding and ``max`` saturation, hugetlb rounding to the huge
  page, cpu/node lists with ERANGE/EINVAL and ``0,1`` → ``0-1``, kstrtoint for the core files.
  Read-only files refuse writes with EINVAL; cgroup.kill refuses reads with EINVAL; values
  longer than a page get E2BIG.
* **Processes.** `spawn` creates a fake process (optionally placing it like a write to
  cgroup.procs would), `exit` ends it, cgroup.kill SIGKILLs a subtree (`exit_status` -9).
  cgroup.events ``populated`` is recursive. The no-internal-process rule is enforced both ways:
  enabling a domain controller (memory, io, hugetlb, ...) in a non-root cgroup with processes of
  its own is EBUSY, and so is moving a process into a non-root cgroup whose subtree_control
  holds a domain controller. Threaded-only controllers (cpuset, cpu, pids) follow the kernel's
  thread-root rule: enabled next to processes they make the cgroup ``domain threaded`` and its
  children ``domain invalid`` (moving a process there is EOPNOTSUPP). Enabling a controller
  missing from cgroup.controllers is ENOENT, disabling one a child still enables is EBUSY,
  unknown names are EINVAL.
* **Delegation.** With ``delegated=True`` the sim's root stands for a non-root cgroup (a
  delegated subtree such as a test's private cgroup): it has cgroup.events/kill/type and the
  controller files of `controllers`, and the no-internal-process rule applies to it.
* **Kernel versions** differ in small ways; `KernelProfile` holds them (today: what a
  never-written hugetlb limit reads).

Not modelled, and therefore absent (ENOENT) or refused with EOPNOTSUPP and a message saying so:
threaded cgroups, cpuset partitions other than ``member``, pid 0 ("the writer") in cgroup.procs,
cgroup.threads writes, cpu/io/pids/rdma/misc interface files, pressure and stat files, memory
reclaim/OOM and usage-driven behaviour (memory.current is whatever a test sets), dying cgroups,
open file descriptors on removed cgroups (ENODEV). The sim is not thread-safe.

Planted bugs. `PlantedBug` switches the sim to a deliberately wrong belief (for example no page
rounding). They exist to prove that the differential test against a real kernel notices when
the model is wrong; never use them elsewhere.
"""

from __future__ import annotations

import enum
import errno
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from memstate.core.cgroup_values import (
    CONTROLLER_ORDER,
    DEFAULT_PAGE_SIZE_BYTES,
    THREADED_CONTROLLERS,
    CgroupValueError,
    format_bitmap_list,
    format_controller_list,
    format_page_counter,
    hugetlb_limit_pages,
    hugetlb_size_name,
    kernel_strip,
    memparse,
    page_counter_max,
    parse_bitmap_list,
    parse_cpuset_write,
    parse_hugetlb_limit,
    parse_kstrtoint,
    parse_page_counter,
    parse_subtree_control,
)
from memstate.core.errors import HostError
from memstate.host.cgroupfs import (
    check_file_name,
    check_write_value,
    host_error,
    parent_and_name,
    split_cgroup_path,
)

_MIB = 1 << 20
_GIB = 1 << 30
DEFAULT_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")
DEFAULT_HUGEPAGE_SIZES_BYTES = (2 * _MIB, _GIB)
FIRST_PID = 1000

MEMORY_LIMIT_DEFAULTS = {
    "memory.min": "0",
    "memory.low": "0",
    "memory.high": "max",
    "memory.max": "max",
    "memory.swap.max": "max",
}
MEMORY_EVENT_NAMES = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")
_ROOT_CORE_FILES = frozenset(
    {
        "cgroup.controllers",
        "cgroup.max.depth",
        "cgroup.max.descendants",
        "cgroup.procs",
        "cgroup.stat",
        "cgroup.subtree_control",
        "cgroup.threads",
    }
)
_CHILD_CORE_FILES = _ROOT_CORE_FILES | {
    "cgroup.events",
    "cgroup.freeze",
    "cgroup.kill",
    "cgroup.type",
}
_MEMORY_FILES = frozenset(
    {*MEMORY_LIMIT_DEFAULTS, "memory.current", "memory.swap.current", "memory.oom.group"}
    | {"memory.events", "memory.events.local"}
)
_CPUSET_FILES = frozenset(
    {
        "cpuset.cpus",
        "cpuset.mems",
        "cpuset.cpus.effective",
        "cpuset.mems.effective",
        "cpuset.cpus.partition",
    }
)
_CPUSET_ROOT_FILES = frozenset({"cpuset.cpus.effective", "cpuset.mems.effective"})
_HUGETLB_ATTRIBUTES = ("max", "rsvd.max", "current", "rsvd.current", "events", "events.local")
_HUGETLB_FILE_RE = re.compile(r"hugetlb\.([0-9]+[KMG]B)\.(.+)")
_OCTAL_RE = re.compile(r"0[0-9]+")


class PlantedBug(enum.StrEnum):
    """Deliberately wrong beliefs the sim can hold, to prove the differential test catches them."""

    NO_PAGE_ROUNDING = "no_page_rounding"  # memory limits read back exactly as written
    NO_HUGEPAGE_ROUNDING = "no_hugepage_rounding"  # hugetlb limits rounded to pages only
    OCTAL_AS_DECIMAL = "octal_as_decimal"  # "010" taken as ten, not eight
    RMDIR_ENOTEMPTY = "rmdir_enotempty"  # rmdir with a child fails ENOTEMPTY instead of EBUSY
    CPUSET_NO_NORMALISE = "cpuset_no_normalise"  # cpu lists read back as written ("0,1")
    INTERNAL_PROCESS_ALLOWED = "internal_process_allowed"  # no-internal-process rule ignored


@dataclass(frozen=True)
class KernelProfile:
    """Behaviour that differs between the kernel versions memstate was measured on."""

    name: str
    # 6.1: a never-written hugetlb.<size>.max reads "max". 6.18: it reads PAGE_COUNTER_MAX pages
    # in bytes (9223372036854771712 with 4 KiB pages) until something is written.
    hugetlb_unset_max_reads_max: bool


KERNEL_6_1 = KernelProfile(name="6.1", hugetlb_unset_max_reads_max=True)
KERNEL_6_18 = KernelProfile(name="6.18", hugetlb_unset_max_reads_max=False)


def kernel_profile_for_release(release: str) -> KernelProfile:
    """The profile for a ``uname -r`` string.

    Measured: 6.1.192 behaves like KERNEL_6_1, 6.18.44 like KERNEL_6_18. Where between them the
    hugetlb default changed is not known; kernels before 6.18 get the 6.1 profile, so a
    differential mismatch on hugetlb defaults on such a kernel means this boundary must move.
    """
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        raise ValueError(f"cannot parse kernel release {release!r}")
    version = (int(match.group(1)), int(match.group(2)))
    return KERNEL_6_18 if version >= (6, 18) else KERNEL_6_1


@dataclass(eq=False)
class _Cgroup:
    name: str
    parent: _Cgroup | None
    children: dict[str, _Cgroup] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    subtree_control: set[str] = field(default_factory=set)
    # Written values of controller files, as the kernel reads them back (no newline). Dropped
    # when the parent disables the controller, like the kernel destroying the css.
    values: dict[str, str] = field(default_factory=dict)
    freeze: int = 0
    max_depth: int | None = None  # None: "max"
    max_descendants: int | None = None
    memory_usage_bytes: int = 0
    memory_events_local: Counter[str] = field(default_factory=Counter)
    # Live cgroups below this one, kept up to date by mkdir and rmdir like the kernel's
    # ``cgrp->nr_descendants``: cgroup.stat and the max.descendants check read it instead of
    # walking the subtree (kubepods' and the root's cgroup.stat are rendered after every mkdir).
    nr_descendants: int = 0

    def path(self) -> str:
        names: list[str] = []
        node: _Cgroup | None = self
        while node is not None and node.parent is not None:
            names.append(node.name)
            node = node.parent
        return "/".join(reversed(names))

    def subtree(self) -> list[_Cgroup]:
        """This cgroup and every descendant, parents before children, children in creation
        order (a pre-order walk). Iterative: a nested generator per cgroup cost the stand-in
        milliseconds per admission at 500 pods."""
        found: list[_Cgroup] = []
        pending = [self]
        while pending:
            node = pending.pop()
            found.append(node)
            if node.children:
                pending.extend(reversed(node.children.values()))
        return found

    def ancestors_and_self(self) -> Iterable[_Cgroup]:
        node: _Cgroup | None = self
        while node is not None:
            yield node
            node = node.parent


_COMPONENTS_CACHE_ENTRIES = 4096

_Reader = Callable[["_Cgroup", str], str]
_Writer = Callable[["_Cgroup", str, str], None]


class SimCgroupFS:
    """An in-memory cgroup v2 tree implementing CgroupFS (see the module docstring).

    Parameters describe the machine: `page_size_bytes`, the `controllers` the root offers (its
    cgroup.controllers), `hugepage_sizes_bytes`, `online_cpus` / `possible_cpus` and
    `online_nodes` / `possible_nodes` as kernel lists, `max_numnodes` (MAX_NUMNODES: node ids
    at or above it are ERANGE), `known_controllers` (names the kernel was built with; others
    are EINVAL). `delegated` makes the root behave as a non-root cgroup. `kernel` selects
    version differences, `planted_bugs` plants wrong beliefs for testing the tests.
    """

    def __init__(
        self,
        *,
        page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES,
        controllers: Iterable[str] = DEFAULT_CONTROLLERS,
        hugepage_sizes_bytes: Iterable[int] = DEFAULT_HUGEPAGE_SIZES_BYTES,
        online_cpus: str = "0-1",
        possible_cpus: str | None = None,
        online_nodes: str = "0",
        possible_nodes: str | None = None,
        max_numnodes: int = 1024,
        delegated: bool = False,
        kernel: KernelProfile = KERNEL_6_1,
        known_controllers: Iterable[str] = CONTROLLER_ORDER,
        planted_bugs: Iterable[PlantedBug | str] = (),
    ) -> None:
        self._page_size_bytes = page_size_bytes
        self._counter_max = page_counter_max(page_size_bytes)
        self._known = frozenset(known_controllers)
        self._controllers = frozenset(controllers)
        if not self._controllers <= self._known or "perf_event" in self._controllers:
            raise ValueError(f"controllers {sorted(self._controllers)} not all known/listable")
        self._hugepage_sizes = {hugetlb_size_name(size): size for size in hugepage_sizes_bytes}
        self._online_cpus = parse_bitmap_list(online_cpus, nbits=1 << 16)
        self._possible_cpus = (
            parse_bitmap_list(possible_cpus, nbits=1 << 16)
            if possible_cpus is not None
            else self._online_cpus
        )
        if not self._online_cpus or not self._online_cpus <= self._possible_cpus:
            raise ValueError("online cpus must be a non-empty subset of the possible cpus")
        self._nr_cpu_ids = max(self._possible_cpus) + 1
        self._online_nodes = parse_bitmap_list(online_nodes, nbits=max_numnodes)
        self._possible_nodes = (
            parse_bitmap_list(possible_nodes, nbits=max_numnodes)
            if possible_nodes is not None
            else self._online_nodes
        )
        if not self._online_nodes or not self._online_nodes <= self._possible_nodes:
            raise ValueError("online nodes must be a non-empty subset of the possible nodes")
        self._max_numnodes = max_numnodes
        self._delegated = delegated
        self._kernel = kernel
        self._bugs = frozenset(PlantedBug(bug) for bug in planted_bugs)
        self._root = _Cgroup(name="", parent=None)
        # pid -> cgroup, or None for a process outside the simulated tree.
        self._processes: dict[int, _Cgroup | None] = {}
        self._exit_statuses: dict[int, int] = {}
        self._next_pid = FIRST_PID
        # Which files a cgroup has depends only on its parent's enabled controllers, and which
        # handler serves a file only on its name: both are looked up on every call, so memoise.
        self._files_by_controllers: dict[tuple[bool, frozenset[str]], frozenset[str]] = {}
        self._readers: dict[str, _Reader | None] = {}
        self._components: dict[str, tuple[str, ...]] = {}
        self._writers: dict[str, _Writer | None] = {}

    @property
    def page_size_bytes(self) -> int:
        """The base page size the sim rounds memory values to."""
        return self._page_size_bytes

    @property
    def kernel(self) -> KernelProfile:
        """The kernel profile in use."""
        return self._kernel

    @property
    def planted_bugs(self) -> frozenset[PlantedBug]:
        """The wrong beliefs planted in this instance (normally empty)."""
        return self._bugs

    # --- lookup ----------------------------------------------------------------------------------

    def _is_kernel_root(self, node: _Cgroup) -> bool:
        return node is self._root and not self._delegated

    def _lookup(self, components: tuple[str, ...], op: str, path: str, file: str = "") -> _Cgroup:
        node = self._root
        for component in components:
            child = node.children.get(component)
            if child is None:
                code = errno.ENOTDIR if component in self._files(node) else errno.ENOENT
                raise host_error(code, op, path, file, detail="simulated")
            node = child
        return node

    def _node(self, path: str, op: str, file: str = "") -> _Cgroup:
        return self._lookup(self._components_of(path, op), op, path, file)

    def _components_of(self, path: str, op: str) -> tuple[str, ...]:
        components = self._components.get(path)
        if components is None:
            # Validated once per path (an invalid one raises and is not remembered).
            components = split_cgroup_path(path, op=op)
            if len(self._components) >= _COMPONENTS_CACHE_ENTRIES:
                self._components.clear()
            self._components[path] = components
        return components

    # --- which files exist -----------------------------------------------------------------------

    def _controllers_of(self, node: _Cgroup) -> frozenset[str]:
        """cgroup.controllers: what the parent enabled (the configured set at the root)."""
        if node.parent is None:
            return self._controllers
        return frozenset(node.parent.subtree_control)

    def _files(self, node: _Cgroup) -> frozenset[str]:
        key = (self._is_kernel_root(node), self._controllers_of(node))
        files = self._files_by_controllers.get(key)
        if files is None:
            files = self._files_by_controllers[key] = self._compute_files(node)
        return files

    def _compute_files(self, node: _Cgroup) -> frozenset[str]:
        if self._is_kernel_root(node):
            files = set(_ROOT_CORE_FILES)
            if "cpuset" in self._controllers:
                files |= _CPUSET_ROOT_FILES
            return frozenset(files)
        files = set(_CHILD_CORE_FILES)
        controllers = self._controllers_of(node)
        if "memory" in controllers:
            files |= _MEMORY_FILES
        if "cpuset" in controllers:
            files |= _CPUSET_FILES
        if "hugetlb" in controllers:
            for name in self._hugepage_sizes:
                files.update(f"hugetlb.{name}.{attribute}" for attribute in _HUGETLB_ATTRIBUTES)
                files.add(f"hugetlb.{name}.numa_stat")
        return frozenset(files)

    # --- CgroupFS --------------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        """True if cgroup `path` exists (an invalid path raises, as every call's does)."""
        components = self._components_of(path, "exists")
        node = self._root
        for component in components:
            # A missing child (ENOENT) or a file in the way (ENOTDIR) alike: no such cgroup.
            # Walked here rather than through `_lookup`, whose HostError is built for nothing
            # (the reconciler asks about every new pod cgroup before making it).
            child = node.children.get(component)
            if child is None:
                return False
            node = child
        return True

    def list_children(self, path: str) -> list[str]:
        """Sorted child cgroup names."""
        return sorted(self._node(path, "list_children").children)

    def read(self, path: str, file: str) -> str:
        """The file's text as the kernel would print it."""
        check_file_name(file, op="read", path=path)
        node = self._node(path, "read", file)
        if file not in self._files(node):
            raise host_error(errno.ENOENT, "read", path, file, detail="simulated")
        reader = self._reader(file)
        if reader is None:
            raise host_error(errno.EINVAL, "read", path, file, detail="write-only file")
        return reader(node, file)

    def write(self, path: str, file: str, value: str) -> None:
        """Apply one write the way the kernel's handler for `file` would."""
        data = check_write_value(value, path=path, file=file)
        check_file_name(file, op="write", path=path)
        node = self._node(path, "write", file)
        if file not in self._files(node):
            raise host_error(errno.ENOENT, "write", path, file, value=value, detail="simulated")
        if len(data) > self._page_size_bytes:
            raise host_error(
                errno.E2BIG, "write", path, file, value=value[:100], detail="longer than a page"
            )
        writer = self._writer(file)
        if writer is None:
            raise host_error(
                errno.EINVAL, "write", path, file, value=value, detail="read-only file"
            )
        try:
            writer(node, file, value)
        except CgroupValueError as exc:
            code = getattr(errno, exc.errno_name or "EINVAL")
            raise host_error(code, "write", path, file, value=value, detail=exc.message) from exc

    def mkdir(self, path: str) -> None:
        """Create a cgroup; EEXIST, ENOENT, ENOTDIR and EAGAIN as the kernel."""
        parent_components, name = parent_and_name(path, op="mkdir")
        parent = self._lookup(parent_components, "mkdir", path)
        if name in parent.children or name in self._files(parent):
            raise host_error(errno.EEXIST, "mkdir", path, detail="simulated")
        level = 1
        for ancestor in parent.ancestors_and_self():
            too_many = (
                ancestor.max_descendants is not None
                and ancestor.nr_descendants >= ancestor.max_descendants
            )
            too_deep = ancestor.max_depth is not None and level > ancestor.max_depth
            if too_many or too_deep:
                raise host_error(errno.EAGAIN, "mkdir", path, detail="hierarchy limit")
            level += 1
        parent.children[name] = _Cgroup(name=name, parent=parent)
        for ancestor in parent.ancestors_and_self():
            ancestor.nr_descendants += 1

    def rmdir(self, path: str) -> None:
        """Remove an empty leaf cgroup; EBUSY when populated or when it has children."""
        parent_components, name = parent_and_name(path, op="rmdir")
        parent = self._lookup(parent_components, "rmdir", path)
        node = parent.children.get(name)
        if node is None:
            code = errno.ENOTDIR if name in self._files(parent) else errno.ENOENT
            raise host_error(code, "rmdir", path, detail="simulated")
        if self._populated(node):
            raise host_error(errno.EBUSY, "rmdir", path, detail="cgroup has processes")
        if node.children:
            code = errno.ENOTEMPTY if PlantedBug.RMDIR_ENOTEMPTY in self._bugs else errno.EBUSY
            raise host_error(code, "rmdir", path, detail="cgroup has child cgroups")
        del parent.children[name]
        for ancestor in parent.ancestors_and_self():
            ancestor.nr_descendants -= 1

    # --- test hooks ------------------------------------------------------------------------------

    def spawn(self, path: str | None = None) -> int:
        """Create a fake process and return its pid.

        With `path` None the process lives outside the simulated tree (like a process in the
        parent of a delegated root). Otherwise it is placed as a write of its pid to
        ``<path>/cgroup.procs`` would; if that fails the process is discarded and the HostError
        propagates.
        """
        pid = self._next_pid
        self._next_pid += 1
        self._processes[pid] = None
        if path is not None:
            try:
                self.write(path, "cgroup.procs", str(pid))
            except HostError:
                del self._processes[pid]
                raise
        return pid

    def exit(self, pid: int, status: int = 0) -> None:
        """End a running process with `status` (Popen-style: -9 for SIGKILL)."""
        if pid not in self._processes:
            raise KeyError(f"pid {pid} is not running")
        node = self._processes.pop(pid)
        if node is not None:
            node.pids.discard(pid)
        self._exit_statuses[pid] = status

    def exit_status(self, pid: int) -> int | None:
        """None while `pid` runs, else its status; KeyError for a pid never spawned."""
        if pid in self._processes:
            return None
        return self._exit_statuses[pid]

    def cgroup_of(self, pid: int) -> str | None:
        """The cgroup path of a running process, None if it is outside the tree."""
        node = self._processes[pid]
        return None if node is None else node.path()

    def set_memory_usage(self, path: str, usage_bytes: int) -> None:
        """Charge `usage_bytes` to `path` itself; memory.current sums the subtree."""
        if usage_bytes < 0:
            raise ValueError("usage must not be negative")
        self._node(path, "set_memory_usage").memory_usage_bytes = usage_bytes

    def add_memory_event(self, path: str, event: str, count: int = 1) -> None:
        """Count a memory event (``oom_kill``...) in `path`: memory.events.local there,
        memory.events there and in every ancestor."""
        if event not in MEMORY_EVENT_NAMES:
            raise ValueError(f"unknown memory event {event!r}")
        self._node(path, "add_memory_event").memory_events_local[event] += count

    # --- state derived from the tree -------------------------------------------------------------

    def _populated(self, node: _Cgroup) -> bool:
        return any(descendant.pids for descendant in node.subtree())

    def _frozen(self, node: _Cgroup) -> bool:
        return any(ancestor.freeze for ancestor in node.ancestors_and_self())

    def _is_thread_root(self, node: _Cgroup) -> bool:
        """``cgroup_is_thread_root``: own processes next to enabled threaded controllers."""
        return bool(node.pids) and bool(node.subtree_control & THREADED_CONTROLLERS)

    def _is_valid_domain(self, node: _Cgroup) -> bool:
        """``cgroup_is_valid_domain``: no non-root ancestor is a thread root."""
        ancestor = node.parent
        while ancestor is not None:
            if not self._is_kernel_root(ancestor) and self._is_thread_root(ancestor):
                return False
            ancestor = ancestor.parent
        return True

    def _can_be_thread_root(self, node: _Cgroup) -> bool:
        """``cgroup_can_be_thread_root``: processes may coexist with threaded-only children."""
        if self._is_kernel_root(node):
            return True
        if any(self._populated(child) for child in node.children.values()):
            return False
        return not (node.subtree_control - THREADED_CONTROLLERS)

    def _no_internal_process_rule(self) -> bool:
        return PlantedBug.INTERNAL_PROCESS_ALLOWED not in self._bugs

    # --- readers ---------------------------------------------------------------------------------

    def _reader(self, file: str) -> _Reader | None:
        if file not in self._readers:
            self._readers[file] = self._make_reader(file)
        return self._readers[file]

    def _make_reader(self, file: str) -> _Reader | None:
        readers: dict[str, _Reader] = {
            "cgroup.controllers": lambda n, f: format_controller_list(self._controllers_of(n)),
            "cgroup.subtree_control": lambda n, f: format_controller_list(n.subtree_control),
            "cgroup.procs": lambda n, f: "".join(f"{pid}\n" for pid in sorted(n.pids)),
            "cgroup.threads": lambda n, f: "".join(f"{pid}\n" for pid in sorted(n.pids)),
            "cgroup.events": lambda n, f: (
                f"populated {int(self._populated(n))}\nfrozen {int(self._frozen(n))}\n"
            ),
            "cgroup.stat": lambda n, f: (
                f"nr_descendants {n.nr_descendants}\nnr_dying_descendants 0\n"
            ),
            "cgroup.type": lambda n, f: self._type_text(n),
            "cgroup.freeze": lambda n, f: f"{n.freeze}\n",
            "cgroup.max.depth": lambda n, f: _limit_text(n.max_depth),
            "cgroup.max.descendants": lambda n, f: _limit_text(n.max_descendants),
            "memory.current": lambda n, f: f"{sum(d.memory_usage_bytes for d in n.subtree())}\n",
            "memory.swap.current": lambda n, f: "0\n",
            "memory.oom.group": lambda n, f: n.values.get(f, "0") + "\n",
            "memory.events": lambda n, f: _events_text(
                sum((d.memory_events_local for d in n.subtree()), Counter())
            ),
            "memory.events.local": lambda n, f: _events_text(n.memory_events_local),
            "cpuset.cpus": lambda n, f: n.values.get(f, "") + "\n",
            "cpuset.mems": lambda n, f: n.values.get(f, "") + "\n",
            "cpuset.cpus.effective": lambda n, f: (
                format_bitmap_list(self._effective(n, "cpus")) + "\n"
            ),
            "cpuset.mems.effective": lambda n, f: (
                format_bitmap_list(self._effective(n, "mems")) + "\n"
            ),
            "cpuset.cpus.partition": lambda n, f: "member\n",
        }
        if file in MEMORY_LIMIT_DEFAULTS:
            return lambda n, f: n.values.get(f, MEMORY_LIMIT_DEFAULTS[f]) + "\n"
        hugetlb = _HUGETLB_FILE_RE.fullmatch(file)
        if hugetlb is not None:
            return self._hugetlb_reader(hugetlb.group(2))
        return readers.get(file)

    def _type_text(self, node: _Cgroup) -> str:
        # cgroup_type_show, without threaded cgroups (not modelled).
        if not self._is_valid_domain(node):
            return "domain invalid\n"
        if self._is_thread_root(node):
            return "domain threaded\n"
        return "domain\n"

    def _hugetlb_reader(self, attribute: str) -> _Reader:
        if attribute in ("max", "rsvd.max"):
            return lambda n, f: n.values.get(f, self._hugetlb_default_text()) + "\n"
        if attribute in ("events", "events.local"):
            return lambda n, f: "max 0\n"
        if attribute == "numa_stat":
            nodes = "".join(f" N{node}=0" for node in sorted(self._online_nodes))
            return lambda n, f: f"total=0{nodes}\n"
        return lambda n, f: "0\n"  # current, rsvd.current: nothing is ever charged

    def _hugetlb_default_text(self) -> str:
        if self._kernel.hugetlb_unset_max_reads_max:
            return "max"
        return str(self._counter_max * self._page_size_bytes)

    def _effective(self, node: _Cgroup, kind: str) -> frozenset[int]:
        online = self._online_cpus if kind == "cpus" else self._online_nodes
        parent_effective = online if node.parent is None else self._effective(node.parent, kind)
        if self._is_kernel_root(node):
            return online
        requested = _parse_stored_list(node.values.get(f"cpuset.{kind}", ""))
        effective = requested & parent_effective
        # cgroup v2: an empty request, or one disjoint from the parent, falls back to the parent.
        return effective if effective else parent_effective

    # --- writers ---------------------------------------------------------------------------------

    def _writer(self, file: str) -> _Writer | None:
        if file not in self._writers:
            self._writers[file] = self._make_writer(file)
        return self._writers[file]

    def _make_writer(self, file: str) -> _Writer | None:
        writers: dict[str, _Writer] = {
            "cgroup.procs": self._write_procs,
            "cgroup.threads": _not_modelled("writes to cgroup.threads"),
            "cgroup.subtree_control": self._write_subtree_control,
            "cgroup.kill": self._write_kill,
            "cgroup.freeze": _write_freeze,
            "cgroup.max.depth": _write_hierarchy_limit,
            "cgroup.max.descendants": _write_hierarchy_limit,
            "cgroup.type": _write_type,
            "memory.oom.group": _write_oom_group,
            "cpuset.cpus": self._write_cpuset,
            "cpuset.mems": self._write_cpuset,
            "cpuset.cpus.partition": _write_partition,
        }
        if file in MEMORY_LIMIT_DEFAULTS:
            return self._write_memory_limit
        hugetlb = _HUGETLB_FILE_RE.fullmatch(file)
        if hugetlb is not None and hugetlb.group(2) in ("max", "rsvd.max"):
            size_bytes = self._hugepage_sizes[hugetlb.group(1)]
            return lambda n, f, v: self._write_hugetlb_limit(n, f, v, size_bytes)
        return writers.get(file)

    def _write_procs(self, node: _Cgroup, file: str, value: str) -> None:
        pid = parse_kstrtoint(kernel_strip(value))
        if pid < 0:
            raise CgroupValueError("negative pid", value=value, errno_name="EINVAL")
        if pid == 0:
            raise CgroupValueError(
                "pid 0 (the writing process) is not modelled", value=value, errno_name="EOPNOTSUPP"
            )
        if pid not in self._processes:
            raise CgroupValueError("no such process", value=value, errno_name="ESRCH")
        # cgroup_migrate_vet_dst: a valid domain, then the no-internal-process rule.
        if not self._is_valid_domain(node):
            raise CgroupValueError(
                "destination is an invalid domain (its parent is a thread root)",
                value=value,
                errno_name="EOPNOTSUPP",
            )
        vetted = self._is_kernel_root(node) or self._can_be_thread_root(node)
        if not vetted and node.subtree_control and self._no_internal_process_rule():
            raise CgroupValueError(
                "no internal processes: subtree_control is not empty",
                value=value,
                errno_name="EBUSY",
            )
        previous = self._processes[pid]
        if previous is not None:
            previous.pids.discard(pid)
        node.pids.add(pid)
        self._processes[pid] = node

    def _write_subtree_control(self, node: _Cgroup, file: str, value: str) -> None:
        enable, disable = parse_subtree_control(value, known=self._known)
        available = self._controllers_of(node)
        to_enable: set[str] = set()
        to_disable: set[str] = set()
        # The kernel checks controllers in subsystem order; the first failure decides the errno.
        for name in CONTROLLER_ORDER:
            if name in enable and name not in node.subtree_control:
                if name not in available:
                    raise CgroupValueError(
                        f"{name} is not in cgroup.controllers", value=value, errno_name="ENOENT"
                    )
                to_enable.add(name)
            elif name in disable and name in node.subtree_control:
                if any(name in child.subtree_control for child in node.children.values()):
                    raise CgroupValueError(
                        f"a child still enables {name}", value=value, errno_name="EBUSY"
                    )
                to_disable.add(name)
        if to_enable:
            self._vet_enable(node, to_enable, value)
        node.subtree_control |= to_enable
        node.subtree_control -= to_disable
        for name in to_disable:
            for child in node.children.values():
                for key in [key for key in child.values if key.startswith(f"{name}.")]:
                    del child.values[key]

    def _vet_enable(self, node: _Cgroup, to_enable: set[str], value: str) -> None:
        """``cgroup_vet_subtree_control_enable``, without threaded cgroups."""
        if not self._is_valid_domain(node):
            raise CgroupValueError("invalid domain", value=value, errno_name="EOPNOTSUPP")
        if self._is_kernel_root(node) or not self._no_internal_process_rule():
            return
        if to_enable - THREADED_CONTROLLERS:
            if self._is_thread_root(node):
                raise CgroupValueError(
                    "domain controllers in a thread root", value=value, errno_name="EOPNOTSUPP"
                )
        elif self._can_be_thread_root(node):
            return  # threaded-only controllers may join processes
        if node.pids:
            raise CgroupValueError(
                "no internal processes: the cgroup has processes", value=value, errno_name="EBUSY"
            )

    def _write_kill(self, node: _Cgroup, file: str, value: str) -> None:
        if parse_kstrtoint(kernel_strip(value)) != 1:
            raise CgroupValueError("cgroup.kill takes only 1", value=value, errno_name="ERANGE")
        for descendant in node.subtree():
            for pid in sorted(descendant.pids):
                self.exit(pid, -9)

    def _write_memory_limit(self, node: _Cgroup, file: str, value: str) -> None:
        text = self._maybe_decimal(value)
        if PlantedBug.NO_PAGE_ROUNDING in self._bugs:
            node.values[file] = self._unrounded_memory_text(text)
            return
        pages = parse_page_counter(text, page_size_bytes=self._page_size_bytes)
        node.values[file] = format_page_counter(
            pages, limit_pages=self._counter_max, page_size_bytes=self._page_size_bytes
        )

    def _unrounded_memory_text(self, text: str) -> str:
        parse_page_counter(text, page_size_bytes=self._page_size_bytes)  # same errors as the kernel
        stripped = kernel_strip(text)
        if stripped == "max":
            return "max"
        value_bytes, _rest = memparse(stripped)
        return (
            "max" if value_bytes // self._page_size_bytes >= self._counter_max else str(value_bytes)
        )

    def _write_hugetlb_limit(self, node: _Cgroup, file: str, value: str, size_bytes: int) -> None:
        text = self._maybe_decimal(value)
        limit = hugetlb_limit_pages(
            huge_page_size_bytes=size_bytes, page_size_bytes=self._page_size_bytes
        )
        if PlantedBug.NO_HUGEPAGE_ROUNDING in self._bugs:
            pages = min(parse_page_counter(text, page_size_bytes=self._page_size_bytes), limit)
        else:
            pages = parse_hugetlb_limit(
                text, huge_page_size_bytes=size_bytes, page_size_bytes=self._page_size_bytes
            )
        node.values[file] = format_page_counter(
            pages, limit_pages=limit, page_size_bytes=self._page_size_bytes
        )

    def _maybe_decimal(self, value: str) -> str:
        stripped = kernel_strip(value)
        if PlantedBug.OCTAL_AS_DECIMAL in self._bugs and _OCTAL_RE.fullmatch(stripped):
            return stripped.lstrip("0") or "0"
        return value

    def _write_cpuset(self, node: _Cgroup, file: str, value: str) -> None:
        kind = file.removeprefix("cpuset.")
        if kind == "cpus":
            requested = parse_cpuset_write(value, nbits=self._nr_cpu_ids)
            allowed = self._possible_cpus
        else:
            requested = parse_cpuset_write(value, nbits=self._max_numnodes)
            # cgroup v2 checks against top_cpuset.mems_allowed = node_possible_map.
            allowed = self._possible_nodes
        if not requested <= allowed:
            raise CgroupValueError(
                f"{kind} outside the machine's set", value=value, errno_name="EINVAL"
            )
        current = _parse_stored_list(node.values.get(file, ""))
        if requested == current:
            return
        if self._populated(node) and current and not requested:
            # validate_change (memory-qos.md §7.4): a populated cpuset cannot become empty.
            raise CgroupValueError(
                "cannot empty the cpuset of a populated cgroup", value=value, errno_name="ENOSPC"
            )
        if PlantedBug.CPUSET_NO_NORMALISE in self._bugs:
            node.values[file] = kernel_strip(value)
        else:
            node.values[file] = format_bitmap_list(requested)


@functools.lru_cache(maxsize=256)
def _parse_stored_list(text: str) -> frozenset[int]:
    # Stored lists are valid kernel lists (possibly un-normalised under CPUSET_NO_NORMALISE).
    # Remembered per text (a pure function of it): each new pod cgroup's effective cpus and
    # mems are computed from its ancestors' few distinct lists, every render and every write.
    return parse_bitmap_list(text, nbits=1 << 16) if text else frozenset()


def _limit_text(limit: int | None) -> str:
    return "max\n" if limit is None else f"{limit}\n"


def _events_text(counts: Counter[str]) -> str:
    return "".join(f"{name} {counts[name]}\n" for name in MEMORY_EVENT_NAMES)


def _not_modelled(what: str) -> _Writer:
    def refuse(node: _Cgroup, file: str, value: str) -> None:
        raise CgroupValueError(f"{what} are not modelled", value=value, errno_name="EOPNOTSUPP")

    return refuse


def _write_freeze(node: _Cgroup, file: str, value: str) -> None:
    freeze = parse_kstrtoint(kernel_strip(value))
    if freeze not in (0, 1):
        raise CgroupValueError("cgroup.freeze takes 0 or 1", value=value, errno_name="ERANGE")
    node.freeze = freeze


def _write_hierarchy_limit(node: _Cgroup, file: str, value: str) -> None:
    stripped = kernel_strip(value)
    limit = None if stripped == "max" else parse_kstrtoint(stripped)
    if limit is not None and limit < 0:
        raise CgroupValueError("negative limit", value=value, errno_name="ERANGE")
    if file == "cgroup.max.depth":
        node.max_depth = limit
    else:
        node.max_descendants = limit


def _write_type(node: _Cgroup, file: str, value: str) -> None:
    if kernel_strip(value) == "threaded":
        raise CgroupValueError(
            "threaded cgroups are not modelled", value=value, errno_name="EOPNOTSUPP"
        )
    raise CgroupValueError("cgroup.type only accepts 'threaded'", value=value, errno_name="EINVAL")


def _write_oom_group(node: _Cgroup, file: str, value: str) -> None:
    oom_group = parse_kstrtoint(kernel_strip(value))
    if oom_group not in (0, 1):
        raise CgroupValueError("memory.oom.group takes 0 or 1", value=value, errno_name="EINVAL")
    node.values[file] = str(oom_group)


def _write_partition(node: _Cgroup, file: str, value: str) -> None:
    mode = kernel_strip(value)
    if mode in ("root", "isolated"):
        raise CgroupValueError(
            "cpuset partitions are not modelled", value=value, errno_name="EOPNOTSUPP"
        )
    if mode != "member":
        raise CgroupValueError("unknown partition type", value=value, errno_name="EINVAL")
