"""The reconciler against SimCgroupFS: convergence, removals, failures, back-off, drift, orphans.

Method: a SimCgroupFS (the kernel model) wrapped in FaultInjectingCgroupFS, which counts every
operation and fails chosen ones; a FakeClock drives back-off, so nothing sleeps. Targets come
from the real reducer (helpers.targets_of_pods).
"""

from __future__ import annotations

import errno

import pytest

from memstate.core.events import CgroupDriftCorrected, CgroupOrphanFound, CgroupWriteFailed
from memstate.host import walk
from memstate.host.sim import KERNEL_6_18, FaultInjectingCgroupFS, SimCgroupFS
from memstate.reconcile.reconciler import Reconciler, ReconcileReport, ReconcilerOptions
from tests.reconcile.helpers import (
    PAGE,
    CheckingCgroupFS,
    FakeClock,
    Mi,
    assert_tree_matches,
    mixed_pod,
    new_sim,
    node_config,
    pod_cgroups,
    retired,
    targets_of_pods,
    uid_for,
)

MUTATING = ("write", "mkdir", "rmdir")


def writes(fs: FaultInjectingCgroupFS) -> int:
    return sum(fs.counts[op] for op in MUTATING)


def make(
    *, options: ReconcilerOptions | None = None, sim: SimCgroupFS | None = None
) -> tuple[FaultInjectingCgroupFS, Reconciler, FakeClock]:
    clock = FakeClock()
    fs = FaultInjectingCgroupFS(sim or new_sim())
    reconciler = Reconciler(
        fs, page_size_bytes=PAGE, options=options or ReconcilerOptions(), clock=clock
    )
    return fs, reconciler, clock


def sim_of(fs: FaultInjectingCgroupFS) -> SimCgroupFS:
    inner = fs.inner
    assert isinstance(inner, SimCgroupFS)
    return inner


def mixed(count: int, start: int = 0) -> list:  # type: ignore[type-arg]
    return [mixed_pod(uid_for(i), i) for i in range(start, start + count)]


# --- convergence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["None", "TieredReservation"])
@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
@pytest.mark.parametrize("static", [True, False])
def test_empty_root_converges_in_one_round_and_the_second_writes_nothing(
    policy: str, driver: str, static: bool
) -> None:
    config = node_config(policy, static=static, driver=driver)
    targets = targets_of_pods(mixed(10), config)
    fs, reconciler, _clock = make()
    first = reconciler.reconcile(targets)
    assert first.converged, first
    assert first.failed == first.skipped == 0
    assert first.writes == writes(fs) > 0
    # Exactly the target tree: nothing more, nothing less.
    assert set(walk(fs)) == {t.path for t in targets.cgroups}
    assert_tree_matches(fs, targets)
    before = writes(fs)
    second = reconciler.reconcile(targets)
    assert second.converged
    assert writes(fs) == before
    assert second.writes == 0 and second.attempted == 0
    assert second.notes == []


def test_a_round_without_operations_remembers_what_it_found_set() -> None:
    """A full round that finds new targets already met (another writer made the pods' cgroups
    and set them) writes nothing, yet remembers them as set: a value changed and a cgroup
    removed behind its back afterwards are drift."""
    fs, reconciler, _ = make()
    earlier = targets_of_pods(mixed(3))
    assert reconciler.reconcile(earlier).converged
    targets = targets_of_pods(mixed(5))
    assert Reconciler(fs, page_size_bytes=PAGE).reconcile(targets).converged  # another writer
    met = reconciler.reconcile(targets)
    assert met.converged and met.writes == 0
    changed, removed = (
        next(t for t in targets.cgroups if t.path == pod.cgroup) for pod in targets.pods[3:]
    )
    file = next(f for f in ("memory.max", "memory.high") if f in changed.files)
    sim_of(fs).write(changed.path, file, str(64 * PAGE))
    sim_of(fs).rmdir(removed.path)
    # A cgroup whose target moved with the pods (kubepods' memory.min), met as well.
    was = {t.path: t.files for t in earlier.cgroups}
    grown = next(t for t in targets.cgroups if was.get(t.path, t.files) != t.files)
    moved = next(f for f, v in sorted(grown.files.items()) if was[grown.path].get(f) != v)
    above = str(int(grown.files[moved]) + 64 * PAGE)
    sim_of(fs).write(grown.path, moved, above)
    corrected = reconciler.reconcile(targets)
    assert corrected.converged
    drift = {(n.path, n.file): (n.expected, n.found) for n in corrected.notes}
    assert drift[(removed.path, "")] == ("present", "absent")
    assert drift[(changed.path, file)] == (changed.files[file], str(64 * PAGE))
    assert drift[(grown.path, moved)] == (grown.files[moved], above)


def test_an_unchanged_full_resync_reuses_the_last_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning is pure: a full round whose targets, observed tree and retired paths equal the
    last full round's takes that plan (an idle node's periodic resync plans nothing anew); any
    change to the tree or the targets plans again."""
    import memstate.reconcile.reconciler as reconciler_module

    everyone = mixed(6)
    targets = targets_of_pods(everyone)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets).converged
    assert reconciler.reconcile(targets).writes == 0  # converged: the plan to reuse from now on
    planned: list[object] = []
    # A full round plans through `plan_settled` (a scoped one through `plan_operations`).
    real_plan_settled = reconciler_module.plan_settled

    def counting(*args: object, **kwargs: object) -> object:
        planned.append(args)
        return real_plan_settled(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reconciler_module, "plan_settled", counting)
    idle = reconciler.reconcile(targets)
    assert planned == []
    fresh = Reconciler(fs, page_size_bytes=PAGE).reconcile(targets)  # plans from scratch
    assert len(planned) == 1
    assert (idle.converged, idle.writes, idle.attempted, idle.notes, idle.orphans) == (
        fresh.converged,
        fresh.writes,
        fresh.attempted,
        fresh.notes,
        fresh.orphans,
    )
    sim_of(fs).write(targets.pods[0].cgroup, "memory.max", "max")  # changed behind its back
    corrected = reconciler.reconcile(targets)
    assert len(planned) == 2 and corrected.writes == 1 and corrected.converged
    fewer = targets_of_pods(everyone[:5])  # other targets: planned again, the pod retired
    assert reconciler.reconcile(fewer, retired_paths=[targets.pods[-1].cgroup]).converged
    assert len(planned) == 3


class _CountingExpected(dict):  # type: ignore[type-arg]
    """The reconciler's `_expected`, counting `_remember`'s visits: a path's values are stored
    by looking its entry up (`get`, then edited) or putting one in."""

    stored = 0

    def get(self, key: object, default: object = None) -> object:
        type(self).stored += 1
        return super().get(key, default)

    def setdefault(self, key: object, default: object = None) -> object:
        type(self).stored += 1
        return super().setdefault(key, default)

    def __setitem__(self, key: object, value: object) -> None:
        type(self).stored += 1
        super().__setitem__(key, value)


def test_an_idle_full_resync_neither_compares_for_drift_nor_remembers_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reused plan without operations has no drift to report (drift is reported for the
    writes that corrected it) and nothing new to remember: an idle resync does neither, and a
    value changed behind the reconciler's back afterwards is still corrected and reported."""
    targets = targets_of_pods(mixed(6))
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets).converged
    assert reconciler.reconcile(targets).writes == 0  # the plan to reuse from now on
    compared: list[tuple[str, str]] = []
    real_changed = Reconciler._changed_behind_our_back

    def counting(self: Reconciler, path: str, file: str, found: object) -> object:
        compared.append((path, file))
        return real_changed(self, path, file, found)  # type: ignore[arg-type]

    monkeypatch.setattr(Reconciler, "_changed_behind_our_back", counting)
    expected = _CountingExpected(reconciler._expected)
    reconciler._expected = expected
    for _ in range(3):
        idle = reconciler.reconcile(targets)
        assert idle.converged and idle.attempted == 0 and idle.notes == []
    assert compared == [] and expected.stored == 0
    sim_of(fs).write(targets.pods[0].cgroup, "memory.max", "max")  # changed behind its back
    corrected = reconciler.reconcile(targets)
    assert corrected.writes == 1 and corrected.converged
    assert [type(n) for n in corrected.notes] == [CgroupDriftCorrected]
    assert compared and expected.stored > 0  # a plan with a write: compared and remembered


def test_linux_6_18_hugetlb_default_needs_no_write_either() -> None:
    targets = targets_of_pods(mixed(5))
    fs, reconciler, _ = make(sim=new_sim(kernel=KERNEL_6_18))
    assert reconciler.reconcile(targets).converged
    before = writes(fs)
    assert reconciler.reconcile(targets).writes == 0
    assert writes(fs) == before


def test_admission_and_removal_rounds_converge() -> None:
    everyone = mixed(8)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets_of_pods(everyone[:5])).converged
    targets = targets_of_pods(everyone[2:])
    report = reconciler.reconcile(targets, retired_paths=retired(uid_for(0), uid_for(1)))
    assert report.converged, report
    assert report.pending_removals == ()
    assert pod_cgroups(fs, targets) == {t.cgroup for t in targets.pods}
    assert_tree_matches(fs, targets)
    assert set(report.removed) == set(retired(uid_for(0), uid_for(1)))


# --- removals ------------------------------------------------------------------------------------


def populated_retiree(
    options: ReconcilerOptions,
) -> tuple[FaultInjectingCgroupFS, Reconciler, FakeClock, str, int, object]:
    everyone = mixed(5)
    fs, reconciler, clock = make(options=options)
    assert reconciler.reconcile(targets_of_pods(everyone)).converged
    path = targets_of_pods(everyone).pod(uid_for(1)).cgroup
    sim = sim_of(fs)
    sim.write(path, "cgroup.subtree_control", "+memory")
    sim.mkdir(f"{path}/ctr")
    sim.write(f"{path}/ctr", "memory.low", str(64 * Mi))
    pid = sim.spawn(f"{path}/ctr")
    return fs, reconciler, clock, path, pid, targets_of_pods(everyone[:1] + everyone[2:])


def test_populated_retired_pod_waits_with_capped_backoff_then_goes() -> None:
    options = ReconcilerOptions(retry_backoff_base_seconds=0.5, retry_backoff_max_seconds=2.0)
    fs, reconciler, clock, path, pid, targets = populated_retiree(options)
    sim = sim_of(fs)
    retries = []
    for _ in range(5):
        report = reconciler.reconcile(targets, retired_paths=retired(uid_for(1)))
        assert report.pending_removals == (path,)
        assert not report.converged
        retries.append(report.retry_after_seconds)
        clock.advance(10)
    assert retries == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert sim.exit_status(pid) is None  # "wait" never kills
    # Its protection is gone at once, and the ancestors were lowered around it.
    assert sim.read(path, "memory.low") == "0\n"
    assert sim.read(f"{path}/ctr", "memory.low") == "0\n"
    assert (
        sim.read("kubepods/burstable", "memory.low").strip()
        == targets.cgroup("kubepods/burstable").files["memory.low"]
    )
    sim.exit(pid)
    # The watcher's hint: a scoped round (the retired paths come with every round).
    report = reconciler.reconcile(targets, retired_paths=retired(uid_for(1)), scope=[])
    assert report.pending_removals == ()
    assert report.converged, report
    assert not sim.exists(path)
    assert path in report.removed


def test_populated_retired_pod_is_killed_and_removed_with_kill() -> None:
    fs, reconciler, _, path, pid, targets = populated_retiree(ReconcilerOptions(pod_removal="kill"))
    report = reconciler.reconcile(targets, retired_paths=retired(uid_for(1)))
    assert report.converged, report
    assert sim_of(fs).exit_status(pid) == -9
    assert not fs.exists(path)
    assert ("cgroup.kill", "ok") in report.counters


def test_rmdir_of_a_cgroup_already_gone_is_success() -> None:
    everyone = mixed(4)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets_of_pods(everyone)).converged
    path = targets_of_pods(everyone).pod(uid_for(2)).cgroup
    fs.inject(errno.ENOENT, op="rmdir", path=path)
    report = reconciler.reconcile(
        targets_of_pods(everyone[:2] + everyone[3:]), retired_paths=retired(uid_for(2))
    )
    assert report.converged
    assert [n for n in report.notes if isinstance(n, CgroupWriteFailed)] == []


# --- failures -------------------------------------------------------------------------------------


def test_a_failing_cgroup_does_not_stop_the_others() -> None:
    targets = targets_of_pods(mixed(6))
    victim = targets.pods[0].cgroup
    fs, reconciler, clock = make()
    fs.inject(errno.EACCES, op="mkdir", path=victim, times=None)
    report = reconciler.reconcile(targets)
    assert not report.converged
    failures = [n for n in report.notes if isinstance(n, CgroupWriteFailed)]
    assert [(n.path, n.op, n.errno) for n in failures] == [(victim, "mkdir", errno.EACCES)]
    # The victim's own writes were skipped; every other pod is complete.
    skipped = {r.operation.path for r in report.results if r.outcome == "skipped"}
    assert skipped == {victim}
    for pod_target in targets.pods[1:]:
        for file, value in pod_target.files.items():
            assert fs.inner.read(pod_target.cgroup, file).strip() == (value or "")
    assert report.retry_after_seconds == 0.5
    fs.clear()
    clock.advance(0.5)
    report = reconciler.reconcile(targets)
    assert report.converged
    assert_tree_matches(fs, targets)


def test_backoff_doubles_to_its_cap_with_an_injected_clock_and_never_sleeps() -> None:
    """A write failing with EIO every time: tried once per round when its back-off has run
    out, deferred (not attempted) before that; the wait doubles and stops at the cap."""
    targets = targets_of_pods(mixed(4))
    options = ReconcilerOptions(retry_backoff_base_seconds=1.0, retry_backoff_max_seconds=4.0)
    fs, reconciler, clock = make(options=options)
    rule = fs.inject(errno.EIO, op="write", path="kubepods", file="memory.max", times=None)
    waits = []
    for _ in range(5):
        report = reconciler.reconcile(targets)
        waits.append(report.retry_after_seconds)
        assert report.failed == 1
        deferred = reconciler.reconcile(targets)  # same instant: backing off
        assert deferred.deferred == 1 and deferred.failed == 0
        assert deferred.retry_after_seconds == report.retry_after_seconds
        assert waits[-1] is not None
        clock.advance(waits[-1])
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert rule.fired_count == 5  # one attempt per round that was due
    fs.clear()
    assert reconciler.reconcile(targets).converged


def test_transient_errors_are_retried_within_the_round() -> None:
    targets = targets_of_pods(mixed(3))
    fs, reconciler, _ = make(options=ReconcilerOptions(max_attempts_per_round=3))
    fs.inject(errno.EINTR, op="write", file="memory.max", path="kubepods", times=2)
    report = reconciler.reconcile(targets)
    assert report.converged
    (result,) = [
        r
        for r in report.results
        if r.operation.path == "kubepods" and r.operation.file == "memory.max"
    ]
    assert (result.outcome, result.attempts) == ("ok", 3)


def test_read_failures_are_reported_not_raised_and_nothing_is_guessed() -> None:
    everyone = mixed(6)
    fs, reconciler, clock = make()
    assert reconciler.reconcile(targets_of_pods(everyone[:3])).converged
    targets = targets_of_pods(everyone)
    fs.inject(errno.EIO, op="read", path="kubepods", file="memory.min")
    report = reconciler.reconcile(targets)
    assert not report.converged
    reads = [n for n in report.notes if isinstance(n, CgroupWriteFailed) and n.op == "read"]
    assert [(n.path, n.file, n.errno) for n in reads] == [("kubepods", "memory.min", errno.EIO)]
    assert all(
        not (r.operation.file == "memory.min" and r.operation.phase == "raise")
        for r in report.results
    )
    clock.advance(1)
    assert reconciler.reconcile(targets).converged
    assert_tree_matches(fs, targets)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="pod_removal"):
        ReconcilerOptions(pod_removal="nuke")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backoff"):
        ReconcilerOptions(retry_backoff_base_seconds=5, retry_backoff_max_seconds=1)
    with pytest.raises(ValueError, match="max_attempts"):
        ReconcilerOptions(max_attempts_per_round=0)
    assert ReconcilerOptions().backoff_seconds(100) == 30.0


# --- drift and orphans ----------------------------------------------------------------------------


def test_values_changed_by_others_are_corrected_and_reported_as_drift() -> None:
    targets = targets_of_pods(mixed(5))
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets).notes == []  # nothing to compare with yet
    sim = sim_of(fs)
    pod_path = targets.pods[0].cgroup
    sim.write(pod_path, "memory.max", "max")
    sim.write("kubepods", "memory.low", "0")
    report = reconciler.reconcile(targets)
    drift = sorted(
        (n.path, n.file, n.expected, n.found)
        for n in report.notes
        if isinstance(n, CgroupDriftCorrected)
    )
    assert drift == sorted(
        [
            (pod_path, "memory.max", targets.pods[0].files["memory.max"], "max"),
            ("kubepods", "memory.low", targets.cgroup("kubepods").files["memory.low"], "0"),
        ]
    )
    assert report.converged


def test_a_changed_target_is_not_drift_and_a_deleted_cgroup_is() -> None:
    everyone = mixed(6)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets_of_pods(everyone[:4])).converged
    report = reconciler.reconcile(targets_of_pods(everyone))  # new pods, new sums
    assert report.converged and report.notes == []
    victim = targets_of_pods(everyone).pods[-1].cgroup
    fs.inner.rmdir(victim)
    report = reconciler.reconcile(targets_of_pods(everyone))
    notes = [(n.path, n.file, n.expected, n.found) for n in report.notes]
    assert (victim, "", "present", "absent") in notes


def test_disabled_controllers_are_drift_and_re_enabled() -> None:
    targets = targets_of_pods(mixed(4))
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets).converged
    fs.inner.write("kubepods/besteffort", "cgroup.subtree_control", "-hugetlb")
    report = reconciler.reconcile(targets)
    assert report.converged
    assert any(
        isinstance(n, CgroupDriftCorrected) and n.file == "cgroup.subtree_control"
        for n in report.notes
    )
    assert_tree_matches(fs, targets)


def test_orphans_are_reported_once_and_removed_only_when_asked_and_empty() -> None:
    everyone = mixed(4)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets_of_pods(everyone)).converged
    targets = targets_of_pods(everyone[:3])
    orphan = targets_of_pods(everyone).pod(uid_for(3)).cgroup
    first = reconciler.reconcile(targets)
    assert [n for n in first.notes if isinstance(n, CgroupOrphanFound)] == [
        CgroupOrphanFound(path=orphan)
    ]
    assert first.orphans == (orphan,) and first.converged  # orphans are not ours to converge
    assert reconciler.reconcile(targets).notes == []  # reported once
    assert fs.exists(orphan)
    pid = sim_of(fs).spawn(orphan)
    reconciler.options = ReconcilerOptions(remove_orphans=True)
    assert reconciler.reconcile(targets).notes == []  # populated: kept
    assert fs.exists(orphan)
    sim_of(fs).exit(pid)
    report = reconciler.reconcile(targets, scope=[])
    assert fs.exists(orphan), "a scoped round never removes orphans"
    report = reconciler.reconcile(targets)
    assert report.notes == [CgroupOrphanFound(path=orphan, removed=True)]
    assert not fs.exists(orphan)


def test_a_readmitted_retired_pod_is_not_removed() -> None:
    everyone = mixed(4)
    targets = targets_of_pods(everyone)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets).converged
    report = reconciler.reconcile(targets, retired_paths=retired(uid_for(2)))
    assert report.converged
    assert fs.exists(targets.pod(uid_for(2)).cgroup)
    assert targets.pod(uid_for(2)).cgroup not in report.removed + report.pending_removals


def test_scoped_round_reads_only_the_scope_and_ancestors() -> None:
    everyone = mixed(30)
    fs, reconciler, _ = make()
    assert reconciler.reconcile(targets_of_pods(everyone[:29])).converged
    targets = targets_of_pods(everyone)
    new_path = targets.pod(uid_for(29)).cgroup
    before = dict(fs.counts)
    report: ReconcileReport = reconciler.reconcile(targets, scope=[new_path])
    assert report.converged and not report.full
    reads = sum(fs.counts[op] - before[op] for op in ("exists", "list_children", "read"))
    assert reads == report.reads < 40
    assert_tree_matches(fs, targets)


def test_scope_outside_the_managed_tree_is_refused() -> None:
    targets = targets_of_pods(mixed(2))
    _fs, reconciler, _ = make()
    reconciler.reconcile(targets)
    with pytest.raises(ValueError, match="not a managed or pod cgroup path"):
        reconciler.reconcile(targets, scope=["system.slice"])


@pytest.mark.parametrize("populated", [False, True])
def test_a_failed_removal_holds_back_the_ancestors_lowering(populated: bool) -> None:
    """The retired pod's rmdir (empty) or protection zeroing (populated) fails: its ancestors
    keep covering it — their lowering is skipped, every other operation still runs — and
    nothing ever leaves a parent below its children. Once the fault is gone, it converges."""
    everyone = mixed(5)
    sim = new_sim()
    checker = CheckingCgroupFS(sim)
    fs = FaultInjectingCgroupFS(checker)
    clock = FakeClock()
    reconciler = Reconciler(fs, page_size_bytes=PAGE, clock=clock)
    assert reconciler.reconcile(targets_of_pods(everyone)).converged
    retired = targets_of_pods(everyone).pod(uid_for(1))  # Burstable: it holds memory.low
    assert retired.files["memory.low"] != "0"
    if populated:
        sim.spawn(retired.cgroup)
        fs.inject(errno.EIO, op="write", path=retired.cgroup, file="memory.low")
    else:
        fs.inject(errno.EIO, op="rmdir", path=retired.cgroup)
    targets = targets_of_pods([p for p in everyone if p.uid != uid_for(1)])
    checker.rebaseline()
    report = reconciler.reconcile(targets, retired_paths=[retired.cgroup])
    assert checker.violations == []
    assert not report.converged
    held = [r for r in report.results if r.outcome == "skipped"]
    assert {(r.operation.path, r.operation.file) for r in held} >= {
        ("kubepods/burstable", "memory.low")
    }
    assert all(r.operation.phase == "lower" for r in held)
    before = int(sim.read("kubepods/burstable", "memory.low"))
    assert before >= int(sim.read(retired.cgroup, "memory.low"))
    clock.advance(60)
    report = reconciler.reconcile(targets, retired_paths=[retired.cgroup])
    assert checker.violations == []
    assert report.pending_removals == ((retired.cgroup,) if populated else ())
    assert_tree_matches(sim, targets)
