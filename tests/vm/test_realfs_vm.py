"""RealCgroupFS on a real cgroup v2 tree: expectations for tests/vm/guest_realfs.py.

The guest builds a small node with the reconciler under a private cgroup and observes it with
openat2 and with the walk alone. Here: openat2 is used on the VM's kernel (6.1), an observation
makes at most one open per call (the walk: several), and a pod cgroup removed, or removed and
made again, right after its parent was listed ends the same in both modes: no read error for the
removed one, the new cgroup's own (default) values for the replaced one. A write reads back in
both modes, and a write to a removed cgroup is ENOENT in both. The suite runs in the session's
one boot (tests/vm/suites.py; `CGVM_SUITES=realfs` runs it alone).
"""

from __future__ import annotations

import errno

import pytest

from . import guest_realfs as guest
from . import harness
from .conftest import Records, get_record, suite_records
from .suites import REALFS

pytestmark = pytest.mark.vm

DEFAULTS = {"0\n", "max\n", "\n"}  # a fresh cgroup's memory.min/low, memory.high/max, cpuset.mems


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Records:
    return suite_records(vm_batch, REALFS)


get = get_record


def test_the_real_tree_is_observed_with_one_open_per_call(records: Records) -> None:
    assert get(records, "build")["converged"] is True
    assert get(records, "openat2")["used"] is True
    opens = get(records, "opens")
    assert opens["same"] is True
    with_openat2, walked = opens["openat2"], opens["walk"]
    assert with_openat2["errors"] == walked["errors"] == 0
    assert with_openat2["calls"] == walked["calls"] > 20
    assert with_openat2["opens"] <= with_openat2["calls"]
    assert walked["opens"] > 3 * walked["calls"]  # root, kubepods, QoS, pod, then the file


def test_a_cgroup_removed_during_the_observation_ends_as_with_the_walk(records: Records) -> None:
    removed = get(records, "removed")
    assert removed["same"] is True
    assert removed["errors"] == []  # vanished: not a failure
    assert removed["victim_files"] == {} and removed["victim_children"] is None


def test_a_cgroup_made_again_is_read_afresh(records: Records) -> None:
    replaced = get(records, "replaced")
    assert replaced["same"] is True
    assert replaced["errors"] == []
    files = replaced["victim_files"]
    assert files and set(files.values()) <= DEFAULTS


def test_writes_read_back_and_a_removed_cgroup_is_enoent(records: Records) -> None:
    found = get(records, "writes")
    assert found["openat2 read back"] == "268435456\n"
    assert found["walk read back"] == "134217728\n"
    expected = [errno.ENOENT, "write", f"{guest.VICTIM}/memory.high"]
    assert found["openat2 removed"] == found["walk removed"] == expected
