"""Static pod manifests without metadata.uid in the manifest directory.

Goal: such a manifest is admitted under a UID derived from its content, the node name and its
path — stable across rescans and restarts, unchanged by formatting or comments, new when the
content, the path or the node changes (a new pod, as with the kubelet); 32 lowercase hex digits
like the kubelet's; manifests with a uid behave as before. Method: real files, the real
`ManifestDirectory` and tracker.
"""

from __future__ import annotations

import re
from pathlib import Path

from memstate.core.events import PodAdmissionRequested, PodRemovalRequested
from memstate.node.manifests import ManifestDirectory
from memstate.node.sources.static import derive_static_uid

STATIC = """\
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - name: etcd
    resources:
      requests: {memory: 1Gi, cpu: "1"}
      limits: {memory: 1Gi, cpu: "1"}
"""


def admitted(directory: ManifestDirectory) -> list[str]:
    events = directory.scan()
    directory.accept()
    return [e.pod.uid for e in events if isinstance(e, PodAdmissionRequested)]


def test_derived_uid_is_stable_and_kubelet_shaped(tmp_path: Path) -> None:
    (tmp_path / "etcd.yaml").write_text(STATIC)
    first = admitted(ManifestDirectory(tmp_path, node_name="node-a"))
    assert len(first) == 1 and re.fullmatch(r"[0-9a-f]{32}", first[0])
    # a restart (new directory object) derives the same UID
    assert admitted(ManifestDirectory(tmp_path, node_name="node-a")) == first
    # formatting and comments do not count, content does
    (tmp_path / "etcd.yaml").write_text("# etcd\n" + STATIC.replace("kind: Pod", "kind:   Pod"))
    assert admitted(ManifestDirectory(tmp_path, node_name="node-a")) == first
    other_node = admitted(ManifestDirectory(tmp_path, node_name="node-b"))
    assert other_node != first
    (tmp_path / "etcd.yaml").rename(tmp_path / "etcd2.yaml")
    other_path = admitted(ManifestDirectory(tmp_path, node_name="node-a"))
    assert other_path not in (first, other_node)


def test_content_change_is_a_new_pod(tmp_path: Path) -> None:
    path = tmp_path / "etcd.yaml"
    path.write_text(STATIC)
    directory = ManifestDirectory(tmp_path, node_name="node-a")
    (old,) = admitted(directory)
    path.write_text(STATIC.replace("1Gi", "2Gi"))
    events = directory.scan()
    directory.accept()
    assert [type(e) for e in events] == [PodRemovalRequested, PodAdmissionRequested]
    assert isinstance(events[0], PodRemovalRequested) and events[0].uid == old
    assert isinstance(events[1], PodAdmissionRequested) and events[1].pod.uid != old
    assert events[1].pod_source == "manifests"
    # the pod keeps its name (memstate's manifests are not renamed as the kubelet does)
    assert events[1].pod.key == "kube-system/etcd"


def test_explicit_uid_is_kept(tmp_path: Path) -> None:
    (tmp_path / "etcd.yaml").write_text(
        STATIC.replace(
            "  name: etcd\n", "  name: etcd\n  uid: 3f0e6a52-1111-4c2b-8a1d-000000000001\n"
        )
    )
    assert admitted(ManifestDirectory(tmp_path, node_name="node-a")) == [
        "3f0e6a52-1111-4c2b-8a1d-000000000001"
    ]


def test_rule_inputs() -> None:
    document = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    base = derive_static_uid(document, node_name="n", path="/p/x.yaml")
    reordered = {"metadata": {"name": "x"}, "kind": "Pod", "apiVersion": "v1"}
    assert derive_static_uid(reordered, node_name="n", path="/p/x.yaml") == base
    assert derive_static_uid(document, node_name="m", path="/p/x.yaml") != base
    assert derive_static_uid(document, node_name="n", path="/p/y.yaml") != base
    changed = {**document, "metadata": {"name": "y"}}
    assert derive_static_uid(changed, node_name="n", path="/p/x.yaml") != base
