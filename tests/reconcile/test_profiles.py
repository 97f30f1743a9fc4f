"""Write profiles (memstate.core.plan.profile) on the simulated tree: beside the kubelet memstate
creates, enables, kills and removes nothing and writes only memory.min/low/high (and pods'
cpuset.mems in NUMA mode); in QoS mode it never writes cpuset.mems.

Method: the test plays the kubelet on a SimCgroupFS — it makes kubepods, the QoS cgroups and the
pod cgroups (kubelet naming for both drivers), enables the controllers and writes the kubelet's
own values (`memory.max`, `hugetlb.*`, set to values memstate's targets disagree with) — then the
real reducer's targets are reconciled under a profile. Every call the reconciler makes goes
through `FaultInjectingCgroupFS`, whose log the test reads: the checks are on what was asked of
the tree, not on what the planner says it would do.
"""

from __future__ import annotations

import errno

import msgspec
import pytest

from memstate.core.errors import HostError, InvariantViolation
from memstate.core.plan import ObservedCgroup, ObservedTree, Operation, plan_operations
from memstate.core.plan.diff import diff_tree
from memstate.core.plan.planner import _Planner
from memstate.core.plan.profile import (
    BESIDE_KUBELET_FILES,
    STANDALONE,
    WriteProfile,
    profile_targets,
)
from memstate.core.plan.values import ValueModel
from memstate.core.targets import CPUSET_MEMS, NodeTargets
from memstate.host import walk
from memstate.host.sim import FaultInjectingCgroupFS, SimCgroupFS
from memstate.node.sources.kube import KubePod, observe
from memstate.reconcile.observe import observe_tree
from memstate.reconcile.reconciler import Reconciler, ReconcilerOptions
from tests.factories import container, pod, pod_of
from tests.reconcile.helpers import PAGE, FakeClock, new_sim, node_config, targets_of_pods
from tests.sources.standins import kube_pod

BESIDE = WriteProfile(ownership="beside-kubelet", mode="numa")
BESIDE_QOS = WriteProfile(ownership="beside-kubelet", mode="qos")
STANDALONE_QOS = WriteProfile(ownership="standalone", mode="qos")
KUBELET_POD_MAX = str(3 << 30)  # what the kubelet wrote on every pod: memstate leaves it
KUBELET_HUGETLB = "0"
MUTATING = ("write", "mkdir", "rmdir")


def three_pods() -> list:  # type: ignore[type-arg]
    return [
        pod("g1", "256Mi", cpu="100m"),  # Guaranteed: pinned under the Static policy
        pod_of("b1", [container("app", "128Mi", limit_memory="512Mi", guaranteed=False)]),
        pod_of("e1", [container("app", None, None)]),  # BestEffort
    ]


def kubelet_makes(fs: SimCgroupFS, targets: NodeTargets, uids: tuple[str, ...] | None) -> None:
    """What the kubelet does: kubepods and the QoS cgroups (with every controller enabled along
    the way), then the pod cgroups of `uids` (all of them when None), with its own values."""
    controllers = "+memory +cpuset +hugetlb"
    for target in targets.cgroups:
        if target.level in ("root", "node", "qos"):
            if target.path and not fs.exists(target.path):
                fs.mkdir(target.path)
            fs.write(target.path, "cgroup.subtree_control", controllers)
    for target in targets.pods:
        if (uids is None or target.uid in uids) and not fs.exists(target.cgroup):
            fs.mkdir(target.cgroup)
            fs.write(target.cgroup, "memory.max", KUBELET_POD_MAX)
            fs.write(target.cgroup, "hugetlb.2MB.max", KUBELET_HUGETLB)


def reconciler(
    profile: WriteProfile, **options: object
) -> tuple[FaultInjectingCgroupFS, Reconciler]:
    fs = FaultInjectingCgroupFS(new_sim(), log_length=100_000)
    return fs, Reconciler(
        fs,
        page_size_bytes=PAGE,
        options=ReconcilerOptions(**options),  # type: ignore[arg-type]
        clock=FakeClock(),
        profile=profile,
    )


def mutations(fs: FaultInjectingCgroupFS, since: int = 0) -> list[tuple[str, str, str]]:
    return [(c.op, c.path, c.file) for c in fs.log[since:] if c.op in MUTATING]


def sim_of(fs: FaultInjectingCgroupFS) -> SimCgroupFS:
    inner = fs.inner
    assert isinstance(inner, SimCgroupFS)
    return inner


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_beside_the_kubelet_only_memory_qos_files_and_pod_cpusets_are_written(driver: str) -> None:
    config = node_config(driver=driver)
    targets = targets_of_pods(three_pods(), config)
    fs, rec = reconciler(BESIDE)
    kubelet_makes(sim_of(fs), targets, None)
    tree_before = set(walk(fs))
    start = len(fs.log)

    report = rec.reconcile(targets)

    assert report.converged, report
    assert report.awaiting == ()
    done = mutations(fs, start)
    assert done, "memstate wrote nothing"
    for op, path, file in done:
        assert op == "write", (op, path)
        level = next(t.level for t in targets.cgroups if t.path == path)
        allowed = BESIDE_KUBELET_FILES | ({CPUSET_MEMS} if level == "pod" else set())
        assert file in allowed, (path, file)
    assert set(walk(fs)) == tree_before  # nothing created, nothing removed
    # The kubelet's values stay; memstate's are there.
    g1, b1 = targets.pod("g1"), targets.pod("b1")
    for target in (g1, b1):
        assert fs.read(target.cgroup, "memory.max").strip() == KUBELET_POD_MAX
        assert fs.read(target.cgroup, "hugetlb.2MB.max").strip() == KUBELET_HUGETLB
    assert fs.read(g1.cgroup, "memory.min").strip() == g1.files["memory.min"] != "0"
    assert fs.read(b1.cgroup, "memory.low").strip() == b1.files["memory.low"] != "0"
    assert fs.read(g1.cgroup, CPUSET_MEMS).strip() == g1.files[CPUSET_MEMS] != ""
    node = next(t for t in targets.cgroups if t.level == "node")
    assert fs.read(node.path, "memory.min").strip() == node.files["memory.min"]
    assert fs.read(node.path, "memory.max").strip() == "max"  # the kubelet's, not allocatable
    # Converged: the next round writes nothing.
    again = len(fs.log)
    assert rec.reconcile(targets).converged
    assert mutations(fs, again) == []


def test_beside_the_kubelet_waits_for_the_pod_cgroups_the_kubelet_makes() -> None:
    targets = targets_of_pods(three_pods())
    fs, rec = reconciler(BESIDE)
    kubelet_makes(sim_of(fs), targets, uids=("b1",))
    missing = {targets.pod("g1").cgroup, targets.pod("e1").cgroup}

    report = rec.reconcile(targets)

    assert set(report.awaiting) == missing
    assert report.converged, report  # waiting for the kubelet is not a failure
    assert not any(fs.exists(path) for path in missing)
    assert not any(op == "mkdir" for op, _, _ in mutations(fs))
    # The kubelet makes them; a scoped round (what the cgroup watcher's hint brings) writes them.
    kubelet_makes(sim_of(fs), targets, uids=None)
    report = rec.reconcile(targets, scope=sorted(missing))
    assert report.awaiting == () and report.converged, report
    g1 = targets.pod("g1")
    assert fs.read(g1.cgroup, "memory.min").strip() == g1.files["memory.min"]


def test_beside_the_kubelet_nothing_is_made_before_the_kubelet_made_kubepods() -> None:
    targets = targets_of_pods(three_pods())
    fs, rec = reconciler(BESIDE)
    report = rec.reconcile(targets)
    assert set(walk(fs)) == {""}
    assert mutations(fs) == []
    assert set(report.awaiting) == {t.path for t in targets.cgroups if t.path}


@pytest.mark.parametrize("populated", [False, True])
def test_beside_the_kubelet_retired_pods_and_orphans_are_left_to_the_kubelet(
    populated: bool,
) -> None:
    everything = targets_of_pods(three_pods())
    fs, rec = reconciler(BESIDE, remove_orphans=True, pod_removal="kill")
    sim = sim_of(fs)
    kubelet_makes(sim, everything, None)
    orphan = everything.pod("e1").cgroup.replace("e1", "o1")
    sim.mkdir(orphan)
    assert rec.reconcile(everything).converged
    b1 = everything.pod("b1").cgroup
    assert fs.read(b1, "memory.low").strip() != "0"
    pid = sim.spawn(b1) if populated else None
    remaining = targets_of_pods([p for p in three_pods() if p.uid != "b1"])
    start = len(fs.log)

    report = rec.reconcile(remaining, retired_paths=[b1])

    done = mutations(fs, start)
    assert all(op == "write" and file != "cgroup.kill" for op, _, file in done), done
    assert fs.exists(b1) and fs.exists(orphan)
    assert fs.read(b1, "memory.low").strip() == "0"  # its protection is gone at once
    assert report.pending_removals == (b1,) and report.removed == ()
    # The kubelet removes it (after its processes are gone): the removal is then seen done.
    if pid is not None:
        sim.exit(pid)
    sim.rmdir(b1)
    report = rec.reconcile(remaining, retired_paths=[b1])
    assert report.removed == (b1,) and report.pending_removals == ()
    assert fs.exists(orphan)


@pytest.mark.parametrize("ownership", ["standalone", "beside-kubelet"])
def test_qos_mode_never_writes_cpuset_mems(ownership: str) -> None:
    profile = WriteProfile(ownership=ownership, mode="qos")  # type: ignore[arg-type]
    targets = targets_of_pods(three_pods())
    assert targets.pod("g1").files[CPUSET_MEMS] != ""  # decided: pinned
    fs, rec = reconciler(profile)
    if ownership == "beside-kubelet":
        kubelet_makes(sim_of(fs), targets, None)
    start = len(fs.log)
    assert rec.reconcile(targets).converged
    assert not any(file == CPUSET_MEMS for _, _, file in mutations(fs, start))
    assert fs.read(targets.pod("g1").cgroup, CPUSET_MEMS).strip() == ""
    # The protections are written all the same.
    g1 = targets.pod("g1")
    assert fs.read(g1.cgroup, "memory.min").strip() == g1.files["memory.min"]


def test_standalone_numa_is_unchanged_by_the_profile_input() -> None:
    targets = targets_of_pods(three_pods())
    assert profile_targets(targets, STANDALONE) is targets
    fs = new_sim()
    tree = observe_tree(fs, targets)[0]
    assert plan_operations(targets, tree, page_size_bytes=PAGE) == plan_operations(
        targets, tree, page_size_bytes=PAGE, profile=STANDALONE
    )


def test_the_planner_refuses_to_create_beside_the_kubelet_even_when_asked_indirectly() -> None:
    """A pod observed as existing but whose parent is not: still nothing is made (the parent is
    awaited, so is the pod), and no operation outside the profile ever leaves the planner."""
    targets = targets_of_pods(three_pods())
    g1 = targets.pod("g1").cgroup
    tree = ObservedTree(
        cgroups={
            "": ObservedCgroup(children=(), controllers=("cpuset", "hugetlb", "memory")),
            g1: ObservedCgroup(children=()),
        }
    )
    plan = plan_operations(targets, tree, page_size_bytes=PAGE, profile=BESIDE)
    assert plan.operations == ()
    assert g1 in plan.awaiting


def test_an_operation_outside_the_profile_is_an_invariant_violation() -> None:
    """The planner's last check on every operation: were a change to emit a memory.max write,
    a mkdir or an enable beside the kubelet, planning would fail loudly instead of writing."""

    targets = profile_targets(targets_of_pods(three_pods()), BESIDE)
    fs, _ = reconciler(BESIDE)
    kubelet_makes(sim_of(fs), targets, None)
    planner = _Planner(
        targets,
        observe_tree(fs, targets)[0],
        values=ValueModel(PAGE),
        retired=frozenset(),
        pod_removal="wait",
        remove_orphans=False,
        planned=None,
        profile=BESIDE,
    )
    planner.run()
    b1 = targets.pod("b1").cgroup
    planner._check_operation_scope(
        Operation(index=0, phase="raise", kind="write", path=b1, file="memory.low", value="1")
    )
    forbidden = [
        Operation(index=0, phase="raise", kind="write", path=b1, file="memory.max", value="1"),
        Operation(index=0, phase="create", kind="mkdir", path=b1),
        Operation(
            index=0,
            phase="create",
            kind="enable",
            path=b1,
            file="cgroup.subtree_control",
            value="+memory",
        ),
    ]
    for operation in forbidden:
        with pytest.raises(InvariantViolation):
            planner._check_operation_scope(operation)


def test_diff_beside_the_kubelet_shows_only_memstates_files() -> None:
    targets = targets_of_pods(three_pods())
    fs, rec = reconciler(BESIDE)
    kubelet_makes(sim_of(fs), targets, None)
    assert rec.reconcile(targets).converged
    rows = diff_tree(targets, observe_tree(fs, targets)[0], page_size_bytes=PAGE, profile=BESIDE)
    files = {row.file for row in rows}
    assert files <= BESIDE_KUBELET_FILES | {CPUSET_MEMS}, files
    assert all(row.equal for row in rows), [r for r in rows if not r.equal]
    qos_rows = diff_tree(
        targets, observe_tree(fs, targets)[0], page_size_bytes=PAGE, profile=BESIDE_QOS
    )
    assert CPUSET_MEMS not in {row.file for row in qos_rows}


def test_profile_file_rules() -> None:
    for level in ("node", "qos", "pod", "container"):
        for file in ("memory.min", "memory.low", "memory.high"):
            assert BESIDE.allows(level, file) and BESIDE_QOS.allows(level, file)  # type: ignore[arg-type]
        for file in ("memory.max", "hugetlb.2MB.max", "memory.swap.max", "cgroup.subtree_control"):
            assert not BESIDE.allows(level, file)  # type: ignore[arg-type]
    assert BESIDE.allows("pod", CPUSET_MEMS) and not BESIDE_QOS.allows("pod", CPUSET_MEMS)
    assert not BESIDE.allows("qos", CPUSET_MEMS) and not BESIDE.allows("container", CPUSET_MEMS)
    assert not BESIDE.allows("root", "memory.min")
    assert STANDALONE.allows("pod", "memory.max") and STANDALONE.allows("pod", CPUSET_MEMS)
    assert not STANDALONE_QOS.allows("pod", CPUSET_MEMS)
    assert STANDALONE_QOS.allows("pod", "memory.max")


DASHED_UID = "5c7d1e2f-3333-4a4b-9c5d-0000000000aa"
APP_ID = "c0" * 32
SANDBOX_ID = "5a" * 32


@pytest.mark.parametrize(
    ("driver", "runtime", "directory", "conmon"),
    [
        ("cgroupfs", "containerd", APP_ID, None),
        ("cgroupfs", "cri-o", f"crio-{APP_ID}", f"crio-conmon-{APP_ID}"),
        ("systemd", "containerd", f"cri-containerd-{APP_ID}.scope", None),
        ("systemd", "cri-o", f"crio-{APP_ID}.scope", f"crio-conmon-{APP_ID}.scope"),
    ],
)
def test_container_cgroups_of_both_runtimes_and_drivers_get_their_values_beside_the_kubelet(
    driver: str, runtime: str, directory: str, conmon: str | None
) -> None:
    """The runtime's naming (kubelet-node.md §6) under kubelet-made pod cgroups; the id comes
    from the pod status as a source decodes it (`containerd://` / `cri-o://`)."""

    config = node_config(driver=driver)
    burstable = pod_of(
        DASHED_UID, [container("app", "128Mi", limit_memory="512Mi", guaranteed=False)]
    )
    targets = targets_of_pods([burstable], config)
    status = kube_pod("p", DASHED_UID, container_id=f"{runtime}://{APP_ID}")
    seen = observe(msgspec.convert(status, KubePod), "kubelet")
    fs, rec = reconciler(BESIDE)
    sim = sim_of(fs)
    kubelet_makes(sim, targets, None)
    pod_cgroup = targets.pod(DASHED_UID).cgroup
    if driver == "systemd":
        assert pod_cgroup.endswith("-pod5c7d1e2f_3333_4a4b_9c5d_0000000000aa.slice")
    # The runtime: the sandbox's cgroup, conmon's (CRI-O), the container's, a process in it.
    sim.write(pod_cgroup, "cgroup.subtree_control", "+memory")
    others = [SANDBOX_ID if runtime == "containerd" else f"crio-{SANDBOX_ID}"]
    others += [conmon] if conmon else []
    for name in [directory, *others]:
        sim.mkdir(f"{pod_cgroup}/{name}")
    sim.spawn(f"{pod_cgroup}/{directory}")
    rec.container_ids = {seen.uid: dict(seen.container_ids)}
    start = len(fs.log)

    assert rec.reconcile(targets).converged

    wanted = targets.pod(DASHED_UID).containers[0].files
    path = f"{pod_cgroup}/{directory}"
    assert wanted["memory.low"] == str(128 << 20) and wanted["memory.high"] != "max"
    for file in ("memory.min", "memory.low", "memory.high"):
        assert fs.read(path, file).strip() == wanted[file], file
    assert fs.read(path, "memory.max").strip() == "max"  # the runtime's
    written = {p for op, p, _ in mutations(fs, start) if op == "write"}
    assert path in written
    assert not written & {f"{pod_cgroup}/{name}" for name in others}  # sandbox, conmon: alone
    assert not any(op != "write" for op, _, _ in mutations(fs, start))


class KubeletRemovesDuringTheRound(FaultInjectingCgroupFS):
    """The kubelet removes `victim` (a pod cgroup without children) just before memstate's
    first write to it in the round: the write meets ENOENT, as on a real node; with `opened`,
    between memstate's open of the file and its write, which kernfs answers with ENODEV."""

    victim = ""
    opened = False

    def write(self, path: str, file: str, value: str) -> None:
        if path == self.victim and self.inner.exists(path):
            self.inner.rmdir(path)
            if self.opened:
                raise HostError(f"write {path}/{file}: ENODEV (injected)", errno=errno.ENODEV)
        super().write(path, file, value)


@pytest.mark.parametrize("opened", [False, True], ids=["ENOENT", "ENODEV"])
def test_beside_the_kubelet_a_write_to_a_cgroup_the_kubelet_just_removed_is_no_failure(
    opened: bool,
) -> None:
    targets = targets_of_pods(three_pods())
    fs = KubeletRemovesDuringTheRound(new_sim(), log_length=100_000)
    fs.opened = opened
    rec = Reconciler(fs, page_size_bytes=PAGE, clock=FakeClock(), profile=BESIDE)
    kubelet_makes(sim_of(fs), targets, None)
    fs.victim = targets.pod("b1").cgroup

    report = rec.reconcile(targets)

    assert not fs.exists(fs.victim)
    assert [n for n in report.notes if n.kind == "cgroup_write_failed"] == []
    # ENOENT from a cgroup that still exists (a missing file) is still a failure worth a note.
    fs2 = KubeletRemovesDuringTheRound(new_sim(), log_length=100_000)
    rec2 = Reconciler(fs2, page_size_bytes=PAGE, clock=FakeClock(), profile=BESIDE)
    kubelet_makes(sim_of(fs2), targets, None)
    b1 = targets.pod("b1").cgroup
    fs2.inject(errno.ENOENT, op="write", path=b1, file="memory.low")
    noted = [n for n in rec2.reconcile(targets).notes if n.kind == "cgroup_write_failed"]
    assert fs2.exists(b1)
    assert [(n.path, n.file) for n in noted] == [(b1, "memory.low")]
    # So is ENODEV from a cgroup that still exists.
    fs3 = FaultInjectingCgroupFS(new_sim(), log_length=100_000)
    rec3 = Reconciler(fs3, page_size_bytes=PAGE, clock=FakeClock(), profile=BESIDE)
    kubelet_makes(sim_of(fs3), targets, None)
    fs3.inject(errno.ENODEV, op="write", path=b1, file="memory.low")
    noted = [n for n in rec3.reconcile(targets).notes if n.kind == "cgroup_write_failed"]
    assert [(n.path, n.file, n.errno) for n in noted] == [(b1, "memory.low", errno.ENODEV)]
