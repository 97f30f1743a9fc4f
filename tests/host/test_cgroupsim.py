"""SimCgroupFS against the kernel's rules.

Goal: code tested against the simulator meets the same errnos and read-backs as on a real
kernel. Method: the measured tables (kernel_tables) are replayed through the simulator's CgroupFS
interface — write, then read back, or check the errno and that the value is unchanged — and each
membership/lifecycle rule of real-kernel-vm.md and memory-qos.md §7 gets a scenario.
"""

from __future__ import annotations

import errno
import random

import pytest

from memstate.core.errors import HostError
from memstate.host import (
    EMPTY_WRITE,
    available_controllers,
    enabled_controllers,
    is_populated,
    read_flat_keyed,
    read_pids,
    walk,
)
from memstate.host.sim import (
    KERNEL_6_1,
    KERNEL_6_18,
    PlantedBug,
    SimCgroupFS,
    cgroupsim,
    kernel_profile_for_release,
)
from memstate.host.sim.cgroupsim import _Cgroup
from tests.host import kernel_tables as kt


def make_sim(**kwargs: object) -> SimCgroupFS:
    """A root with memory, cpuset and hugetlb enabled for its children, as in the VM."""
    sim = SimCgroupFS(**kwargs)  # type: ignore[arg-type]
    sim.write("", "cgroup.subtree_control", "+memory +cpuset +hugetlb")
    return sim


def errno_of(call: object, *args: str) -> int | None:
    """Run call(*args); the HostError errno, or None on success."""
    try:
        call(*args)  # type: ignore[operator]
    except HostError as exc:
        return exc.errno
    return None


def check_row(sim: SimCgroupFS, path: str, file: str, row: kt.Row, before: str) -> None:
    """Apply one table row: success reads back the value, failure leaves `before`."""
    written, errno_name, read_back, _source = row
    code = errno_of(sim.write, path, file, written)
    if errno_name is None:
        assert code is None
        assert sim.read(path, file) == f"{read_back}\n"
    else:
        assert code == getattr(errno, errno_name)
        assert sim.read(path, file) == before


@pytest.mark.parametrize("file", kt.MEMORY_FILES)
@pytest.mark.parametrize("row", kt.MEMORY_WRITE_ROWS, ids=lambda row: repr(row[0]))
def test_memory_table(file: str, row: kt.Row) -> None:
    """Every memory row, for each of memory.min/low/high/max (they behave identically)."""
    sim = make_sim()
    sim.mkdir("probe")
    sim.write("probe", file, "8192")
    check_row(sim, "probe", file, row, before="8192\n")


@pytest.mark.parametrize(
    ("file", "row"),
    [("hugetlb.2MB.max", row) for row in kt.HUGETLB_2MB_WRITE_ROWS]
    + [("hugetlb.2MB.rsvd.max", row) for row in kt.HUGETLB_2MB_WRITE_ROWS]
    + [("hugetlb.1GB.max", row) for row in kt.HUGETLB_1GB_WRITE_ROWS],
)
def test_hugetlb_table(file: str, row: kt.Row) -> None:
    """hugetlb limits round down to the huge page; rsvd.max uses the same handler."""
    sim = make_sim()
    sim.mkdir("probe")
    sim.write("probe", file, "max")
    check_row(sim, "probe", file, row, before="max\n")


@pytest.mark.parametrize("row", kt.CPUSET_CPUS_ROWS, ids=lambda row: repr(row[0]))
def test_cpuset_cpus_table(row: kt.Row) -> None:
    """cpuset.cpus with 2 CPUs: normalisation, ERANGE beyond nr_cpu_ids, EINVAL syntax."""
    sim = make_sim(online_cpus="0-1")
    sim.mkdir("probe")
    check_row(sim, "probe", "cpuset.cpus", row, before="\n")


@pytest.mark.parametrize("row", kt.CPUSET_MEMS_ONE_NODE_ROWS, ids=lambda row: repr(row[0]))
def test_cpuset_mems_one_node_table(row: kt.Row) -> None:
    """cpuset.mems on a 1-node machine: any other node is EINVAL (not ERANGE)."""
    sim = make_sim(online_nodes="0")
    sim.mkdir("probe")
    check_row(sim, "probe", "cpuset.mems", row, before="\n")


@pytest.mark.parametrize("row", kt.CPUSET_MEMS_TWO_NODE_ROWS, ids=lambda row: repr(row[0]))
def test_cpuset_mems_two_node_table(row: kt.Row) -> None:
    """cpuset.mems with 2 nodes; effective follows the request."""
    sim = make_sim(online_nodes="0-1")
    sim.mkdir("probe")
    check_row(sim, "probe", "cpuset.mems", row, before="\n")
    if row[1] is None:
        assert sim.read("probe", "cpuset.mems.effective") == f"{row[2]}\n"


@pytest.mark.parametrize(("file", "expected"), kt.FRESH_CHILD_DEFAULTS)
def test_fresh_child_defaults(file: str, expected: str) -> None:
    """A new child reads the kernel's defaults, newline included."""
    sim = make_sim()
    sim.mkdir("fresh")
    assert sim.read("fresh", file) == expected


def test_hugetlb_default_differs_by_kernel_profile() -> None:
    """6.18 prints a never-written hugetlb limit as a number; writing max gives "max"."""
    sim = make_sim(kernel=KERNEL_6_18)
    sim.mkdir("a")
    assert sim.read("a", "hugetlb.2MB.max") == kt.HUGETLB_UNSET_MAX_6_18 + "\n"
    sim.write("a", "hugetlb.2MB.max", "max")
    assert sim.read("a", "hugetlb.2MB.max") == "max\n"
    assert kernel_profile_for_release("6.1.0-56-amd64") == KERNEL_6_1
    assert kernel_profile_for_release("6.18.44-fc-v782") == KERNEL_6_18
    assert kernel_profile_for_release("7.0.1") == KERNEL_6_18


def test_page_size_is_a_parameter() -> None:
    """64 KiB pages round memory values to 64 KiB."""
    sim = make_sim(page_size_bytes=65536, hugepage_sizes_bytes=[512 << 20])
    sim.mkdir("a")
    sim.write("a", "memory.max", "1000000")
    assert sim.read("a", "memory.max") == "983040\n"
    assert "hugetlb.512MB.max" in _readable_files(sim, "a")


def _readable_files(sim: SimCgroupFS, path: str) -> set[str]:
    candidates = [
        "memory.max",
        "memory.min",
        "hugetlb.2MB.max",
        "hugetlb.1GB.max",
        "hugetlb.512MB.max",
        "cpuset.cpus",
        "cpuset.cpus.effective",
        "cgroup.events",
        "cgroup.kill",
        "cgroup.type",
    ]
    present = set()
    for file in candidates:
        code = errno_of(sim.read, path, file)
        if code != errno.ENOENT:
            present.add(file)
    return present


def test_controller_files_follow_parent_subtree_control() -> None:
    """memory.*/cpuset.*/hugetlb.* exist only where the parent enables the controller."""
    sim = SimCgroupFS()
    sim.mkdir("a")
    assert _readable_files(sim, "a") == {"cgroup.events", "cgroup.kill", "cgroup.type"}
    assert available_controllers(sim, "a") == frozenset()
    sim.write("", "cgroup.subtree_control", "+memory")
    assert "memory.max" in _readable_files(sim, "a")
    assert "cpuset.cpus" not in _readable_files(sim, "a")
    sim.write("a", "memory.max", "1G")
    sim.write("", "cgroup.subtree_control", "-memory")
    assert errno_of(sim.read, "a", "memory.max") == errno.ENOENT
    # Re-enabling creates a fresh controller state: the old value is gone.
    sim.write("", "cgroup.subtree_control", "+memory")
    assert sim.read("a", "memory.max") == "max\n"


def test_root_has_no_memory_limits_and_no_child_only_files() -> None:
    """The root cgroup: no memory.min/low/high/max, no cgroup.events/kill/type (ENOENT)."""
    sim = make_sim()
    for file in ("memory.min", "memory.low", "memory.high", "memory.max", "cgroup.events"):
        assert errno_of(sim.read, "", file) == errno.ENOENT
    assert errno_of(sim.write, "", "cgroup.kill", "1") == errno.ENOENT
    assert errno_of(sim.read, "", "hugetlb.2MB.max") == errno.ENOENT
    assert sim.read("", "cpuset.cpus.effective") == "0-1\n"
    assert sim.read("", "cgroup.controllers") == "cpuset cpu io memory hugetlb pids\n"


def test_delegated_root_behaves_as_a_child() -> None:
    """delegated=True: the root has child files and obeys the no-internal-process rule."""
    sim = SimCgroupFS(delegated=True, controllers=["memory"])
    assert sim.read("", "memory.max") == "max\n"
    assert sim.read("", "cgroup.events") == "populated 0\nfrozen 0\n"
    sim.spawn("")
    assert errno_of(sim.write, "", "cgroup.subtree_control", "+memory") == errno.EBUSY


@pytest.mark.parametrize(("file", "written", "errno_name"), kt.CORE_WRITE_ROWS)
def test_core_file_writes(file: str, written: str, errno_name: str | None) -> None:
    """cgroup.* writes: kstrtoint parsing, ranges, read-only files (measured on the host)."""
    sim = make_sim()
    sim.mkdir("a")
    code = errno_of(sim.write, "a", file, written)
    assert code == (None if errno_name is None else getattr(errno, errno_name))


def test_core_read_backs_after_writes() -> None:
    """Octal/hex in core files, freeze state in cgroup.events, inherited by new children."""
    sim = make_sim()
    sim.mkdir("a")
    sim.write("a", "cgroup.max.descendants", "0100")
    assert sim.read("a", "cgroup.max.descendants") == "64\n"
    sim.write("a", "cgroup.max.depth", "0x10")
    assert sim.read("a", "cgroup.max.depth") == "16\n"
    sim.write("a", "cgroup.freeze", "1")
    assert sim.read("a", "cgroup.events") == "populated 0\nfrozen 1\n"
    sim.mkdir("a/b")
    assert sim.read("a/b", "cgroup.events") == "populated 0\nfrozen 1\n"
    assert sim.read("a/b", "cgroup.freeze") == "0\n"
    sim.write("a", "cgroup.freeze", "0")
    assert read_flat_keyed(sim, "a/b", "cgroup.events")["frozen"] == 0
    assert errno_of(sim.read, "a", "cgroup.kill") == errno.EINVAL
    assert read_flat_keyed(sim, "a", "cgroup.stat") == {
        "nr_descendants": 1,
        "nr_dying_descendants": 0,
    }


def test_lifecycle_errnos() -> None:
    """mkdir/rmdir: EEXIST, ENOENT, EBUSY (populated, child), ENOTDIR on files."""
    sim = make_sim()
    sim.mkdir("a")
    assert errno_of(sim.mkdir, "a") == errno.EEXIST
    assert errno_of(sim.mkdir, "cgroup.procs") == errno.EEXIST
    assert errno_of(sim.mkdir, "x/y") == errno.ENOENT
    assert errno_of(sim.mkdir, "a/cgroup.procs/y") == errno.ENOTDIR
    sim.mkdir("a/b")
    assert errno_of(sim.rmdir, "a") == errno.EBUSY
    assert errno_of(sim.rmdir, "a/cgroup.procs") == errno.ENOTDIR
    pid = sim.spawn("a/b")
    assert errno_of(sim.rmdir, "a/b") == errno.EBUSY
    sim.exit(pid)
    sim.rmdir("a/b")
    sim.rmdir("a")
    assert errno_of(sim.rmdir, "a") == errno.ENOENT
    assert not sim.exists("a")
    assert errno_of(sim.read, "a", "cgroup.events") == errno.ENOENT
    assert errno_of(sim.write, "a", "memory.max", "1") == errno.ENOENT
    assert errno_of(sim.rmdir, "") == errno.EPERM


def test_hierarchy_limits_make_mkdir_fail_with_eagain() -> None:
    """cgroup.max.depth / cgroup.max.descendants of any ancestor bound mkdir (EAGAIN)."""
    sim = make_sim()
    sim.mkdir("a")
    sim.write("a", "cgroup.max.depth", "0")
    assert errno_of(sim.mkdir, "a/b") == errno.EAGAIN
    sim.write("a", "cgroup.max.depth", "1")
    sim.mkdir("a/b")
    assert errno_of(sim.mkdir, "a/b/c") == errno.EAGAIN
    sim.write("a", "cgroup.max.depth", "max")
    sim.write("a", "cgroup.max.descendants", "2")
    sim.mkdir("a/b/c")
    assert errno_of(sim.mkdir, "a/d") == errno.EAGAIN


def test_descendant_counts_follow_mkdir_and_rmdir_without_walking_the_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cgroup.stat's nr_descendants and the max.descendants limit come from counts kept by
    mkdir and rmdir (the kernel's cgrp->nr_descendants), not from a walk of the subtree: the
    root's and kubepods' cgroup.stat are rendered by DirCgroupFS after every pod mkdir."""
    sim = make_sim()
    for path in ("a", "a/b", "a/b/c", "a/d", "e"):
        sim.mkdir(path)
    sim.rmdir("a/b/c")
    sim.write("a", "cgroup.max.descendants", "3")

    def no_walk(self: _Cgroup) -> list[_Cgroup]:
        raise AssertionError(f"walked the subtree of {self.name!r}")

    monkeypatch.setattr(_Cgroup, "subtree", no_walk)
    counts = {
        path: read_flat_keyed(sim, path, "cgroup.stat")["nr_descendants"]
        for path in ("", "a", "a/b", "a/d", "e")
    }
    assert counts == {"": 4, "a": 2, "a/b": 0, "a/d": 0, "e": 0}
    sim.mkdir("a/b/f")  # the third descendant of a: allowed
    assert errno_of(sim.mkdir, "a/d/g") == errno.EAGAIN
    assert read_flat_keyed(sim, "", "cgroup.stat")["nr_descendants"] == 5


def test_exists_answers_without_building_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """exists() is False for a missing cgroup and for a path through a file, True for a cgroup,
    and raises EINVAL for an invalid path, without making the HostError a read would raise
    (the reconciler asks about every new pod cgroup before making it)."""
    sim = make_sim()
    sim.mkdir("a")
    sim.mkdir("a/b")

    def no_error(*args: object, **kwargs: object) -> HostError:
        raise AssertionError(f"built an error for {args}")

    monkeypatch.setattr(cgroupsim, "host_error", no_error)
    assert sim.exists("") and sim.exists("a") and sim.exists("a/b")
    assert not sim.exists("x") and not sim.exists("a/x") and not sim.exists("a/b/x/y")
    assert not sim.exists("a/cgroup.procs") and not sim.exists("a/cgroup.procs/y")
    monkeypatch.undo()
    assert errno_of(sim.exists, "a//b") == errno.EINVAL


def test_membership_rows() -> None:
    """cgroup.procs: moves, populated flips (recursive), ESRCH, EINVAL."""
    sim = make_sim()
    sim.mkdir("probe")
    sim.mkdir("probe/leaf")
    pid = sim.spawn()
    assert sim.cgroup_of(pid) is None
    sim.write("probe/leaf", "cgroup.procs", str(pid))
    assert sim.cgroup_of(pid) == "probe/leaf"
    assert read_pids(sim, "probe/leaf") == (pid,)
    assert is_populated(sim, "probe")
    assert is_populated(sim, "probe/leaf")
    sim.write("probe", "cgroup.procs", f"{pid}\n")
    assert sim.read("probe/leaf", "cgroup.procs") == ""
    assert not is_populated(sim, "probe/leaf")
    assert errno_of(sim.write, "probe", "cgroup.procs", "99999999") == errno.ESRCH
    assert errno_of(sim.write, "probe", "cgroup.procs", "abc") == errno.EINVAL
    assert errno_of(sim.write, "probe", "cgroup.procs", "0") == errno.EOPNOTSUPP
    sim.exit(pid, status=-15)
    assert sim.exit_status(pid) == -15
    assert not is_populated(sim, "probe")
    assert errno_of(sim.write, "probe", "cgroup.procs", str(pid)) == errno.ESRCH


def test_no_internal_process_rule() -> None:
    """EBUSY both ways: +domain controller with own processes; a pid into a domain parent."""
    sim = make_sim()
    sim.mkdir("parent")
    sim.mkdir("parent/child")
    pid = sim.spawn("parent")
    assert errno_of(sim.write, "parent", "cgroup.subtree_control", "+memory") == errno.EBUSY
    assert enabled_controllers(sim, "parent") == frozenset()
    sim.write("parent/child", "cgroup.procs", str(pid))
    sim.write("parent", "cgroup.subtree_control", "+memory")
    assert errno_of(sim.write, "parent", "cgroup.procs", str(pid)) == errno.EBUSY
    assert sim.cgroup_of(pid) == "parent/child"
    other = sim.spawn()
    assert errno_of(sim.write, "parent", "cgroup.procs", str(other)) == errno.EBUSY
    sim.write("parent/child", "cgroup.procs", str(other))
    # The kernel's root is exempt.
    sim.write("", "cgroup.procs", str(other))


def test_threaded_controllers_make_a_thread_root() -> None:
    """cpuset (threaded) may be enabled next to processes; the cgroup becomes a thread root and
    its children invalid domains until the processes leave or the controller is disabled."""
    sim = make_sim()
    sim.mkdir("a")
    pid = sim.spawn("a")
    sim.write("a", "cgroup.subtree_control", "+cpuset")
    assert enabled_controllers(sim, "a") == frozenset({"cpuset"})
    assert sim.read("a", "cgroup.type") == "domain threaded\n"
    sim.mkdir("a/b")
    assert sim.read("a/b", "cgroup.type") == "domain invalid\n"
    assert errno_of(sim.write, "a/b", "cgroup.procs", str(pid)) == errno.EOPNOTSUPP
    assert errno_of(sim.write, "a/b", "cgroup.subtree_control", "+cpuset") == errno.EOPNOTSUPP
    assert errno_of(sim.write, "a", "cgroup.subtree_control", "+memory") == errno.EOPNOTSUPP
    sim.write("a", "cgroup.subtree_control", "-cpuset")
    assert sim.read("a/b", "cgroup.type") == "domain\n"
    sim.write("a/b", "cgroup.procs", str(pid))
    # No processes of its own now: enabling is fine, but with a populated child the cgroup can
    # no longer become a thread root, so processes may not come back.
    sim.write("a", "cgroup.subtree_control", "+cpuset")
    assert sim.read("a", "cgroup.type") == "domain\n"
    assert errno_of(sim.write, "a", "cgroup.procs", str(pid)) == errno.EBUSY


def test_subtree_control_errnos() -> None:
    """ENOENT for unavailable, EINVAL for unknown or unsigned, EBUSY when a child enables it,
    all-or-nothing for multi-token writes, no-ops succeed."""
    sim = SimCgroupFS(
        controllers=["memory", "hugetlb"], known_controllers=["memory", "hugetlb", "cpuset"]
    )
    sim.mkdir("a")
    sim.mkdir("a/b")
    assert errno_of(sim.write, "a", "cgroup.subtree_control", "+memory") == errno.ENOENT
    assert errno_of(sim.write, "", "cgroup.subtree_control", "+cpuset") == errno.ENOENT
    assert errno_of(sim.write, "", "cgroup.subtree_control", "+foo") == errno.EINVAL
    assert errno_of(sim.write, "", "cgroup.subtree_control", "memory") == errno.EINVAL
    assert errno_of(sim.write, "", "cgroup.subtree_control", "+memory +cpuset") == errno.ENOENT
    assert sim.read("", "cgroup.subtree_control") == ""
    sim.write("", "cgroup.subtree_control", "+hugetlb +memory")
    sim.write("", "cgroup.subtree_control", "+memory")  # already on: no-op
    sim.write("", "cgroup.subtree_control", EMPTY_WRITE)  # nothing requested: no-op
    assert sim.read("", "cgroup.subtree_control") == "memory hugetlb\n"
    sim.write("a", "cgroup.subtree_control", "+memory")
    assert errno_of(sim.write, "", "cgroup.subtree_control", "-memory") == errno.EBUSY
    sim.write("a", "cgroup.subtree_control", "-memory")
    sim.write("", "cgroup.subtree_control", "-memory")
    assert sim.read("a", "cgroup.controllers") == "hugetlb\n"


def test_cgroup_kill_kills_the_subtree() -> None:
    """cgroup.kill: every process below gets SIGKILL (-9); outside processes survive."""
    sim = make_sim()
    sim.mkdir("a")
    sim.mkdir("a/b")
    inner = sim.spawn("a/b")
    outer = sim.spawn("a")
    bystander = sim.spawn()
    sim.write("a", "cgroup.kill", "1")
    assert sim.exit_status(inner) == -9
    assert sim.exit_status(outer) == -9
    assert sim.exit_status(bystander) is None
    assert not is_populated(sim, "a")
    sim.write("a", "cgroup.kill", "1")  # an empty cgroup is fine
    sim.rmdir("a/b")


def test_cpuset_effective_and_emptying() -> None:
    """Effective = request ∩ parent's effective, falling back to the parent's; ENOSPC when a
    populated cgroup's cpuset would become empty; EMPTY_WRITE clears an unpopulated one."""
    sim = make_sim(online_cpus="0-3", online_nodes="0-1")
    sim.mkdir("a")
    sim.write("", "cgroup.subtree_control", "+cpuset")
    sim.write("a", "cgroup.subtree_control", "+cpuset")
    sim.mkdir("a/b")
    sim.write("a", "cpuset.cpus", "0-1")
    sim.write("a/b", "cpuset.cpus", "3")
    assert sim.read("a/b", "cpuset.cpus") == "3\n"
    assert sim.read("a/b", "cpuset.cpus.effective") == "0-1\n"
    sim.write("a/b", "cpuset.cpus", "1-3")
    assert sim.read("a/b", "cpuset.cpus.effective") == "1\n"
    pid = sim.spawn("a/b")
    assert errno_of(sim.write, "a/b", "cpuset.cpus", EMPTY_WRITE) == errno.ENOSPC
    sim.exit(pid)
    sim.write("a/b", "cpuset.cpus", EMPTY_WRITE)
    assert sim.read("a/b", "cpuset.cpus") == "\n"
    assert sim.read("a/b", "cpuset.cpus.effective") == "0-1\n"
    assert errno_of(sim.write, "a", "cpuset.cpus.partition", "root") == errno.EOPNOTSUPP
    assert errno_of(sim.write, "a", "cpuset.cpus.partition", "bogus") == errno.EINVAL
    sim.write("a", "cpuset.cpus.partition", "member")


def test_memory_files_misc() -> None:
    """Read-only memory files refuse writes (EINVAL); oom.group takes 0/1; no cross-checks;
    test hooks drive memory.current and memory.events (hierarchical) / events.local."""
    sim = make_sim()
    sim.mkdir("p")
    sim.write("p", "cgroup.subtree_control", "+memory")
    sim.mkdir("p/c")
    for file in ("memory.current", "memory.events", "memory.events.local", "memory.swap.current"):
        assert errno_of(sim.write, "p", file, "0") == errno.EINVAL
    sim.write("p", "memory.oom.group", "1")
    assert sim.read("p", "memory.oom.group") == "1\n"
    assert errno_of(sim.write, "p", "memory.oom.group", "2") == errno.EINVAL
    sim.write("p", "memory.swap.max", "0")
    # The kernel does no parent/child or min/max cross-check at write time.
    sim.write("p", "memory.min", "100M")
    sim.write("p/c", "memory.min", "200M")
    sim.write("p/c", "memory.max", "50M")
    sim.write("p/c", "memory.high", "80M")
    sim.set_memory_usage("p/c", 8192)
    sim.set_memory_usage("p", 4096)
    assert sim.read("p", "memory.current") == "12288\n"
    sim.add_memory_event("p/c", "oom_kill")
    assert read_flat_keyed(sim, "p", "memory.events")["oom_kill"] == 1
    assert read_flat_keyed(sim, "p", "memory.events.local")["oom_kill"] == 0
    assert read_flat_keyed(sim, "p/c", "memory.events.local")["oom_kill"] == 1


def test_value_too_long_is_e2big() -> None:
    """kernfs refuses writes longer than a page."""
    sim = make_sim()
    sim.mkdir("a")
    assert errno_of(sim.write, "a", "memory.max", "1" * 4097) == errno.E2BIG


def test_list_children_walk_and_exists() -> None:
    """list_children is sorted; walk orders parents before/after children."""
    sim = make_sim()
    for path in ("b", "a", "a/y", "a/x"):
        sim.mkdir(path)
    assert sim.list_children("") == ["a", "b"]
    assert list(walk(sim)) == ["", "a", "a/x", "a/y", "b"]
    assert list(walk(sim, topdown=False)) == ["a/x", "a/y", "a", "b", ""]
    assert sim.exists("a/x")
    assert not sim.exists("a/cgroup.procs")
    assert not sim.exists("nope/x")


@pytest.mark.parametrize(
    ("bug", "probe"),
    [
        (PlantedBug.NO_PAGE_ROUNDING, ("memory.max", "1000000", "1000000\n")),
        (PlantedBug.NO_HUGEPAGE_ROUNDING, ("hugetlb.2MB.max", "1000000", "999424\n")),
        (PlantedBug.OCTAL_AS_DECIMAL, ("memory.max", "010000", "8192\n")),
        (PlantedBug.CPUSET_NO_NORMALISE, ("cpuset.cpus", "0,1", "0,1\n")),
    ],
)
def test_planted_value_bugs_change_read_backs(bug: PlantedBug, probe: tuple[str, str, str]) -> None:
    """Each planted belief produces a read-back the kernel would not (the honest sim does not)."""
    file, written, wrong = probe
    honest, planted = make_sim(), make_sim(planted_bugs=[bug])
    for sim in (honest, planted):
        sim.mkdir("a")
        sim.write("a", file, written)
    assert planted.read("a", file) == wrong
    assert honest.read("a", file) != wrong


def test_planted_structural_bugs() -> None:
    """RMDIR_ENOTEMPTY and INTERNAL_PROCESS_ALLOWED change errnos."""
    sim = make_sim(planted_bugs=[PlantedBug.RMDIR_ENOTEMPTY, PlantedBug.INTERNAL_PROCESS_ALLOWED])
    sim.mkdir("a")
    sim.mkdir("a/b")
    assert errno_of(sim.rmdir, "a") == errno.ENOTEMPTY
    sim.spawn("a")
    sim.write("a", "cgroup.subtree_control", "+memory")
    sim.spawn("a")


def test_constructor_validates_the_machine() -> None:
    """Impossible machine descriptions are refused up front."""
    with pytest.raises(ValueError, match="controllers"):
        SimCgroupFS(controllers=["memory", "bogus"])
    with pytest.raises(ValueError, match="online cpus"):
        SimCgroupFS(online_cpus="0-3", possible_cpus="0-1")
    with pytest.raises(ValueError):
        SimCgroupFS(page_size_bytes=3000)


def test_mems_are_checked_against_possible_nodes() -> None:
    """cgroup v2 accepts any possible node (node_possible_map); effective keeps to online ones."""
    sim = make_sim(online_nodes="0", possible_nodes="0-1")
    sim.mkdir("a")
    sim.write("a", "cpuset.mems", "1")
    assert sim.read("a", "cpuset.mems") == "1\n"
    assert sim.read("a", "cpuset.mems.effective") == "0\n"
    assert errno_of(sim.write, "a", "cpuset.mems", "2") == errno.EINVAL
    assert errno_of(sim.write, "a", "cpuset.mems", "1024") == errno.ERANGE


def test_subtree_walks_parents_before_children_in_creation_order() -> None:
    """The iterative walk gives what the recursive definition gives, on random trees."""

    def recursive(node: _Cgroup) -> list[_Cgroup]:
        found = [node]
        for child in node.children.values():
            found.extend(recursive(child))
        return found

    rng = random.Random(7)
    for _ in range(50):
        root = _Cgroup(name="", parent=None)
        nodes = [root]
        for index in range(rng.randrange(0, 60)):
            parent = rng.choice(nodes)
            child = _Cgroup(name=f"c{index}", parent=parent)
            parent.children[child.name] = child
            nodes.append(child)
        for node in nodes:
            assert [n.name for n in node.subtree()] == [n.name for n in recursive(node)]
