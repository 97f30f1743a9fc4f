"""The simulated kernel: cgroup v2 trees that follow the kernel's rules, without a kernel.

`cgroupsim` (in memory), `cgroupdir` (directory-backed, for the demo and the end-to-end tests) and
`cgroupfaults` (a fault injector wrapping any `CgroupFS`). Their beliefs are checked against real
kernels by the VM suite (tests/vm).
"""

from memstate.host.sim.cgroupfaults import CallRecord, FaultInjectingCgroupFS, FaultRule
from memstate.host.sim.cgroupsim import (
    KERNEL_6_1,
    KERNEL_6_18,
    KernelProfile,
    PlantedBug,
    SimCgroupFS,
    kernel_profile_for_release,
)

__all__ = [
    "KERNEL_6_1",
    "KERNEL_6_18",
    "CallRecord",
    "FaultInjectingCgroupFS",
    "FaultRule",
    "KernelProfile",
    "PlantedBug",
    "SimCgroupFS",
    "kernel_profile_for_release",
]
