"""Shadow mode end to end: the real `memstate run` with `mode: shadow` on a simulated tree that
the test shapes as the kubelet would have it.

Goal: every decision is made and recorded, not one file of the tree changes (every file's bytes
compared before and after), and each difference with the kubelet — its Memory Manager checkpoint
and the pod cgroup values — is recorded once as a `shadow_disagreement`, counted in
`memstate_shadow_disagreements{kind}` and listed by `memstate shadow report`; when the kubelet's
side comes to agree, the disagreement is recorded as resolved and leaves the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from memstate.core.events import Envelope, PodAdmitted, ShadowDisagreement
from memstate.node.cgroup_tree import open_simulated_tree
from memstate.node.inputs import load_topology
from tests.daemon.harness import Gi, Node, pod_manifest
from tests.kubelet.checkpoints import checkpoint_bytes, checkpoint_document

pytestmark = pytest.mark.slow

POD = "kubepods/podpod-a"


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones included) with its bytes."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def play_the_kubelet(node: Node) -> None:
    """The tree a kubelet with the Memory Manager `None` and no MemoryQoS leaves: QoS and pod
    cgroups, `memory.max` on the pod, nothing pinned, no protection."""
    fs = open_simulated_tree(node.cgroup_dir, load_topology(node.topology_file))
    fs.write("", "cgroup.subtree_control", "+memory +cpuset +hugetlb")
    for path in ("kubepods", "kubepods/burstable", "kubepods/besteffort", POD):
        fs.mkdir(path)
        if path != POD:
            fs.write(path, "cgroup.subtree_control", "+memory +cpuset +hugetlb")
    fs.write(POD, "memory.max", str(3 * Gi))  # memstate says 2Gi


def disagreements(records: list[Envelope]) -> list[ShadowDisagreement]:
    return [r.event for r in records if isinstance(r.event, ShadowDisagreement)]


def test_shadow_mode_writes_nothing_and_records_each_disagreement_once(
    make_node: Callable[..., Node],
) -> None:
    checkpoint = Path("memory_manager_state")
    node = make_node(
        extra_settings={"mode": "shadow", "kubeletCheckpoint": str(checkpoint)},
    )
    # The kubelet pinned pod-a to node 1; memstate's own decision is node 0 (lowest first).
    (node.root / checkpoint).write_bytes(
        checkpoint_bytes(checkpoint_document({"pod-a": {"app": [([1], "memory", 2 * Gi)]}}))
    )
    play_the_kubelet(node)
    node.drop("a.yaml", pod_manifest("pod-a", "2Gi"))
    before = tree_bytes(node.cgroup_dir)

    node.start()
    expected = {"numa_nodes", "memory.min", "memory.max", "cpuset.mems"}
    try:
        records = node.wait_for(
            lambda rs: {d.subject for d in disagreements(rs)} >= expected, timeout=60
        )
        admitted = next(r.event for r in records if isinstance(r.event, PodAdmitted))
        assert admitted.allocation is not None and admitted.allocation.numa_nodes == (0,)
        found = {d.subject: d for d in disagreements(records)}
        assert (found["numa_nodes"].memstate, found["numa_nodes"].kubelet) == ("0", "1")
        assert found["memory.max"].memstate == str(2 * Gi)
        assert found["memory.max"].kubelet == str(3 * Gi)
        assert found["memory.max"].where == POD
        assert (found["cpuset.mems"].memstate, found["cpuset.mems"].kubelet) == ("0", "")
        assert found["memory.min"].kubelet == "0"

        # Several polls and full rounds later (resyncSeconds is 2), nothing is repeated.
        rounds = node.metric('memstate_reconcile_duration_seconds_count{scope="full"}') or 0
        node.wait_for(
            lambda _: (
                (node.metric('memstate_reconcile_duration_seconds_count{scope="full"}') or 0)
                >= rounds + 3
            ),
            timeout=60,
        )
        again = disagreements(node.records())
        assert len(again) == len(found) == 4
        assert node.metric('memstate_shadow_disagreements{kind="numa_nodes"}') == 1
        assert node.metric('memstate_shadow_disagreements{kind="memory.max"}') == 1
        assert node.metric('memstate_cgroup_writes_total{file="memory.min",result="ok"}') is None

        report = node.cli("shadow", "report", "--config", str(node.config_file), "-o", "json")
        assert report.returncode == 0, report.stderr
        rows = {(r["pod"], r["what"]): r for r in json.loads(report.stdout)}
        assert set(rows) == {("pod-a", subject) for subject in expected}
        assert rows[("pod-a", "numa_nodes")]["kubelet"] == "1"
        table = node.cli("shadow", "report", "--config", str(node.config_file), "-o", "table")
        assert "numa_nodes" in table.stdout and "POD" in table.stdout
    finally:
        node.terminate()
    replay = node.cli("replay", str(node.state_dir))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    copy = node.root / "anonymised"
    made = node.cli("replay", "anonymise", str(node.state_dir), str(copy))
    assert made.returncode == 0, made.stdout + made.stderr
    again = node.cli("replay", str(copy))
    assert again.returncode == 0, again.stdout + again.stderr
    files = [copy] if copy.is_file() else [p for p in copy.rglob("*") if p.is_file()]
    assert files and not any(b"pod-a" in p.read_bytes() for p in files)
    after = tree_bytes(node.cgroup_dir)
    assert after.keys() == before.keys()
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == []


def test_a_disagreement_that_ends_is_recorded_resolved(make_node: Callable[..., Node]) -> None:
    checkpoint = Path("memory_manager_state")
    node = make_node(extra_settings={"mode": "shadow", "kubeletCheckpoint": str(checkpoint)})
    (node.root / checkpoint).write_bytes(
        checkpoint_bytes(checkpoint_document({"pod-a": {"app": [([1], "memory", 2 * Gi)]}}))
    )
    play_the_kubelet(node)
    node.drop("a.yaml", pod_manifest("pod-a", "2Gi"))
    node.start()
    try:
        node.wait_for(
            lambda rs: any(d.subject == "numa_nodes" for d in disagreements(rs)), timeout=60
        )
        # The kubelet re-pins the pod where memstate would have put it: the file changes.
        time.sleep(0.01)
        (node.root / checkpoint).write_bytes(
            checkpoint_bytes(checkpoint_document({"pod-a": {"app": [([0], "memory", 2 * Gi)]}}))
        )
        records = node.wait_for(
            lambda rs: any(d.subject == "numa_nodes" and d.resolved for d in disagreements(rs)),
            timeout=60,
        )
        assert [d.resolved for d in disagreements(records) if d.subject == "numa_nodes"] == [
            False,
            True,
        ]
        report = node.cli("shadow", "report", "--config", str(node.config_file), "-o", "json")
        assert ("pod-a", "numa_nodes") not in {
            (r["pod"], r["what"]) for r in json.loads(report.stdout)
        }
    finally:
        node.terminate()
