"""Container cgroups appear under a pod cgroup (the test plays the runtime) and the daemon gives
them their Memory QoS values: memory.low per the pod class and memory.high by the formula, the
runtime's memory.max untouched, the pod still covering its container.

The daemon runs as a real process on a directory-backed simulated tree (DirCgroupFS); the test
opens the same tree from its own process, enables the memory controller in the pod cgroup and
creates the container cgroup, as runc does.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from memstate.host.sim.cgroupdir import DirCgroupFS
from tests.daemon.harness import Mi, Node, pod_manifest
from tests.daemon.test_e2e import admitted, wait_file

pytestmark = pytest.mark.slow


def test_container_cgroups_made_by_the_runtime_get_their_values(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    node.start()
    # Burstable under TieredReservation: request 256Mi, limit 512Mi.
    node.drop("b.yaml", pod_manifest("pod-b", "256Mi", guaranteed=False, limit="512Mi"))
    node.wait_for(admitted("pod-b"))
    pod = "kubepods/burstable/podpod-b"
    wait_file(node, pod, "memory.low", str(256 * Mi))
    with DirCgroupFS(node.cgroup_dir, watch=False) as fs:
        fs.write(pod, "cgroup.subtree_control", "+memory")
        fs.mkdir(f"{pod}/app")
    # memory.low = the request; memory.high = floor((256Mi + 0.9 × 256Mi) / 4096) × 4096
    # = 510025728 (memory-qos.md §4.1 worked values).
    wait_file(node, f"{pod}/app", "memory.low", str(256 * Mi), timeout=30)
    wait_file(node, f"{pod}/app", "memory.high", "510025728", timeout=30)
    assert node.cgroup_file(f"{pod}/app", "memory.min") == "0"
    assert node.cgroup_file(f"{pod}/app", "memory.max") == "max"  # the runtime's: untouched
    assert node.cgroup_file(pod, "memory.low") == str(256 * Mi)
    status = node.cli("status", "--state-dir", str(node.state_dir))
    assert status.returncode == 0, status.stderr
    assert "510025728" in status.stdout
    assert node.alive(), node.stderr()[-2000:]
    assert node.terminate() == 0
