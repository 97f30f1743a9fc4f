"""The reconciler on a real cgroup v2 memory controller: expectations for guest_reconcile.py.

Theory of operation: tests/vm/guest_reconcile.py runs in the session's one batched boot
(``vm_batch``; suites.py lists it) and prints one JSON record per check; these host-side tests
assert on them, per memory reservation policy. A record that is missing fails the test with the
guest's errors attached, so a crashed guest can never pass by omission.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import pytest

from . import harness
from .suites import RECONCILE

pytestmark = pytest.mark.vm

POLICIES = ("None", "TieredReservation")


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Mapping[str, Mapping[str, Any]]:
    suite = vm_batch.suites[RECONCILE]
    found = {str(r["id"]): r for r in harness.parse_json_lines(suite.stdout)}
    if "skip" in found:
        pytest.fail(f"the VM lacks controllers the suite needs: {found['skip']}", pytrace=False)
    return found


def get(records: Mapping[str, Mapping[str, Any]], check_id: str) -> Mapping[str, Any]:
    record = records.get(check_id)
    if record is None:
        errors = {k: r.get("traceback") for k, r in records.items() if k.startswith("error")}
        pytest.fail(f"guest printed no {check_id!r}; guest errors: {errors}", pytrace=False)
    return record


def test_suite_ran_on_a_kernel_with_the_memory_controller(
    vm_batch: harness.BatchResult, records: Mapping[str, Mapping[str, Any]]
) -> None:
    assert vm_batch.suites[RECONCILE].rc == 0, vm_batch.suites[RECONCILE].stderr[-3000:]
    facts = get(records, "facts")
    assert {"memory", "cpuset", "hugetlb"} <= set(facts["enabled"])
    assert facts["online_nodes"] == "0-1"
    assert not [k for k in records if k.startswith("error")], records


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_root_converges_in_one_round_without_breaking_the_invariant(
    records: Mapping[str, Mapping[str, Any]], policy: str
) -> None:
    first = get(records, f"{policy}/first")
    assert first["converged"] and first["failures"] == [] and first["skipped"] == 0
    assert first["writes"] > 0
    assert first["violations"] == []
    # The invariant was checked after every write that can move a protection sum (limits,
    # cpusets and hugetlb writes cannot; the simulator suite checks after every single one).
    assert first["checks"] + first["passed_over"] == first["writes"]
    assert first["checks"] > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_second_pass_writes_nothing(records: Mapping[str, Mapping[str, Any]], policy: str) -> None:
    for check_id in (f"{policy}/second", f"{policy}/transition_second"):
        second = get(records, check_id)
        assert (second["converged"], second["writes"], second["attempted"]) == (True, 0, 0)


@pytest.mark.parametrize("policy", POLICIES)
def test_real_kernel_plans_and_reads_back_as_the_simulator_predicts(
    records: Mapping[str, Mapping[str, Any]], policy: str
) -> None:
    plans = get(records, f"{policy}/same_plan")
    assert plans["real"] == plans["sim"]
    written = get(records, f"{policy}/written")
    assert written["written"] > 0 and written["mismatches"] == []
    for check_id in (f"{policy}/compare_first", f"{policy}/compare_second"):
        compared = get(records, check_id)
        assert compared["checked"] > 0 and compared["mismatches"] == []


def test_tiered_reservation_writes_protections_and_none_does_not(
    records: Mapping[str, Mapping[str, Any]],
) -> None:
    def protection_writes(policy: str) -> list[str]:
        return [
            line
            for line in get(records, f"{policy}/same_plan")["real"]
            if "/memory.min =" in line or "/memory.low =" in line
        ]

    assert protection_writes("None") == []  # every target is the kernel's default 0
    tiered = protection_writes("TieredReservation")
    assert any(line.startswith("raise write kubepods/memory.min") for line in tiered)
    assert any("podg1-aaaa/memory.min = 67108864" in line for line in tiered)
    assert any("podb1-aaaa/memory.low = 33554432" in line for line in tiered)


@pytest.mark.parametrize("policy", POLICIES)
def test_transition_kills_and_removes_retired_pods_and_converges(
    records: Mapping[str, Mapping[str, Any]], policy: str
) -> None:
    transition = get(records, f"{policy}/transition")
    assert transition["baseline"] == []
    assert transition["violations"] == []
    assert transition["converged"] and transition["failures"] == []
    assert transition["killed_by"] == signal.SIGKILL
    assert transition["retired_present"] == []
    assert transition["invariant_after"] == []
    assert transition["sim_converged"]
    assert get(records, f"{policy}/cleanup")["leftover"] == []
