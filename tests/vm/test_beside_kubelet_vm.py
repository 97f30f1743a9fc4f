"""memstate beside a kubelet on a real cgroup v2 tree: expectations for
tests/vm/guest_beside_kubelet.py (the session boot, 2 NUMA nodes).

The guest plays the kubelet and the runtime for both drivers (cgroupfs with containerd's
container naming, systemd naming with CRI-O's), with real processes in the container cgroups;
memstate runs with `ownership: beside-kubelet`, `mode: numa`, the driver taken from the kubelet's
config file, the pods (and container ids) from a `/pods` endpoint. The values below are computed
by hand from the pods: G Guaranteed 32 MiB, B Burstable 16 MiB request / 48 MiB limit,
TieredReservation, memoryThrottlingFactor 0.9, 4 KiB pages.
"""

from __future__ import annotations

import pytest

from . import guest_beside_kubelet as guest
from . import harness
from .conftest import Records, get_record, suite_records
from .suites import BESIDE_KUBELET

pytestmark = pytest.mark.vm

MIB = 1 << 20
G = str(32 * MIB)
B = str(16 * MIB)
# floor((16 MiB + 0.9 × (48 MiB − 16 MiB)) / 4096) × 4096 (memory-qos.md §4.1)
B_HIGH = "46972928"
DRIVERS = list(guest.RUNS)


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Records:
    return suite_records(vm_batch, BESIDE_KUBELET)


get = get_record


@pytest.mark.parametrize("driver", DRIVERS)
def test_memstate_made_nothing_before_the_kubelet(records: Records, driver: str) -> None:
    before = get(records, f"{driver}/before_kubelet")
    assert before["made_by_memstate"] == [] and before["removed_by_memstate"] == []
    decisions = before["decisions"]
    _, _, g_uid, b_uid = guest.RUNS[driver]
    assert len(decisions[g_uid]["numa_nodes"]) == 1  # pinned
    assert decisions[b_uid]["numa_nodes"] == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_kernel_shows_memstates_values_and_the_kubelets(records: Records, driver: str) -> None:
    converged = get(records, f"{driver}/converged")
    paths, files = converged["paths"], converged["files"]
    node = ",".join(
        str(n)
        for n in get(records, f"{driver}/before_kubelet")["decisions"][guest.RUNS[driver][2]][
            "numa_nodes"
        ]
    )
    kubepods, burstable = files[paths["kubepods"]], files[paths["burstable"]]
    g, b = files[paths["g"]], files[paths["b"]]
    g_ctr, b_ctr = files[paths["g_container"]], files[paths["b_container"]]
    sandbox = files[paths["b_sandbox"]]
    # memstate's: Memory QoS on kubepods, the QoS, pod and container cgroups; the pin.
    assert (kubepods["memory.min"], kubepods["memory.low"]) == (str(48 * MIB), B)
    assert burstable["memory.low"] == B
    assert (g["memory.min"], g["memory.low"], g["cpuset.mems"]) == (G, "0", node)
    assert (b["memory.min"], b["memory.low"], b["cpuset.mems"]) == ("0", B, "")
    assert (g_ctr["memory.min"], g_ctr["memory.high"]) == (G, "max")
    assert (b_ctr["memory.low"], b_ctr["memory.high"]) == (B, B_HIGH)
    # The kubelet's and the runtime's files hold what they wrote.
    assert kubepods["memory.max"] == guest.KUBELET_KUBEPODS_MAX
    for pod in (g, b):
        assert pod["memory.max"] == guest.KUBELET_POD_MAX
        assert pod["hugetlb.2MB.max"] == "0"
    assert g_ctr["memory.max"] == b_ctr["memory.max"] == "max"
    # The sandbox's id is no container's: left alone.
    assert (sandbox["memory.low"], sandbox["memory.high"]) == ("0", "max")
    # The pin holds for the container's process.
    assert g_ctr["cpuset.mems.effective"] == node
    process = converged["g_process"]
    assert process["alive"] and process["in_cgroup"] and process["mems_allowed"] == node
    assert converged["made_by_memstate"] == [] and converged["removed_by_memstate"] == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_pod_the_kubelet_removed_is_released_without_memstate_touching_it(
    records: Records, driver: str
) -> None:
    after = get(records, f"{driver}/after_removal")
    assert after["kubelet_could_not_remove"] == []
    assert (after["kubepods"]["memory.min"], after["kubepods"]["memory.low"]) == (G, "0")
    assert after["burstable"]["memory.low"] == "0"
    assert after["made_by_memstate"] == [] and after["removed_by_memstate"] == []
    assert after["notes"] == []
    assert get(records, f"{driver}/stop")["returncode"] == 0
    assert get(records, f"{driver}/cleanup")["leftover"] == []
