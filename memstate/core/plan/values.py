"""Cgroup files and their values, compared as the kernel prints them.

**Fewest writes.** A file is written only when its value differs from what observation found,
and both sides are compared after normalising them the way the kernel would read them back
(memstate.core.cgroup_values): ``1000000000`` and ``999997440`` are equal with 4 KiB pages,
``9223372036854775807`` is ``max``, ``0,1`` is ``0-1``, and 6.18's never-written hugetlb limit
9223372036854771712 is ``max``. Without this every resync would rewrite page-rounded values
forever. A fresh cgroup is assumed to hold the kernel defaults (`KERNEL_DEFAULTS`), so creating a
pod writes only the files whose target differs from the default.

Which kind a file is (`file_kind`) decides how the planner orders its writes.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from memstate.core.cgroup_values import (
    CONTROLLER_ORDER,
    CgroupValueError,
    kernel_strip,
    normalise_cpuset_value,
    normalise_hugetlb_value,
    normalise_memory_value,
    page_counter_max,
    parse_bitmap_list,
    parse_hugetlb_size_name,
)
from memstate.core.targets import MEMORY_LOW, MEMORY_MIN

FileKind = Literal["protection", "limit", "cpuset", "other"]

PROTECTION_FILES = (MEMORY_MIN, MEMORY_LOW)
SUBTREE_CONTROL = "cgroup.subtree_control"
CGROUP_KILL = "cgroup.kill"
CGROUP_EVENTS = "cgroup.events"
CGROUP_CONTROLLERS = "cgroup.controllers"
ZERO = "0"
UNLIMITED = "max"
DEFAULT_CPUSET_BITS = 8192

# What a freshly created cgroup reads (memory-qos.md §7.1, real-kernel-vm.md defaults table).
# hugetlb.<size>.max and .rsvd.max default to "max" (6.18 prints a number that normalises to it).
KERNEL_DEFAULTS: dict[str, str] = {
    "memory.min": ZERO,
    "memory.low": ZERO,
    "memory.high": UNLIMITED,
    "memory.max": UNLIMITED,
    "memory.swap.max": UNLIMITED,
    "memory.oom.group": ZERO,
    "cpuset.cpus": "",
    "cpuset.mems": "",
}
_LIMIT_FILES = frozenset({"memory.high", "memory.max", "memory.swap.max"})
_NORMALISE_CACHE_ENTRIES = 65536
_CPUSET_FILES = frozenset({"cpuset.cpus", "cpuset.mems"})
_HUGETLB_LIMIT_RE = re.compile(r"hugetlb\.([0-9]+[KMG]B)\.(?:max|rsvd\.max)")


# Memoised (a pure function of a name; planning asks for the same few files every round and a
# hugetlb file's kind costs a regular expression match).
@functools.lru_cache(maxsize=1024)
def file_kind(file: str) -> FileKind:
    """How a managed file is ordered: protection, limit, cpuset or other."""
    if file in PROTECTION_FILES:
        return "protection"
    if file in _LIMIT_FILES or _HUGETLB_LIMIT_RE.fullmatch(file):
        return "limit"
    if file in _CPUSET_FILES:
        return "cpuset"
    return "other"


def file_controller(file: str) -> str | None:
    """The controller providing `file` (``memory.max`` → ``memory``); None for core files."""
    prefix = file.split(".", 1)[0]
    return prefix if prefix in CONTROLLER_ORDER else None


@functools.lru_cache(maxsize=1024)
def kernel_default(file: str) -> str | None:
    """What `file` reads in a fresh cgroup, or None when not known."""
    if _HUGETLB_LIMIT_RE.fullmatch(file):
        return UNLIMITED
    return KERNEL_DEFAULTS.get(file)


class ValueModel:
    """Kernel-normalised comparison and arithmetic for one page size (see the module doc)."""

    def __init__(self, page_size_bytes: int) -> None:
        self.page_size_bytes = page_size_bytes
        # What "max" means in bytes: PAGE_COUNTER_MAX pages. Sums are clamped to it.
        self.unlimited_bytes = page_counter_max(page_size_bytes) * page_size_bytes
        # Planning 500 pods normalises the same few values thousands of times.
        self._normalised: dict[tuple[str, str], str | None] = {}

    def normalise(self, file: str, text: str) -> str | None:
        """What `file` reads back after writing `text`; None when the kernel would refuse it."""
        key = (file, text)
        if key not in self._normalised:
            if len(self._normalised) > _NORMALISE_CACHE_ENTRIES:
                self._normalised.clear()
            self._normalised[key] = self._normalise(file, text)
        return self._normalised[key]

    def _normalise(self, file: str, text: str) -> str | None:
        try:
            kind = file_kind(file)
            if kind == "protection" or file in _LIMIT_FILES:
                return normalise_memory_value(text, page_size_bytes=self.page_size_bytes)
            hugetlb = _HUGETLB_LIMIT_RE.fullmatch(file)
            if hugetlb is not None:
                return normalise_hugetlb_value(
                    text,
                    huge_page_size_bytes=parse_hugetlb_size_name(hugetlb.group(1)),
                    page_size_bytes=self.page_size_bytes,
                )
            if kind == "cpuset":
                return normalise_cpuset_value(text, nbits=DEFAULT_CPUSET_BITS)
            return kernel_strip(text)
        except (CgroupValueError, ValueError):
            return None

    def equal(self, file: str, desired: str, observed: str) -> bool:
        """True when writing `desired` would leave `file` reading like `observed` does."""
        wanted = self.normalise(file, desired)
        return wanted is not None and wanted == self.normalise(file, observed)

    def number(self, normalised: str) -> int:
        """A normalised byte value as an int ("max" → `unlimited_bytes`)."""
        return self.unlimited_bytes if normalised == UNLIMITED else int(normalised)

    def render(self, value_bytes: int) -> str:
        """The text to write for a byte count (saturating at "max")."""
        return UNLIMITED if value_bytes >= self.unlimited_bytes else str(value_bytes)

    def clamp(self, value_bytes: int) -> int:
        return min(value_bytes, self.unlimited_bytes)


@functools.lru_cache(maxsize=8)
def value_model(page_size_bytes: int) -> ValueModel:
    """The shared `ValueModel` of a page size: its normalisation cache outlives one plan (the
    daemon plans every round, each time normalising the same few values)."""
    return ValueModel(page_size_bytes)


def cpuset_ids(normalised: str) -> frozenset[int]:
    """The ids of a normalised cpuset value (empty for "")."""
    return parse_bitmap_list(normalised, nbits=DEFAULT_CPUSET_BITS) if normalised else frozenset()
