"""Synchronous adapters to the machine: the cgroup v2 filesystem (real, simulated, faulty).

The reconciler is written against the `CgroupFS` protocol; see memstate.host.cgroupfs for the
contract (paths, values, errors). Importing this package has no side effects.
"""

from memstate.host.cgroupfaults import FaultInjectingCgroupFS, FaultRule, Operation
from memstate.host.cgroupfs import (
    EMPTY_VALUE,
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
from memstate.host.cgroupsim import (
    KERNEL_6_1,
    KERNEL_6_18,
    KernelProfile,
    PlantedBug,
    SimCgroupFS,
    kernel_profile_for_release,
)

__all__ = [
    "EMPTY_VALUE",
    "KERNEL_6_1",
    "KERNEL_6_18",
    "CgroupFS",
    "FaultInjectingCgroupFS",
    "FaultRule",
    "KernelProfile",
    "Operation",
    "PlantedBug",
    "RealCgroupFS",
    "SimCgroupFS",
    "available_controllers",
    "enabled_controllers",
    "is_populated",
    "join_cgroup_path",
    "kernel_profile_for_release",
    "parse_cgroup2_mounts",
    "read_flat_keyed",
    "read_pids",
    "split_cgroup_path",
    "walk",
]
