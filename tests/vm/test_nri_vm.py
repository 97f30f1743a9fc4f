"""NRI adjustments applied on a real kernel: expectations for tests/vm/guest_nri.py.

Theory of operation: guest_nri.py runs in the session's one batched boot (``vm_batch``, 2 NUMA
nodes): `memstate run` with `nri:`, the Python runtime stand-in creating real container cgroups
under the daemon's kubelet-shaped pod cgroups, applying each CreateContainer answer as runc would
(`cpuset.mems`, the `unified` values), and putting a real process in each. The processes of the
pinned containers then allocate and touch memory. These host-side tests check that the answers
are memstate's recorded decisions, that the kernel shows what the runtime wrote, and that
`memory.numa_stat` puts the touched memory on the pinned node only. One run of just this suite:
``CGVM_SUITES=nri .venv/bin/pytest tests/vm/test_nri_vm.py -m vm``.
"""

from __future__ import annotations

import pytest

from . import guest_nri as guest
from . import harness
from .conftest import Records, get_record, suite_records
from .suites import NRI

pytestmark = pytest.mark.vm

PAGE = 4096
MEMORY_FILES = ("memory.high", "memory.min", "memory.low")
CONTAINERS = [
    (uid, spec.name, guest.container_id(uid, spec.name))
    for uid, specs in guest.PODS.items()
    for spec in specs
]


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Records:
    return suite_records(vm_batch, NRI, daemon_stderr=f"{guest.ARTIFACTS}/daemon.stderr")


get = get_record


def kernel_value(written: str) -> str:
    """What a memory.* file reads back after `written` (bytes round down to a page)."""
    return written if written == "max" else str(int(written) // PAGE * PAGE)


def test_the_plugin_registered_and_was_configured(records: Records) -> None:
    assert get(records, "nri/configure")["code"] == 0
    assert get(records, "nri/configure")["registrations"] == [["memstate", "50"]]
    assert get(records, "nri/synchronize")["code"] == 0
    for uid in guest.PODS:
        assert get(records, f"nri/run/{uid}")["code"] == 0


def test_the_guaranteed_pods_are_pinned_one_to_each_node(records: Records) -> None:
    assert len(get(records, "node")["nodes"]) == 2, "the session boot has 2 NUMA nodes"
    pinned = [get(records, f"decision/{uid}")["numa_nodes"] for uid in ("vm-nri-a", "vm-nri-b")]
    assert sorted(pinned) == [[0], [1]]
    assert get(records, "decision/vm-nri-c")["numa_nodes"] == []  # Burstable: not pinned


@pytest.mark.parametrize(("uid", "name", "cid"), CONTAINERS)
def test_create_container_answers_the_recorded_decision(
    records: Records, uid: str, name: str, cid: str
) -> None:
    decision = get(records, f"decision/{uid}")
    container = get(records, f"container/{cid}")
    assert container["code"] == 0, container["message"]
    wanted = decision["by_name"][name]
    expected_unified = {key: wanted[key] for key in MEMORY_FILES if key in wanted}
    assert container["adjusted"] == {
        "mems": decision["files"].get("cpuset.mems", ""),
        "unified": expected_unified,
    }
    assert set(expected_unified) >= {"memory.min", "memory.low"}  # TieredReservation
    assert "memory.high" in expected_unified  # MemoryQoS


@pytest.mark.parametrize(("uid", "name", "cid"), CONTAINERS)
def test_the_kernel_shows_the_adjustment(records: Records, uid: str, name: str, cid: str) -> None:
    container = get(records, f"container/{cid}")
    adjusted, files = container["adjusted"], container["files"]
    decision = get(records, f"decision/{uid}")
    assert container["path"] == f"{decision['cgroup']}/{cid}"  # under the kubelet's pod cgroup
    assert container["in_cgroup"]
    for key, value in adjusted["unified"].items():
        assert files[key] == kernel_value(value), key
    if adjusted["mems"]:
        assert files["cpuset.mems"] == adjusted["mems"]
        assert files["cpuset.mems.effective"] == adjusted["mems"]
        assert container["mems_allowed"] == adjusted["mems"]
    else:
        assert files["cpuset.mems"] == ""
        assert files["cpuset.mems.effective"] == "0-1"


def test_the_burstable_container_is_protected_and_throttled(records: Records) -> None:
    files = get(records, f"container/{guest.container_id('vm-nri-c', 'web')}")["files"]
    assert files["memory.low"] == str(16 << 20)  # its request, on the Burstable class's file
    assert files["memory.min"] == "0"
    assert files["memory.high"] != "max" and 16 << 20 < int(files["memory.high"]) < 64 << 20


@pytest.mark.parametrize(
    ("uid", "name", "cid"), [c for c in CONTAINERS if c[0] in ("vm-nri-a", "vm-nri-b")]
)
def test_memory_of_a_pinned_container_lands_on_its_node(
    records: Records, uid: str, name: str, cid: str
) -> None:
    container = get(records, f"container/{cid}")
    (node,) = get(records, f"decision/{uid}")["numa_nodes"]
    assert container["adjusted"]["mems"] == str(node)
    spec = next(s for s in guest.PODS[uid] if s.name == name)
    assert container["touched"] == guest.touch_bytes(spec) > 0
    anon = {int(n): b for n, b in container["anon"].items()}
    assert anon[node] >= container["touched"], anon
    assert set(anon) == {0, 1}, anon
    assert all(size == 0 for other, size in anon.items() if other != node), anon


def test_the_daemon_lived_and_stopped_cleanly(records: Records) -> None:
    assert get(records, "daemon")["alive"], get(records, "daemon")["stderr"]
    stop = get(records, "stop")
    assert stop["returncode"] == 0, stop["stderr"][-3000:]
    assert "Traceback" not in stop["stderr"]
    assert get(records, "cleanup")["leftover"] == []
