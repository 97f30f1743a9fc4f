"""Which changes in the tree wake the reconciler.

Goal: only changes about what memstate manages (cgroup directories, the files it writes,
cgroup.events/procs/kill) produce hints; derived files such as cgroup.stat, which every mkdir
below a cgroup changes, and the kernel's own counters do not. Method: `cgroup_of_change` on paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memstate.node.cgroup_watch import cgroup_of_change

ROOT = Path("/sys/fs/cgroup")


@pytest.mark.parametrize(
    ("changed", "hint"),
    [
        ("kubepods/podx", "kubepods/podx"),  # a cgroup appeared or vanished
        ("kubepods/podx/memory.min", "kubepods/podx"),
        ("kubepods/memory.max", "kubepods"),
        ("kubepods/podx/cpuset.mems", "kubepods/podx"),
        ("kubepods/podx/hugetlb.2MB.max", "kubepods/podx"),
        ("kubepods/cgroup.subtree_control", "kubepods"),
        ("kubepods/podx/cgroup.events", "kubepods/podx"),
        ("cgroup.subtree_control", ""),
        ("kubepods/cgroup.stat", None),
        ("cgroup.stat", None),
        ("kubepods/podx/memory.events", None),
        ("kubepods/podx/memory.current", None),
        ("kubepods/podx/cpuset.mems.effective", None),
        ("kubepods/podx/hugetlb.2MB.events", None),
        (".journal.jsonl", None),
        ("kubepods/.memstate-cgroup", None),
    ],
)
def test_hints(changed: str, hint: str | None) -> None:
    assert cgroup_of_change(ROOT, str(ROOT / changed)) == hint
