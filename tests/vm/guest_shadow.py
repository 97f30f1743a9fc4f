"""Guest-side shadow suite: `memstate run` with `mode: shadow` on a real cgroup v2 tree.

Theory of operation: runs inside a cgvm VM (2 NUMA nodes; tests/vm/test_shadow_vm.py boots it
on its own) and only observes, one JSON line per observation; the expectations live on the host.

1. Play the kubelet with the Memory Manager `None` and no MemoryQoS on the real tree: the QoS
   cgroups `kubepods`, `kubepods/burstable`, `kubepods/besteffort` and the pod cgroup
   `kubepods/podvm-s` with the memory, cpuset and hugetlb controllers enabled, `memory.max` on
   the pod (as the kubelet writes it), nothing pinned, no protection. Write a kubelet Memory
   Manager checkpoint that puts the pod on NUMA node 1 (memstate's own decision is node 0).
2. Read every file under `kubepods` and the root's `cgroup.subtree_control` (bytes, or the errno
   of a file that cannot be read). Nothing runs in the tree, so no kernel counter moves.
3. Start `python -m memstate run` with `mode: shadow`, wait for READY=1, drop the pod's manifest,
   wait for its decision and for the disagreements (NUMA nodes, memory.min, cpuset.mems), then
   for one more full reconcile period, and stop the daemon with SIGTERM.
4. Read every file again: the host asserts that not one byte changed and no file appeared or
   went. Then remove the cgroups.

By hand: ``scripts/cgvm run --numa 2 --hugepages 8 -- python -m tests.vm.guest_shadow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from memstate.core.events import PodAdmitted, ShadowDisagreement
from memstate.core.kubelet_checkpoint import checksum_v1
from tests.vm.guest_daemon import (
    KUBEPODS,
    Node,
    emit,
    guest_main,
    node_config,
    node_memory,
    pod_manifest,
)

UID = "vm-s"
POD = f"{KUBEPODS}/pod{UID}"
MEMORY_MIB = 64
QOS = (KUBEPODS, f"{KUBEPODS}/burstable", f"{KUBEPODS}/besteffort")
CONTROLLERS = "+memory +cpuset +hugetlb"
ARTIFACTS = "shadow-node"
RESYNC_SECONDS = 5
EXPECTED = {"numa_nodes", "memory.min", "cpuset.mems"}


def play_the_kubelet(mount: Path) -> None:
    for path in (*QOS, POD):
        (mount / path).mkdir()
        if path != POD:
            (mount / path / "cgroup.subtree_control").write_text(CONTROLLERS)
    (mount / POD / "memory.max").write_text(str(MEMORY_MIB << 20))


def checkpoint(nodes: dict[int, dict[str, int]]) -> bytes:
    """The kubelet's v1 checkpoint with the pod's 64 MiB on node 1 (kubelet-node.md §8.2)."""
    size = MEMORY_MIB << 20
    machine = {}
    for node_id in sorted(nodes):
        total = nodes[node_id]["memtotal_kib"] * 1024
        reserved = size if node_id == 1 else 0
        machine[str(node_id)] = {
            "numberOfAssignments": 1 if node_id == 1 else 0,
            "memoryMap": {
                "memory": {
                    "total": total,
                    "systemReserved": 0,
                    "allocatable": total,
                    "reserved": reserved,
                    "free": total - reserved,
                }
            },
            "cells": [node_id],
        }
    document: dict[str, Any] = {
        "policyName": "Static",
        "machineState": machine,
        "entries": {UID: {"app": [{"numaAffinity": [1], "type": "memory", "size": size}]}},
    }
    document["checksum"] = checksum_v1(document)
    return json.dumps(document, separators=(",", ":")).encode()


def every_file(mount: Path) -> dict[str, str]:
    """Every file under kubepods and the root's subtree_control: its bytes (hex), or the errno."""
    found: dict[str, str] = {}
    paths = [mount / "cgroup.subtree_control"]
    for directory, _dirs, files in os.walk(mount / KUBEPODS):
        paths.extend(Path(directory) / name for name in files)
    for path in sorted(paths):
        try:
            found[str(path.relative_to(mount))] = path.read_bytes().hex()
        except OSError as exc:
            found[str(path.relative_to(mount))] = f"errno {exc.errno}"
    return found


def cleanup(mount: Path) -> list[str]:
    leftover = []
    for path in (POD, *reversed(QOS)):
        with contextlib.suppress(FileNotFoundError):
            (mount / path).rmdir()
        if (mount / path).exists():
            leftover.append(path)
    return leftover


def run(mount: Path, job: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="memstate-shadow-"))
    nodes = node_memory()
    config = node_config(root, nodes)
    config["memstate"].update(
        mode="shadow",
        kubeletCheckpoint=str(root / "memory_manager_state"),
        resyncSeconds=RESYNC_SECONDS,
    )
    node = Node(root, config)
    (root / "memory_manager_state").write_bytes(checkpoint(nodes))
    try:
        play_the_kubelet(mount)
        before = every_file(mount)
        emit({"id": "before", "files": len(before)})
        node.start()
        node.wait_ready()
        node.drop("s.json", pod_manifest(UID, MEMORY_MIB))

        def disagreements(records: list[Any]) -> list[ShadowDisagreement]:
            return [r.event for r in records if isinstance(r.event, ShadowDisagreement)]

        records = node.wait_for(
            "the disagreements",
            lambda rs: {d.subject for d in disagreements(rs)} >= EXPECTED,
        )
        # One more full period: a daemon that wrote would have done so by now.
        time.sleep(RESYNC_SECONDS * 2)
        records = node.records()
        admitted = [r.event for r in records if isinstance(r.event, PodAdmitted)]
        emit(
            {
                "id": "decision",
                "numa_nodes": [
                    list(a.allocation.numa_nodes) if a.allocation else [] for a in admitted
                ],
                "files": [dict(a.targets.files) if a.targets else {} for a in admitted],
            }
        )
        emit(
            {
                "id": "disagreements",
                "found": [
                    {
                        "subject": d.subject,
                        "memstate": d.memstate,
                        "kubelet": d.kubelet,
                        "where": d.where,
                        "resolved": d.resolved,
                    }
                    for d in disagreements(records)
                ],
            }
        )
        emit({"id": "stop", "returncode": node.stop(signal.SIGTERM), "stderr": node.stderr()})
        after = every_file(mount)
        emit(
            {
                "id": "after",
                "files": len(after),
                "changed": sorted(p for p in before if p in after and before[p] != after[p]),
                "appeared": sorted(after.keys() - before.keys()),
                "vanished": sorted(before.keys() - after.keys()),
            }
        )
    finally:
        if node.process is not None:
            with contextlib.suppress(Exception):
                node.stop(signal.SIGKILL)
        leftover = cleanup(mount)
        with contextlib.suppress(FileNotFoundError):
            node.notify_path.unlink()
        shutil.copytree(root, job / ARTIFACTS, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        emit({"id": "cleanup", "leftover": leftover})


def main(argv: list[str]) -> int:
    return guest_main(argv, run, name="shadow")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
