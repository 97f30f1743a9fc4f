"""cgroup naming for the cgroupfs and systemd drivers (memory-qos.md §6), both directions.

Method: the examples of §6 are used verbatim (with the mount prefix /sys/fs/cgroup/ removed,
since memstate's paths are relative to the mount); internal names, validation, reverse mapping
(orphan detection) and the kernel's hugetlb file names are checked table-driven.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstate.core.cgroup_paths import (
    ParsedCgroup,
    ancestor_paths,
    cgroup_path,
    hugetlb_max_file,
    node_components,
    node_path,
    parent_path,
    parse_cgroup_path,
    path_depth,
    pod_components,
    pod_path,
    qos_components,
    qos_path,
    root_paths,
    validate_pod_uid,
)
from memstate.core.config import (
    CGROUP_ROOT_COMPONENT_RE,
    CgroupDriver,
    NodeConfig,
    parse_cgroup_root,
)
from memstate.core.errors import InvariantViolation
from memstate.core.pod import BEST_EFFORT, BURSTABLE, GUARANTEED, UID_RE, QOSClass

G_UID = "6a4f2e3b-1c9d-4a5e-8f7b-2d3e4f5a6b7c"
B_UID = "8b3c7d2e-4f5a-6b7c-9d1e-3f4a5b6c7d8e"
MOUNT = "/sys/fs/cgroup/"

CGROUPFS = NodeConfig(cgroup_driver="cgroupfs")
SYSTEMD = NodeConfig(cgroup_driver="systemd")


def relative(spec_path: str) -> str:
    """A §6 example path relative to the cgroup2 mount."""
    assert spec_path.startswith(MOUNT)
    return spec_path[len(MOUNT) :]


# --- internal names -------------------------------------------------------------------------------


def test_internal_names_follow_the_kubelet_layout() -> None:
    """Guaranteed pods sit directly under kubepods; the others under their QoS cgroup."""
    config = NodeConfig(cgroup_root=("foo",))
    assert node_components(config) == ("foo", "kubepods")
    assert qos_components(config, "Burstable") == ("foo", "kubepods", "burstable")
    assert qos_components(config, "BestEffort") == ("foo", "kubepods", "besteffort")
    assert pod_components(config, "a-1", "Guaranteed") == ("foo", "kubepods", "poda-1")
    assert pod_components(config, "a-1", "Burstable") == ("foo", "kubepods", "burstable", "poda-1")
    assert pod_components(config, "a-1", "BestEffort") == (
        "foo",
        "kubepods",
        "besteffort",
        "poda-1",
    )


def test_guaranteed_has_no_qos_cgroup() -> None:
    with pytest.raises(InvariantViolation):
        qos_components(CGROUPFS, "Guaranteed")


# --- §6 examples, verbatim ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "qos", "uid", "expected"),
    [
        (CGROUPFS, "Guaranteed", G_UID, "/sys/fs/cgroup/kubepods/pod" + G_UID),
        (CGROUPFS, "Burstable", B_UID, "/sys/fs/cgroup/kubepods/burstable/pod" + B_UID),
        (
            SYSTEMD,
            "Guaranteed",
            G_UID,
            "/sys/fs/cgroup/kubepods.slice/kubepods-pod6a4f2e3b_1c9d_4a5e_8f7b_2d3e4f5a6b7c.slice",
        ),
        (
            SYSTEMD,
            "Burstable",
            B_UID,
            "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/"
            "kubepods-burstable-pod8b3c7d2e_4f5a_6b7c_9d1e_3f4a5b6c7d8e.slice",
        ),
        (
            SYSTEMD,
            "BestEffort",
            B_UID,
            "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/"
            "kubepods-besteffort-pod8b3c7d2e_4f5a_6b7c_9d1e_3f4a5b6c7d8e.slice",
        ),
        (CGROUPFS, "BestEffort", B_UID, "/sys/fs/cgroup/kubepods/besteffort/pod" + B_UID),
    ],
)
def test_pod_paths_match_the_spec_examples(
    config: NodeConfig, qos: str, uid: str, expected: str
) -> None:
    assert pod_path(config, uid, qos) == relative(expected)  # type: ignore[arg-type]


def test_node_and_qos_paths_match_the_spec_examples() -> None:
    assert node_path(CGROUPFS) == relative("/sys/fs/cgroup/kubepods")
    assert node_path(SYSTEMD) == relative("/sys/fs/cgroup/kubepods.slice")
    assert qos_path(CGROUPFS, "Burstable") == "kubepods/burstable"
    assert qos_path(CGROUPFS, "BestEffort") == "kubepods/besteffort"
    assert qos_path(SYSTEMD, "Burstable") == "kubepods.slice/kubepods-burstable.slice"
    assert qos_path(SYSTEMD, "BestEffort") == "kubepods.slice/kubepods-besteffort.slice"


def test_systemd_cgroup_root_moves_everything_under_it() -> None:
    """`--cgroup-root=/foo` (systemd `foo.slice`): everything moves to foo.slice/foo-kubepods…"""
    for text in ("/foo.slice", "/foo"):
        config = NodeConfig(cgroup_driver="systemd", cgroup_root=parse_cgroup_root(text, "systemd"))
        assert node_path(config) == "foo.slice/foo-kubepods.slice"
        assert pod_path(config, B_UID, "Burstable") == (
            "foo.slice/foo-kubepods.slice/foo-kubepods-burstable.slice/"
            "foo-kubepods-burstable-pod8b3c7d2e_4f5a_6b7c_9d1e_3f4a5b6c7d8e.slice"
        )
        assert pod_path(config, G_UID, "Guaranteed") == (
            "foo.slice/foo-kubepods.slice/foo-kubepods-pod6a4f2e3b_1c9d_4a5e_8f7b_2d3e4f5a6b7c.slice"
        )
        assert root_paths(config) == ("", "foo.slice")


def test_systemd_nested_cgroup_root() -> None:
    config = NodeConfig(
        cgroup_driver="systemd", cgroup_root=parse_cgroup_root("/a.slice/a-b.slice", "systemd")
    )
    assert config.cgroup_root == ("a", "b")
    assert node_path(config) == "a.slice/a-b.slice/a-b-kubepods.slice"
    assert root_paths(config) == ("", "a.slice", "a.slice/a-b.slice")


def test_cgroupfs_cgroup_root() -> None:
    config = NodeConfig(cgroup_root=parse_cgroup_root("/foo/bar", "cgroupfs"))
    assert node_path(config) == "foo/bar/kubepods"
    assert pod_path(config, "x1", "BestEffort") == "foo/bar/kubepods/besteffort/podx1"
    assert root_paths(config) == ("", "foo", "foo/bar")


def test_default_root_is_the_mount_root() -> None:
    assert root_paths(CGROUPFS) == ("",)
    assert root_paths(SYSTEMD) == ("",)


@pytest.mark.parametrize(
    ("components", "cgroupfs", "systemd"),
    [
        ((), "", ""),
        (("kubepods",), "kubepods", "kubepods.slice"),
        (("a", "b-c", "d"), "a/b-c/d", "a.slice/a-b_c.slice/a-b_c-d.slice"),
        (("x.y", "z"), "x.y/z", "x.y.slice/x.y-z.slice"),
    ],
)
def test_rendering_for_both_drivers(
    components: tuple[str, ...], cgroupfs: str, systemd: str
) -> None:
    assert cgroup_path(components, "cgroupfs") == cgroupfs
    assert cgroup_path(components, "systemd") == systemd


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid", ["", "a/b", "..", ".", "a_b", "-a", "a-", "a.b", "a b", "../../etc", "x" * 129]
)
def test_unsafe_uids_are_invariant_violations(uid: str) -> None:
    with pytest.raises(InvariantViolation):
        validate_pod_uid(uid)
    with pytest.raises(InvariantViolation):
        pod_path(CGROUPFS, uid, "Burstable")


@pytest.mark.parametrize("uid", ["a", "A1", G_UID, "a--b", "x" * 128])
def test_valid_uids_pass(uid: str) -> None:
    assert validate_pod_uid(uid) == uid


@pytest.mark.parametrize("component", ["", "a/b", "..", "a_b", "a-b", ".a", "a."])
def test_unsafe_cgroup_root_components_are_rejected(component: str) -> None:
    with pytest.raises(InvariantViolation):
        node_path(NodeConfig(cgroup_root=(component,)))


@pytest.mark.parametrize("component", ["", "a/b", "..", ".", "a_b"])
def test_rendering_rejects_unsafe_components(component: str) -> None:
    for driver in ("cgroupfs", "systemd"):
        with pytest.raises(InvariantViolation):
            cgroup_path(("kubepods", component), driver)


def test_unknown_driver_is_rejected() -> None:
    with pytest.raises(InvariantViolation):
        cgroup_path(("kubepods",), "openrc")  # type: ignore[arg-type]


# --- path arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "depth", "parent", "ancestors"),
    [
        ("", 0, None, ()),
        ("a", 1, "", ("",)),
        ("a/b", 2, "a", ("", "a")),
        (
            "a.slice/a-b.slice/a-b-c.slice",
            3,
            "a.slice/a-b.slice",
            ("", "a.slice", "a.slice/a-b.slice"),
        ),
    ],
)
def test_path_arithmetic(
    path: str, depth: int, parent: str | None, ancestors: tuple[str, ...]
) -> None:
    assert path_depth(path) == depth
    assert parent_path(path) == parent
    assert ancestor_paths(path) == ancestors


# --- reverse mapping ------------------------------------------------------------------------------

CONFIGS = [
    CGROUPFS,
    SYSTEMD,
    NodeConfig(cgroup_driver="cgroupfs", cgroup_root=("foo", "bar")),
    NodeConfig(cgroup_driver="systemd", cgroup_root=("foo",)),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("uid", ["a", G_UID, "a--b", "Z9"])
@pytest.mark.parametrize("qos", ["Guaranteed", "Burstable", "BestEffort"])
def test_pod_paths_map_back_to_uid_and_class(config: NodeConfig, uid: str, qos: str) -> None:
    path = pod_path(config, uid, qos)  # type: ignore[arg-type]
    assert parse_cgroup_path(path, config) == ParsedCgroup(
        level="pod",
        pod_uid=uid,
        qos_class=qos,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_structural_paths_map_back_to_their_level(config: NodeConfig) -> None:
    for path in root_paths(config):
        assert parse_cgroup_path(path, config) == ParsedCgroup(level="root")
    assert parse_cgroup_path(node_path(config), config) == ParsedCgroup(level="node")
    for qos in ("Burstable", "BestEffort"):
        assert parse_cgroup_path(qos_path(config, qos), config) == ParsedCgroup(level="qos")


def test_each_naming_parses_by_its_own_names_whatever_was_parsed_before() -> None:
    """`parse_cgroup_path` keeps each naming's fixed names (memoised by driver and root): a
    config parsed after another, in either order and again, sees only its own."""
    configs = [*CONFIGS, NodeConfig(cgroup_driver="systemd", cgroup_root=("foo", "bar"))]
    for parsing in [*configs, *reversed(configs)]:
        for rendered in configs:
            ours = (rendered.cgroup_driver, rendered.cgroup_root) == (
                parsing.cgroup_driver,
                parsing.cgroup_root,
            )
            node = parse_cgroup_path(node_path(rendered), parsing)
            qos = parse_cgroup_path(qos_path(rendered, "Burstable"), parsing)
            pod = parse_cgroup_path(pod_path(rendered, "a", "BestEffort"), parsing)
            assert (node == ParsedCgroup(level="node")) == ours
            assert (qos == ParsedCgroup(level="qos")) == ours
            assert (pod == ParsedCgroup(level="pod", pod_uid="a", qos_class="BestEffort")) == ours


@pytest.mark.parametrize(
    ("config", "path"),
    [
        (CGROUPFS, "kubepods/burstable/poda/0123abcd"),  # a container below a pod
        (CGROUPFS, "kubepods/foo"),
        (CGROUPFS, "kubepods/poda_b"),  # "_" never appears in a cgroupfs pod name
        (CGROUPFS, "kubepods/pod"),  # empty uid
        (CGROUPFS, "kubepods/pod-a"),
        (CGROUPFS, "system.slice"),
        (CGROUPFS, "other/poda"),
        (CGROUPFS, "kubepods/guaranteed/poda"),
        (SYSTEMD, "kubepods.slice/kubepods-poda.scope"),
        (SYSTEMD, "kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-poda.slice"),
        (SYSTEMD, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod.slice"),
        (SYSTEMD, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod_a.slice"),
        (SYSTEMD, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda-b.slice"),
        (SYSTEMD, "kubepods.slice/poda.slice"),
        (SYSTEMD, "kubepods.slice/kubepods-burstable.slice/x/cri-containerd-abc.scope"),
        (SYSTEMD, "kubepods"),  # the cgroupfs name under the systemd driver
        (CGROUPFS, "kubepods.slice"),
    ],
)
def test_foreign_names_are_not_ours(config: NodeConfig, path: str) -> None:
    assert parse_cgroup_path(path, config) is None


def test_systemd_reverse_mapping_turns_underscores_back_into_dashes() -> None:
    path = (
        "kubepods.slice/kubepods-burstable.slice/"
        "kubepods-burstable-pod8b3c7d2e_4f5a_6b7c_9d1e_3f4a5b6c7d8e.slice"
    )
    assert parse_cgroup_path(path, SYSTEMD) == ParsedCgroup(
        level="pod", pod_uid=B_UID, qos_class="Burstable"
    )


# --- hugetlb file names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_bytes", "name"),
    [
        (64 * 1024, "64KB"),
        (512 * 1024, "512KB"),
        (2 * 1024**2, "2MB"),
        (32 * 1024**2, "32MB"),
        (512 * 1024**2, "512MB"),
        (1024**3, "1GB"),
        (16 * 1024**3, "16GB"),
    ],
)
def test_hugetlb_file_names_follow_the_kernel(size_bytes: int, name: str) -> None:
    assert hugetlb_max_file(size_bytes) == f"hugetlb.{name}.max"


@pytest.mark.parametrize("size_bytes", [0, -4096, 1000])
def test_hugetlb_rejects_impossible_sizes(size_bytes: int) -> None:
    with pytest.raises(InvariantViolation):
        hugetlb_max_file(size_bytes)


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(UID_RE, fullmatch=True),
    st.sampled_from(["cgroupfs", "systemd"]),
    st.lists(st.from_regex(CGROUP_ROOT_COMPONENT_RE, fullmatch=True), max_size=2),
    st.sampled_from([GUARANTEED, BURSTABLE, BEST_EFFORT]),
)
def test_pod_path_renders_as_the_whole_path_does(
    uid: str, driver: CgroupDriver, root: list[str], qos: QOSClass
) -> None:
    """`pod_path` renders the parent once per (driver, root, QoS) and appends the pod's own
    name; the result is `cgroup_path` of the pod's whole internal name."""
    config = NodeConfig(cgroup_driver=driver, cgroup_root=tuple(root))
    expected = cgroup_path(pod_components(config, uid, qos), driver)
    assert pod_path(config, uid, qos) == expected
    assert pod_path(config, uid, qos) == expected  # remembered
