"""Property tests of the reconciler on SimCgroupFS (hypothesis, derandomized: fixed seeds).

1. Transitions: from a converged tree with the runtime's container cgroups in place, any change
   of the pod set (admissions, retirements, resizes; populated retirees with `wait` or `kill`)
   converges in one round, and after *every single operation* no parent's memory.min or
   memory.low is below the sum of its children's (CheckingCgroupFS, strict: baseline empty).
2. Mutations: any mutation of a converged tree by someone else — values changed, cgroups
   deleted, extra cgroups added, controllers disabled — is repaired in one pass with only the
   necessary operations: exactly the missing cgroups created, exactly the missing controllers
   enabled, every file that differs written once, nothing else written except a protection
   raised temporarily to cover a child (reason "cover"), and no shortfall ever grows.
3. Faults: EBUSY, EIO, EACCES and ENOENT injected at random operations (reads included, before
   or after the operation took effect) never raise out of `reconcile`, never break the
   protection invariant, and once the faults stop one round converges and the next writes
   nothing.

The expected operations of (2) are computed here from the sim's state and the targets, not by
the planner.
"""

from __future__ import annotations

import errno
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from memstate.core.errors import HostError
from memstate.core.events import CgroupWriteFailed
from memstate.core.plan import ValueModel
from memstate.core.pod import Pod
from memstate.core.targets import NodeTargets
from memstate.host import walk
from memstate.host.sim import FaultInjectingCgroupFS, SimCgroupFS
from memstate.reconcile.reconciler import Reconciler, ReconcilerOptions
from tests.reconcile.helpers import (
    PAGE,
    CheckingCgroupFS,
    FakeClock,
    Gi,
    Mi,
    assert_tree_matches,
    default_normalised,
    mixed_pod,
    new_sim,
    node_config,
    pod_cgroups,
    retired,
    targets_of_pods,
    uid_for,
)

POOL = 9
PROPERTY_SETTINGS = settings(
    derandomize=True,
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MUTATING = ("write", "mkdir", "rmdir")


@st.composite
def configs(draw: st.DrawFn) -> Any:
    return node_config(
        draw(st.sampled_from(["None", "TieredReservation"])),
        static=draw(st.booleans()),
        driver=draw(st.sampled_from(["cgroupfs", "systemd"])),
    )


@st.composite
def transitions(draw: st.DrawFn) -> tuple[set[int], set[int], set[int], set[int]]:
    """(before, after, resized, populated) over the pool: every pod is absent, kept, resized,
    retired or admitted; some kept or retired pods have a running process."""
    fates = draw(
        st.lists(
            st.sampled_from(["absent", "kept", "resized", "retired", "admitted"]),
            min_size=POOL,
            max_size=POOL,
        )
    )
    before = {i for i, f in enumerate(fates) if f in ("kept", "resized", "retired")}
    after = {i for i, f in enumerate(fates) if f in ("kept", "resized", "admitted")}
    resized = {i for i, f in enumerate(fates) if f == "resized"}
    candidates = sorted(i for i, f in enumerate(fates) if f in ("kept", "retired"))
    populated = (
        set(draw(st.lists(st.sampled_from(candidates), max_size=3))) if candidates else set()
    )
    return before, after, resized, populated


def pool_pod(index: int, scale: int = 1) -> Pod:
    return mixed_pod(uid_for(index), index, scale=scale)


def add_runtime_containers(fs: SimCgroupFS, targets: NodeTargets, uids: set[str]) -> None:
    """What a container runtime does under a pod: enable memory, create one cgroup per running
    container with the protections it was given (init containers have finished)."""
    for pod_target in targets.pods:
        if pod_target.uid not in uids:
            continue
        fs.write(pod_target.cgroup, "cgroup.subtree_control", "+memory")
        for container in pod_target.containers:
            if container.kind == "init":
                continue
            path = f"{pod_target.cgroup}/ctr-{container.name}"
            fs.mkdir(path)
            for file in ("memory.min", "memory.low"):
                value = container.files.get(file, "0")
                if value != "0":
                    fs.write(path, file, value)


# --- 1. transitions ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(config=configs(), change=transitions(), pod_removal=st.sampled_from(["wait", "kill"]))
def test_transitions_keep_parents_covering_children_at_every_operation(
    config: Any, change: tuple[set[int], set[int], set[int], set[int]], pod_removal: str
) -> None:
    before, after, resized, populated = change
    sim = new_sim()
    checker = CheckingCgroupFS(sim)
    options = ReconcilerOptions(pod_removal="kill" if pod_removal == "kill" else "wait")
    reconciler = Reconciler(checker, page_size_bytes=PAGE, options=options, clock=FakeClock())
    old_targets = targets_of_pods([pool_pod(i) for i in sorted(before)], config)
    assert reconciler.reconcile(old_targets).converged
    new_pods = [pool_pod(i, 2 if i in resized else 1) for i in sorted(after)]
    new_targets = targets_of_pods(new_pods, config)
    old_uids = {p.uid for p in old_targets.pods}
    new_uids = {p.uid for p in new_targets.pods}
    unchanged = {uid_for(i) for i in before - resized} & old_uids
    add_runtime_containers(sim, old_targets, unchanged | (old_uids - new_uids))
    pids = {}
    for index in sorted(populated):
        uid = uid_for(index)
        if uid in old_uids and (uid in unchanged or uid not in new_uids):
            cgroup = old_targets.pod(uid).cgroup
            children = sim.list_children(cgroup)
            if children:
                pids[uid] = sim.spawn(f"{cgroup}/{children[0]}")
    checker.rebaseline()
    assert checker.baseline == {}, "the starting tree must satisfy the invariant"

    gone = sorted(old_uids - new_uids)
    report = reconciler.reconcile(new_targets, retired_paths=retired(*gone, config=config))

    assert checker.violations == [], checker.violations[:3]
    assert checker.checks == report.writes
    event(f"retired: {min(len(old_uids - new_uids), 3)}, populated: {len(pids)}")
    waiting = sorted(uid for uid in pids if uid in gone and pod_removal == "wait")
    assert list(report.pending_removals) == sorted(old_targets.pod(u).cgroup for u in waiting)
    assert report.converged == (not waiting)
    assert_tree_matches(sim, new_targets)
    assert pod_cgroups(sim, new_targets) == {new_targets.pod(u).cgroup for u in new_uids} | {
        old_targets.pod(u).cgroup for u in waiting
    }
    for uid in waiting:
        assert sim.read(old_targets.pod(uid).cgroup, "memory.min") == "0\n"
        assert sim.read(old_targets.pod(uid).cgroup, "memory.low") == "0\n"
        sim.exit(pids[uid])
    final = reconciler.reconcile(new_targets, retired_paths=retired(*gone, config=config))
    assert final.converged and final.pending_removals == ()
    assert set(final.removed) == set(retired(*gone, config=config))
    assert checker.violations == []
    assert reconciler.reconcile(new_targets).writes == 0


# --- 2. mutations ---------------------------------------------------------------------------------

VALUES = {
    "protection": ["0", str(64 * Mi), str(1 * Gi), str(5 * Gi), "max"],
    "limit": [str(64 * Mi), str(1 * Gi), "max"],
    "cpuset": ["\n", "0", "1", "0-1"],
    "hugetlb": ["0", str(2 * Mi), str(4 * Mi), "max"],
}


def value_kind(file: str) -> str:
    if file in ("memory.min", "memory.low"):
        return "protection"
    if file.startswith("cpuset."):
        return "cpuset"
    if file.startswith("hugetlb."):
        return "hugetlb"
    return "limit"


@st.composite
def mutations(draw: st.DrawFn, targets: NodeTargets) -> list[tuple[str, ...]]:
    managed = [t for t in targets.cgroups if t.path]
    pods_and_qos = [t.path for t in managed if t.level in ("pod", "qos")]
    holders = [t.path for t in managed if t.level in ("node", "qos")]
    steps: list[tuple[str, ...]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "add", "disable"]))
        if kind == "set":
            target = draw(st.sampled_from([t for t in managed if t.files]))
            file = draw(st.sampled_from(sorted(target.files)))
            steps.append(
                ("set", target.path, file, draw(st.sampled_from(VALUES[value_kind(file)])))
            )
        elif kind == "delete" and pods_and_qos:
            steps.append(("delete", draw(st.sampled_from(pods_and_qos))))
        elif kind == "add":
            holder = draw(st.sampled_from(holders + [t.cgroup for t in targets.pods]))
            name = draw(st.sampled_from(["foreign", "system-x", "podNOT_A_UID", "ctr-extra"]))
            steps.append(("add", f"{holder}/{name}"))
        elif kind == "disable":
            holder = draw(st.sampled_from(holders))
            steps.append(
                ("disable", holder, draw(st.sampled_from(["cpuset", "hugetlb", "memory"])))
            )
    return steps


def apply_mutation(sim: SimCgroupFS, step: tuple[str, ...]) -> None:
    """Someone else's change; one the kernel refuses simply does not happen."""
    try:
        if step[0] == "set":
            sim.write(step[1], step[2], step[3])
        elif step[0] == "delete":
            for path in list(walk(sim, step[1], topdown=False)):
                sim.rmdir(path)
        elif step[0] == "add":
            sim.mkdir(step[1])
        else:
            sim.write(step[1], "cgroup.subtree_control", f"-{step[2]}")
    except HostError:
        pass


def necessary_operations(
    sim: SimCgroupFS, targets: NodeTargets
) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """(cgroups to create, cgroups needing controllers, (path, file) whose value differs),
    computed from the tree and the targets alone."""
    values = ValueModel(PAGE)
    create: set[str] = set()
    enable: set[str] = set()
    differ: set[tuple[str, str]] = set()
    for target in targets.cgroups:
        exists = sim.exists(target.path)
        if not exists:
            create.add(target.path)
        enabled = set(sim.read(target.path, "cgroup.subtree_control").split()) if exists else set()
        if not set(target.controllers) <= enabled:
            enable.add(target.path)
        for file, wanted in target.files.items():
            try:
                now = values.normalise(file, sim.read(target.path, file))
            except HostError:
                now = default_normalised(file)  # missing cgroup, or controller not enabled yet
            if values.normalise(file, wanted) != now:
                differ.add((target.path, file))
    return create, enable, differ


@PROPERTY_SETTINGS
@given(config=configs(), chosen=st.sets(st.integers(0, POOL - 1), min_size=1), data=st.data())
def test_any_mutation_is_repaired_in_one_pass_with_only_the_necessary_operations(
    config: Any, chosen: set[int], data: st.DataObject
) -> None:
    sim = new_sim()
    targets = targets_of_pods([pool_pod(i) for i in sorted(chosen)], config)
    checker = CheckingCgroupFS(sim)
    fs = FaultInjectingCgroupFS(checker)
    reconciler = Reconciler(fs, page_size_bytes=PAGE, clock=FakeClock())
    assert reconciler.reconcile(targets).converged
    for step in data.draw(mutations(targets)):
        apply_mutation(sim, step)
    create, enable, differ = necessary_operations(sim, targets)
    checker.rebaseline()
    start = len(fs.log)

    report = reconciler.reconcile(targets)

    done = [o for o in fs.log[start:] if o.op in MUTATING]
    assert report.converged, report
    assert checker.violations == [], checker.violations[:3]
    assert_tree_matches(sim, targets)
    assert {o.path for o in done if o.op == "mkdir"} == create
    assert {o.path for o in done if o.file == "cgroup.subtree_control"} == enable
    assert all(o.op != "rmdir" for o in done)  # no orphans with remove_orphans off
    written = Counter((o.path, o.file) for o in done if o.op == "write")
    del_keys = [k for k in written if k[1] == "cgroup.subtree_control"]
    for key in del_keys:
        del written[key]
    covers = {
        (r.operation.path, r.operation.file)
        for r in report.results
        if r.operation.reason == "cover"
    }
    assert differ <= set(written), sorted(differ - set(written))
    for key, times in written.items():
        if key in covers:
            assert key[1] in ("memory.min", "memory.low") and times <= 2, (key, times)
        else:
            assert key in differ and times == 1, (key, times, sorted(differ))
    event(f"writes: {min(sum(written.values()), 10)}; cover raises: {bool(covers)}")
    again = len(fs.log)
    assert reconciler.reconcile(targets).writes == 0
    assert all(o.op not in MUTATING for o in fs.log[again:])


# --- 3. faults ------------------------------------------------------------------------------------

ERRNOS = [errno.EBUSY, errno.EIO, errno.EACCES, errno.ENOENT]
FAULT_OPS = [None, None, "write", "write", "mkdir", "rmdir", "read", "list_children", "exists"]


# Where faults land: anywhere, the managed root, kubepods, the Burstable QoS cgroup, pods.
FAULT_PATHS = ["*", "*", "", "*kubepods", "*burstable", "*pod*"]


@st.composite
def faults(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [
        {
            "code": draw(st.sampled_from(ERRNOS)),
            "op": draw(st.sampled_from(FAULT_OPS)),
            "path": draw(st.sampled_from(FAULT_PATHS)),
            "nth": draw(st.integers(1, 12)),
            "times": draw(st.sampled_from([1, 1, 2, None])),
            "after": draw(st.booleans()),
        }
        for _ in range(draw(st.integers(1, 5)))
    ]


@PROPERTY_SETTINGS
@given(
    config=configs(),
    change=transitions(),
    rules=faults(),
    pod_removal=st.sampled_from(["wait", "kill"]),
)
def test_faults_never_escape_never_break_ordering_and_convergence_follows(
    config: Any,
    change: tuple[set[int], set[int], set[int], set[int]],
    rules: list[dict[str, Any]],
    pod_removal: str,
) -> None:
    before, after, resized, _populated = change
    sim = new_sim()
    checker = CheckingCgroupFS(sim)
    fs = FaultInjectingCgroupFS(checker)
    clock = FakeClock()
    options = ReconcilerOptions(pod_removal="kill" if pod_removal == "kill" else "wait")
    reconciler = Reconciler(fs, page_size_bytes=PAGE, options=options, clock=clock)
    old_targets = targets_of_pods([pool_pod(i) for i in sorted(before)], config)
    assert reconciler.reconcile(old_targets).converged
    new_pods = [pool_pod(i, 2 if i in resized else 1) for i in sorted(after)]
    new_targets = targets_of_pods(new_pods, config)
    kept = {uid_for(i) for i in before - resized}
    add_runtime_containers(sim, old_targets, {p.uid for p in old_targets.pods} & kept)
    gone = sorted({p.uid for p in old_targets.pods} - {p.uid for p in new_targets.pods})
    checker.rebaseline()
    assert checker.baseline == {}
    for rule in rules:
        fs.inject(**rule)

    faulty = [reconciler.reconcile(new_targets, retired_paths=retired(*gone, config=config))]
    clock.advance(1.0)
    faulty.append(reconciler.reconcile(new_targets, retired_paths=retired(*gone, config=config)))

    assert checker.violations == [], checker.violations[:3]
    fired = sum(rule.fired_count for rule in fs.rules)
    event(f"faults fired: {min(fired, 4)}")
    event(f"round 1 outcomes: {sorted({r.outcome for r in faulty[0].results})}")
    if fired == 0:
        assert faulty[0].converged
    for report in faulty:
        failures = {r.errno for r in report.results if r.outcome in ("failed", "busy")}
        assert failures <= set(ERRNOS)
        # Every failure is recorded: a note with its errno (rmdir EBUSY is a pending removal).
        noted = {
            (n.path, n.op, n.file, n.errno)
            for n in report.notes
            if isinstance(n, CgroupWriteFailed)
        }
        for result in report.results:
            if result.outcome == "failed":
                operation = result.operation
                assert (operation.path, operation.kind, operation.file, result.errno) in noted
    fs.clear()
    clock.advance(60.0)  # past every back-off
    report = reconciler.reconcile(new_targets, retired_paths=retired(*gone, config=config))
    assert report.converged, (report.results, report.warnings, report.read_errors)
    assert checker.violations == []
    assert_tree_matches(sim, new_targets)
    assert pod_cgroups(sim, new_targets) == {t.cgroup for t in new_targets.pods}
    assert reconciler.reconcile(new_targets).writes == 0
