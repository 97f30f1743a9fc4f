"""Real-kernel cgroup v2 behaviour, asserted on records from ONE VM boot (2 nodes, hugepages=8).

Theory of operation: tests/vm/guest_probe.py performs the operations inside the VM and records
what the kernel did; the expected values here are the tables of
shared/specs/real-kernel-vm.md and memory-qos.md §7 (kernel 6.1, 4 KiB pages). Each test
asserts one row, so a kernel that behaves differently fails exactly the rows it differs on.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import guest_probe
from .conftest import Probe

pytestmark = pytest.mark.vm

MIB = 1 << 20
UNCHANGED = object()  # the write must leave the baseline value in place

# written -> (errno, read-back); memory.min/low/high/max behave identically.
MEMORY_LIMIT_TABLE: dict[str, tuple[str | None, object]] = {
    "536870912": (None, "536870912\n"),
    "536870912\n": (None, "536870912\n"),
    "1000000": (None, "999424\n"),  # rounded down to a page multiple
    "4097": (None, "4096\n"),
    "4095": (None, "0\n"),
    "max": (None, "max\n"),
    "max\n": (None, "max\n"),
    "512M": (None, "536870912\n"),  # K/M/G/T/P/E suffixes, either case
    "512m": (None, "536870912\n"),
    "1G": (None, "1073741824\n"),
    "1T": (None, "1099511627776\n"),
    "2k": (None, "0\n"),  # 2048 rounds down to 0
    "0x1000": (None, "4096\n"),  # hex accepted
    "010": (None, "0\n"),  # a leading 0 means octal: 8 bytes
    " 4096": (None, "4096\n"),  # whitespace stripped
    "4096 ": (None, "4096\n"),
    "4096\n\n": (None, "4096\n"),
    "": (None, UNCHANGED),  # a zero-length write never reaches the handler
    "\n": (None, "0\n"),  # empty after strip parses as 0
    "18446744073709551615": (None, "max\n"),  # >= PAGE_COUNTER_MAX pages reads as max
    "9223372036854775807": (None, "max\n"),
    "99999999999999999999999": (None, "200376420520685568\n"),  # wraps mod 2^64, page floor
    "-1": ("EINVAL", UNCHANGED),
    "garbage": ("EINVAL", UNCHANGED),
    "512MB": ("EINVAL", UNCHANGED),
    "1.5G": ("EINVAL", UNCHANGED),
    "+4096": ("EINVAL", UNCHANGED),
}

HUGETLB_TABLE: dict[str, tuple[str | None, object]] = {
    "4194304": (None, "4194304\n"),
    "1000000": (None, "0\n"),  # rounds down to 2 MiB
    "2M": (None, "2097152\n"),
    "max": (None, "max\n"),
    "-1": ("EINVAL", UNCHANGED),
    "garbage": ("EINVAL", UNCHANGED),
}

# written -> (errno, read-back, effective); 2 CPUs and 2 NUMA nodes in the VM.
CPUS_TABLE: dict[str, tuple[str | None, object, object]] = {
    "0-1": (None, "0-1\n", "0-1\n"),
    "1": (None, "1\n", "1\n"),
    "0": (None, "0\n", "0\n"),
    "0,1": (None, "0-1\n", "0-1\n"),  # normalised
    "5": ("ERANGE", UNCHANGED, UNCHANGED),
    "0-63": ("ERANGE", UNCHANGED, UNCHANGED),
    "garbage": ("EINVAL", UNCHANGED, UNCHANGED),
    "-1": ("EINVAL", UNCHANGED, UNCHANGED),
    "1-0": ("EINVAL", UNCHANGED, UNCHANGED),
    "": (None, UNCHANGED, UNCHANGED),  # zero-length write does nothing
    "\n": (None, "\n", "0-1\n"),  # clears: effective falls back to the parent's
}
MEMS_TABLE: dict[str, tuple[str | None, object, object]] = {
    "1": (None, "1\n", "1\n"),
    "0-1": (None, "0-1\n", "0-1\n"),
    "0,1": (None, "0-1\n", "0-1\n"),
    "0": (None, "0\n", "0\n"),
    "2": ("EINVAL", UNCHANGED, UNCHANGED),  # mems uses EINVAL, not ERANGE
    "3": ("EINVAL", UNCHANGED, UNCHANGED),
    "garbage": ("EINVAL", UNCHANGED, UNCHANGED),
    "": (None, UNCHANGED, UNCHANGED),
    "\n": (None, "\n", "0-1\n"),
}

DEFAULTS = {
    "memory.min": "0\n",
    "memory.low": "0\n",
    "memory.high": "max\n",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.oom.group": "0\n",
    "memory.current": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "cpuset.cpus": "\n",
    "cpuset.mems": "\n",
    "cpuset.cpus.effective": "0-1\n",
    "cpuset.mems.effective": "0-1\n",  # 2 nodes
    "cpuset.cpus.partition": "member\n",
    "hugetlb.2MB.max": "max\n",
    "hugetlb.1GB.max": "max\n",
    "hugetlb.2MB.events": "max 0\n",
    "cgroup.type": "domain\n",
    "cgroup.procs": "",
}


def _assert_write(
    record: Any, errno: str | None, expected: object, field: str = "read", before: str = "before"
) -> None:
    assert record["errno"] == errno, record
    if expected is UNCHANGED:
        assert record[field] == record[before], record
    else:
        assert record[field] == expected, record


def test_probe_ran_every_check_without_error(kernel_probe: Probe) -> None:
    errors = {k: r["traceback"] for k, r in kernel_probe.records.items() if k.startswith("error ")}
    assert errors == {}
    assert kernel_probe.get("done")["errors"] == 0
    assert kernel_probe.suite.rc == 0, kernel_probe.suite.stderr


def test_vm_environment(kernel_probe: Probe) -> None:
    env = kernel_probe.get("env")
    assert env["page_size"] == 4096  # every table below assumes 4 KiB pages
    assert env["nodes_online"] == "0-1"
    assert env["cpus_online"] == "0-1"
    assert env["hugepages_per_node"] == {"node0": 4, "node1": 4}  # hugepages=8 split evenly
    assert env["swap_total"] == "0 kB"
    assert {"memory", "cpuset", "hugetlb"} <= set(env["root_subtree_control"])


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_fresh_cgroup_default(kernel_probe: Probe, name: str) -> None:
    assert kernel_probe.get(f"default {name}") == {"id": f"default {name}", "value": DEFAULTS[name]}


@pytest.mark.parametrize("name", guest_probe.MEMORY_LIMIT_FILES)
def test_root_cgroup_has_no_memory_limit_files(kernel_probe: Probe, name: str) -> None:
    assert kernel_probe.get(f"root {name}")["exists"] is False


@pytest.mark.parametrize("name", ["memory.stat", "memory.numa_stat", "memory.pressure"])
def test_root_cgroup_has_memory_stat_files(kernel_probe: Probe, name: str) -> None:
    assert kernel_probe.get(f"root {name}")["exists"] is True


def test_child_without_parent_memory_controller_has_no_memory_files(kernel_probe: Probe) -> None:
    record = kernel_probe.get("nomem child memory.max")
    assert record["parent_subtree_control"] == ""
    assert record["errno"] == "ENOENT"


@pytest.mark.parametrize("written", list(MEMORY_LIMIT_TABLE))
@pytest.mark.parametrize("name", guest_probe.MEMORY_LIMIT_FILES)
def test_memory_limit_write(kernel_probe: Probe, name: str, written: str) -> None:
    record = kernel_probe.get(f"write {name} {written!r}")
    assert record["before"] == guest_probe.MEMORY_BASELINE + "\n"
    errno, expected = MEMORY_LIMIT_TABLE[written]
    _assert_write(record, errno, expected)
    if errno is None:
        assert record["written"] == len(written.encode())


@pytest.mark.parametrize("written", list(HUGETLB_TABLE))
def test_hugetlb_max_write(kernel_probe: Probe, written: str) -> None:
    record = kernel_probe.get(f"write hugetlb.2MB.max {written!r}")
    assert record["before"] == guest_probe.HUGETLB_BASELINE + "\n"
    _assert_write(record, *HUGETLB_TABLE[written])


@pytest.mark.parametrize(
    ("name", "written"),
    [("cpuset.cpus", w) for w in CPUS_TABLE] + [("cpuset.mems", w) for w in MEMS_TABLE],
)
def test_cpuset_write(kernel_probe: Probe, name: str, written: str) -> None:
    table = CPUS_TABLE if name == "cpuset.cpus" else MEMS_TABLE
    errno, expected, effective = table[written]
    record = kernel_probe.get(f"write {name} {written!r}")
    _assert_write(record, errno, expected)
    if effective is UNCHANGED:
        assert record["effective"] == record["before"], record
    else:
        assert record["effective"] == effective, record


def test_cpuset_child_may_name_cpus_and_nodes_outside_its_parent(kernel_probe: Probe) -> None:
    record = kernel_probe.get("cpuset child outside parent")
    assert record["cpus"]["errno"] is None
    assert record["mems"]["errno"] is None
    assert (record["cpus_read"], record["cpus_effective"]) == ("1\n", "0\n")
    assert (record["mems_read"], record["mems_effective"]) == ("1\n", "0\n")


@pytest.mark.parametrize(
    ("name", "written", "errno"),
    [
        ("memory.current", "0", "EINVAL"),
        ("memory.events", "0", "EINVAL"),
        ("memory.reclaim", "1M", "EAGAIN"),  # nothing to reclaim in an empty cgroup
    ],
)
def test_other_memory_writes(kernel_probe: Probe, name: str, written: str, errno: str) -> None:
    assert kernel_probe.get(f"other {name} {written!r}")["errno"] == errno


def test_swap_max_zero_is_accepted(kernel_probe: Probe) -> None:
    record = kernel_probe.get("other memory.swap.max '0'")
    assert (record["errno"], record["read"]) == (None, "0\n")


@pytest.mark.parametrize(
    ("cgroup", "name", "written", "expected"),
    [
        ("probe-nest", "memory.min", "100M", 100 * MIB),
        ("probe-nest/child", "memory.min", "200M", 200 * MIB),
        ("probe-nest/child", "memory.max", "50M", 50 * MIB),
        ("probe-nest/child", "memory.high", "130M", 130 * MIB),
        ("probe-nest/child", "memory.low", "300M", 300 * MIB),
    ],
)
def test_no_cross_checks_between_levels_or_files(
    kernel_probe: Probe, cgroup: str, name: str, written: str, expected: int
) -> None:
    """Child above parent, max below min, high above max: the kernel accepts them all."""
    record = kernel_probe.get(f"nest {cgroup} {name} {written!r}")
    assert (record["errno"], record["read"]) == (None, f"{expected}\n")


def test_process_move(kernel_probe: Probe) -> None:
    record = kernel_probe.get("procs move")
    assert record["errno"] is None
    assert record["proc_cgroup"] == "0::/probe-member\n"
    assert record["procs"].strip().isdigit()
    assert record["events"].startswith("populated 1\n")


@pytest.mark.parametrize(
    ("check_id", "errno"),
    [
        ("procs nonexistent pid", "ESRCH"),
        ("procs garbage", "EINVAL"),
        ("subtree_control +memory populated", "EBUSY"),  # no internal processes
        ("rmdir populated", "EBUSY"),
        ("mkdir existing", "EEXIST"),
        ("subtree_control +memory empty", None),
        ("procs into inner node", "EBUSY"),
        ("procs into leaf", None),
        ("rmdir with child cgroup", "EBUSY"),  # EBUSY, not ENOTEMPTY
        ("rmdir missing", "ENOENT"),
    ],
)
def test_membership_errnos(kernel_probe: Probe, check_id: str, errno: str | None) -> None:
    assert kernel_probe.get(check_id)["errno"] == errno


def test_cgroup_kill(kernel_probe: Probe) -> None:
    record = kernel_probe.get("cgroup.kill")
    assert record["errno"] is None
    assert record["child"].get("signal") == "SIGKILL"
    assert record["events"].startswith("populated 0\n")


def test_oom_kill_at_memory_max(kernel_probe: Probe) -> None:
    """A child allocating 256 MiB under memory.max=64M is OOM-killed; events say so."""
    record = kernel_probe.get("oom kill")
    assert record["max"] == f"{64 * MIB}\n"
    assert record["child"].get("signal") == "SIGKILL", record
    assert record["mib_reported"] < 64
    assert record["events"]["oom_kill"] == 1
    assert record["events"]["oom"] >= 1
    assert record["events"]["max"] >= 1
    assert record["events_local"]["oom_kill"] == 1
    assert record["peak"] == {"value": f"{64 * MIB}\n"}  # the peak is exactly the limit
    assert record["current_after"] < MIB


def test_lowering_memory_max_below_usage_succeeds_and_oom_kills(kernel_probe: Probe) -> None:
    record = kernel_probe.get("lower memory.max under load")
    assert record["ready"] == "ready"
    assert record["current_before"] >= 48 * MIB
    assert record["write"]["errno"] is None  # no EBUSY in v2: the write wins
    assert record["child"].get("signal") == "SIGKILL"
    assert record["events"]["oom_kill"] == 1
    assert record["read"] == f"{16 * MIB}\n"


def test_numa_placement_follows_cpuset_mems(kernel_probe: Probe) -> None:
    """64 MiB allocated in a cgroup with cpuset.mems=1 lands on node 1."""
    record = kernel_probe.get("numa placement")
    assert record["mems_write"]["errno"] is None
    assert record["mems_effective"] == "1\n"
    assert record["ready"] == "ready"
    assert record["anon"]["N1"] >= 64 * MIB
    assert record["anon"]["N0"] < MIB


def test_hugetlb_limit_sigbus_on_third_page(kernel_probe: Probe) -> None:
    """hugetlb.2MB.max=4 MiB: the mmap succeeds, the third 2 MiB page faults with SIGBUS."""
    record = kernel_probe.get("hugetlb sigbus")
    assert record["limit_write"]["errno"] is None
    assert record["max"] == "4194304\n"
    assert record["mapped"] is True
    assert record["pages_touched"] == 2
    assert record["child"].get("signal") == "SIGBUS"
    assert record["events"]["max"] >= 1
