"""A cgroup that vanishes during an observation is absent, not a failure.

Beside the kubelet, the kubelet removes pod and container cgroups whenever it likes, also between
memstate's existence check and its listing of the cgroup (the beside-kubelet VM suite caught a
`cgroup_write_failed` note for exactly that). A read or listing that fails with ENOENT (or a read
with ENODEV: the file was opened just before the removal) because the cgroup itself is gone is
not noted; the same error on a cgroup that still exists still is.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest

from memstate.core.errors import HostError
from memstate.host.sim.cgroupsim import SimCgroupFS
from memstate.reconcile.observe import observe_tree
from memstate.reconcile.reconciler import Reconciler
from tests.reconcile.helpers import PAGE, mixed_pod, new_sim, targets_of_pods, uid_for


class VanishingFS(SimCgroupFS):
    """Lists `victim` only after removing it (and its children), as a kubelet racing us would;
    with `keep`, answers ENOENT for the listing although the cgroup stays."""

    victim: str = ""
    keep: bool = False

    def list_children(self, path: str) -> Sequence[str]:
        if path == self.victim:
            if self.keep:
                raise HostError(f"list {path}: injected", errno=errno.ENOENT)
            for child in sorted(super().list_children(path), reverse=True):
                self.rmdir(f"{path}/{child}")
            self.rmdir(path)
        return super().list_children(path)


def converged_fs(vanishing: bool) -> tuple[VanishingFS, str]:
    pods = [mixed_pod(uid_for(i), i) for i in range(4)]
    targets = targets_of_pods(pods)
    base = new_sim()
    fs = VanishingFS(page_size_bytes=PAGE, online_nodes="0-1", kernel=base.kernel)
    Reconciler(fs, page_size_bytes=PAGE).reconcile(targets)
    victim = targets.pods[-1].cgroup
    fs.victim, fs.keep = victim, not vanishing
    return fs, victim


def test_a_cgroup_removed_during_the_observation_is_not_a_read_failure() -> None:
    fs, victim = converged_fs(vanishing=True)
    pods = [mixed_pod(uid_for(i), i) for i in range(4)]
    _tree, errors, _reads = observe_tree(fs, targets_of_pods(pods))
    assert [e for e in errors if e.path.startswith(victim)] == []
    assert not fs.exists(victim)


def test_enoent_on_a_cgroup_that_still_exists_is_still_noted() -> None:
    fs, victim = converged_fs(vanishing=False)
    pods = [mixed_pod(uid_for(i), i) for i in range(4)]
    _tree, errors, _reads = observe_tree(fs, targets_of_pods(pods))
    assert [(e.op, e.path, e.errno) for e in errors] == [("list_children", victim, errno.ENOENT)]


class RemovedWhileReading(SimCgroupFS):
    """The kubelet removes `victim` (and its children) between memstate's open of one of its
    files and the read, which kernfs answers with ENODEV; with `keep`, ENODEV while the cgroup
    stays."""

    victim: str = ""
    keep: bool = False

    def read(self, path: str, file: str) -> str:
        if path == self.victim and self.exists(path):
            if not self.keep:
                for child in sorted(super().list_children(path), reverse=True):
                    self.rmdir(f"{path}/{child}")
                self.rmdir(path)
            raise HostError(f"read {path}/{file}: ENODEV (injected)", errno=errno.ENODEV)
        return super().read(path, file)


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "still-there"])
def test_enodev_is_gone_only_when_the_cgroup_is(keep: bool) -> None:
    pods = [mixed_pod(uid_for(i), i) for i in range(4)]
    targets = targets_of_pods(pods)
    fs = RemovedWhileReading(page_size_bytes=PAGE, online_nodes="0-1", kernel=new_sim().kernel)
    Reconciler(fs, page_size_bytes=PAGE).reconcile(targets)
    fs.victim, fs.keep = targets.pods[-1].cgroup, keep
    _tree, errors, _reads = observe_tree(fs, targets)
    failed = {(e.op, e.path, e.errno) for e in errors if e.path.startswith(fs.victim)}
    assert failed == ({("read", fs.victim, errno.ENODEV)} if keep else set())
    assert fs.exists(fs.victim) is keep
