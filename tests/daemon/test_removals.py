"""Removals are durable: no pod cgroup is ever left behind (issue 10, scope 3).

Goal: the three ways a pod cgroup used to become an orphan that nothing ever removes — SIGKILL
while a removal is pending, a manifest edited in place so that its QoS class (and so its cgroup's
place) changes, and a new file declaring the UID of a running pod — each end with the tree
converged (`memstate diff --exit-code` exits 0) and no pod cgroup that no pod explains. Method: the
real daemon as a subprocess (`tests/daemon/harness.Node`) on a directory-backed simulated tree; a
fake process placed in a pod cgroup through `DirCgroupFS.spawn` keeps its removal pending (rmdir
is EBUSY while it is populated), exactly as on a real node where the runtime is slow to stop it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memstate.core.events import Envelope, ManifestInvalid, PodAdmitted, PodRejected, PodRemoved
from memstate.host.sim.cgroupdir import DirCgroupFS
from tests.daemon.harness import Gi, Node, pod_manifest

pytestmark = pytest.mark.slow

QOS_DIRS = ("kubepods", "kubepods/burstable", "kubepods/besteffort")


def besteffort_manifest(uid: str, *, name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name or uid, "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
    }


def pod_cgroups(node: Node) -> set[str]:
    """Every pod cgroup directory in the simulated tree."""
    found = set()
    for holder in QOS_DIRS:
        directory = node.cgroup_dir / holder
        if directory.is_dir():
            found |= {f"{holder}/{p.name}" for p in directory.iterdir() if p.name.startswith("pod")}
    return found


def diff_exit_code(node: Node) -> tuple[int, str]:
    result = node.cli(
        "diff",
        "--state-dir",
        str(node.state_dir),
        "--cgroup-sim",
        str(node.cgroup_dir),
        "--only-differences",
        "--exit-code",
        "-o",
        "json",
    )
    return result.returncode, result.stdout + result.stderr


def wait_converged(node: Node, expected_pod_cgroups: set[str], timeout: float = 60.0) -> None:
    """Until `memstate diff --exit-code` is 0 and the pod cgroups are exactly the expected."""
    deadline = time.monotonic() + timeout
    while True:
        code, output = diff_exit_code(node)
        present = pod_cgroups(node)
        if code == 0 and present == expected_pod_cgroups:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not converged: diff exit {code}, pod cgroups {sorted(present)} (expected "
                f"{sorted(expected_pod_cgroups)})\n{output[-3000:]}\n{node.stderr()[-2000:]}"
            )
        assert node.alive(), node.stderr()[-4000:]
        time.sleep(0.3)


def wait_for_file(node: Node, path: str, file: str, expected: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while node.cgroup_file(path, file) != expected:
        assert time.monotonic() < deadline, (
            f"{path}/{file} is {node.cgroup_file(path, file)!r}, not {expected!r}; "
            f"{node.stderr()[-2000:]}"
        )
        time.sleep(0.1)


def removed(uid: str) -> Callable[[list[Envelope]], bool]:
    return lambda records: any(
        isinstance(r.event, PodRemoved) and r.event.uid == uid for r in records
    )


def admitted(uid: str, qos_class: str | None = None) -> Callable[[list[Envelope]], bool]:
    return lambda records: any(
        isinstance(r.event, PodAdmitted)
        and r.event.uid == uid
        and (qos_class is None or r.event.qos_class == qos_class)
        for r in records
    )


def test_sigkill_with_a_removal_pending_converges_without_an_orphan(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    node.start()
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi", guaranteed=False, limit="2Gi"))
    node.drop("g.yaml", pod_manifest("pod-g", "1Gi"))
    node.wait_for(lambda rs: admitted("pod-a")(rs) and admitted("pod-g")(rs))
    burstable = "kubepods/burstable/podpod-a"
    wait_for_file(node, burstable, "memory.low", str(Gi))
    wait_for_file(node, "kubepods", "memory.min", str(2 * Gi))  # G + B under TieredReservation
    # A process still runs in the pod: its cgroup cannot go until it exits.
    fs = DirCgroupFS(node.cgroup_dir, watch=False)
    pid = fs.spawn(burstable)
    (node.manifest_dir / "a.yaml").unlink()
    node.wait_for(removed("pod-a"))
    node.kill()  # the removal is durable (pod_removed is in the log), the rmdir is not done
    assert (node.cgroup_dir / burstable).is_dir()

    node.start()
    # After the restart the pod's cgroup is still known as one to remove: its protection is
    # zeroed and kubepods protects the Guaranteed pod alone.
    wait_for_file(node, burstable, "memory.low", "0")
    wait_for_file(node, "kubepods", "memory.min", str(Gi))
    wait_for_file(node, "kubepods", "memory.low", "0")
    assert (node.cgroup_dir / burstable).is_dir()  # still populated: waiting, not orphaned
    fs.exit(pid)
    fs.close()
    wait_converged(node, {"kubepods/podpod-g"})
    # Once it is gone, that fact is durable too: another SIGKILL and start change nothing.
    node.kill()
    node.start()
    wait_converged(node, {"kubepods/podpod-g"})
    assert node.terminate() == 0


def test_in_place_qos_change_converges_without_an_orphan(make_node: Callable[..., Node]) -> None:
    node = make_node()
    node.start()
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi", guaranteed=False, limit="2Gi"))
    node.wait_for(admitted("pod-a", "Burstable"))
    wait_for_file(node, "kubepods/burstable/podpod-a", "memory.low", str(Gi))
    # Same file, same UID, no resources any more: BestEffort, so the pod cgroup moves.
    node.drop("a.yaml", besteffort_manifest("pod-a"))
    node.wait_for(admitted("pod-a", "BestEffort"))
    wait_converged(node, {"kubepods/besteffort/podpod-a"})
    assert node.cgroup_file("kubepods", "memory.low") == "0"
    # The same after a SIGKILL right after such a change (nothing in memory to lose).
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi", guaranteed=False, limit="2Gi"))
    node.wait_for(lambda rs: sum(admitted("pod-a", "Burstable")([r]) for r in rs) == 2)
    node.kill()
    node.start()
    wait_converged(node, {"kubepods/burstable/podpod-a"})
    assert node.terminate() == 0


def test_a_new_file_with_the_uid_of_a_running_pod_is_rejected(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    node.start()
    original = node.drop("b.yaml", pod_manifest("pod-x", "1Gi", guaranteed=False, limit="2Gi"))
    records = node.wait_for(admitted("pod-x", "Burstable"))
    admission = next(
        r.event for r in records if isinstance(r.event, PodAdmitted) and r.event.uid == "pod-x"
    )
    wait_converged(node, {"kubepods/burstable/podpod-x"})
    # A new file, sorting first, declares the same UID with another spec (BestEffort).
    intruder = node.drop("a.yaml", besteffort_manifest("pod-x", name="intruder"))

    def rejected(records: list[Envelope]) -> bool:
        return any(
            isinstance(r.event, PodRejected) and r.event.source == str(intruder) for r in records
        )

    records = node.wait_for(rejected)
    invalid = [
        r.event
        for r in records
        if isinstance(r.event, ManifestInvalid) and r.event.source == str(intruder)
    ]
    assert len(invalid) == 1
    assert str(intruder) in invalid[0].error and str(original) in invalid[0].error
    # The running pod keeps its UID, its spec and its allocation; nothing was removed.
    assert not removed("pod-x")(records)
    status = node.status()
    (pod,) = [p for p in status["pods"] if p["uid"] == "pod-x"]
    assert (pod["source"], pod["qos_class"]) == (str(original), "Burstable")
    wait_converged(node, {"kubepods/burstable/podpod-x"})
    # After a restart the file that held the pod still holds it.
    assert node.terminate() == 0
    node.start()
    node.wait_for(lambda rs: sum(rejected([r]) for r in rs) >= 2)
    records = node.records()
    restored = [
        r.event
        for r in records
        if isinstance(r.event, PodAdmitted) and r.event.uid == "pod-x" and r.event.restored
    ]
    assert restored and restored[-1].spec_hash == admission.spec_hash
    assert restored[-1].source == str(original)
    wait_converged(node, {"kubepods/burstable/podpod-x"})
    # When the original file goes, the UID is free and the other file's pod is admitted.
    original.unlink()
    node.wait_for(admitted("pod-x", "BestEffort"))
    wait_converged(node, {"kubepods/besteffort/podpod-x"})
    assert node.terminate() == 0


def test_pod_cgroups_helper_sees_every_level(tmp_path: Path) -> None:
    """The orphan check above must not be blind: it finds pod cgroups at every level."""
    node = Node(tmp_path / "node")
    for path in ("kubepods/podg", "kubepods/burstable/podb", "kubepods/besteffort/pode"):
        (node.cgroup_dir / path).mkdir(parents=True)
    (node.cgroup_dir / "kubepods/other").mkdir()
    assert pod_cgroups(node) == {
        "kubepods/podg",
        "kubepods/burstable/podb",
        "kubepods/besteffort/pode",
    }
