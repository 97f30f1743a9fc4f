"""Choosing and checking the cgroup tree the daemon converges.

Two kinds of tree:
- the real cgroup v2 filesystem under `cgroupTree` (the cgroup2 mount, or a subtree delegated to
  memstate), through `RealCgroupFS`, which never touches anything outside that directory;
- a directory-backed simulated tree (`cgroupSim`), which models the kernel's rules, for the demo,
  the end-to-end tests and machines without cgroup v2.

For the real tree memstate checks, before doing anything, that it is cgroup v2 and that the
controllers the targets need are available (memory always; cpuset with the Static policy;
hugetlb when the machine has hugepages). If not, it stops with exit code 69 and says what is
missing, rather than failing write by write.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from memstate.core.config import NodeConfig
from memstate.core.errors import HostError, LockHeld
from memstate.core.qos import subtree_controllers
from memstate.core.topology import Topology
from memstate.host.cgroupfs import (
    CgroupFS,
    RealCgroupFS,
    available_controllers,
    parse_cgroup2_mounts,
)
from memstate.node.settings import Settings


def open_cgroup_fs(settings: Settings, topology: Topology, config: NodeConfig) -> CgroupFS:
    """The CgroupFS for these settings, checked for the controllers the targets need."""
    if settings.cgroup_sim is not None:
        return open_simulated_tree(settings.cgroup_sim, topology)
    root = settings.cgroup_root
    if not (root / "cgroup.controllers").exists():
        raise HostError(
            f"{root} is not a cgroup v2 directory (no cgroup.controllers); set "
            "memstate.cgroupTree to the cgroup2 mount or a delegated subtree, or use cgroupSim "
            "for a simulated tree",
            errno=errno.ENOENT,
            path=str(root),
            op="open",
        )
    check_not_inside(root, _read("/proc/self/cgroup"), _read("/proc/mounts"))
    fs = RealCgroupFS(root)
    check_controllers(fs, config, topology, where=str(root))
    return fs


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def check_not_inside(root: Path, self_cgroup_text: str, mounts_text: str) -> None:
    """Refuse a `cgroupTree` that holds memstate's own process (exit 69).

    A non-root cgroup with processes of its own cannot enable controllers for its children (the
    no-internal-process rule: EBUSY), so if `cgroupTree` is memstate's own cgroup, or lies below
    it, memstate would fail write by write. The usual cause is pointing `cgroupTree` at
    memstate's own service cgroup under `Delegate=yes`. An ancestor of memstate's cgroup is
    fine: it holds no processes itself.
    """
    own = next((line[3:] for line in self_cgroup_text.splitlines() if line.startswith("0::")), None)
    if own is None:
        return
    for mount in parse_cgroup2_mounts(mounts_text):
        mount_path = Path(mount)
        if root != mount_path and mount_path in root.parents:
            own_path = mount_path / own.lstrip("/")
            if own_path == root or own_path in root.parents:
                raise HostError(
                    f"memstate itself runs in {own_path}, inside cgroupTree {root}: the kernel "
                    "refuses controllers for a cgroup that holds processes (EBUSY). Point "
                    "cgroupTree at a separate delegated slice, not memstate's own cgroup",
                    errno=errno.EBUSY,
                    path=str(root),
                    op="open",
                )


def check_controllers(fs: CgroupFS, config: NodeConfig, topology: Topology, *, where: str) -> None:
    """Exit 69 (HostError) naming every controller the targets need but the root lacks."""
    needed = set(subtree_controllers(config, topology))
    missing = sorted(needed - set(available_controllers(fs, "")))
    if missing:
        raise HostError(
            f"{where}: cgroup v2 controllers {', '.join(missing)} are not available (its "
            "cgroup.controllers lacks them); enable them in the parent's cgroup.subtree_control "
            "or delegate them to memstate (systemd: Delegate=)",
            errno=errno.ENOENT,
            path=where,
            op="open",
        )


def open_simulated_tree(directory: Path, topology: Topology) -> CgroupFS:
    """A directory-backed simulated cgroup v2 tree shaped like this machine."""
    from memstate.host.sim.cgroupdir import DirCgroupFS

    nodes = ",".join(str(n) for n in topology.node_ids)
    return DirCgroupFS(
        directory,
        page_size_bytes=topology.page_size_bytes,
        hugepage_sizes_bytes=topology.hugepage_sizes,
        online_nodes=nodes,
    )


class TreeClaim:
    """An exclusive, non-blocking `flock` on the directory of the cgroup tree memstate converges.

    Two daemons with different state directories must not converge the same tree: each would undo
    the other's writes. The lock is on the directory itself (a cgroupfs directory cannot hold a
    lock file of ours); the kernel drops it when the process dies, so a crash never leaves a
    stale claim. A simulated tree's own per-operation lock is a file inside it, not the
    directory, so the two never meet.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> TreeClaim:
        """Claim the tree at `path` or raise `LockHeld` (exit 75) naming the holder if known."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            inode = os.fstat(fd).st_ino
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _flock_holder(_read("/proc/locks"), inode)
                who = f"pid {holder}" if holder else "another process"
                raise LockHeld(
                    f"{path}: the cgroup tree is already converged by {who} (another memstate "
                    "daemon, perhaps with a different state directory); stop it or give this "
                    "one a different cgroupTree/cgroupSim"
                ) from None
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Drop the claim (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)


def _flock_holder(locks_text: str, inode: int) -> int | None:
    """The pid holding a FLOCK on `inode` according to /proc/locks, if one is listed."""
    for line in locks_text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1b:5678 0 EOF" (blocked waiters have "->" first)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None
