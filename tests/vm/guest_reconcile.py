"""Guest-side reconciler suite: memstate's reconciler on a real cgroup v2 memory controller.

Theory of operation: this program runs inside the cgvm VM (tests/vm/suites.py adds it to the
session boot) and only *observes*, like guest_probe.py: it prints one JSON object per check
(``{"id": ..., ...}``) and the expectations live in tests/vm/test_reconcile_vm.py on the host.

For each memory reservation policy (None and TieredReservation) it takes a private cgroup
``/sys/fs/cgroup/memstatevm<policy>`` as the managed root (a delegated subtree) and a mixed set
of Guaranteed (NUMA-pinned, one with hugepages), Burstable and BestEffort pods, and:

1. reconciles an empty root: the tree must converge in one round, with the protection
   invariant checked after every single operation on the real kernel;
2. reconciles again: zero writes;
3. replays the same rounds on a SimCgroupFS configured like this kernel (controllers, page and
   hugepage sizes, NUMA nodes, kernel version): the plans must be the same operations, and every
   managed file (and every value written) must read back exactly as the simulator says;
4. a transition: two pods retired — one with a live forked process in a runtime-style container
   cgroup, removed with ``pod_removal="kill"`` — and two admitted; it must converge (rounds
   until the killed process is gone), never break the invariant, and again match the simulator.

Everything it created is removed at the end. Stdlib plus memstate and tests.factories only.
Run by hand: ``scripts/cgvm run --numa 2 --hugepages 8 -- python -m tests.vm.guest_reconcile``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from memstate.core.errors import HostError
from memstate.core.targets import NodeTargets
from memstate.host import CgroupFS, RealCgroupFS, available_controllers, enabled_controllers, walk
from memstate.host.sim import SimCgroupFS, kernel_profile_for_release
from memstate.reconcile.reconciler import Reconciler, ReconcileReport, ReconcilerOptions
from memstate.testing import protection_shortfalls
from tests.factories import container, pod, pod_of, static_config, topology
from tests.reconcile.helpers import CheckingCgroupFS, FakeClock, targets_of_pods, tree_snapshot

DEFAULT_MOUNT = "/sys/fs/cgroup"
POLICIES = ("None", "TieredReservation")
ROUNDS_MAX = 200


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def check(check_id: str, function: Callable[[], dict[str, Any]]) -> None:
    """Run one check and print its record (or an error record with the traceback)."""
    started = time.monotonic()
    try:
        record = function()
    except Exception:  # an observation program: report, go on with the next check
        emit({"id": f"error {check_id}", "traceback": traceback.format_exc()})
        return
    emit({"id": check_id, **record, "seconds": round(time.monotonic() - started, 3)})


def hugepage_sizes() -> list[int]:
    directory = Path("/sys/kernel/mm/hugepages")
    if not directory.is_dir():
        return []
    return sorted(
        int(entry.name.removeprefix("hugepages-").removesuffix("kB")) << 10
        for entry in directory.iterdir()
        if entry.name.startswith("hugepages-")
    )


def online_nodes() -> str:
    path = Path("/sys/devices/system/node/online")
    return path.read_text().strip() if path.exists() else "0"


# --- the node ------------------------------------------------------------------------------------

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FIRST = [
    pod("g1-aaaa", "64Mi", cpu="100m"),
    pod_of("g2-aaaa", [container("app", "32Mi", "100m", hugepages={"hugepages-2Mi": "2Mi"})]),
    pod_of("b1-aaaa", [container("app", "32Mi", limit_memory="128Mi", guaranteed=False)]),
    pod_of(
        "b2-aaaa",
        [
            container("app", "24Mi", guaranteed=False),
            container("side", "8Mi", limit_memory="16Mi", guaranteed=False),
        ],
    ),
    pod_of("be1-aaaa", [container("app", None, None)]),
]
SECOND = [
    *[p for p in FIRST if p.uid not in ("g1-aaaa", "b2-aaaa")],
    pod("g3-aaaa", "48Mi", cpu="100m"),
    pod_of("b3-aaaa", [container("app", "16Mi", limit_memory="64Mi", guaranteed=False)]),
]
RETIRED = ["b2-aaaa", "g1-aaaa"]
KILLED = "g1-aaaa"


def node_targets(policy: str, pods: list[Any]) -> NodeTargets:
    topo = topology("512Mi", "512Mi", hugepages={"2Mi": 4}, page_size=PAGE_SIZE)
    config = static_config(["128Mi", "128Mi"], memoryReservationPolicy=policy)
    targets = targets_of_pods(pods, config, topo)
    if len(targets.pods) != len(pods):
        raise AssertionError("a guest pod was not admitted; adjust the test node")
    return targets


def sim_like(real: RealCgroupFS) -> SimCgroupFS:
    """A SimCgroupFS whose root stands for `real`'s root (a delegated, non-root cgroup)."""
    return SimCgroupFS(
        page_size_bytes=PAGE_SIZE,
        controllers=sorted(available_controllers(real, "")),
        hugepage_sizes_bytes=hugepage_sizes(),
        online_cpus=Path("/sys/devices/system/cpu/online").read_text().strip(),
        online_nodes=online_nodes(),
        delegated=True,
        kernel=kernel_profile_for_release(os.uname().release),
    )


def compare(real: CgroupFS, sim: CgroupFS, targets: Iterable[NodeTargets]) -> dict[str, Any]:
    """Every target cgroup's existence, controllers and managed files, real vs simulated."""
    mismatches: list[str] = []
    checked = 0
    seen: set[str] = set()
    for target_tree in targets:
        for target in target_tree.cgroups:
            if target.path in seen:
                continue
            seen.add(target.path)
            checked += 1
            if real.exists(target.path) != sim.exists(target.path):
                mismatches.append(f"{target.path}: exists {real.exists(target.path)}")
                continue
            if not real.exists(target.path):
                continue
            names = ["cgroup.subtree_control", *sorted(target.files)]
            for file in names:
                checked += 1
                found = [_read(fs, target.path, file) for fs in (real, sim)]
                if found[0] != found[1]:
                    mismatches.append(f"{target.path}/{file}: real {found[0]!r} sim {found[1]!r}")
    return {"checked": checked, "mismatches": mismatches}


def _read(fs: CgroupFS, path: str, file: str) -> str:
    try:
        return fs.read(path, file)
    except HostError as exc:
        return f"errno {exc.errno}"


def shortfalls(fs: CgroupFS) -> list[str]:
    """Parents below their children's protection sum (the delegated root itself excepted)."""
    found = protection_shortfalls(tree_snapshot(fs), page_size_bytes=PAGE_SIZE)
    return sorted(f"{path}/{file}" for (path, file) in found if path)


def operations_of(report: ReconcileReport) -> list[str]:
    return [f"{r.operation.phase} {r.operation.describe()} -> {r.outcome}" for r in report.results]


def written_values(real: CgroupFS, sim: CgroupFS, report: ReconcileReport) -> dict[str, Any]:
    """Each value the reconciler wrote, read back from the kernel and from the simulator."""
    mismatches = []
    count = 0
    for result in report.results:
        operation = result.operation
        if operation.kind != "write" or result.outcome != "ok" or not real.exists(operation.path):
            continue
        count += 1
        found = [_read(fs, operation.path, operation.file) for fs in (real, sim)]
        if found[0] != found[1]:
            mismatches.append(f"{operation.describe()}: real {found[0]!r} sim {found[1]!r}")
    return {"written": count, "mismatches": mismatches}


def summary(report: ReconcileReport) -> dict[str, Any]:
    return {
        "converged": report.converged,
        "writes": report.writes,
        "attempted": report.attempted,
        "failed": report.failed,
        "skipped": report.skipped,
        "pending": list(report.pending_removals),
        "blocked_or_unknown": [w for w in report.warnings if "not available" in w],
        "read_errors": list(report.read_errors),
        "failures": [
            f"{r.operation.describe()}: errno {r.errno}"
            for r in report.results
            if r.outcome in ("failed", "busy")
        ],
    }


# --- the suite -----------------------------------------------------------------------------------


def spawn_into(real: RealCgroupFS, path: str) -> int:
    """Fork a child that sleeps, and move it into cgroup `path` (as a runtime would)."""
    pid = os.fork()
    if pid == 0:  # the child: wait to be killed
        try:
            time.sleep(120)
        finally:
            os._exit(0)
    real.write(path, "cgroup.procs", str(pid))
    return pid


def add_container(fs: CgroupFS, targets: NodeTargets, uid: str) -> str:
    """A runtime-style container cgroup under the pod, with the container's protections."""
    pod_target = targets.pod(uid)
    fs.write(pod_target.cgroup, "cgroup.subtree_control", "+memory")
    path = f"{pod_target.cgroup}/ctr"
    fs.mkdir(path)
    for file in ("memory.min", "memory.low"):
        value = pod_target.containers[0].files.get(file, "0")
        if value != "0":
            fs.write(path, file, value)
    return path


def run_policy(mount: Path, policy: str) -> None:
    name = f"memstatevm{policy.lower()}"
    parent = RealCgroupFS(mount)
    parent.mkdir(name)
    real = RealCgroupFS(mount / name)
    sim = sim_like(real)
    checker = CheckingCgroupFS(real, ignore_paths=frozenset({""}), relevant_only=True)
    options = ReconcilerOptions(
        pod_removal="kill", retry_backoff_base_seconds=0.01, retry_backoff_max_seconds=0.05
    )
    reconciler = Reconciler(checker, page_size_bytes=PAGE_SIZE, options=options)
    sim_reconciler = Reconciler(sim, page_size_bytes=PAGE_SIZE, options=options, clock=FakeClock())
    first_targets = node_targets(policy, FIRST)
    second_targets = node_targets(policy, SECOND)
    try:
        first: dict[str, ReconcileReport] = {}

        def first_round() -> dict[str, Any]:
            checker.rebaseline()
            first["real"] = reconciler.reconcile(first_targets)
            first["sim"] = sim_reconciler.reconcile(first_targets)
            return {
                **summary(first["real"]),
                "operations": len(first["real"].results),
                "violations": checker.violations,
                "checks": checker.checks,
                "passed_over": checker.passed_over,
            }

        check(f"{policy}/first", first_round)
        check(
            f"{policy}/same_plan",
            lambda: {
                "real": operations_of(first["real"]),
                "sim": operations_of(first["sim"]),
            },
        )
        check(f"{policy}/written", lambda: written_values(real, sim, first["real"]))
        check(f"{policy}/second", lambda: summary(reconciler.reconcile(first_targets)))
        check(f"{policy}/compare_first", lambda: compare(real, sim, [first_targets]))

        def transition() -> dict[str, Any]:
            for fs in (real, sim):
                for uid in RETIRED:
                    add_container(fs, first_targets, uid)
            killed = f"{first_targets.pod(KILLED).cgroup}/ctr"
            pid = spawn_into(real, killed)
            sim.spawn(killed)
            checker.rebaseline()
            baseline = sorted(f"{p}/{f}" for p, f in checker.baseline if p)
            retired = [first_targets.pod(uid).cgroup for uid in RETIRED]
            report = reconciler.reconcile(second_targets, retired_paths=retired)
            rounds = 1
            while report.pending_removals and rounds < ROUNDS_MAX:
                time.sleep(0.02)  # the kernel tears the killed process down
                report = reconciler.reconcile(second_targets, retired_paths=retired)
                rounds += 1
            _, status = os.waitpid(pid, 0)
            sim_report = sim_reconciler.reconcile(second_targets, retired_paths=retired)
            return {
                **summary(report),
                "rounds": rounds,
                "killed_by": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "sigkill": signal.SIGKILL.value,
                "violations": checker.violations,
                "baseline": baseline,
                "sim_converged": sim_report.converged,
                "retired_present": [
                    first_targets.pod(uid).cgroup
                    for uid in RETIRED
                    if real.exists(first_targets.pod(uid).cgroup)
                ],
                "invariant_after": shortfalls(real),
            }

        check(f"{policy}/transition", transition)
        check(f"{policy}/transition_second", lambda: summary(reconciler.reconcile(second_targets)))
        check(
            f"{policy}/compare_second", lambda: compare(real, sim, [first_targets, second_targets])
        )
    finally:
        leftover = cleanup(real)
        parent.rmdir(name)
        emit({"id": f"{policy}/cleanup", "leftover": leftover})


def cleanup(fs: RealCgroupFS) -> list[str]:
    """Kill and remove everything under the managed root; what could not be removed."""
    leftover = []
    for path in list(walk(fs, topdown=False)):
        if not path:
            continue
        for _ in range(ROUNDS_MAX):
            try:
                fs.rmdir(path)
                break
            except HostError:
                with contextlib.suppress(HostError):
                    fs.write(path, "cgroup.kill", "1")
                time.sleep(0.02)
        else:
            leftover.append(path)
    return leftover


def main(argv: list[str]) -> int:
    mount = Path(argv[1] if len(argv) > 1 else DEFAULT_MOUNT)
    root = RealCgroupFS(mount)
    facts = {
        "kernel": os.uname().release,
        "page_size": PAGE_SIZE,
        "controllers": sorted(available_controllers(root, "")),
        "enabled": sorted(enabled_controllers(root, "")),
        "hugepage_sizes": hugepage_sizes(),
        "online_nodes": online_nodes(),
    }
    emit({"id": "facts", **facts})
    if not {"memory", "cpuset", "hugetlb"} <= set(facts["enabled"]):
        emit({"id": "skip", "reason": f"{mount} does not enable memory, cpuset and hugetlb"})
        return 0
    for policy in POLICIES:
        try:
            run_policy(mount, policy)
        except Exception:
            emit({"id": f"error {policy}", "traceback": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
