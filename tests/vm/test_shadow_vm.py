"""Shadow mode on a real cgroup v2 tree: expectations for tests/vm/guest_shadow.py.

The guest plays a kubelet (Memory Manager `None`, no MemoryQoS) on the VM's real tree, writes a
checkpoint that pins the pod elsewhere than memstate would, runs `memstate run` with
`mode: shadow`, and reads every file under kubepods before and after. Here: not one file
changed, appeared or vanished, and the disagreements were recorded. The suite runs in the
session's one boot (tests/vm/suites.py; `CGVM_SUITES=shadow` runs it alone).
"""

from __future__ import annotations

import pytest

from . import guest_shadow as guest
from . import harness
from .conftest import Records, get_record, suite_records
from .suites import SHADOW

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Records:
    return suite_records(vm_batch, SHADOW, daemon_stderr=f"{guest.ARTIFACTS}/daemon.stderr")


get = get_record


def test_not_one_file_of_the_real_tree_changes(records: Records) -> None:
    after = get(records, "after")
    assert after["files"] == get(records, "before")["files"] > 20
    assert after["changed"] == []
    assert after["appeared"] == []
    assert after["vanished"] == []
    assert get(records, "stop")["returncode"] == 0
    assert get(records, "cleanup")["leftover"] == []


def test_the_decision_is_made_and_the_disagreements_recorded(records: Records) -> None:
    decision = get(records, "decision")
    assert decision["numa_nodes"] == [[0]]
    (files,) = decision["files"]
    found = {d["subject"]: d for d in get(records, "disagreements")["found"]}
    assert set(found) == guest.EXPECTED  # memory.max agrees: the kubelet wrote memstate's value
    assert (found["numa_nodes"]["memstate"], found["numa_nodes"]["kubelet"]) == ("0", "1")
    assert found["memory.min"]["memstate"] == files["memory.min"] == str(guest.MEMORY_MIB << 20)
    assert found["memory.min"]["kubelet"] == "0"
    assert (found["cpuset.mems"]["memstate"], found["cpuset.mems"]["kubelet"]) == ("0", "")
    assert all(not d["resolved"] for d in found.values())
