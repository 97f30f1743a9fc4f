"""Guest-side RealCgroupFS suite: one open per call on a real cgroupfs, and the walk's answers.

Theory of operation: this program runs inside the cgvm VM (tests/vm/suites.py adds it to the
session boot), prints one JSON object per check and leaves the expectations to
tests/vm/test_realfs_vm.py on the host. Under a private cgroup ``/sys/fs/cgroup/memstaterealfs``
the reconciler builds guest_reconcile's node (TieredReservation), then:

1. whether RealCgroupFS opens paths with openat2 on this kernel;
2. one full observation with `os.open` and the openat2 entry point counted, and the same
   observation with the walk alone (`_openat2` offering none): calls, opens, equal results;
3. for a pod cgroup removed (rmdir) and one removed and made again (a new cgroup of the same
   name, default values) right after its parent was listed: the observation with openat2 and
   with the walk alone, each after the reconciler restored the tree, must be the same (tree and
   read errors, messages included);
4. a write and a read back through each mode, and a write to a removed cgroup (its errno).

Everything it created is removed at the end. Run by hand:
``scripts/cgvm run --numa 2 --hugepages 8 -- python -m tests.vm.guest_realfs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from memstate.core.errors import HostError
from memstate.core.targets import NodeTargets
from memstate.host import RealCgroupFS, available_controllers, cgroupfs, walk
from memstate.reconcile.observe import observe_tree
from memstate.reconcile.reconciler import Reconciler
from tests.vm.guest_reconcile import FIRST, PAGE_SIZE, node_targets

DEFAULT_MOUNT = "/sys/fs/cgroup"
ROOT_NAME = "memstaterealfs"
NEEDED = frozenset({"memory", "cpuset", "hugetlb"})
VICTIM = "kubepods/burstable/podb1-aaaa"


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


@contextlib.contextmanager
def walk_only() -> Iterator[None]:
    """RealCgroupFS instances made inside open paths with the walk alone."""
    saved = cgroupfs._openat2
    cgroupfs._openat2 = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        cgroupfs._openat2 = saved  # type: ignore[assignment]


def make_fs(root: Path, mode: str) -> RealCgroupFS:
    if mode == "walk":
        with walk_only():
            return RealCgroupFS(root)
    return RealCgroupFS(root)


class AfterListing:
    """`fs`, with `change` run once, right after the first listing of `parent` returned."""

    def __init__(self, fs: RealCgroupFS, parent: str, change: Callable[[], None]) -> None:
        self.fs = fs
        self.parent = parent
        self.change: Callable[[], None] | None = change

    def list_children(self, path: str) -> list[str]:
        names = self.fs.list_children(path)
        if path == self.parent and self.change is not None:
            change, self.change = self.change, None
            change()
        return names

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


def converge(root: Path, targets: NodeTargets) -> dict[str, Any]:
    reconciler = Reconciler(RealCgroupFS(root), page_size_bytes=PAGE_SIZE)
    reconciler.reconcile(targets)
    again = reconciler.reconcile(targets)
    return {"converged": again.converged, "writes": again.writes}


def counted_observation(root: Path, targets: NodeTargets) -> dict[str, Any]:
    """Opens per full observation, with openat2 and with the walk alone."""
    opens = 0
    real_open = os.open
    loader = cgroupfs._openat2

    def counting(function: Callable[..., int]) -> Callable[..., int]:
        def call(*args: Any, **kwargs: Any) -> int:
            nonlocal opens
            opens += 1
            return function(*args, **kwargs)

        return call

    opener = loader()
    results: dict[str, Any] = {}
    observed = {}
    for mode in ("openat2", "walk"):
        if mode == "openat2" and opener is not None:
            cgroupfs._openat2 = lambda: counting(opener)  # type: ignore[assignment]
        try:
            fs = make_fs(root, mode)
        finally:
            cgroupfs._openat2 = loader  # type: ignore[assignment]
        opens = 0
        os.open = counting(real_open)  # type: ignore[assignment]
        try:
            tree, errors, calls = observe_tree(fs, targets)
        finally:
            os.open = real_open  # type: ignore[assignment]
        observed[mode] = (tree, errors)
        results[mode] = {"calls": calls, "opens": opens, "errors": len(errors)}
    results["same"] = observed["openat2"] == observed["walk"]
    return results


def raced(root: Path, targets: NodeTargets, change: Callable[[RealCgroupFS], None]) -> Any:
    """The observation in each mode with `change` made after the victim's parent was listed,
    the tree converged again before each."""
    found = {}
    for mode in ("openat2", "walk"):
        converge(root, targets)
        fs = make_fs(root, mode)
        racing = AfterListing(fs, VICTIM.rpartition("/")[0], lambda fs=fs: change(fs))
        tree, errors, _calls = observe_tree(racing, targets)  # type: ignore[arg-type]
        found[mode] = (tree, errors)
    tree, errors = found["openat2"]
    victim = tree.get(VICTIM)
    return {
        "same": found["openat2"] == found["walk"],
        "errors": [[e.op, e.path, e.file, e.errno] for e in errors],
        "victim_files": dict(victim.files) if victim is not None else None,
        "victim_children": list(victim.children) if victim and victim.children else None,
    }


def writes(root: Path, targets: NodeTargets) -> dict[str, Any]:
    """A write and its read back in each mode, and a write to a removed cgroup."""
    converge(root, targets)
    results: dict[str, Any] = {}
    for mode, value in (("openat2", "268435456"), ("walk", "134217728")):
        fs = make_fs(root, mode)
        fs.write(VICTIM, "memory.high", value)
        results[f"{mode} read back"] = fs.read(VICTIM, "memory.high")
        fs.rmdir(VICTIM)
        try:
            fs.write(VICTIM, "memory.high", value)
            results[f"{mode} removed"] = "written"
        except HostError as exc:
            results[f"{mode} removed"] = [exc.errno, exc.op, exc.path]
        converge(root, targets)
    return results


def main(argv: list[str]) -> int:
    mount = Path(argv[1] if len(argv) > 1 else DEFAULT_MOUNT)
    parent = RealCgroupFS(mount)
    missing = sorted(NEEDED - available_controllers(parent, ""))
    if missing:
        emit({"id": "skip", "missing": missing})
        return 0
    parent.mkdir(ROOT_NAME)
    root = mount / ROOT_NAME
    try:
        parent.write(ROOT_NAME, "cgroup.subtree_control", "+memory +cpuset +hugetlb")
        targets = node_targets("TieredReservation", FIRST)
        check("build", lambda: converge(root, targets))
        check(
            "openat2",
            lambda: {"used": RealCgroupFS(root)._open_no_symlinks is not None},
        )
        check("opens", lambda: counted_observation(root, targets))
        check("removed", lambda: raced(root, targets, lambda fs: fs.rmdir(VICTIM)))

        def replace(fs: RealCgroupFS) -> None:
            fs.rmdir(VICTIM)
            fs.mkdir(VICTIM)

        check("replaced", lambda: raced(root, targets, replace))
        check("writes", lambda: writes(root, targets))
    finally:
        fs = RealCgroupFS(root)
        for path in walk(fs, "", topdown=False):
            if path:
                with contextlib.suppress(HostError):
                    fs.rmdir(path)
        parent.rmdir(ROOT_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
