"""The reconciler: observe the live cgroup tree, plan with the pure core, execute, report.

Theory of operation
-------------------
One call to `Reconciler.reconcile(targets)` is one round:

1. **Observe** through `CgroupFS` (`observe_tree`, `memstate.reconcile.observe`). A full
   resync (``scope=None``) reads every managed cgroup's managed files, lists every managed
   directory (so existence is known from the parent's listing, not one `exists` call per pod),
   reads the protections of the children memstate does not manage (container cgroups, orphans,
   foreign cgroups) and walks every pod cgroup no target explains. A scoped round (the daemon's
   after an admission or a removal) reads only the scoped paths, the retired pod cgroups and
   their ancestors, and takes everything else from the picture the previous rounds left
   (`apply_operations` keeps it current), so one admission costs O(1) reads as well as O(1)
   writes. The periodic full resync stays the source of truth: a scoped round never looks for
   orphans, and anything the cached picture got wrong is repaired by the next full one.
   Two exceptions, because lowering on a stale picture is not safe and neither is raising
   under a parent someone else wrote: a scoped round whose plan lowers a parent's protection,
   or that finds a parent's protection changed behind its back (drift), reads that parent's
   children first and plans again (`_see_children_of_lowered`).
2. **Plan** with `memstate.core.plan.plan_operations` (ordering rules and why: see there).
   Planning is pure, so a full round whose inputs equal the previous full round's (the same
   targets, an equal observed tree, the same retired paths) takes that round's plan: an idle
   node's periodic resync costs its observation, not a new plan.
3. **Execute** the operations in order. An operation whose requirement failed, was skipped or is
   still backing off is skipped, so a failure on one cgroup never stops unrelated cgroups and
   never breaks an ordering guarantee. EINTR/EAGAIN are retried at once, up to
   `max_attempts_per_round`; any other failure backs off exponentially (base, doubling, capped)
   *across* rounds — the round never sleeps, it reports `retry_after_seconds` and the daemon
   comes back then. ENOENT on a removal (rmdir, cgroup.kill, zeroing a retired pod) means the
   cgroup is already gone: success; so does ENOENT on any write beside the kubelet when the
   cgroup itself is gone (its owner removed it during the round). ENODEV counts as ENOENT
   there: kernfs answers it to a write on a file opened just before its cgroup was removed
   (`GONE_ERRNOS`). EEXIST on mkdir is success.
   EBUSY on rmdir means "still populated": the removal stays pending, counted, without a
   failure note every round.
4. **Report** (`ReconcileReport`): counters by (file, result) — ``mkdir``/``rmdir`` stand in for
   the file of directory operations — and notes for the event log:
   `CgroupWriteFailed` (with errno; also for reads that failed), `CgroupDriftCorrected` (a value
   differed from what this reconciler last wrote or saw converged, i.e. someone else changed
   it, and it was rewritten — a changed *target* is not drift) and `CgroupOrphanFound` (once per
   orphan, again with ``removed=True`` when `remove_orphans` removed it).

Retired pods: every round is given the complete set of retired pod cgroup *paths* still to
remove (`memstate.core.removals.PendingRemovals`, which the daemon folds from its log and
recovers at start), and reports which of them it saw gone (`removed`) and which are still there
(`pending_removals`); the daemon records the former, which is what shrinks the set. The reconciler
keeps no list of its own, so nothing about removals lives only in its memory. A populated retired
pod has its protection zeroed so its ancestors can be lowered, then waits (``pod_removal="wait"``:
retried with back-off, and the daemon's watcher on cgroup.events brings the next round early) or
is killed through cgroup.kill (``"kill"``).

Profiles: `profile` (memstate.core.plan.profile) says what this reconciler may do. Beside the
kubelet it creates, removes and kills nothing and writes only the Memory QoS files (and pods'
`cpuset.mems` in NUMA mode); desired cgroups the kubelet has not made yet are reported as
`awaiting` and planned once they appear (the daemon's cgroup watcher brings that round early).

Failures never raise out of `reconcile` except programmer errors (`InvariantViolation`, a
TypeError...): a `HostError` from any operation is caught, counted and reported.

The reconciler is synchronous and not thread-safe (except `interrupt`, which stops a round
between two operations at shutdown); the daemon runs one round at a time (a capacity limiter of
one), a full round in a worker thread and a small one on its event loop while that stays fast,
its writes in the worker thread when they may block in the kernel (`prepare` and `complete`, the
two halves of `reconcile`; memstate.reconcile.blocking). Nothing here imports trio.
"""

from __future__ import annotations

import errno as errno_module
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import msgspec

from memstate.core.cgroup_paths import parent_path, parse_cgroup_path
from memstate.core.config import NodeConfig
from memstate.core.errors import HostError, InvariantViolation
from memstate.core.events import (
    CgroupDriftCorrected,
    CgroupOrphanFound,
    CgroupWriteFailed,
    Event,
)
from memstate.core.plan import (
    CGROUP_KILL,
    PROTECTION_FILES,
    SUBTREE_CONTROL,
    ObservedCgroup,
    ObservedTree,
    Operation,
    Plan,
    TreeChange,
    ValueModel,
    apply_operations,
    kernel_default,
    naming_config,
    plan_operations,
    plan_settled,
    touched_since,
)
from memstate.core.plan.children import ChildSums
from memstate.core.plan.containers import ContainerIndex
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.model import ListingEdit
from memstate.core.plan.profile import STANDALONE, ProfileFilter, WriteProfile
from memstate.core.plan.scope import UndesiredNames
from memstate.core.plan.settled import NOTHING_SETTLED, SettledCgroups
from memstate.core.targets import CgroupTarget, NodeTargets, TargetsChange, change_since
from memstate.host.cgroupfs import CgroupFS
from memstate.reconcile.blocking import may_block_in_kernel
from memstate.reconcile.observe import (
    GONE_ERRNOS,
    ReadError,
    add_container_cgroups,
    add_container_cgroups_carried,
    observe_children,
    observe_containers,
    observe_tree,
)

# `ReadError` and `observe_tree` stay importable from here: observing lived here before it had
# its own module.
__all__ = [
    "DEFAULT_OPTIONS",
    "TRANSIENT_ERRNOS",
    "OperationResult",
    "PreparedRound",
    "ReadError",
    "ReconcileReport",
    "Reconciler",
    "ReconcilerOptions",
    "add_container_cgroups",
    "observe_containers",
    "observe_tree",
]

Outcome = Literal["ok", "failed", "busy", "skipped", "deferred"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
# Retried at once within a round: the call was interrupted, nothing is wrong with it.
TRANSIENT_ERRNOS = frozenset({errno_module.EINTR, errno_module.EAGAIN})


class ReconcilerOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the reconciler treats removals, orphans and failures.

    - `pod_removal`: ``"wait"`` for a populated retired pod to empty (its protection is zeroed at
      once), or ``"kill"`` it through cgroup.kill first.
    - `remove_orphans`: remove pod cgroups nothing explains, when they are empty.
    - `retry_backoff_base_seconds` / `retry_backoff_max_seconds`: the wait before a failed
      operation (or a pending removal) is tried again doubles from the base up to the cap.
    - `max_attempts_per_round`: immediate attempts of one operation on EINTR/EAGAIN.
    - `shadow`: observe and plan, execute nothing (no write, mkdir, rmdir or kill), every round
      full; the report's `differences` lists the pod cgroups' values that differ from the
      targets (shadow mode, docs/operations.md "Shadow mode").
    """

    pod_removal: Literal["wait", "kill"] = "wait"
    remove_orphans: bool = False
    retry_backoff_base_seconds: float = 0.5
    retry_backoff_max_seconds: float = 30.0
    max_attempts_per_round: int = 3
    shadow: bool = False

    def __post_init__(self) -> None:
        if self.pod_removal not in ("wait", "kill"):
            raise ValueError(f"pod_removal must be 'wait' or 'kill', not {self.pod_removal!r}")
        if not 0 < self.retry_backoff_base_seconds <= self.retry_backoff_max_seconds:
            raise ValueError("need 0 < retry_backoff_base_seconds <= retry_backoff_max_seconds")
        if self.max_attempts_per_round < 1:
            raise ValueError("max_attempts_per_round must be at least 1")

    def backoff_seconds(self, failures: int) -> float:
        """The wait after `failures` consecutive failures (1 → base, doubling, capped)."""
        exponent = min(max(failures, 1) - 1, 62)
        factor = float(1 << exponent)
        return min(self.retry_backoff_max_seconds, self.retry_backoff_base_seconds * factor)


DEFAULT_OPTIONS = ReconcilerOptions()
# How many `TreeChange` records the reconciler keeps: a round adds one per scoped observation,
# container read, children's re-read (at most one per level) and applied plan, and its sums and
# container index need this round's and the previous round's applied plan. Each record keeps
# its trees alive (a dict of every cgroup each), so no more than that.
_TREE_CHANGES = 8
_NO_TARGETS = NodeTargets(cgroups=(), pods=(), node_memory_min_bytes=0, node_memory_low_bytes=0)


class OperationResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one planned operation ended: ``ok``, ``failed``, ``busy`` (rmdir of a populated
    cgroup), ``skipped`` (a requirement did not succeed) or ``deferred`` (backing off)."""

    operation: Operation
    outcome: Outcome
    errno: int | None = None
    attempts: int = 0
    message: str = ""


class FileDifference(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pod cgroup file whose live value is not memstate's target (shadow mode)."""

    uid: str
    path: str
    file: str
    target: str
    found: str


# The pod cgroup files a shadow round compares with memstate's targets.
SHADOW_FILES = ("memory.min", "memory.low", "memory.high", "memory.max", "cpuset.mems")


class ReconcileReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The outcome of one round (see the module docstring).

    `converged`: nothing is left to do — every operation succeeded, nothing failed to be read,
    no removal is pending and no managed file is blocked. `retry_after_seconds`: when the
    reconciler wants to be called again (a failure or a pending removal), else None.
    `pending_removals`: retired pod cgroup paths still there (or not known to be gone);
    `removed`: retired paths seen gone this round. `writes` counts the mutating calls (write,
    mkdir, rmdir, retries included), `reads` the observation calls. `awaiting`: desired cgroups
    that do not exist and that the profile does not create (beside the kubelet: not made yet);
    they do not count against `converged`.
    """

    full: bool
    attempted: int
    succeeded: int
    failed: int
    skipped: int
    deferred: int
    notes: list[Event]
    counters: dict[tuple[str, str], int]
    converged: bool
    retry_after_seconds: float | None
    pending_removals: tuple[str, ...]
    removed: tuple[str, ...] = ()
    results: tuple[OperationResult, ...] = ()
    orphans: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    read_errors: tuple[str, ...] = ()
    writes: int = 0
    reads: int = 0
    differences: tuple[FileDifference, ...] = ()
    awaiting: tuple[str, ...] = ()


@dataclass
class _Backoff:
    failures: int
    not_before: float


@dataclass(frozen=True)
class PreparedRound:
    """A round observed and planned by `Reconciler.prepare`, for `Reconciler.complete`.

    `shadow_report`: shadow mode's report (nothing to execute).
    """

    reconciler: Reconciler
    index: TargetIndex
    tree: ObservedTree
    plan: Plan
    drift: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    read_errors: list[ReadError] = field(default_factory=list)
    full: bool = True
    reads: int = 0
    retiring: frozenset[str] = frozenset()
    foreign: tuple[str, ...] = ()
    shadow_report: ReconcileReport | None = None

    @property
    def may_block(self) -> bool:
        """Executing the plan may wait on the kernel (memstate.reconcile.blocking)."""
        return may_block_in_kernel(self.plan)


# --- the reconciler -------------------------------------------------------------------------------


class Reconciler:
    """Converges a cgroup tree to `NodeTargets`; see the module docstring.

    `options` may be replaced between rounds (the daemon does on a config reload). `clock` is a
    monotonic clock in seconds, injected so tests drive back-off without sleeping. `profile`:
    what may be created, removed and written (fixed for the reconciler's life).
    """

    def __init__(
        self,
        fs: CgroupFS,
        *,
        page_size_bytes: int,
        options: ReconcilerOptions = DEFAULT_OPTIONS,
        clock: Callable[[], float] = time.monotonic,
        profile: WriteProfile = STANDALONE,
    ) -> None:
        self.fs = fs
        self.profile = profile
        self._profile_filter = ProfileFilter(profile)  # the given targets, filtered, carried
        self.page_size_bytes = page_size_bytes
        self.options = options
        self.clock = clock
        self._values = ValueModel(page_size_bytes)
        self._tree: ObservedTree | None = None  # the picture scoped rounds start from
        # True while `_tree` is the picture `_finish` made and nothing else reads it (the
        # records of how it was derived hold it by identity only): the next scoped observation
        # takes its table over instead of copying it (`merge_observations`' `take`).
        self._tree_owned = False
        # How the latest trees were derived from one another (scoped observations merged over
        # the picture, the plan's operations applied to it), oldest first: what is carried from
        # tree to tree (the sums, the container index) looks at the paths they touched only.
        # Cleared by a full observation, which builds a new tree: then everything is compared.
        self._tree_changes: list[TreeChange] = []
        # The children's protections summed for the last tree planned: carried to the next,
        # whose unchanged cgroups it shares, so a scoped round does not sum every pod
        # (`_child_sums`).
        self._sums: ChildSums | None = None
        # Each holder's listed names no target explains, carried (followed by the names that
        # changed in its listing and its desired children).
        self._undesired = UndesiredNames()
        # path -> file -> what this reconciler last set or saw there
        self._expected: dict[str, dict[str, str]] = {}
        self._expected_present: set[str] = set()
        self._expected_controllers: dict[str, frozenset[str]] = {}
        # Targets with controllers whose last enable failed (their expected controllers are
        # older than their target's).
        self._controllers_failed: set[str] = set()
        # The index of the previous round's desired paths (its `token`: the tables are handed
        # on from index to index, so they do not tell one from the next).
        self._index_before: object = None
        # Of the (profiled) targets, carried; following the profile's filter.
        self._index = TargetIndex.of(_NO_TARGETS, profile)
        self._complete_index = self._index  # of the targets with their container cgroups
        self._backoff: dict[tuple[str, str, str, str], _Backoff] = {}
        self._pending: dict[str, int] = {}  # retired path -> rounds it has been pending
        self._orphans_reported: set[str] = set()
        # The last full round's planning inputs and plan: planning is pure, so a full round whose
        # inputs are equal (an idle node's periodic resync) reuses the plan instead of planning.
        self._last_full_plan: tuple[tuple[object, ...], ObservedTree, Plan] | None = None
        # The cgroups the last full plan found settled: the next full plan (the first after a
        # change, which cannot take that plan whole) takes those whose inputs are unchanged.
        self._settled: SettledCgroups = NOTHING_SETTLED
        # The plan (and whether its round was full) of the last `_remember`, when that plan had
        # no operations: remembering the same plan again changes nothing (see `_remember`).
        self._remembered: tuple[Plan, bool] | None = None
        # Pod UID -> {bare runtime container id -> container name}: how runtime-named container
        # cgroups map to containers (memstate.core.plan.containers). Set by the owner as ids
        # become known; directories named after their container need none.
        self.container_ids: dict[str, dict[str, str]] = {}
        # Every pod's container cgroups as the last round found them (updated for the pods that
        # changed only): a scoped round does not derive every pod's containers again.
        self._containers = ContainerIndex()
        # Set from the event loop's thread, read between operations (a bool: one atomic store).
        self._interrupted = False

    @property
    def _child_sums(self) -> ChildSums | None:
        """The carried sums; None when there are none to carry on from, or when an update
        that failed half-way spent them (`ChildSums.updated` hands its tables on): the next
        plan sums its tree afresh."""
        sums = self._sums
        return None if sums is None or sums.spent else sums

    @_child_sums.setter
    def _child_sums(self, sums: ChildSums | None) -> None:
        self._sums = sums

    def interrupt(self) -> None:
        """Make the round in progress (and every later one) stop before its next operation.

        Thread-safe: the daemon calls it from the event loop at SIGTERM while a round runs in a
        worker thread, so a long round (a backlog of removals on a slow tree) cannot hold the
        shutdown past its grace period. The operations not attempted are reported ``skipped``.
        """
        self._interrupted = True

    def reconcile(
        self,
        targets: NodeTargets,
        *,
        retired_paths: Iterable[str] = (),
        scope: Iterable[str] | None = None,
        changes: Sequence[TargetsChange] = (),
    ) -> ReconcileReport:
        """One round: observe, plan, execute, report. `scope=None` is a full resync.

        `retired_paths`: every retired pod cgroup still to remove (all of them, every round);
        a path the targets desire again is simply not removed. `changes`: the change records of
        the latest publications up to `targets` (`TargetsTracker.recent`): the carried indexes
        follow them from the targets they hold when those are among them (else compare every
        cgroup and pod).

        The same as `complete(prepare(...))`, which a caller uses to run the two halves on
        different threads (see `prepare`).
        """
        return self.complete(
            self.prepare(targets, retired_paths=retired_paths, scope=scope, changes=changes)
        )

    def prepare(
        self,
        targets: NodeTargets,
        *,
        retired_paths: Iterable[str] = (),
        scope: Iterable[str] | None = None,
        changes: Sequence[TargetsChange] = (),
    ) -> PreparedRound:
        """The first half of a round (`reconcile`'s arguments): observe and plan, write nothing.

        `PreparedRound.may_block` says whether the writes left to `complete` may wait on the
        kernel (memstate.reconcile.blocking): the daemon runs a small round on its event loop,
        and hands such writes to its worker thread. Nothing may use this reconciler between the
        two halves except `complete` with the round `prepare` returned (the carried picture and
        indexes already follow the round).
        """
        if self.options.shadow:
            scope = None  # nothing is written, so no picture to keep: every round looks
        # Only the files this profile writes are observed, planned and checked for drift
        # (filtered for the cgroups and pods that changed since the last targets).
        change = change_since(changes, self._profile_filter.targets)
        self._profile_filter = self._profile_filter.updated(targets, change)
        filtered = self._profile_filter.result
        if filtered is None:
            raise InvariantViolation("the profile filter gave no targets")
        targets = filtered
        change = self._profile_filter.change  # of the filtered targets, or None
        # Look-ups over the targets, carried: updated for the cgroups that changed only.
        self._index = index = self._index.updated(targets, change)
        config = naming_config(targets)
        desired = index.by_path
        valid, foreign = _split_retired(retired_paths, config)
        retiring = frozenset(valid.difference(desired))
        # Before the first full resync there is no picture to scope against.
        paths = (
            None
            if scope is None or self._tree is None
            else self._scope_paths(desired, config, scope, retiring)
        )
        full = paths is None
        touched: set[str] = set()
        base = self._tree
        take = self._tree_owned and not full
        self._tree_owned = False
        tree, read_errors, reads = observe_tree(
            self.fs,
            targets,
            scope=paths,
            base=base,
            desired=desired,
            touched=touched,
            take_base=take,
        )
        if full or base is None:
            self._tree_changes = []  # a new tree: nothing derived from an older one
        elif take:
            # `base` is spent (its table is `tree`'s): the picture is `tree` from here on, and
            # no record may name `base`.
            self._tree = tree
            self._record_over(base, tree, touched)
        else:
            self._record(base, tree, touched)
        targets, tree, focus, more_errors, more_reads = self._with_containers(
            targets, tree, paths, desired, change
        )
        read_errors += more_errors
        reads += more_reads
        # The same look-ups over the targets with their container cgroups (the same index when
        # no container cgroup was found).
        self._complete_index = complete = (
            index
            if targets is index.targets
            else self._complete_index.updated(
                targets, change_since(self._containers.recent, self._complete_index.targets)
            )
        )

        def plan_for(tree: ObservedTree) -> Plan:
            if self.options.shadow:
                child_sums = None  # every round is full and fresh: nothing to carry
            elif self._child_sums is None:
                child_sums = self._child_sums = ChildSums.of(tree, self.page_size_bytes)
            else:
                child_sums = self._child_sums = self._child_sums.updated(
                    tree,
                    touched_since(self._tree_changes, self._child_sums.tree, tree),
                    self._tree_changes,
                )
            self._undesired.follow(self._tree_changes)
            if focus is None and not self.options.shadow:
                plan, self._settled = plan_settled(
                    targets,
                    tree,
                    page_size_bytes=self.page_size_bytes,
                    retired_paths=retiring,
                    pod_removal=self.options.pod_removal,
                    remove_orphans=self.options.remove_orphans and full,
                    profile=self.profile,
                    child_sums=child_sums,
                    index=complete,
                    undesired=self._undesired,
                    settled=self._settled,
                )
                return plan
            return plan_operations(
                targets,
                tree,
                page_size_bytes=self.page_size_bytes,
                retired_paths=retiring,
                pod_removal=self.options.pod_removal,
                remove_orphans=self.options.remove_orphans and full,
                focus=focus,
                profile=self.profile,
                child_sums=child_sums,
                index=complete,
                undesired=None if self.options.shadow else self._undesired,
            )

        plan = self._full_plan(targets, tree, retiring, plan_for) if full else plan_for(tree)
        if not full:
            tree, plan, more_errors, more_reads = self._see_children_of_lowered(
                targets, complete, tree, plan, plan_for, focus=focus or ()
            )
            read_errors += more_errors
            reads += more_reads
        if self.options.shadow:
            report = self._shadow_report(
                targets, tree, plan, read_errors=read_errors, reads=reads, retiring=retiring
            )
            return PreparedRound(self, complete, tree, plan, shadow_report=report)
        # Drift is reported for operations that corrected it: a plan without any (an idle
        # node's resync) has nothing to report, so the values are not compared.
        drift = self._drift(complete, tree, plan) if plan.operations else {}
        return PreparedRound(
            self,
            complete,
            tree,
            plan,
            drift=drift,
            read_errors=read_errors,
            full=full,
            reads=reads,
            retiring=retiring,
            foreign=tuple(foreign),
        )

    def complete(self, prepared: PreparedRound) -> ReconcileReport:
        """The second half of a round: execute what `prepare` planned, report."""
        if prepared.reconciler is not self:
            raise InvariantViolation("a round prepared by another reconciler")
        if prepared.shadow_report is not None:
            return prepared.shadow_report
        results, writes = self._execute(prepared.plan)
        return self._finish(prepared, results, writes=writes)

    # --- shadow ----------------------------------------------------------------------------

    def _shadow_report(
        self,
        targets: NodeTargets,
        tree: ObservedTree,
        plan: Plan,
        *,
        read_errors: list[ReadError],
        reads: int,
        retiring: frozenset[str],
    ) -> ReconcileReport:
        """A round that executes nothing: what differs on the pod cgroups that exist. Retired
        pod cgroups are the kubelet's to remove; those seen gone are reported `removed`."""
        differences: list[FileDifference] = []
        for target in targets.cgroups:
            if target.level != "pod":
                continue
            found = tree.get(target.path)
            if found is None or not found.exists:
                continue  # the kubelet has not made it (yet): nothing to compare
            wanted = plan.final_values.get(target.path, {})
            for file in SHADOW_FILES:
                value = wanted.get(file)
                if value is None or file in found.unreadable:
                    continue
                text = found.files.get(file)
                if text is None:
                    text = kernel_default(file)
                now = self._values.normalise(file, text) if text is not None else None
                if now != value:
                    differences.append(
                        FileDifference(
                            uid=target.pod_uid,
                            path=target.path,
                            file=file,
                            target=value,
                            found="absent" if now is None else now,
                        )
                    )
        self._tree = tree
        return ReconcileReport(
            full=True,
            attempted=0,
            succeeded=0,
            failed=0,
            skipped=0,
            deferred=0,
            notes=[
                CgroupWriteFailed(
                    path=e.path, op=e.op, errno=e.errno, message=e.message, file=e.file
                )
                for e in read_errors
            ],
            counters={},
            converged=not read_errors,  # nothing is left that shadow mode would do
            retry_after_seconds=None,
            pending_removals=tuple(sorted(p for p in retiring if not _proven_absent(tree, p))),
            removed=tuple(sorted(p for p in retiring if _proven_absent(tree, p))),
            orphans=tuple(r.path for r in plan.orphans),
            warnings=plan.warnings,
            read_errors=tuple(f"{e.op} {e.path}/{e.file}: {e.message}" for e in read_errors),
            writes=0,
            reads=reads,
            differences=tuple(differences),
        )

    def _record(
        self,
        previous: ObservedTree,
        tree: ObservedTree,
        touched: set[str],
        edits: dict[str, ListingEdit] | None = None,
    ) -> None:
        """Note that `tree` was derived from `previous` by replacing or dropping `touched`
        (and editing the listings `edits` holds by one name)."""
        if tree is previous:
            return
        # A few rounds' worth: the sums and the container index follow the current round.
        self._tree_changes = [
            *self._tree_changes[-(_TREE_CHANGES - 1) :],
            TreeChange(previous=previous, tree=tree, paths=frozenset(touched), edits=edits or {}),
        ]

    def _record_over(self, spent: ObservedTree, tree: ObservedTree, touched: set[str]) -> None:
        """Note that `tree` was derived from `spent` (replacing or dropping `touched`) by taking
        its table over: the last record, which made `spent`, is composed with this derivation
        (from that record's tree before to `tree`, the paths of both), so no record names
        `spent`, whose table no longer holds what it held. Without such a record the chain is
        broken: nothing is kept (what is carried then compares every cgroup)."""
        changes = self._tree_changes
        if not changes or changes[-1].tree is not spent:
            self._tree_changes = []
            return
        last = changes[-1]
        self._tree_changes = [
            *changes[:-1],
            TreeChange(
                previous=last.previous, tree=tree, paths=last.paths | touched, edits=last.edits
            ),
        ]

    # --- container cgroups ------------------------------------------------------------------

    def _full_plan(
        self,
        targets: NodeTargets,
        tree: ObservedTree,
        retiring: frozenset[str],
        plan_for: Callable[[ObservedTree], Plan],
    ) -> Plan:
        """A full round's plan: the previous full round's when every input of `plan_operations`
        is equal (planning is pure), else planned and remembered."""
        inputs = (
            targets,
            retiring,
            self.page_size_bytes,
            self.options.pod_removal,
            self.options.remove_orphans,
            self.profile,
        )
        last = self._last_full_plan
        if last is not None and last[0] == inputs and last[1] == tree:
            return last[2]
        plan = plan_for(tree)
        self._last_full_plan = (inputs, tree, plan)
        return plan

    def _with_containers(
        self,
        targets: NodeTargets,
        tree: ObservedTree,
        paths: list[str] | None,
        desired: Mapping[str, CgroupTarget],
        change: TargetsChange | None = None,
    ) -> tuple[NodeTargets, ObservedTree, list[str] | None, list[ReadError], int]:
        """The targets with the container cgroups found under the pod cgroups, the tree with
        their files read, the plan's focus (a scoped round's plus the containers of the pods in
        it) and the extra read errors and calls.

        The pod cgroups' listings (fresh in a full round, fresh for scoped pods, cached for the
        rest) say which containers exist; their managed files are read before planning, so the
        planner only ever sees container cgroups observed to exist and never creates one.
        """
        touched: set[str] = set()
        before = tree
        carried = self._containers
        if carried.spent:
            # An update that failed half-way spent it (`ContainerIndex.updated` hands its
            # tables on): derive every pod's containers afresh.
            carried = ContainerIndex()
        complete, tree, wanted, errors, reads, self._containers = add_container_cgroups_carried(
            self.fs,
            targets,
            tree,
            self.container_ids,
            pods=paths,
            index=carried,
            desired=desired,
            change=change,
            tree_paths=touched_since(self._tree_changes, self._containers.tree, tree),
            touched=touched,
        )
        if tree is not before:
            self._record(before, tree, touched)
        focus = None if paths is None else sorted({*paths, *wanted})
        return complete, tree, focus, errors, reads

    # --- scope -----------------------------------------------------------------------------

    def _scope_paths(
        self,
        desired: Mapping[str, CgroupTarget],
        config: NodeConfig,
        scope: Iterable[str],
        retiring: frozenset[str],
    ) -> list[str]:
        paths: set[str] = set()
        for path in scope:
            if path not in desired:
                # Parsed only when not desired (an admission's new pod cgroup is).
                parsed = parse_cgroup_path(path, config)
                if parsed is None or parsed.level != "pod":
                    raise ValueError(f"scope path {path!r} is not a managed or pod cgroup path")
            paths.add(path)
        paths |= retiring
        return sorted(paths)

    # --- lowering in a scoped round ---------------------------------------------------------

    def _see_children_of_lowered(
        self,
        targets: NodeTargets,
        index: TargetIndex,
        tree: ObservedTree,
        plan: Plan,
        plan_for: Callable[[ObservedTree], Plan],
        *,
        focus: Iterable[str],
    ) -> tuple[ObservedTree, Plan, list[ReadError], int]:
        """Before a scoped round lowers a parent's protection, read what the parent's children
        hold now, and plan again with it: (tree, plan, read errors, calls).

        A scoped round reads its scope and the scope's ancestors; their other children come from
        the cached picture, which does not know what another writer did since the last full
        resync (a sibling's memory.min raised, a cgroup created); lowering to a stale sum can
        leave the parent below its children, and so can raising a child from a stale sum when
        another writer raised the parent and then a sibling into that room. So each parent the
        plan lowers, and each parent read this round whose protection drifted, is listed and
        the files concerned of its children not observed this round are read
        (`observe_children`); the raise and lower passes then count what the children hold now.
        Only those parents cost reads: an admission usually lowers nothing, and nothing drifts
        while no one else writes. Fresh values only ever lower less, but a re-plan may lower another
        parent; repeat until every lowered parent was seen with its children (at most once per
        level).
        """
        children = index.children
        seen = {path for path in focus if self._children_observed(children, path, plan)}
        errors: list[ReadError] = []
        reads = 0
        # A parent someone else wrote since this reconciler last set or saw it: its children's
        # cached values are as suspect as its own was, so they are read like a lowered
        # parent's (seed 3390: kubepods raised, then besteffort into that room, then an
        # admission raised kubepods from the stale sum). Costs nothing while no one else writes.
        pending = {
            p: f for p, f in self._drifted_parents(children, tree, plan).items() if p not in seen
        }
        while True:
            lowered: dict[str, set[str]] = pending
            pending = {}
            for operation in plan.operations:
                if (
                    operation.phase == "lower"
                    and operation.kind == "write"
                    and operation.file in PROTECTION_FILES
                    and operation.path not in seen
                ):
                    lowered.setdefault(operation.path, set()).add(operation.file)
            if not lowered:
                return tree, plan, errors, reads
            touched: set[str] = set()
            before = tree
            tree, more_errors, more_reads = observe_children(
                self.fs, targets, lowered, base=tree, observed=plan.final_values, touched=touched
            )
            self._record(before, tree, touched)
            errors += more_errors
            reads += more_reads
            seen.update(lowered)
            plan = plan_for(tree)

    def _drifted_parents(
        self, children: Callable[[str], int], tree: ObservedTree, plan: Plan
    ) -> dict[str, set[str]]:
        """Parents read this round whose protection differs from what this reconciler last
        wrote or saw (another writer changed it): parent path -> the drifted files. `children`:
        how many desired children each parent has (the root counts as no one's child here:
        only a path with a "/" has a parent below the root)."""
        parents = [path for path in plan.final_values if path and children(path)]
        drifted: dict[str, set[str]] = {}
        for path in sorted(parents):
            found = tree.get(path)
            if found is None or not found.exists:
                continue
            for file in PROTECTION_FILES:
                if self._changed_behind_our_back(path, file, found) is not None:
                    drifted.setdefault(path, set()).add(file)
        return drifted

    def _changed_behind_our_back(
        self, path: str, file: str, found: ObservedCgroup
    ) -> tuple[str, str] | None:
        """(expected, now) if `file` of `path` no longer holds what this reconciler last wrote
        or saw; None when it does, or when either side is unknown (never written, unreadable)."""
        expected = self._expected.get(path, {}).get(file)
        if expected is None or file in found.unreadable:
            return None
        text = found.files.get(file)
        if text is None:
            text = kernel_default(file)
        now = self._values.normalise(file, text) if text is not None else None
        if now is None or now == expected:
            return None
        return expected, now

    @staticmethod
    def _children_observed(children: Callable[[str], int], path: str, plan: Plan) -> bool:
        """True if this round already read `path`'s listing and all its children: a scoped
        cgroup is listed with its unmanaged children's protections; its managed children count
        only if they were planned (observed) too. `children`: how many desired children each
        parent has; the planned paths are desired ones, so counting those under `path` tells
        whether every desired child was planned (without a walk over every target per path)."""
        planned = sum(
            1 for child in plan.final_values if child and child.rpartition("/")[0] == path
        )
        return planned == children(path)

    # --- drift -----------------------------------------------------------------------------

    def _drift(
        self, index: TargetIndex, tree: ObservedTree, plan: Plan
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """(path, file) → (expected, found) for values changed behind this reconciler's back."""
        drift: dict[tuple[str, str], tuple[str, str]] = {}
        by_path = index.by_path
        # The planned ones only, in the targets' order (the plan's final values are in it).
        for path in plan.final_values:
            target = by_path.get(path)
            if target is None:
                continue
            found = tree.get(target.path)
            if found is None or not found.exists:
                if target.path in self._expected_present:
                    drift[(target.path, "")] = ("present", "absent")
                continue
            if target.controllers and found.subtree_control is not None:
                expected = self._expected_controllers.get(target.path, frozenset())
                missing = expected - set(found.subtree_control)
                if missing:
                    drift[(target.path, SUBTREE_CONTROL)] = (
                        " ".join(sorted(expected)),
                        " ".join(sorted(found.subtree_control)),
                    )
            for file in plan.final_values.get(target.path, {}):
                changed = self._changed_behind_our_back(target.path, file, found)
                if changed is not None:
                    drift[(target.path, file)] = changed
        return drift

    # --- execution -------------------------------------------------------------------------

    def _execute(self, plan: Plan) -> tuple[list[OperationResult], int]:
        not_ok: set[int] = set()
        results: list[OperationResult] = []
        writes = 0
        for operation in plan.operations:
            if self._interrupted:
                # Shutting down: stop between operations (any prefix of a plan keeps its
                # ordering guarantees); the rest is for the next daemon's first round.
                not_ok.add(operation.index)
                results.append(OperationResult(operation, "skipped", message="interrupted"))
                continue
            if any(index in not_ok for index in operation.requires):
                not_ok.add(operation.index)
                results.append(OperationResult(operation, "skipped"))
                continue
            key = _key(operation)
            backoff = self._backoff.get(key)
            if backoff is not None and self.clock() < backoff.not_before:
                not_ok.add(operation.index)
                results.append(OperationResult(operation, "deferred"))
                continue
            result, calls = self._attempt(operation)
            writes += calls
            if result.outcome == "ok":
                self._backoff.pop(key, None)
            else:
                not_ok.add(operation.index)
                failures = backoff.failures + 1 if backoff is not None else 1
                self._backoff[key] = _Backoff(
                    failures, self.clock() + self.options.backoff_seconds(failures)
                )
            results.append(result)
        return results, writes

    def _attempt(self, operation: Operation) -> tuple[OperationResult, int]:
        """Carry out one operation (with immediate retries on EINTR/EAGAIN)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                self._call(operation)
            except HostError as exc:
                code = exc.errno or 0
                if self._counts_as_success(operation, code) or self._removed_by_owner(
                    operation, code
                ):
                    return OperationResult(operation, "ok", code, attempts), attempts
                if code in TRANSIENT_ERRNOS and attempts < self.options.max_attempts_per_round:
                    continue
                busy = operation.kind == "rmdir" and code == errno_module.EBUSY
                outcome: Outcome = "busy" if busy else "failed"
                return OperationResult(operation, outcome, code, attempts, str(exc)), attempts
            return OperationResult(operation, "ok", None, attempts), attempts

    def _call(self, operation: Operation) -> None:
        if operation.kind == "mkdir":
            self.fs.mkdir(operation.path)
        elif operation.kind == "rmdir":
            self.fs.rmdir(operation.path)
        elif operation.kind == "kill":
            self.fs.write(operation.path, CGROUP_KILL, operation.value)
        else:
            self.fs.write(operation.path, operation.file, operation.value)

    def _removed_by_owner(self, operation: Operation, code: int) -> bool:
        """Beside the kubelet, its owner removes a cgroup whenever it likes, also just before
        memstate writes to it: ENOENT (or kernfs's ENODEV, the file opened just before the
        removal) on a cgroup that is itself gone leaves nothing to write (the next round sees it
        absent). Where memstate owns the tree it is a failure."""
        if self.profile.owns_cgroups or code not in GONE_ERRNOS:
            return False
        try:
            return not self.fs.exists(operation.path)
        except HostError:
            return False

    @staticmethod
    def _counts_as_success(operation: Operation, code: int) -> bool:
        if operation.kind == "mkdir":
            return code == errno_module.EEXIST
        # A pod being removed that is already gone is removed.
        return operation.phase == "remove" and code in GONE_ERRNOS

    # --- reporting -------------------------------------------------------------------------

    def _finish(
        self, prepared: PreparedRound, results: list[OperationResult], *, writes: int
    ) -> ReconcileReport:
        index, tree, plan = prepared.index, prepared.tree, prepared.plan
        read_errors, full, retiring = prepared.read_errors, prepared.full, prepared.retiring
        now = self.clock()
        notes: list[Event] = [
            CgroupWriteFailed(path=e.path, op=e.op, errno=e.errno, message=e.message, file=e.file)
            for e in read_errors
        ]
        # Plain dicts, not `Counter`s (a Python-level `__missing__` per new key): a round's
        # report is on every admission's path.
        counters: dict[tuple[str, str], int] = {}
        outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        by_target: dict[tuple[str, str], list[OperationResult]] = {}
        for result in results:
            operation = result.operation
            counted = (operation.file or operation.kind, result.outcome)
            counters[counted] = counters.get(counted, 0) + 1
            outcomes[result.outcome] += 1
            by_target.setdefault((operation.path, _drift_file(operation)), []).append(result)
            if result.outcome == "failed":
                notes.append(
                    CgroupWriteFailed(
                        path=operation.path,
                        op=operation.kind,
                        errno=result.errno or 0,
                        message=result.message,
                        file=operation.file,
                        value=operation.value,
                    )
                )
        for (path, file), (expected, found) in sorted(prepared.drift.items()):
            done = by_target.get((path, file), [])
            if done and all(r.outcome == "ok" for r in done):
                notes.append(
                    CgroupDriftCorrected(path=path, file=file, expected=expected, found=found)
                )
        succeeded = [r.operation for r in results if r.outcome == "ok"]
        touched: set[str] = set()
        edits: dict[str, ListingEdit] = {}
        self._tree = apply_operations(tree, succeeded, touched, edits)
        self._tree_owned = True  # a new table nothing else holds
        self._record(tree, self._tree, touched, edits)
        self._remember(index, plan, by_target, full=full)
        notes.extend(self._orphan_notes(plan, by_target, full))
        pending, removed = self._pending_removals(tree, plan, by_target, retiring)
        retry = self._retry_after(plan, results, pending, now)
        failed = outcomes["failed"] + outcomes["busy"]
        converged = (
            failed == 0
            and outcomes["skipped"] == 0
            and outcomes["deferred"] == 0
            and not pending
            and not read_errors
            and not plan.blocked
            and not plan.unknown
        )
        return ReconcileReport(
            full=full,
            attempted=len(results) - outcomes["skipped"] - outcomes["deferred"],
            succeeded=outcomes["ok"],
            failed=failed,
            skipped=outcomes["skipped"],
            deferred=outcomes["deferred"],
            notes=notes,
            counters=dict(sorted(counters.items())),
            converged=converged,
            retry_after_seconds=retry,
            pending_removals=pending,
            removed=removed,
            results=tuple(results),
            orphans=tuple(r.path for r in plan.orphans),
            warnings=plan.warnings
            + tuple(
                f"retired pod cgroup {path!r} is not named under the cgroup driver and root in "
                "force: left in place"
                for path in prepared.foreign
            ),
            read_errors=tuple(f"{e.op} {e.path}/{e.file}: {e.message}" for e in read_errors),
            writes=writes,
            reads=prepared.reads,
            awaiting=plan.awaiting,
        )

    def _remember(
        self,
        index: TargetIndex,
        plan: Plan,
        by_target: dict[tuple[str, str], list[OperationResult]],
        *,
        full: bool,
    ) -> None:
        """What the tree holds now as far as this reconciler knows (the base of drift).

        Remembering a plan without operations again, right after it was remembered, with the
        same desired paths and no failed enable to look at, sets what is already set: skipped
        (an idle node's periodic resync reuses its plan, `_full_plan`)."""
        if index.spent:
            # Its tables are a later index's (`TargetIndex.updated` hands them on): a round's
            # completion after the next round's preparation would remember that one's targets.
            raise InvariantViolation("a round completed with a target index spent by a later one")
        desired = index.by_path
        if (
            not plan.operations
            and self._remembered is not None
            and self._remembered[0] is plan
            and self._remembered[1] == full
            and index.token is self._index_before
            and not self._controllers_failed
        ):
            return
        self._remembered = None if plan.operations else (plan, full)
        # The paths with an operation this round: the others (all but a few in a scoped round's
        # plan) had none fail, and every value of theirs is set at once, in C, as the loop
        # below would (a full round after an admission remembers every managed file).
        acted = {path for path, _ in by_target}
        for path, files in plan.final_values.items():
            if path not in desired:
                continue  # only desired cgroups are remembered
            if path not in acted:
                self._expected_present.add(path)
                expected = self._expected.get(path)
                if expected is None:
                    self._expected[path] = dict(files)
                else:
                    expected.update(files)
                continue
            created = by_target.get((path, ""))
            if created is not None and not all(r.outcome == "ok" for r in created):
                continue  # not created: none of its values is set
            self._expected_present.add(path)
            expected = self._expected.get(path)
            for file, value in files.items():
                done = by_target.get((path, file))
                if done is None or all(r.outcome == "ok" for r in done):
                    if expected is None:
                        expected = self._expected[path] = {}
                    expected[file] = value
        # Every target with controllers is expected to have them enabled unless this round's
        # enable failed. Only the targets that can change that are looked at: those the index
        # found new or changed since the last round, those whose enable failed before, and
        # those with an enable this round (every one when the index cannot tell).
        enables = {o.path for o in plan.operations if o.kind == "enable"}
        if index.token is self._index_before:
            looked_at: Iterable[str] = {*self._controllers_failed, *enables}
            gone: Iterable[str] = ()
        elif index.derived_from is self._index_before:
            looked_at = {*index.changed, *self._controllers_failed, *enables}
            gone = index.dropped
        else:
            looked_at = list(index.controlled())
            # Every path remembered was desired when it was (below, only desired ones are):
            # those no longer desired are what an earlier round's desired paths lost.
            remembered = {*self._expected, *self._expected_present, *self._expected_controllers}
            gone = [path for path in remembered if path not in desired]
        controlled = index.controlled()
        for path in looked_at:
            target = controlled.get(path)
            if target is None:
                self._controllers_failed.discard(path)
                continue
            enabled = by_target.get((path, SUBTREE_CONTROL), [])
            if all(r.outcome == "ok" for r in enabled):
                self._expected_controllers[path] = frozenset(target.controllers)
                self._controllers_failed.discard(path)
            else:
                self._controllers_failed.add(path)
        # Forget what is no longer desired; a round that dropped nothing (an admission) walks
        # nothing here.
        self._index_before = index.token
        for path in gone:
            self._expected.pop(path, None)
            self._expected_present.discard(path)
            self._expected_controllers.pop(path, None)
        if full:
            # Back-off of operations a full plan no longer contains is stale (a scoped plan
            # only covers its scope, so it cannot tell).
            planned = {_key(o) for o in plan.operations}
            self._backoff = {k: v for k, v in self._backoff.items() if k in planned}

    def _orphan_notes(
        self, plan: Plan, by_target: dict[tuple[str, str], list[OperationResult]], full: bool
    ) -> list[Event]:
        if not full:
            return []
        notes: list[Event] = []
        seen: set[str] = set()
        for orphan in plan.orphans:
            seen.add(orphan.path)
            if orphan.path not in self._orphans_reported:
                notes.append(CgroupOrphanFound(path=orphan.path))
                self._orphans_reported.add(orphan.path)
        for removal in plan.removals:
            if removal.kind == "orphan" and removal.action == "remove":
                done = by_target.get((removal.path, ""), [])
                if done and all(r.outcome == "ok" for r in done):
                    notes.append(CgroupOrphanFound(path=removal.path, removed=True))
                    seen.discard(removal.path)
        self._orphans_reported &= seen
        return notes

    def _pending_removals(
        self,
        tree: ObservedTree,
        plan: Plan,
        by_target: dict[tuple[str, str], list[OperationResult]],
        retiring: frozenset[str],
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(retired paths still there or not known gone, retired paths seen gone)."""
        pending: set[str] = set()
        planned: set[str] = set()
        for removal in plan.removals:
            if removal.kind != "retired":
                continue
            planned.add(removal.path)
            rmdirs = by_target.get((removal.path, ""), [])
            if not (rmdirs and all(r.outcome == "ok" for r in rmdirs)):
                pending.add(removal.path)
        for path in retiring - planned:
            if not _proven_absent(tree, path):
                pending.add(path)  # its holder could not be listed: keep looking
        self._pending = {path: self._pending.get(path, 0) + 1 for path in sorted(pending)}
        return tuple(sorted(pending)), tuple(sorted(retiring - pending))

    def _retry_after(
        self,
        plan: Plan,
        results: list[OperationResult],
        pending: tuple[str, ...],
        now: float,
    ) -> float | None:
        waits: list[float] = []
        for result in results:
            if result.outcome in ("failed", "busy", "deferred"):
                backoff = self._backoff.get(_key(result.operation))
                if backoff is not None:
                    waits.append(max(0.0, backoff.not_before - now))
        waits.extend(self.options.backoff_seconds(self._pending[path]) for path in pending)
        if any(r.outcome == "skipped" for r in results) and not waits:
            waits.append(self.options.retry_backoff_base_seconds)
        return min(waits) if waits else None


def _split_retired(paths: Iterable[str], config: NodeConfig) -> tuple[set[str], list[str]]:
    """(the retired paths that are pod cgroups under `config`'s naming, the others). The others
    were named under a cgroup driver or cgroupRoot no longer in force: the tree they live in is
    not the managed one, so they are left alone (and said so)."""
    valid: set[str] = set()
    foreign: list[str] = []
    for path in paths:
        parsed = parse_cgroup_path(path, config)
        if parsed is None or parsed.level != "pod":
            foreign.append(path)
        else:
            valid.add(path)
    return valid, sorted(foreign)


def _proven_absent(tree: ObservedTree, path: str) -> bool:
    """True if observation shows `path` does not exist (itself, or its parent's listing)."""
    found = tree.get(path)
    if found is not None:
        return not found.exists
    parent = parent_path(path)
    if parent is None:
        return False
    above = tree.get(parent)
    if above is None:
        return False
    if not above.exists:
        return True
    return above.children is not None and path.rpartition("/")[2] not in above.children


def _key(operation: Operation) -> tuple[str, str, str, str]:
    return (operation.kind, operation.path, operation.file, operation.value)


def _drift_file(operation: Operation) -> str:
    """The (path, file) slot an operation fills: "" for mkdir/rmdir."""
    if operation.kind in ("mkdir", "rmdir"):
        return ""
    return operation.file
