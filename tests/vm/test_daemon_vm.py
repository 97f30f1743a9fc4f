"""The daemon end to end on a real cgroup v2 tree: expectations for tests/vm/guest_daemon.py.

Theory of operation: guest_daemon.py runs in the session's one batched boot (``vm_batch``;
suites.py lists it): it starts `memstate run` on /sys/fs/cgroup, admits three Guaranteed pods,
populates them with real processes as a container runtime would, SIGKILLs the daemon, adds two
pods while it is down and restarts it with the manifests listed in reverse order, while a
watcher samples every protection under kubepods. It prints one JSON record per observation;
these host-side tests hold the expectations. A missing record fails with the guest's errors and
the daemon's stderr attached, so a crashed guest can never pass by omission.

The watcher's samples are checked here, not in the guest: at every observed moment from before
the kill until after READY=1, no running pod's memory.min was below what it had before the kill
(or lower than at an earlier moment), no running pod's cgroup was missing, and no cgroup's
memory.min/memory.low was below the sum of its children's.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import pytest

from . import guest_daemon as guest
from . import harness
from .conftest import Records, get_record, suite_records
from .suites import DAEMON

pytestmark = pytest.mark.vm

MIB = 1 << 20
RUNNING = {uid: mib for _, uid, mib in guest.RUNNING}
ADDED = {uid: mib for _, uid, mib in guest.ADDED}
MANIFESTS = sorted((name, uid) for name, uid, _ in (*guest.RUNNING, *guest.ADDED))


@pytest.fixture(scope="module")
def suite(vm_batch: harness.BatchResult) -> harness.SuiteResult:
    return vm_batch.suites[DAEMON]


@pytest.fixture(scope="module")
def daemon_stderr(vm_batch: harness.BatchResult) -> str:
    return vm_batch.vm.files.get(f"{guest.ARTIFACTS}/daemon.stderr", b"").decode(errors="replace")


@pytest.fixture(scope="module")
def records(vm_batch: harness.BatchResult) -> Records:
    return suite_records(vm_batch, DAEMON, daemon_stderr=f"{guest.ARTIFACTS}/daemon.stderr")


get = get_record


def pod_path(uid: str) -> str:
    return f"{guest.KUBEPODS}/pod{uid}"


def number(value: str | None) -> float | None:
    """A protection as a number ("max" is unbounded); None when the file was not there."""
    if value is None:
        return None
    return float("inf") if value == "max" else int(value)


def shortfalls(tree: Mapping[str, list[str | None]]) -> list[str]:
    """Cgroups whose memory.min or memory.low is below the sum of their children's."""
    found = []
    for path, values in tree.items():
        children = [c for c in tree if c.rpartition("/")[0] == path]
        for index, file in enumerate(("memory.min", "memory.low")):
            own = number(values[index])
            total = sum(number(tree[c][index]) or 0 for c in children)
            if own is not None and own < total:
                found.append(f"{path}/{file} = {own} < children's {total}")
    return found


# --- start, admission, the real tree ------------------------------------------------------------


def test_suite_ran_to_the_end_and_cleaned_up(
    suite: harness.SuiteResult, records: Records, daemon_stderr: str
) -> None:
    assert suite.rc == 0, f"{suite.stderr[-3000:]}\ndaemon stderr:\n{daemon_stderr[-3000:]}"
    assert {"memory", "cpuset", "hugetlb"} <= set(get(records, "facts")["enabled"])
    assert get(records, "first_start")["how"] == "python -m memstate run"
    assert get(records, "cleanup")["leftover"] == []


def test_node_is_sized_from_the_vms_sysfs(records: Records) -> None:
    """reservedMemory covers each node's MemTotal minus its hugepages minus the allocatable."""
    nodes = get(records, "node")["nodes"]
    reserved = {
        e["numaNode"]: e["limits"]["memory"] for e in get(records, "config")["reservedMemory"]
    }
    assert sorted(reserved) == [0, 1] == sorted(int(n) for n in nodes)
    for node, facts in nodes.items():
        kib = facts["memtotal_kib"] - facts["hugepages_kib"] - guest.ALLOCATABLE_MIB * 1024
        assert reserved[int(node)] == f"{kib}Ki"


@pytest.mark.parametrize("uid", sorted(RUNNING))
def test_guaranteed_pods_are_pinned_and_their_cgroups_converge(records: Records, uid: str) -> None:
    decision = get(records, f"decision/{uid}")
    assert decision["kind"] == "pod_admitted", decision
    assert len(decision["numa_nodes"]) == 1
    assert decision["takes"] == [[decision["numa_nodes"][0], "memory", RUNNING[uid] * MIB]]
    expected = decision["files"]
    assert expected["memory.min"] == expected["memory.max"] == str(RUNNING[uid] * MIB)
    assert expected["cpuset.mems"] == str(decision["numa_nodes"][0])
    converged = get(records, f"converged/{uid}")
    assert converged["found"] == converged["expected"] == expected
    before = get(records, "tree_before")["tree"][uid]
    assert before["cpuset.mems.effective"] == expected["cpuset.mems"]  # the kernel applies it


def test_no_node_is_overcommitted_before_the_kill(records: Records) -> None:
    used = {0: 0, 1: 0}
    for uid in RUNNING:
        for node, _, size in get(records, f"decision/{uid}")["takes"]:
            used[node] += size
    assert all(size <= guest.ALLOCATABLE_MIB * MIB for size in used.values()), used


def test_containers_hold_real_processes_and_stay_put(records: Records) -> None:
    containers = get(records, "containers")["containers"]
    assert sorted(containers) == sorted(RUNNING)
    after = get(records, "processes_after")["processes"]
    before = get(records, "tree_before")["tree"]
    for uid, container in containers.items():
        assert container["path"] == f"{pod_path(uid)}/ctr"
        assert container["memory_min"] == before[uid]["memory.min"]
        facts = after[uid]
        assert facts["alive"] and facts["in_cgroup"], facts
        assert facts["proc_cgroup"] == f"0::/{container['path']}"
        # NUMA pinning reaches the process: its allowed nodes are the pod's cpuset.mems.
        assert facts["mems_allowed"] == before[uid]["cpuset.mems"]


def test_daemon_survives_the_runtime_creating_container_cgroups(
    records: Records, daemon_stderr: str
) -> None:
    """A runtime creating container cgroups under the pods (inotify hints for paths memstate
    does not manage) must not stop the daemon: it corrects a later drift, and dies only by the
    SIGKILL. (It used to exit 1 here: Reconciler._scope_paths raised ValueError on the hint.)"""
    survived = get(records, "after_containers")
    assert survived["alive"], f"daemon exited {survived['returncode']}:\n{survived['stderr']}"
    assert survived["drift_corrected"]
    kill = get(records, "kill")
    assert kill["alive_before"] and kill["returncode"] == -signal.SIGKILL


# --- the restart ---------------------------------------------------------------------------------


def test_restart_requests_the_manifests_in_reverse_order(records: Records) -> None:
    requested = get(records, "after_restart")["requested"]
    assert requested == [uid for _, uid in reversed(MANIFESTS)]


@pytest.mark.parametrize("uid", sorted(RUNNING))
def test_running_pods_keep_identical_allocations(records: Records, uid: str) -> None:
    before = get(records, f"decision/{uid}")
    after = [d for d in get(records, "after_restart")["decisions"] if d["uid"] == uid]
    assert [d["kind"] for d in after] == ["pod_admitted"]
    assert after[0]["restored"] is True
    assert after[0]["allocation"] == before["allocation"]
    assert after[0]["files"] == before["files"]
    tree_before = get(records, "tree_before")["tree"][uid]
    tree_after = get(records, "tree_after")["tree"][uid]
    for file in ("memory.min", "memory.max", "cpuset.mems", "cpuset.mems.effective"):
        assert tree_after[file] == tree_before[file], file


def _free_before_restart(records: Records) -> dict[int, int]:
    free = {0: guest.ALLOCATABLE_MIB * MIB, 1: guest.ALLOCATABLE_MIB * MIB}
    for uid in RUNNING:
        for node, _, size in get(records, f"decision/{uid}")["takes"]:
            free[node] -= size
    return free


def test_pods_added_while_down_get_only_free_memory_or_a_reason(records: Records) -> None:
    """Requested before the running pods came back, d and e must not take their memory: d
    (24 MiB) fits only in what the running pods left free, e (48 MiB) fits nowhere."""
    free = _free_before_restart(records)
    decisions = {d["uid"]: d for d in get(records, "after_restart")["decisions"]}
    tree_after = get(records, "tree_after")
    outcomes = set()
    # Visit the pods in the order they were requested (reverse manifest order).
    for uid in (u for _, u in reversed(MANIFESTS) if u in ADDED):
        outcomes.add(decisions[uid]["kind"])
        decision = decisions[uid]
        size = ADDED[uid] * MIB
        if any(size <= room for room in free.values()):
            assert decision["kind"] == "pod_admitted", decision
            assert decision["restored"] is False
            for node, _, take in decision["takes"]:
                assert take <= free[node], (uid, node, take, free)
                free[node] -= take
            assert tree_after["converged"][uid] == decision["files"]
            assert tree_after["tree"][uid]["memory.min"] == str(size)
        else:
            assert decision["kind"] == "pod_rejected", decision
            assert decision["reason"] and decision["message"]
            assert tree_after["tree"][uid]["memory.min"] is None  # no cgroup
    # The scenario is sized so that both outcomes occur (otherwise it would test less).
    assert outcomes == {"pod_admitted", "pod_rejected"}


def test_node_protection_is_the_sum_of_the_admitted_pods(records: Records) -> None:
    decisions = get(records, "after_restart")["decisions"]
    admitted = sum(int(d["files"]["memory.min"]) for d in decisions if d["kind"] == "pod_admitted")
    tree = get(records, "tree_after")["tree"]
    assert tree[guest.KUBEPODS]["memory.min"] == str(admitted)


# --- the watcher ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watch(records: Records) -> Mapping[str, Any]:
    found = get(records, "watch")
    assert found["kept"], "the watcher kept no sample"
    return found


def test_watcher_saw_the_whole_restart(watch: Mapping[str, Any]) -> None:
    """A sample before the kill, samples while the daemon was down and restarting, and one that
    began after READY=1; every sample was a consistent picture (two identical reads)."""
    phases, acks = watch["phases"], watch["acks"]
    assert acks[0]["t"] <= phases["kill"]
    assert acks[-1]["n"] > acks[0]["n"]
    assert phases["sampled_after_ready"] >= phases["ready"]
    assert acks[-1]["t"] >= phases["sampled_after_ready"]
    assert watch["unstable"] == 0
    assert all(sample["stable"] for sample in watch["kept"])


def test_no_running_pods_protection_was_ever_lowered(
    records: Records, watch: Mapping[str, Any]
) -> None:
    before = get(records, "tree_before")["tree"]
    seen: dict[str, list[int]] = {uid: [] for uid in RUNNING}
    for sample in watch["kept"]:
        for uid in RUNNING:
            values = sample["tree"].get(pod_path(uid))
            assert values is not None, f"{pod_path(uid)} missing at sample {sample['n']}"
            assert values[0] is not None, f"{pod_path(uid)}/memory.min unreadable"
            protection = int(values[0])
            assert protection >= int(before[uid]["memory.min"]), (uid, sample["n"], protection)
            seen[uid].append(protection)
    for uid, values in seen.items():
        assert values == sorted(values), f"{uid} memory.min went down: {values}"


def test_no_parent_was_ever_below_the_sum_of_its_children(watch: Mapping[str, Any]) -> None:
    for sample in watch["kept"]:
        assert shortfalls(sample["tree"]) == [], f"sample {sample['n']}"


def test_the_last_sample_shows_the_new_pod(records: Records, watch: Mapping[str, Any]) -> None:
    """The watcher is not blind: after READY=1 it saw d's cgroup and kubepods raised for it."""
    last = watch["kept"][-1]["tree"]
    first = watch["kept"][0]["tree"]
    assert pod_path("vm-d") not in first
    assert last[pod_path("vm-d")][0] == str(ADDED["vm-d"] * MIB)
    assert int(last[guest.KUBEPODS][0]) == int(first[guest.KUBEPODS][0]) + ADDED["vm-d"] * MIB


# --- the log and the stop ------------------------------------------------------------------------


def test_no_cgroup_write_failed_on_the_real_kernel(records: Records) -> None:
    notes = get(records, "log")["cgroup_notes"]
    assert [n for n in notes if n["kind"] != "cgroup_drift_corrected"] == []
    # The only drift is the one the suite wrote.
    drift = {(n["path"], n["file"], n["found"]) for n in notes}
    assert drift <= {(guest.DRIFT_PATH, guest.DRIFT_FILE, guest.DRIFT_VALUE)}, drift
    assert get(records, "tree_after")["tree"][guest.DRIFT_PATH][guest.DRIFT_FILE] == "max"


def test_sigterm_stops_the_restarted_daemon_with_exit_0(records: Records) -> None:
    stop = get(records, "stop")
    assert stop["returncode"] == 0, stop["stderr"]
