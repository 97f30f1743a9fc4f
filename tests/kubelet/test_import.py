"""`memstate import kubelet-state`: a node moving from the kubelet's Memory Manager keeps every
pod on its NUMA nodes; a checkpoint that cannot be trusted or does not fit is refused, naming the
file and the reason, and nothing is recorded.

Real parts: the `memstate` command and `memstate run` as subprocesses (tests/daemon/harness), a
directory-backed simulated cgroup tree, the event log read back with the lock-free reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from memstate.core.events import KubeletStateImported, PodAdmitted
from tests.daemon.harness import Node, pod_manifest
from tests.kubelet.checkpoints import Gi, checkpoint_bytes, checkpoint_document

pytestmark = pytest.mark.slow

# Node 1, where a fresh decision would not put it (lowest node first): the import must win.
POD_A = {"pod-a": {"app": [([1], "memory", 2 * Gi)]}}


def write_checkpoint(node: Node, data: bytes) -> Path:
    path = node.root / "memory_manager_state"
    path.write_bytes(data)
    return path


def import_(node: Node, path: Path) -> tuple[int, str, str]:
    result = node.cli(
        "import", "kubelet-state", str(path), "--config", str(node.config_file), "-o", "json"
    )
    return result.returncode, result.stdout, result.stderr


def test_imported_pods_keep_their_numa_nodes_after_the_next_start(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    path = write_checkpoint(node, checkpoint_bytes(checkpoint_document(POD_A)))
    code, out, err = import_(node, path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pods"] == ["pod-a"] and summary["layout"] == "v1"
    records = node.records()
    imported = [r.event for r in records if isinstance(r.event, KubeletStateImported)]
    assert len(imported) == 1 and imported[0].source == str(path)
    stand_in = next(r.event for r in records if isinstance(r.event, PodAdmitted))
    assert stand_in.allocation is not None and stand_in.allocation.numa_nodes == (1,)

    node.drop("a.yaml", pod_manifest("pod-a", "2Gi"))
    node.start()
    try:
        records = node.wait_for(
            lambda rs: any(
                isinstance(r.event, PodAdmitted)
                and r.event.uid == "pod-a"
                and r.event.pod.namespace == "default"
                for r in rs
            )
        )
        kept = [
            r.event
            for r in records
            if isinstance(r.event, PodAdmitted) and r.event.pod.namespace == "default"
        ]
        assert len(kept) == 1 and kept[0].pod.name == "pod-a"  # the real spec, once
        allocation = kept[0].allocation
        assert allocation is not None and allocation.numa_nodes == (1,)
        pods = {p["uid"]: p for p in node.status()["pods"]}
        assert pods["pod-a"]["namespace"] == "default"
        node.wait_for(lambda _: node.cgroup_file("kubepods/podpod-a", "cpuset.mems") == "1")
    finally:
        node.terminate()
    # The import and what followed replay bit for bit (decisions re-derived from the inputs).
    replay = node.cli("replay", str(node.state_dir))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    # ... and so does an anonymised copy (the stand-in is renamed like the import it comes from).
    copy = node.root / "anonymised"
    made = node.cli("replay", "anonymise", str(node.state_dir), str(copy))
    assert made.returncode == 0, made.stdout + made.stderr
    again = node.cli("replay", str(copy))
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_pod_whose_spec_does_not_match_its_blocks_is_decided_afresh(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    path = write_checkpoint(node, checkpoint_bytes(checkpoint_document(POD_A)))
    assert import_(node, path)[0] == 0
    node.drop("a.yaml", pod_manifest("pod-a", "1Gi"))  # asks 1Gi, the kubelet held 2Gi
    node.start()
    try:
        records = node.wait_for(
            lambda rs: any(
                isinstance(r.event, PodAdmitted)
                and r.event.uid == "pod-a"
                and r.event.pod.namespace == "default"
                for r in rs
            )
        )
        fresh = [
            r.event
            for r in records
            if isinstance(r.event, PodAdmitted) and r.event.pod.namespace == "default"
        ][-1]
        assert not fresh.restored
        assert fresh.allocation is not None and fresh.allocation.numa_nodes == (0,)
    finally:
        node.terminate()


@pytest.mark.parametrize(
    ("entries", "checksum", "policy", "words"),
    [
        (POD_A, 12345, "Static", "checksum mismatch"),
        (POD_A, None, "static", "unknown policy name 'static'"),
        ({"pod-a": {"app": [([5], "memory", Gi)]}}, None, "Static", "which this machine lacks"),
        ({"pod-a": {"app": [([0], "memory", 5 * Gi)]}}, None, "Static", "exceeds"),
        ({"pod-a": {"app": [([0], "hugepages-1Gi", Gi)]}}, None, "Static", "no hugepages-1Gi"),
    ],
)
def test_refusals_name_the_file_and_the_reason_and_record_nothing(
    make_node: Callable[..., Node],
    entries: dict[str, dict[str, list[tuple[list[int], str, int]]]],
    checksum: int | None,
    policy: str,
    words: str,
) -> None:
    node = make_node()
    document = checkpoint_document(entries, policy=policy)
    path = write_checkpoint(node, checkpoint_bytes(document, checksum=checksum))
    code, _, err = import_(node, path)
    assert code == 65, err
    assert str(path) in err and words in err
    assert "Traceback" not in err
    assert not any(isinstance(r.event, KubeletStateImported) for r in node.records())


def test_a_static_checkpoint_into_a_none_config_is_a_config_error(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    node.config["memoryManagerPolicy"] = "None"
    node.config.pop("reservedMemory")
    node.write_config()
    path = write_checkpoint(node, checkpoint_bytes(checkpoint_document(POD_A)))
    code, _, err = import_(node, path)
    assert code == 78, err
    assert "memoryManagerPolicy" in err
    assert not any(isinstance(r.event, KubeletStateImported) for r in node.records())


def test_a_running_daemon_makes_the_import_refuse(make_node: Callable[..., Node]) -> None:
    node = make_node()
    path = write_checkpoint(node, checkpoint_bytes(checkpoint_document(POD_A)))
    node.start()
    try:
        code, _, err = import_(node, path)
        assert code == 75, err
        assert not any(isinstance(r.event, KubeletStateImported) for r in node.records())
    finally:
        node.terminate()
