"""Container cgroups: discovered under pod cgroups, given their Memory QoS values, never created.

Method: the real reducer's targets for a Burstable and a Guaranteed pod are converged on a
SimCgroupFS; the test then plays the runtime and creates container cgroups under the pod cgroups
(named after the container — the standalone layout — and runtime-named with a known and an
unknown id), and the next rounds must write exactly the container's `memory.min`/`memory.low`/
`memory.high` (never `memory.max`), keep each pod's protection at least the sum of its containers'
and create nothing.
"""

from __future__ import annotations

from memstate.cli.commands.plan_cmd import diff_document, plan_document
from memstate.core.plan.containers import (
    container_for_directory,
    runtime_container_id,
)
from memstate.core.targets import NodeTargets, PodTargets
from memstate.host import walk
from memstate.host.sim import FaultInjectingCgroupFS
from memstate.reconcile.reconciler import Reconciler, ReconcilerOptions
from tests.factories import container, pod_of
from tests.reconcile.helpers import PAGE, FakeClock, new_sim, targets_of_pods

ID_A = "a1" * 32
ID_B = "b2" * 32


def runtime_creates(fs: FaultInjectingCgroupFS, path: str) -> None:
    """What runc does: enable the memory controller in the parent, then create the cgroup."""
    parent = path.rpartition("/")[0]
    fs.write(parent, "cgroup.subtree_control", "+memory")
    fs.mkdir(path)


def make() -> tuple[FaultInjectingCgroupFS, Reconciler]:
    fs = FaultInjectingCgroupFS(new_sim())
    return fs, Reconciler(fs, page_size_bytes=PAGE, options=ReconcilerOptions(), clock=FakeClock())


def two_pods() -> NodeTargets:
    burstable = pod_of(
        "b1",
        [
            container("app", "256Mi", limit_memory="512Mi", guaranteed=False),
            container("side", "64Mi", limit_memory="128Mi", guaranteed=False),
        ],
    )
    guaranteed = pod_of("g1", [container("app", "256Mi", "100m")])
    return targets_of_pods([burstable, guaranteed])


def files_of(pod: PodTargets, name: str) -> dict[str, str]:
    return {c.name: c.files for c in pod.containers}[name]


def test_directory_naming_rule() -> None:
    names = frozenset({"app", "side"})
    ids = {ID_A: "app"}
    assert container_for_directory("side", names, ids) == "side"
    assert container_for_directory(ID_A, names, ids) == "app"
    assert container_for_directory(f"cri-containerd-{ID_A}.scope", names, ids) == "app"
    assert container_for_directory(f"crio-{ID_A}", names, ids) == "app"
    assert container_for_directory(f"crio-{ID_A}.scope", names, ids) == "app"
    assert container_for_directory(f"crio-conmon-{ID_A}.scope", names, ids) is None
    assert container_for_directory(ID_B, names, ids) is None  # id unknown (e.g. the sandbox)
    assert container_for_directory("other", names, ids) is None
    assert runtime_container_id(f"containerd://{ID_A}") == ID_A
    assert runtime_container_id(f"cri-o://{ID_A}") == ID_A


def test_container_cgroups_get_their_values_and_are_never_created() -> None:
    targets = two_pods()
    fs, reconciler = make()
    assert reconciler.reconcile(targets).converged
    burstable, guaranteed = targets.pod("b1"), targets.pod("g1")
    # No container cgroup exists yet: none was created.
    assert set(walk(fs)) == {t.path for t in targets.cgroups}

    # The runtime creates container cgroups: one named after its container, one by runtime id
    # (id known), one by an id nobody knows (e.g. the pause container), and G's app by name.
    for path in (
        f"{burstable.cgroup}/app",
        f"{burstable.cgroup}/{ID_A}",
        f"{burstable.cgroup}/{ID_B}",
        f"{guaranteed.cgroup}/app",
    ):
        runtime_creates(fs, path)
    reconciler.container_ids = {"b1": {ID_A: "side"}}
    before = dict(fs.counts)
    report = reconciler.reconcile(targets)
    assert report.converged, report
    assert fs.counts["mkdir"] == before["mkdir"]  # nothing created

    app, side = files_of(burstable, "app"), files_of(burstable, "side")
    # Burstable pod under TieredReservation: memory.low = request, memory.high by the formula.
    assert app["memory.low"] == str(256 << 20) and app["memory.high"] != "max"
    for path, wanted in (
        (f"{burstable.cgroup}/app", app),
        (f"{burstable.cgroup}/{ID_A}", side),
        (f"{guaranteed.cgroup}/app", files_of(guaranteed, "app")),
    ):
        for file in ("memory.min", "memory.low", "memory.high"):
            assert fs.read(path, file).strip() == wanted[file], (path, file)
        assert fs.read(path, "memory.max").strip() == "max"  # the runtime's file: untouched
    # The unknown directory is left alone.
    unknown = f"{burstable.cgroup}/{ID_B}"
    assert [fs.read(unknown, f).strip() for f in ("memory.low", "memory.high")] == ["0", "max"]
    # Parents cover children.
    pod_low = int(fs.read(burstable.cgroup, "memory.low"))
    assert pod_low >= int(app["memory.low"]) + int(side["memory.low"])
    # Converged: the next round writes nothing.
    writes = fs.counts["write"]
    again = reconciler.reconcile(targets)
    assert again.converged and again.writes == 0 and fs.counts["write"] == writes


def test_a_scoped_round_writes_the_containers_of_its_pod() -> None:
    targets = two_pods()
    fs, reconciler = make()
    assert reconciler.reconcile(targets).converged
    burstable = targets.pod("b1")
    runtime_creates(fs, f"{burstable.cgroup}/side")
    report = reconciler.reconcile(targets, scope=[burstable.cgroup])
    assert not report.full and report.converged, report
    side = files_of(burstable, "side")
    assert fs.read(f"{burstable.cgroup}/side", "memory.low").strip() == side["memory.low"]
    assert fs.read(f"{burstable.cgroup}/side", "memory.high").strip() == side["memory.high"]


def test_a_container_cgroup_that_went_away_is_no_error() -> None:
    targets = two_pods()
    fs, reconciler = make()
    burstable = targets.pod("b1")
    assert reconciler.reconcile(targets).converged
    runtime_creates(fs, f"{burstable.cgroup}/app")
    assert reconciler.reconcile(targets).converged
    fs.rmdir(f"{burstable.cgroup}/app")
    report = reconciler.reconcile(targets)
    assert report.converged and report.notes == [], report
    assert set(walk(fs)) == {t.path for t in targets.cgroups}


def test_plan_and_diff_show_container_values_without_writing() -> None:
    targets = two_pods()
    fs, reconciler = make()
    assert reconciler.reconcile(targets).converged
    burstable = targets.pod("b1")
    container = f"{burstable.cgroup}/app"
    runtime_creates(fs, container)
    writes = fs.counts["write"]
    _document, plan = plan_document(
        targets,
        fs,
        page_size_bytes=PAGE,
        retired_paths=[],
        pod_removal="wait",
        remove_orphans=False,
    )
    high = files_of(burstable, "app")["memory.high"]
    assert {(o.file, o.value) for o in plan.operations if o.path == container} == {
        ("memory.high", high),
        ("memory.low", files_of(burstable, "app")["memory.low"]),
    }
    _diff, rows = diff_document(targets, fs, page_size_bytes=PAGE)
    differs = {(r.path, r.file) for r in rows if r.status == "differs"}
    assert (container, "memory.high") in differs
    assert fs.counts["write"] == writes  # read-only
