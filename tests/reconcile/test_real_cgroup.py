"""The reconciler on this host's real cgroup v2 mount (marker ``realcgroup``).

Goal: what the simulator says about mkdir, rmdir, controllers, hugetlb limits, cgroup.kill and
a missing memory controller also holds on a real kernel. Method: a private cgroup under the first
writable cgroup2 mount (tests/host/differential.find_cgroup2_mount; on the development hosts that
is /sys/fs/cgroup/unified, which offers only hugetlb) becomes the managed root. The reconciler
must create the whole target tree, enable what it can, write the hugetlb limits, report the
memory and cpuset files as blocked (without failing a single operation), then do nothing on a
second pass; a retired pod with a live process is killed through cgroup.kill and removed. The
memory-controller behaviour itself is covered by the VM suite (tests/vm/test_reconcile_vm.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterable, Iterator

import pytest

from memstate.core.errors import HostError
from memstate.core.targets import NodeTargets
from memstate.host import RealCgroupFS, available_controllers, walk
from memstate.reconcile.reconciler import Reconciler, ReconcilerOptions
from tests.factories import static_config, topology
from tests.host import differential
from tests.reconcile.helpers import mixed_pod, pod_cgroups, targets_of_pods, uid_for

pytestmark = pytest.mark.realcgroup

ROUNDS_MAX = 200  # bounded waiting for a killed process to leave its cgroup


@pytest.fixture
def private_root() -> Iterator[RealCgroupFS]:
    """A fresh ``memstate-reconcile-<pid>`` cgroup as the managed root; removed afterwards."""
    mount, reason = differential.find_cgroup2_mount()
    if mount is None:
        pytest.skip(f"no writable cgroup2 mount: {reason}")
    parent = RealCgroupFS(mount)
    if "hugetlb" not in parent.read("", "cgroup.subtree_control").split():
        pytest.skip(f"{mount} does not enable hugetlb for its children")
    name = f"memstate-reconcile-{os.getpid()}"
    parent.mkdir(name)
    fs = RealCgroupFS(mount / name)
    try:
        yield fs
    finally:
        for path in list(walk(fs, topdown=False)):
            if path:
                with contextlib.suppress(HostError):
                    fs.write(path, "cgroup.kill", "1")
                _rmdir_when_empty(fs, path)
        _rmdir_when_empty(parent, name)


def _rmdir_when_empty(fs: RealCgroupFS, path: str) -> None:
    for _ in range(ROUNDS_MAX):
        try:
            fs.rmdir(path)
            return
        except HostError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.02)


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def host_targets(indices: Iterable[int]) -> NodeTargets:
    """Targets for the mixed pods `indices` on a 2-node machine with 2 MiB hugepages."""
    topo = topology("8Gi", "8Gi", hugepages={"2Mi": 64}, page_size=PAGE_SIZE)
    config = static_config(["256Mi", "256Mi"], memoryReservationPolicy="TieredReservation")
    return targets_of_pods([mixed_pod(uid_for(i), i) for i in indices], config, topo)


def test_reconciler_builds_the_tree_on_a_real_cgroup2_and_then_does_nothing(
    private_root: RealCgroupFS,
) -> None:
    fs = private_root
    offered = available_controllers(fs, "")
    targets = host_targets(range(6))
    reconciler = Reconciler(fs, page_size_bytes=PAGE_SIZE)
    first = reconciler.reconcile(targets)
    assert first.failed == first.skipped == 0, first.results
    assert {t.path for t in targets.cgroups} <= set(walk(fs))
    for target in targets.cgroups:
        if target.controllers:
            enabled = set(fs.read(target.path, "cgroup.subtree_control").split())
            assert enabled == set(target.controllers) & offered
        for file, value in target.files.items():
            if file.startswith("hugetlb."):
                assert fs.read(target.path, file).strip() == value
    if not {"memory", "cpuset"} <= offered:
        # Honest about what it cannot do: blocked, reported, not converged, nothing failed.
        assert not first.converged
        assert any("not available at the managed root" in w for w in first.warnings)
    else:
        assert first.converged
    second = reconciler.reconcile(targets)
    assert second.writes == 0 and second.attempted == 0
    assert second.notes == []


def test_retired_pod_with_a_live_process_is_killed_and_removed(
    private_root: RealCgroupFS,
) -> None:
    fs = private_root
    options = ReconcilerOptions(
        pod_removal="kill", retry_backoff_base_seconds=0.01, retry_backoff_max_seconds=0.05
    )
    reconciler = Reconciler(fs, page_size_bytes=PAGE_SIZE, options=options)
    reconciler.reconcile(host_targets(range(4)))
    retired = host_targets(range(4)).pod(uid_for(1))
    targets = host_targets([0, 2, 3])
    fs.mkdir(f"{retired.cgroup}/ctr")
    process = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        fs.write(f"{retired.cgroup}/ctr", "cgroup.procs", str(process.pid))
        report = reconciler.reconcile(targets, retired_paths=[retired.cgroup])
        assert process.wait(timeout=30) == -9
        rounds = 1
        while report.pending_removals and rounds < ROUNDS_MAX:
            time.sleep(0.02)  # the kernel finishes tearing the process down
            report = reconciler.reconcile(targets, retired_paths=[retired.cgroup])
            rounds += 1
        assert report.pending_removals == ()
        assert not fs.exists(retired.cgroup)
        assert pod_cgroups(fs, targets) == {t.cgroup for t in targets.pods}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
