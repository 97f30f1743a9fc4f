"""The kernel's answers, as measured, in one place (data only; no pytest, no memstate imports).

Rows marked ``vm`` come from real-kernel-vm.md ("Values read back from the real files", Linux
6.1.192, 4 KiB pages). Rows marked ``host`` were measured while writing this module on the
development host (Linux 6.18.44, cgroup2 with only hugetlb). Each row is
``(written, errno_name_or_None, read_back_without_newline_or_None, source)``: errno None means
the write succeeds and the file then reads `read_back`; otherwise the write fails with that errno
and the file keeps its previous value.

The tests feed the same inputs to the pure parsers, to SimCgroupFS and (differential test) to a
real kernel, so a row added here is checked everywhere.
"""

from __future__ import annotations

Row = tuple[str, str | None, str | None, str]

PAGE_SIZE_BYTES = 4096

# memory.min / memory.low / memory.high / memory.max all behave like this (4 KiB pages).
MEMORY_WRITE_ROWS: tuple[Row, ...] = (
    ("536870912", None, "536870912", "vm"),
    ("536870912\n", None, "536870912", "vm"),
    ("1000000", None, "999424", "vm"),
    ("4097", None, "4096", "vm"),
    ("4095", None, "0", "vm"),
    ("max", None, "max", "vm"),
    ("max\n", None, "max", "vm"),
    ("512M", None, "536870912", "vm"),
    ("512m", None, "536870912", "vm"),
    ("1G", None, "1073741824", "vm"),
    ("1T", None, "1099511627776", "vm"),
    ("2k", None, "0", "vm"),
    ("0x1000", None, "4096", "vm"),
    ("010", None, "0", "vm"),
    (" 4096", None, "4096", "vm"),
    ("4096 ", None, "4096", "vm"),
    ("4096\n\n", None, "4096", "vm"),
    ("\n", None, "0", "vm"),
    ("18446744073709551615", None, "max", "vm"),
    ("9223372036854775807", None, "max", "vm"),
    ("99999999999999999999999", None, "200376420520685568", "vm"),
    ("-1", "EINVAL", None, "vm"),
    ("garbage", "EINVAL", None, "vm"),
    ("512MB", "EINVAL", None, "vm"),
    ("1.5G", "EINVAL", None, "vm"),
    ("+4096", "EINVAL", None, "vm"),
)
MEMORY_FILES = ("memory.min", "memory.low", "memory.high", "memory.max")

# hugetlb.2MB.max (4 KiB base pages).
HUGETLB_2MB_WRITE_ROWS: tuple[Row, ...] = (
    ("4194304", None, "4194304", "vm"),
    ("1000000", None, "0", "vm"),
    ("2M", None, "2097152", "vm"),
    ("max", None, "max", "vm"),
    ("-1", "EINVAL", None, "vm"),
    ("garbage", "EINVAL", None, "vm"),
    ("010", None, "0", "host"),
    ("0x200000", None, "2097152", "host"),
    (" 2097152\n", None, "2097152", "host"),
    ("\n", None, "0", "host"),
    ("3G", None, "3221225472", "host"),
    ("2m", None, "2097152", "host"),
    ("99999999999999999999999", None, "200376420518592512", "host"),
    ("18446744073709551615", None, "max", "host"),
    ("9223372036854775807", None, "max", "host"),
    ("4611686018427387904", None, "4611686018427387904", "host"),
    ("1.5G", "EINVAL", None, "host"),
    ("+2097152", "EINVAL", None, "host"),
    ("2MB", "EINVAL", None, "host"),
)
HUGETLB_1GB_WRITE_ROWS: tuple[Row, ...] = (
    ("1073741824", None, "1073741824", "host"),
    ("1000000", None, "0", "host"),
    ("2G", None, "2147483648", "host"),
    ("max", None, "max", "host"),
)

# cpuset with 2 CPUs and 1 NUMA node (rows from the VM table).
CPUSET_CPUS_ROWS: tuple[Row, ...] = (
    ("0-1", None, "0-1", "vm"),
    ("1", None, "1", "vm"),
    ("0", None, "0", "vm"),
    ("0,1", None, "0-1", "vm"),
    ("5", "ERANGE", None, "vm"),
    ("0-63", "ERANGE", None, "vm"),
    ("garbage", "EINVAL", None, "vm"),
    ("-1", "EINVAL", None, "vm"),
    ("1-0", "EINVAL", None, "vm"),
)
CPUSET_MEMS_ONE_NODE_ROWS: tuple[Row, ...] = (
    ("0", None, "0", "vm"),
    ("1", "EINVAL", None, "vm"),
    ("0-1", "EINVAL", None, "vm"),
    ("3", "EINVAL", None, "vm"),
    ("garbage", "EINVAL", None, "vm"),
)
CPUSET_MEMS_TWO_NODE_ROWS: tuple[Row, ...] = (
    ("1", None, "1", "vm"),
    ("0-1", None, "0-1", "vm"),
    ("2", "EINVAL", None, "vm"),
    ("3", "EINVAL", None, "vm"),
)

# Defaults of a fresh child cgroup whose parent enables memory, cpuset and hugetlb
# (2 CPUs, 1 node), as read including the newline.
FRESH_CHILD_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("memory.min", "0\n"),
    ("memory.low", "0\n"),
    ("memory.high", "max\n"),
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("memory.oom.group", "0\n"),
    ("memory.current", "0\n"),
    ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"),
    ("cpuset.cpus", "\n"),
    ("cpuset.mems", "\n"),
    ("cpuset.cpus.effective", "0-1\n"),
    ("cpuset.mems.effective", "0\n"),
    ("cpuset.cpus.partition", "member\n"),
    ("hugetlb.2MB.max", "max\n"),
    ("hugetlb.1GB.max", "max\n"),
    ("hugetlb.2MB.events", "max 0\n"),
    ("cgroup.type", "domain\n"),
    ("cgroup.procs", ""),
)
# What a never-written hugetlb limit reads on 6.18 (PAGE_COUNTER_MAX pages in bytes).
HUGETLB_UNSET_MAX_6_18 = "9223372036854771712"

# Core files: (file, written, errno_name) measured on the host (6.18) for writes that fail,
# and succeed (errno None).
CORE_WRITE_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("cgroup.kill", "0", "ERANGE"),
    ("cgroup.kill", "2", "ERANGE"),
    ("cgroup.kill", "x", "EINVAL"),
    ("cgroup.freeze", "2", "ERANGE"),
    ("cgroup.freeze", "-1", "ERANGE"),
    ("cgroup.freeze", "x", "EINVAL"),
    ("cgroup.freeze", "1x", "EINVAL"),
    ("cgroup.freeze", " 1 ", None),
    ("cgroup.freeze", "0x1", None),
    ("cgroup.max.depth", "-1", "ERANGE"),
    ("cgroup.max.depth", "x", "EINVAL"),
    ("cgroup.max.depth", "0x10", None),
    ("cgroup.max.descendants", "1e3", "EINVAL"),
    ("cgroup.max.descendants", "99999999999", "ERANGE"),
    ("cgroup.max.descendants", "0100", None),
    ("cgroup.procs", "abc", "EINVAL"),
    ("cgroup.procs", "-1", "EINVAL"),
    ("cgroup.procs", "\n", "EINVAL"),
    ("cgroup.procs", "99999999", "ESRCH"),
    ("cgroup.controllers", "hugetlb", "EINVAL"),
    ("cgroup.events", "0", "EINVAL"),
    ("cgroup.stat", "0", "EINVAL"),
    ("cgroup.type", "domain", "EINVAL"),
)
