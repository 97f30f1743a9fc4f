"""The pure planner: ordering rules, kernel-normalised comparison, ownership and removals.

Method: targets come from the real reducer (tests/reconcile/helpers.py) or are written by hand
where a rule needs a shape the QoS targets never produce (cpusets on parents). Observed trees are
read from a SimCgroupFS with the real observer (`observe_tree`), or written by hand to exercise
unknown values. Each test asserts on the operations' order, phases, values and `requires`.
"""

from __future__ import annotations

import msgspec
import pytest

from memstate.core.cgroup_paths import ancestor_paths
from memstate.core.errors import InvariantViolation
from memstate.core.plan import (
    EMPTY_WRITE,
    ObservedCgroup,
    ObservedTree,
    Operation,
    Plan,
    ValueModel,
    apply_operations,
    diff_tree,
    merge_observations,
    naming_config,
    plan_operations,
)
from memstate.core.targets import CgroupTarget, NodeTargets
from memstate.host.sim import SimCgroupFS
from memstate.reconcile.reconciler import Reconciler, observe_tree
from memstate.testing import check_protection, protection_shortfalls
from tests.reconcile.helpers import (
    PAGE,
    Gi,
    Mi,
    mixed_pod,
    new_sim,
    node_config,
    retired,
    targets_of_pods,
    tree_snapshot,
    uid_for,
)

ALL_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


def observe(fs: SimCgroupFS, targets: NodeTargets) -> ObservedTree:
    tree, errors, _reads = observe_tree(fs, targets)
    assert not errors
    return tree


def plan_for(fs: SimCgroupFS, targets: NodeTargets, **options: object) -> Plan:
    return plan_operations(targets, observe(fs, targets), page_size_bytes=PAGE, **options)  # type: ignore[arg-type]


def converged_sim(targets: NodeTargets) -> SimCgroupFS:
    fs = new_sim()
    report = Reconciler(fs, page_size_bytes=PAGE).reconcile(targets)
    assert report.converged, report
    return fs


def position(plan: Plan, kind: str, path: str, file: str = "") -> int:
    for operation in plan.operations:
        if operation.kind == kind and operation.path == path and operation.file == file:
            return operation.index
    raise AssertionError(f"no {kind} {path}/{file} in {[o.describe() for o in plan.operations]}")


def ops(plan: Plan, phase: str | None = None) -> list[Operation]:
    return [o for o in plan.operations if phase is None or o.phase == phase]


def pods(count: int, *, start: int = 0) -> list:  # type: ignore[type-arg]
    return [mixed_pod(uid_for(i), i) for i in range(start, start + count)]


# --- creation and ordering ------------------------------------------------------------------------


def test_empty_root_plans_creation_top_down_then_passes() -> None:
    """From an empty root: mkdir/enable top-down, ancestors' protection before the pods',
    and no write of a value a fresh cgroup already holds."""
    targets = targets_of_pods(pods(5))
    plan = plan_for(new_sim(), targets)
    phases = [o.phase for o in plan.operations]
    assert phases == sorted(phases, key=["create", "raise", "remove", "lower"].index)
    created = [o.path for o in ops(plan) if o.kind == "mkdir"]
    assert created == [t.path for t in targets.cgroups if t.path]  # every cgroup, parents first
    for operation in plan.operations:
        assert all(r < operation.index for r in operation.requires)
        if operation.kind == "write":
            assert operation.value != ""
            # Nothing is written that equals the fresh cgroup's default.
            default = {"memory.min": "0", "memory.low": "0", "memory.high": "max"}
            assert default.get(operation.file) != operation.value, operation.describe()
    node_min = position(plan, "write", "kubepods", "memory.min")
    for target in targets.pods:
        if target.files.get("memory.min", "0") != "0":
            pod_min = position(plan, "write", target.cgroup, "memory.min")
            assert node_min < pod_min
            assert node_min in plan.operations[pod_min].requires
    burstable_low = position(plan, "write", "kubepods/burstable", "memory.low")
    assert position(plan, "write", "kubepods", "memory.low") < burstable_low
    for target in targets.pods:
        if target.files.get("memory.low", "0") != "0":
            assert burstable_low < position(plan, "write", target.cgroup, "memory.low")


def test_controllers_are_enabled_top_down_before_the_files_they_provide() -> None:
    targets = targets_of_pods(pods(3))
    plan = plan_for(new_sim(), targets)
    enables = [o for o in plan.operations if o.kind == "enable"]
    assert [o.path for o in enables] == [t.path for t in targets.cgroups if t.controllers]
    assert enables[0].value == "+cpuset +memory +hugetlb"
    node_enable = position(plan, "enable", "kubepods", "cgroup.subtree_control")
    assert position(plan, "enable", "", "cgroup.subtree_control") in (
        plan.operations[node_enable].requires
    )
    write = position(plan, "write", "kubepods", "memory.min")
    assert position(plan, "enable", "", "cgroup.subtree_control") in plan.operations[write].requires


def test_controller_missing_at_the_root_is_reported_and_its_files_left_out() -> None:
    """A root offering only hugetlb (like this host's cgroup2): memory and cpuset files are
    blocked with a warning, hugetlb ones are still managed."""
    targets = targets_of_pods(pods(4))
    fs = SimCgroupFS(page_size_bytes=PAGE, controllers=("hugetlb",), online_nodes="0-1")
    plan = plan_for(fs, targets)
    assert any("cpuset, memory not available" in w for w in plan.warnings), plan.warnings
    assert "kubepods/memory.min" in plan.blocked
    assert all(not o.file.startswith(("memory.", "cpuset.")) for o in plan.operations)
    assert ops(plan)[0].value == "+hugetlb"
    hugetlb_writes = [o for o in plan.operations if o.file == "hugetlb.2MB.max"]
    assert len(hugetlb_writes) == len(targets.pods)


def test_converged_tree_plans_nothing_and_values_compare_normalised() -> None:
    """Page rounding, "max" saturation and cpu-list spelling never cause a rewrite."""
    targets = targets_of_pods(pods(6))
    fs = converged_sim(targets)
    tree = observe(fs, targets)
    assert plan_operations(targets, tree, page_size_bytes=PAGE).operations == ()
    # A target that is not page aligned (1 GiB + 100 bytes) reads back as 1 GiB: equal.
    victim = next(t for t in targets.cgroups if t.level == "pod")
    assert tree.cgroups[victim.path].files["memory.max"].strip() == victim.files["memory.max"]
    odd = msgspec.structs.replace(
        victim, files={**victim.files, "memory.max": str(int(victim.files["memory.max"]) + 100)}
    )
    odd_targets = msgspec.structs.replace(
        targets, cgroups=tuple(odd if c.path == odd.path else c for c in targets.cgroups)
    )
    assert plan_operations(odd_targets, tree, page_size_bytes=PAGE).operations == ()
    # One page more is a real difference.
    bigger = msgspec.structs.replace(
        victim, files={**victim.files, "memory.max": str(int(victim.files["memory.max"]) + PAGE)}
    )
    bigger_targets = msgspec.structs.replace(
        targets, cgroups=tuple(bigger if c.path == odd.path else c for c in targets.cgroups)
    )
    (grow,) = plan_operations(bigger_targets, tree, page_size_bytes=PAGE).operations
    assert (grow.phase, grow.path, grow.file) == ("raise", victim.path, "memory.max")
    values = ValueModel(PAGE)
    assert values.equal("memory.max", "1000000000", "999997440\n")
    assert values.equal("memory.max", "9223372036854775807", "max\n")
    assert values.equal("memory.min", "max", "max")
    assert values.equal("cpuset.mems", "0,1", "0-1\n")
    assert values.equal("cpuset.mems", "", "\n")
    assert values.equal("hugetlb.2MB.max", "max", "9223372036854771712\n")  # 6.18 default
    assert values.equal("hugetlb.2MB.max", "3000000", "2097152\n")  # whole huge pages
    assert not values.equal("memory.max", "1000000000", "1000001536")
    assert not values.equal("memory.max", "garbage", "garbage")


def test_hugetlb_default_of_linux_6_18_is_max() -> None:
    """6.18 prints 9223372036854771712 for a never-written hugetlb limit: equal to "max"."""
    from memstate.host.sim import KERNEL_6_18

    targets = targets_of_pods(pods(3))
    fs = new_sim(kernel=KERNEL_6_18)
    reconciler = Reconciler(fs, page_size_bytes=PAGE)
    assert reconciler.reconcile(targets).converged
    assert plan_for(fs, targets).operations == ()
    hugetlb = CgroupTarget(path="kubepods/burstable", level="qos", files={"hugetlb.2MB.max": "max"})
    assert ValueModel(PAGE).equal(
        "hugetlb.2MB.max",
        hugetlb.files["hugetlb.2MB.max"],
        fs.read("kubepods/burstable", "hugetlb.2MB.max"),
    )


# --- hand-made trees for limits and cpusets -------------------------------------------------------


def hand_targets(kubepods: dict[str, str], pod: dict[str, str]) -> NodeTargets:
    """root → kubepods → burstable/besteffort, plus one Guaranteed pod, with the given files."""
    controllers = ("cpuset", "hugetlb", "memory")
    cgroups = (
        CgroupTarget(path="", level="root", controllers=controllers),
        CgroupTarget(path="kubepods", level="node", files=kubepods, controllers=controllers),
        CgroupTarget(path="kubepods/besteffort", level="qos", controllers=controllers),
        CgroupTarget(path="kubepods/burstable", level="qos", controllers=controllers),
        CgroupTarget(path="kubepods/podg1", level="pod", files=pod, pod_uid="g1"),
    )
    return NodeTargets(cgroups=cgroups, pods=(), node_memory_min_bytes=0, node_memory_low_bytes=0)


def applied(fs: SimCgroupFS, targets: NodeTargets) -> SimCgroupFS:
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged
    return fs


@pytest.mark.parametrize(
    ("before", "after", "phase", "parent_first"),
    [
        (("0", "0"), ("0-1", "0-1"), "raise", True),  # widen: parent first
        (("0-1", "0-1"), ("0", "0"), "lower", False),  # narrow: children first
        (("0", "0"), ("1", "1"), "lower", False),  # neither: one exact write, children first
    ],
)
def test_cpusets_widen_parent_first_and_narrow_child_first(
    before: tuple[str, str], after: tuple[str, str], phase: str, parent_first: bool
) -> None:
    fs = applied(
        new_sim(),
        hand_targets({"cpuset.mems": before[0]}, {"cpuset.mems": before[1]}),
    )
    targets = hand_targets({"cpuset.mems": after[0]}, {"cpuset.mems": after[1]})
    plan = plan_for(fs, targets)
    assert [(o.phase, o.path, o.value) for o in plan.operations] == (
        [(phase, "kubepods", after[0]), (phase, "kubepods/podg1", after[1])]
        if parent_first
        else [(phase, "kubepods/podg1", after[1]), (phase, "kubepods", after[0])]
    )
    first, second = plan.operations
    assert first.index in second.requires  # the second write waits for the first
    applied(fs, targets)


def test_clearing_a_cpuset_writes_a_newline_never_an_empty_string() -> None:
    fs = applied(new_sim(), hand_targets({}, {"cpuset.mems": "1"}))
    targets = hand_targets({}, {"cpuset.mems": ""})
    plan = plan_for(fs, targets)
    (write,) = plan.operations
    assert (write.phase, write.value) == ("lower", EMPTY_WRITE)
    applied(fs, targets)
    assert fs.read("kubepods/podg1", "cpuset.mems") == "\n"


@pytest.mark.parametrize("file", ["memory.max", "memory.high", "hugetlb.2MB.max"])
def test_limits_grow_parent_first_and_shrink_child_first(file: str) -> None:
    small, large = str(256 * Mi), str(1 * Gi)
    fs = applied(new_sim(), hand_targets({file: small}, {file: small}))
    grow = plan_for(fs, hand_targets({file: large}, {file: large}))
    assert [(o.phase, o.path) for o in grow.operations] == [
        ("raise", "kubepods"),
        ("raise", "kubepods/podg1"),
    ]
    # Ordered, but not dependent: the kernel takes a child limit above its parent's.
    assert grow.operations[0].index not in grow.operations[1].requires
    fs = applied(fs, hand_targets({file: large}, {file: large}))
    shrink = plan_for(fs, hand_targets({file: small}, {file: small}))
    assert [(o.phase, o.path) for o in shrink.operations] == [
        ("lower", "kubepods/podg1"),
        ("lower", "kubepods"),
    ]
    assert shrink.operations[0].index not in shrink.operations[1].requires


# --- protections across a transition -------------------------------------------------------------


def test_add_and_remove_in_one_round_never_lets_children_exceed_the_parent() -> None:
    """memory-qos.md §12.3's case: kubepods = A(2G) + B(1G); A is retired and C(2G) admitted in
    the same round. kubepods is raised to cover A + B + C before C's write, A is removed, then
    kubepods is lowered to B + C — and the lowering requires A's removal."""
    from tests.factories import pod

    a, b, c = pod("aaaa", "2Gi"), pod("bbbb", "1Gi"), pod("cccc", "2Gi")
    before = targets_of_pods([a, b])
    after = targets_of_pods([b, c])
    fs = converged_sim(before)
    assert fs.read("kubepods", "memory.min") == f"{3 * Gi}\n"
    plan = plan_for(fs, after, retired_paths=retired("aaaa"))
    raise_node = position(plan, "write", "kubepods", "memory.min")
    assert plan.operations[raise_node].value == str(5 * Gi)
    assert plan.operations[raise_node].reason == "cover"
    write_c = position(plan, "write", "kubepods/podcccc", "memory.min")
    assert raise_node in plan.operations[write_c].requires
    remove_a = position(plan, "rmdir", "kubepods/podaaaa")
    lower = [o for o in plan.operations if o.phase == "lower" and o.file == "memory.min"]
    assert [(o.path, o.value) for o in lower] == [("kubepods", str(3 * Gi))]
    assert remove_a in lower[0].requires
    assert raise_node < write_c < remove_a < lower[0].index


def test_child_changed_by_someone_else_is_lowered_without_touching_the_parent() -> None:
    """A pod's memory.min raised behind memstate's back: one lower write, no parent write
    (the pre-existing shortfall is not covered by a temporary raise, only removed)."""
    targets = targets_of_pods(pods(5))
    fs = converged_sim(targets)
    victim = next(p for p in targets.pods if p.files.get("memory.min", "0") != "0")
    fs.write(victim.cgroup, "memory.min", str(5 * Gi))
    plan = plan_for(fs, targets)
    assert [(o.phase, o.path, o.file) for o in plan.operations] == [
        ("lower", victim.cgroup, "memory.min")
    ]


def test_parent_lowered_by_someone_else_is_raised_in_the_raise_pass() -> None:
    targets = targets_of_pods(pods(5))
    fs = converged_sim(targets)
    fs.write("kubepods", "memory.min", "0")
    plan = plan_for(fs, targets)
    assert [(o.phase, o.path, o.file) for o in plan.operations] == [
        ("raise", "kubepods", "memory.min")
    ]


def test_parent_covers_unmanaged_children_and_says_so() -> None:
    """A foreign child of kubepods with memory.min: kubepods is kept above its target."""
    targets = targets_of_pods(pods(3))
    fs = converged_sim(targets)
    fs.mkdir("kubepods/foreign")
    fs.write("kubepods/foreign", "memory.min", str(1 * Gi))
    plan = plan_for(fs, targets)
    target = int(targets.cgroup("kubepods").files["memory.min"])
    # kubepods' min is G + B, its children's (Guaranteed pods, QoS cgroups) only add up to G.
    children = sum(int(t.files["memory.min"]) for t in targets.cgroups if t.path.count("/") == 1)
    covered = children + Gi
    assert covered > target
    (write,) = plan.operations
    assert (write.phase, write.path, write.value) == ("raise", "kubepods", str(covered))
    assert any("kept at" in w for w in plan.warnings)
    assert plan.final_values["kubepods"]["memory.min"] == str(covered)


# --- removals and ownership -----------------------------------------------------------------------


def retired_setup(*, populated: bool) -> tuple[SimCgroupFS, NodeTargets, str, int | None]:
    """Pods 0..4 converged; pod 1 (Burstable) gets a container cgroup with memory.low set by
    "the runtime" (and a process when `populated`); targets without pod 1."""
    everyone = pods(5)
    fs = converged_sim(targets_of_pods(everyone))
    retired = targets_of_pods(everyone).pod(uid_for(1))
    fs.write(retired.cgroup, "cgroup.subtree_control", "+memory")
    container = f"{retired.cgroup}/ctr1"
    fs.mkdir(container)
    fs.write(container, "memory.low", str(64 * Mi))
    pid = fs.spawn(container) if populated else None
    targets = targets_of_pods([p for p in everyone if p.uid != uid_for(1)])
    return fs, targets, retired.cgroup, pid


def test_unpopulated_retired_pod_is_removed_leaf_first_before_ancestors_are_lowered() -> None:
    fs, targets, path, _pid = retired_setup(populated=False)
    plan = plan_for(fs, targets, retired_paths=retired(uid_for(1)))
    removes = ops(plan, "remove")
    assert [(o.kind, o.path) for o in removes] == [("rmdir", f"{path}/ctr1"), ("rmdir", path)]
    assert removes[0].index in removes[1].requires
    lower = position(plan, "write", "kubepods/burstable", "memory.low")
    assert removes[1].index in plan.operations[lower].requires
    (removal,) = plan.removals
    assert (removal.kind, removal.action, removal.populated) == ("retired", "remove", False)


def test_populated_retired_pod_waits_with_its_protection_zeroed_leaf_first() -> None:
    fs, targets, path, _pid = retired_setup(populated=True)
    plan = plan_for(fs, targets, retired_paths=retired(uid_for(1)))
    removes = ops(plan, "remove")
    assert [(o.kind, o.path, o.file, o.value) for o in removes] == [
        ("write", f"{path}/ctr1", "memory.low", "0"),
        ("write", path, "memory.low", "0"),
    ]
    assert removes[0].index in removes[1].requires
    lower = position(plan, "write", "kubepods/burstable", "memory.low")
    assert removes[1].index in plan.operations[lower].requires
    assert [r.action for r in plan.pending_removals] == ["wait"]


def test_populated_retired_pod_with_kill_is_zeroed_killed_then_removed() -> None:
    fs, targets, path, _pid = retired_setup(populated=True)
    plan = plan_for(fs, targets, retired_paths=retired(uid_for(1)), pod_removal="kill")
    removes = ops(plan, "remove")
    assert [(o.kind, o.path) for o in removes] == [
        ("write", f"{path}/ctr1"),
        ("write", path),
        ("kill", path),
        ("rmdir", f"{path}/ctr1"),
        ("rmdir", path),
    ]
    kill = removes[2]
    assert (kill.file, kill.value) == ("cgroup.kill", "1")
    assert kill.index in removes[3].requires


def test_orphans_are_reported_and_removed_only_when_empty_and_asked() -> None:
    fs, targets, path, pid = retired_setup(populated=True)
    plan = plan_for(fs, targets)  # nothing retired: the pod is an orphan
    assert [(r.path, r.kind, r.action) for r in plan.removals] == [(path, "orphan", "keep")]
    assert ops(plan, "remove") == []
    assert plan_for(fs, targets, remove_orphans=True).removals[0].action == "keep"  # populated
    assert pid is not None
    fs.exit(pid)
    plan = plan_for(fs, targets, remove_orphans=True)
    assert [(o.kind, o.path) for o in ops(plan, "remove")] == [
        ("rmdir", f"{path}/ctr1"),
        ("rmdir", path),
    ]


def test_names_that_are_not_memstate_pods_are_never_touched() -> None:
    targets = targets_of_pods(pods(3))
    fs = converged_sim(targets)
    for name in ("kubepods/system-thing", "kubepods/podNOT_A_UID", "kubepods/burstable/x.scope"):
        fs.mkdir(name)
    pod_path = targets.pods[0].cgroup
    fs.mkdir(f"{pod_path}/cri-containerd-0123.scope")  # a container of a desired pod
    fs.mkdir("system.slice")
    for remove_orphans in (False, True):
        plan = plan_for(
            fs, targets, retired_paths=retired("NOT-A-UID"), remove_orphans=remove_orphans
        )
        assert plan.operations == ()
        assert plan.removals == ()


def test_systemd_orphans_parse_through_the_slice_names() -> None:
    config = node_config(driver="systemd", cgroup_root="/memstate")
    everyone = pods(3)
    fs = converged_sim(targets_of_pods(everyone, config))
    targets = targets_of_pods(everyone[:2], config)
    plan = plan_for(fs, targets, retired_paths=retired(uid_for(2), config=config))
    (removal,) = plan.removals
    assert removal.path.endswith("-podp0002_aaaa.slice")
    assert (removal.uid, removal.kind, removal.action) == (uid_for(2), "retired", "remove")
    assert naming_config(targets) == msgspec.structs.replace(
        naming_config(targets), cgroup_driver="systemd", cgroup_root=("memstate",)
    )


def test_malformed_targets_are_refused() -> None:
    good = targets_of_pods(pods(2))
    backwards = msgspec.structs.replace(good, cgroups=tuple(reversed(good.cgroups)))
    with pytest.raises(InvariantViolation, match="before its parent"):
        plan_operations(backwards, ObservedTree(), page_size_bytes=PAGE)
    bad_pod = CgroupTarget(path="kubepods/evil", level="pod", pod_uid="evil")
    evil = msgspec.structs.replace(good, cgroups=(*good.cgroups, bad_pod))
    with pytest.raises(InvariantViolation, match="not a pod cgroup name"):
        plan_operations(evil, ObservedTree(), page_size_bytes=PAGE)
    with pytest.raises(InvariantViolation, match="pod_removal"):
        plan_operations(good, ObservedTree(), page_size_bytes=PAGE, pod_removal="nuke")  # type: ignore[arg-type]


def test_unsafe_names_found_in_the_tree_are_left_alone() -> None:
    targets = targets_of_pods(pods(2))
    tree = observe(converged_sim(targets), targets)
    node = tree.cgroups["kubepods"]
    assert node.children is not None
    hostile = msgspec.structs.replace(node, children=(*node.children, "..", "a/b", ".hidden"))
    plan = plan_operations(
        targets,
        ObservedTree(cgroups={**tree.cgroups, "kubepods": hostile}),
        page_size_bytes=PAGE,
        remove_orphans=True,
    )
    assert plan.operations == ()
    assert sum("cannot handle" in w for w in plan.warnings) == 3


# --- unknown values -------------------------------------------------------------------------------


def test_an_unreadable_parent_protection_blocks_raises_below_it_but_not_lowering() -> None:
    """kubepods' memory.min could not be read: no write to it, no raise of a pod under it
    (the parent might not cover it), while a pod's lowering still goes ahead."""
    from tests.factories import pod

    everyone = pods(6)  # pods 0 and 5 are Guaranteed
    fs = converged_sim(targets_of_pods(everyone))
    grown = mixed_pod(uid_for(0), 0, scale=3)
    shrunk = pod(uid_for(5), "64Mi", cpu="100m")
    targets = targets_of_pods([grown, *everyone[1:5], shrunk])
    tree = observe(fs, targets)
    control = plan_operations(targets, tree, page_size_bytes=PAGE)
    assert {(o.phase, o.path) for o in control.operations if o.file == "memory.min"} == {
        ("raise", "kubepods/podp0000-aaaa"),
        ("lower", "kubepods/podp0005-aaaa"),
    }
    node = tree.cgroups["kubepods"]
    files = {k: v for k, v in node.files.items() if k != "memory.min"}
    blind = msgspec.structs.replace(node, files=files, unreadable=("memory.min",))
    plan = plan_operations(
        targets, ObservedTree(cgroups={**tree.cgroups, "kubepods": blind}), page_size_bytes=PAGE
    )
    assert "kubepods/memory.min" in plan.unknown
    assert {(o.phase, o.path) for o in plan.operations if o.file == "memory.min"} == {
        ("lower", "kubepods/podp0005-aaaa"),
    }
    assert "memory.min" not in plan.final_values["kubepods"]


def test_unreadable_file_whose_controller_is_not_enabled_is_just_absent() -> None:
    tree = ObservedTree(
        cgroups={
            "": ObservedCgroup(controllers=ALL_CONTROLLERS, subtree_control=(), children=()),
        }
    )
    targets = targets_of_pods(pods(2))
    plan = plan_operations(targets, tree, page_size_bytes=PAGE)
    assert plan.unknown == ()
    assert position(plan, "mkdir", "kubepods") >= 0


# --- helpers of the plan module ------------------------------------------------------------------


def test_apply_operations_predicts_what_the_sim_reads() -> None:
    targets = targets_of_pods(pods(6))
    fs = new_sim()
    before = observe(fs, targets)
    plan = plan_operations(targets, before, page_size_bytes=PAGE)
    predicted = apply_operations(before, plan.operations)
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged
    assert plan_operations(targets, predicted, page_size_bytes=PAGE).operations == ()
    assert set(predicted.cgroups) == {t.path for t in targets.cgroups}


def test_merge_observations_replaces_fresh_cgroups_and_drops_vanished_subtrees() -> None:
    base = ObservedTree(
        cgroups={
            "": ObservedCgroup(children=("a",)),
            "a": ObservedCgroup(children=("b",)),
            "a/b": ObservedCgroup(children=()),
        }
    )
    merged = merge_observations(base, {"a": ObservedCgroup(exists=False)})
    assert set(merged.cgroups) == {"", "a"}
    assert merged.cgroups[""].children == ()
    kept = merge_observations(base, {"a": ObservedCgroup(files={"memory.min": "0"})})
    assert kept.cgroups["a"].children == ("b",)
    added = merge_observations(base, {"c": ObservedCgroup(children=())})
    assert added.cgroups[""].children == ("a", "c")


def test_diff_rows_cover_every_managed_file_and_the_orphans() -> None:
    everyone = pods(4)
    fs = converged_sim(targets_of_pods(everyone))
    targets = targets_of_pods(everyone[:3])
    fs.write("kubepods", "memory.max", str(2 * Gi))
    rows = diff_tree(targets, observe(fs, targets), page_size_bytes=PAGE)
    by_key = {(r.path, r.file): r for r in rows}
    managed = sum(len(t.files) + bool(t.controllers) for t in targets.cgroups)
    assert len(rows) == managed + 1
    assert by_key[("kubepods", "memory.max")].status == "differs"
    orphan = targets_of_pods(everyone).pod(uid_for(3)).cgroup
    assert by_key[(orphan, "")].status == "orphan"
    assert sum(r.status == "equal" for r in rows) == managed - 2  # kubepods min/low/max differ


def test_check_protection_names_parents_below_their_children() -> None:
    targets = targets_of_pods(pods(5))
    fs = converged_sim(targets)
    assert check_protection(tree_snapshot(fs)) == []
    fs.write("kubepods/burstable", "memory.low", "0")
    problems = check_protection(tree_snapshot(fs))
    assert problems and all("kubepods/burstable: memory.low" in p for p in problems)
    shortfalls = protection_shortfalls(tree_snapshot(fs))
    expected = int(targets.cgroup("kubepods/burstable").files["memory.low"])
    assert shortfalls == {("kubepods/burstable", "memory.low"): expected}


def test_fault_free_reads_have_no_unknowns() -> None:
    """Guard for the tests above: the observer reports ENOENT on absent controller files
    quietly (they are not unknown), so a healthy tree plans with nothing unknown."""
    targets = targets_of_pods(pods(3))
    fs = new_sim()
    tree, errors, _ = observe_tree(fs, targets)
    assert errors == []
    plan = plan_operations(targets, tree, page_size_bytes=PAGE)
    assert plan.unknown == ()


def test_focus_plans_only_the_focus_and_its_ancestors() -> None:
    """A scoped round: other pods that differ are left for the full resync; the ancestors'
    sums still count them at their current values."""
    everyone = pods(6)
    fs = converged_sim(targets_of_pods(everyone[:5]))
    targets = targets_of_pods(everyone)
    newcomer = targets.pod(uid_for(5)).cgroup
    other = targets.pods[0].cgroup
    fs.write(other, "memory.max", "max")  # someone else's change to an out-of-focus pod
    tree = observe(fs, targets)
    full = plan_operations(targets, tree, page_size_bytes=PAGE)
    focused = plan_operations(targets, tree, page_size_bytes=PAGE, focus=[newcomer])
    assert {o.path for o in full.operations} >= {newcomer, other}
    touched = {o.path for o in focused.operations}
    assert newcomer in touched and other not in touched
    allowed = {newcomer, *ancestor_paths(newcomer)}
    assert touched <= allowed
    same = {(o.path, o.file, o.value) for o in full.operations if o.path in allowed}
    assert {(o.path, o.file, o.value) for o in focused.operations} == same
    assert set(focused.final_values) == allowed
