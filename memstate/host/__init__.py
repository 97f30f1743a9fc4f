"""Synchronous adapters to the machine: the cgroup v2 filesystem and sysfs.

The simulated kernel (in-memory and directory-backed trees, fault injection) is `memstate.host.sim`.

The reconciler is written against the `CgroupFS` protocol; see memstate.host.cgroupfs for the
contract (paths, values, errors). Importing this package has no side effects.
"""

from memstate.core.cgroup_values import EMPTY_WRITE
from memstate.host.cgroupfs import (
    CgroupFS,
    RealCgroupFS,
    available_controllers,
    enabled_controllers,
    is_populated,
    join_cgroup_path,
    parse_cgroup2_mounts,
    read_flat_keyed,
    read_pids,
    split_cgroup_path,
    walk,
)

__all__ = [
    "EMPTY_WRITE",
    "CgroupFS",
    "RealCgroupFS",
    "available_controllers",
    "enabled_controllers",
    "is_populated",
    "join_cgroup_path",
    "parse_cgroup2_mounts",
    "read_flat_keyed",
    "read_pids",
    "split_cgroup_path",
    "walk",
]
