"""The reconcile planner: desired targets × observed tree → an ordered, dependency-tagged plan.

Theory of operation
-------------------
The reconciler observes the live cgroup tree (memstate.reconcile.reconciler), hands the result to
`plan_operations` as an `ObservedTree`, and executes the returned operations in order. Planning is
pure: the same targets and observations always give the same plan, so the ordering rules below can
be tested exhaustively without a kernel, and `memstate plan` prints exactly what the daemon would
do.

**Fewest writes, compared as the kernel prints.** A file is written only when its value differs
from what observation found, both sides normalised the way the kernel reads them back
(memstate.core.plan.values); a fresh cgroup is assumed to hold the kernel defaults.

**A parent's protection covers its children at every instant** (memory-qos.md §12.3). Protections
(`memory.min`, `memory.low`; two separate chains) are written in two passes, like koordinator's
leveled updater (style.md §2.3):

- *raise*, top-down: each cgroup gets ``raise = max(current, final, Σ children's raise − V)``, all
  computed before any write. ``V`` is the shortfall observation already found (someone else left
  the children's sum above the parent); it is neither hidden nor made worse, and the lower pass
  removes it. Because a parent is written before its children and already covers their post-raise
  sum, an admission and a removal in one round can never push the children above the parent.
- *lower*, bottom-up: the exact final values, children before parents.
  ``final = max(target, Σ children's final)``: a parent also covers children memstate does not
  manage (the runtime's container cgroups, orphans, foreign cgroups), and says so in a warning.

A new pod's ancestors are therefore raised before its own protection is written, and a removed
pod's protection is gone — its cgroup removed, or, when it is still populated, its protection
zeroed leaf-first — before its ancestors are lowered: the lower writes *require* those operations.

**Limits and cpusets.** `memory.max`, `memory.high`, `memory.swap.max` and `hugetlb.*.max` grow in
the raise pass (parents first) and shrink in the lower pass (children first). `cpuset.cpus` /
`cpuset.mems` widen (new ⊇ old) in the raise pass and anything else in the lower pass; cgroup v2
lets a child request ids its parent lacks, and the only kernel constraint (< 5.17: a parent may not
be narrowed below a child's request, EBUSY) is met by narrowing children first — one write per file
suffices. An empty cpuset is written as ``"\\n"`` (`EMPTY_WRITE`), never as a zero-length write.
Limits are only *ordered*: the kernel accepts a child limit above its parent's, so a write of
one never requires another's success (a failing pod must not hold kubepods' `memory.max` back);
protections and cpusets are ordered *and* dependent.

**Creation and controllers.** Missing cgroups are created top-down, and the controllers each
managed cgroup needs are enabled in its `cgroup.subtree_control` right after it exists (a child's
controller files exist only once the parent enabled the controller). A controller the tree root
does not offer is reported and the files that depend on it are left out (blocked) instead of
failing every round. memstate never puts processes anywhere, so the no-internal-process rule only
ever bites other agents' cgroups.

**Profiles.** `profile` (memstate.core.plan.profile) is an input like the others: it filters
the target files to those memstate may write, and under ``ownership: beside-kubelet`` the plan
creates, enables, kills and removes nothing. Desired cgroups that do not exist are then left out
of the plan and listed in `Plan.awaiting` (their creator, the kubelet, has not made them yet);
they contribute nothing to their parents' sums until they appear. Retired pod cgroups get their
protection zeroed and are left for the kubelet to remove; orphans are only reported.

**Ownership.** The planner manages exactly the cgroups of `NodeTargets`, plus the removal of pod
cgroups that are no longer desired. Children of kubepods and the QoS cgroups that parse as pod
cgroups (`parse_cgroup_path`) but are not desired are either *retired* (their path was passed
in: a decision retired them, see memstate.core.removals) or *orphans* (nothing explains them).
Retired pods are removed (rmdir leaf-first, their container cgroups included); a populated one
gets its protection zeroed and then waits, or with ``pod_removal="kill"`` is killed through
`cgroup.kill` first. Orphans are reported and removed only when empty and ``remove_orphans`` is
set. Every other name is left alone. `_check_operation_scope` refuses (InvariantViolation) any
operation outside that set.

**Dependencies.** Every operation lists the indices of the operations it requires (`requires`).
The executor skips an operation whose requirement failed or was skipped, so a failure on one
cgroup never breaks the ordering guarantees elsewhere and never stops unrelated cgroups.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import cast

import msgspec

from memstate.core.cgroup_paths import ancestor_paths, is_valid_cgroup_name, parent_path
from memstate.core.cgroup_values import EMPTY_WRITE, format_controller_list
from memstate.core.errors import InvariantViolation
from memstate.core.plan.children import ChildSums
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.model import (
    ObservedCgroup,
    ObservedTree,
    Operation,
    OperationKind,
    Phase,
    Plan,
    PodRemoval,
    Removal,
    RemovalAction,
    RemovalKind,
    join_path,
)
from memstate.core.plan.profile import STANDALONE, WriteProfile, profile_targets
from memstate.core.plan.scope import (
    UndesiredNames,
    check_target_tree,
    existing,
    naming_config,
    plan_controllers,
    undesired_pod_cgroups,
)
from memstate.core.plan.settled import (
    NOTHING_SETTLED,
    SettledCgroup,
    SettledCgroups,
    Sums,
)
from memstate.core.plan.values import (
    CGROUP_KILL,
    PROTECTION_FILES,
    SUBTREE_CONTROL,
    ZERO,
    ValueModel,
    cpuset_ids,
    file_controller,
    file_kind,
    kernel_default,
    value_model,
)
from memstate.core.targets import CgroupTarget, NodeTargets

# Kinds whose parent/child order is a correctness condition, so a write *requires* the writes
# it must follow: protections (the covering invariant) and cpusets (EBUSY on kernels < 5.17).
# Limits are only ordered (grow parent-first, shrink child-first); the kernel accepts a child
# limit above its parent's, so one failing pod never holds kubepods' memory.max back.
_ORDER_BOUND = frozenset({"protection", "cpuset"})


class _Contribution(msgspec.Struct, frozen=True):
    """One child's value of a protection file: now, after the raise pass, at the end."""

    current: int
    raised: int
    final: int


def plan_operations(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    page_size_bytes: int,
    retired_paths: Iterable[str] = (),
    pod_removal: PodRemoval = "wait",
    remove_orphans: bool = False,
    focus: Iterable[str] | None = None,
    profile: WriteProfile = STANDALONE,
    child_sums: ChildSums | None = None,
    index: TargetIndex | None = None,
    undesired: UndesiredNames | None = None,
    settled: SettledCgroups | None = None,
) -> Plan:
    """The ordered operations that bring `observed` to `targets` (see the module docstring).

    `retired_paths` are pod cgroups a decision retired (memstate.core.removals): they are removed
    (and killed first when `pod_removal` is ``"kill"`` and they are populated). Retirement is by
    path, not UID: a pod whose cgroup moved keeps its new one and loses the old. Other undesired
    pod cgroups are orphans: removed only if `remove_orphans` and observed empty. Pure and
    deterministic.

    `focus` (a scoped round) limits planning to those cgroups and their ancestors; every other
    managed cgroup is left as observed and only contributes its current values to its parent's
    sums, so the work does not grow with the number of pods.

    `profile`: what memstate may write, create and remove (module docstring, "Profiles").

    `child_sums`: the children's protections of `observed` summed (memstate.core.plan.children,
    carried from round to round by the reconciler), so that a scoped round need not sum the
    children it leaves alone; the plan is the same without it.

    `index`: the `TargetIndex` of `targets` (memstate.core.plan.index, carried by the
    reconciler), so that a scoped round looks up the targets instead of passing over all of
    them; the plan is the same without it.

    `undesired`: the reconciler's carried `UndesiredNames` (memstate.core.plan.scope), so that
    the pod cgroups no target explains are found without filtering every holder's whole
    listing; the plan is the same without it.

    `settled`: the cgroups an earlier full plan found settled (memstate.core.plan.settled,
    from `plan_settled`), so that the cgroups whose inputs are still theirs are not planned
    again; the plan is the same without it.
    """
    return _planner(
        targets,
        observed,
        page_size_bytes=page_size_bytes,
        retired_paths=retired_paths,
        pod_removal=pod_removal,
        remove_orphans=remove_orphans,
        focus=focus,
        profile=profile,
        child_sums=child_sums,
        index=index,
        undesired=undesired,
        settled=settled,
    ).run()


def plan_settled(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    page_size_bytes: int,
    retired_paths: Iterable[str] = (),
    pod_removal: PodRemoval = "wait",
    remove_orphans: bool = False,
    profile: WriteProfile = STANDALONE,
    child_sums: ChildSums | None = None,
    index: TargetIndex | None = None,
    undesired: UndesiredNames | None = None,
    settled: SettledCgroups | None = None,
) -> tuple[Plan, SettledCgroups]:
    """A full plan (`plan_operations` without a focus) and the cgroups it found settled, for
    the next full plan's `settled` (memstate.core.plan.settled)."""
    planner = _planner(
        targets,
        observed,
        page_size_bytes=page_size_bytes,
        retired_paths=retired_paths,
        pod_removal=pod_removal,
        remove_orphans=remove_orphans,
        focus=None,
        profile=profile,
        child_sums=child_sums,
        index=index,
        undesired=undesired,
        settled=settled,
    )
    plan = planner.run()
    return plan, planner.settled(plan)


def _planner(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    page_size_bytes: int,
    retired_paths: Iterable[str],
    pod_removal: PodRemoval,
    remove_orphans: bool,
    focus: Iterable[str] | None,
    profile: WriteProfile,
    child_sums: ChildSums | None,
    index: TargetIndex | None,
    undesired: UndesiredNames | None,
    settled: SettledCgroups | None,
) -> _Planner:
    """The checks of `plan_operations`, then its planning run, ready to run."""
    if pod_removal not in ("wait", "kill"):
        raise InvariantViolation(f"pod_removal {pod_removal!r} is not 'wait' or 'kill'")
    planned = None if focus is None else with_ancestors(focus)
    if index is not None:
        index.check(targets)
    settled = settled or NOTHING_SETTLED
    check_target_tree(
        targets,
        planned,
        index,
        settled.checked((targets.cgroup_driver, targets.cgroup_root)) if planned is None else None,
    )
    if child_sums is not None:
        child_sums.check(observed, page_size_bytes)
    # Filtering by the profile walks every cgroup; the index says when it would change none
    # (planning never reads the pods' own files, the only other thing it filters).
    unfiltered = index is not None and index.unfiltered_under(profile)
    profiled = targets if unfiltered else profile_targets(targets, profile)
    return _Planner(
        profiled,
        observed,
        values=value_model(page_size_bytes),
        retired=frozenset(retired_paths),
        pod_removal=pod_removal,
        remove_orphans=remove_orphans,
        planned=planned,
        profile=profile,
        child_sums=child_sums,
        index=index if profiled is targets and index is not None and index.unique else None,
        undesired=undesired,
        settled=settled,
    )


def with_ancestors(paths: Iterable[str]) -> frozenset[str]:
    """`paths` and every ancestor of each: what a scoped round plans."""
    wanted = set(paths)
    for path in list(wanted):
        wanted.update(ancestor_paths(path))
    return frozenset(wanted)


class _Planner:
    """One planning run; holds the intermediate tables. Pure: no I/O, no clock."""

    def __init__(
        self,
        targets: NodeTargets,
        observed: ObservedTree,
        *,
        values: ValueModel,
        retired: frozenset[str],
        pod_removal: PodRemoval,
        remove_orphans: bool,
        planned: frozenset[str] | None,
        profile: WriteProfile,
        child_sums: ChildSums | None = None,
        index: TargetIndex | None = None,
        undesired: UndesiredNames | None = None,
        settled: SettledCgroups | None = None,
    ) -> None:
        self.targets = targets
        self.undesired = undesired
        self.target_index = index
        self.child_sums = child_sums
        self.profile = profile
        self.observed = observed
        self.values = values
        self.retired = retired
        self.pod_removal = pod_removal
        self.remove_orphans = remove_orphans
        self.config = naming_config(targets)
        # Looked up only (never iterated: the order is `self.order`).
        self.desired: Mapping[str, CgroupTarget]
        if index is not None and planned is not None:
            # Planned: the focus and its ancestors; the rest stays as observed.
            self.desired = index.by_path
            self.order = index.ordered(planned)
        else:
            # The index's table is this dict (paths unique), already built.
            self.desired = (
                index.by_path if index is not None else {t.path: t for t in targets.cgroups}
            )
            self.order = [t.path for t in targets.cgroups]  # parents first
            if planned is not None:
                self.order = [path for path in self.order if path in planned]
        self.awaiting: list[str] = []
        if not profile.owns_cgroups:
            # Only what exists is planned: the owner of the tree creates the rest.
            present: set[str] = set()
            for path in self.order:
                parent = parent_path(path)
                if existing(observed, path) is not None and (parent is None or parent in present):
                    present.add(path)
                else:
                    self.awaiting.append(path)
            self.order = [path for path in self.order if path in present]
        self._planned = frozenset(self.order)
        # parent -> its planned children's paths (a scoped round's few)
        self._planned_children: dict[str, list[str]] = {}
        for path in self.order:
            parent = parent_path(path)
            if parent is not None:
                self._planned_children.setdefault(parent, []).append(path)
        self._desired_children: dict[str, list[str]] | None = None  # built when first needed
        self._children_cache: dict[str, list[str]] = {}
        self._current_text: dict[tuple[str, str], str | None] = {}  # `current_text`'s answers
        self._visited: set[str] = set()  # paths whose children's names were checked
        self._unsafe_reported: set[tuple[str, str]] = set()
        self.operations: list[Operation] = []
        self.warnings: list[str] = []
        self.blocked: list[str] = []
        # (phase, path, file) -> operation index
        self.index: dict[tuple[str, str, str], int] = {}
        self.enabled_after: dict[str, frozenset[str]] = {}
        self.managed: dict[str, tuple[str, ...]] = {}  # files that can be managed per path
        self.created: set[str] = set()
        self.removals: list[Removal] = []
        self.removal_by_path: dict[str, Removal] = {}
        self._removed_children: dict[str, list[str]] = {}  # parent -> its removals' paths
        # (path, file) -> the operation after which the removed pod's protection is gone
        self.protection_gone: dict[tuple[str, str], int | None] = {}
        self.raised: dict[tuple[str, str], int] = {}
        self.final: dict[tuple[str, str], int] = {}
        self.current: dict[tuple[str, str], int] = {}
        # (path, file) whose value (or a value its safe ordering depends on) is unknown.
        self.unknown: set[tuple[str, str]] = set()
        # (path, file) protections that needed a raise but cannot get one this round.
        self.held: set[tuple[str, str]] = set()
        # The earlier full plan's settled cgroups (memstate.core.plan.settled), when settled
        # under this plan's page size and profile; those this plan takes (path -> the settled
        # cgroup: its controllers, protections and final values, no operation); and the
        # children's sums of each cgroup planned here whose protections came out settled.
        self._settled = (settled or NOTHING_SETTLED).usable(
            values.page_size_bytes, profile.owns_cgroups
        )
        self._candidates: Mapping[str, SettledCgroup] = {}  # `plan_controllers`' reused ones
        self._reused: dict[str, SettledCgroup] = {}
        self._sums_of: dict[str, tuple[Sums, ...]] = {}
        self._final: dict[str, dict[str, str]] = {}

    # --- entry ------------------------------------------------------------------------------

    def run(self) -> Plan:
        self._classify_children()
        self._plan_controllers()
        self._compute_protections()
        self._emit_create()
        self._emit_raise()
        self._emit_removals()
        self._emit_lower()
        for operation in self.operations:
            self._check_operation_scope(operation)
        return Plan(
            operations=tuple(self.operations),
            removals=tuple(self.removals),
            final_values=self._final_values(),
            blocked=tuple(self.blocked),
            unknown=tuple(f"{p}/{f}" if p else f for p, f in sorted(self.unknown | self.held)),
            warnings=tuple(self.warnings),
            awaiting=tuple(self.awaiting),
        )

    # --- observation helpers ---------------------------------------------------------------

    def _observed(self, path: str) -> ObservedCgroup | None:
        return existing(self.observed, path)

    def _exists(self, path: str) -> bool:
        """Exists now (and was not just created by this plan)."""
        return self._observed(path) is not None

    @property
    def desired_children(self) -> dict[str, list[str]]:
        """parent path -> the names of its desired children (every target's, built once)."""
        if self._desired_children is None:
            self._desired_children = {}
            for target in self.targets.cgroups:
                parent = parent_path(target.path)
                if parent is not None:
                    name = target.path.rpartition("/")[2]
                    self._desired_children.setdefault(parent, []).append(name)
        return self._desired_children

    def _visit_children(self, path: str) -> None:
        """Warn (once) about the names `path` lists that memstate cannot handle."""
        if path in self._visited:
            return
        self._visited.add(path)
        found = self._observed(path)
        if found is None or found.children is None:
            return
        invalid = None if self.child_sums is None else self.child_sums.invalid_names(path)
        if invalid is not None and not invalid:
            return  # the sums checked every name when the listing changed
        for name in found.children:
            safe = name not in invalid if invalid is not None else is_valid_cgroup_name(name)
            if safe or (path, name) in self._unsafe_reported:
                continue
            self._unsafe_reported.add((path, name))
            self.warnings.append(
                f"{join_path(path, name)!r}: a cgroup name memstate cannot handle; left alone"
            )

    def _child_names(self, path: str) -> list[str]:
        """Desired children and observed children (safe names only), sorted (memoised): every
        child `_children_sums` may count."""
        cached = self._children_cache.get(path)
        if cached is not None:
            return cached
        self._visit_children(path)
        if self.child_sums is None:
            names: set[str] = set(self.desired_children.get(path, ()))
        else:
            # The desired children that can count: the planned ones and those the tree holds
            # as existing (the others add nothing), without indexing every target.
            skip = len(path) + 1 if path else 0
            names = {child[skip:] for child in self._planned_children.get(path, ())}
            names.update(
                name
                for name in self.child_sums.existing_children(path)
                if join_path(path, name) in self.desired
            )
        found = self._observed(path)
        if found is not None and found.children is not None:
            names.update(name for name in found.children if is_valid_cgroup_name(name))
        result = sorted(names)
        self._children_cache[path] = result
        return result

    def _children_with_operations(self, path: str) -> list[str]:
        """The children of `path` this plan can have operations on: the planned ones and the
        removed ones (every other child is left as observed: no raise, lower or removal), so a
        scoped round does not look at every pod for the requirements of a QoS cgroup's write.
        Sorted; each is one of `_child_names(path)` (planned ones are desired, removed ones
        were listed under a valid name)."""
        self._visit_children(path)
        return sorted(
            [*self._planned_children.get(path, ()), *self._removed_children.get(path, ())]
        )

    def is_unreadable(self, path: str, file: str) -> bool:
        """True if `file`'s value in `path` is unknown (its read failed, and it is not simply
        absent because the parent is known not to enable its controller)."""
        found = self._observed(path)
        if found is None or file not in found.unreadable:
            return False
        parent = parent_path(path)
        above = self._observed(parent) if parent is not None else None
        controller = file_controller(file)
        if above is not None and above.subtree_control is not None and controller is not None:
            return controller in above.subtree_control
        return True

    def current_text(self, path: str, file: str) -> str | None:
        """Normalised value of `file` in `path` now; defaults for missing files/new cgroups.
        Memoised for the run (the observation does not change while planning; each pass asks)."""
        key = (path, file)
        if key in self._current_text:
            return self._current_text[key]
        text = self._current_text[key] = self._current_text_of(path, file)
        return text

    def _current_text_of(self, path: str, file: str) -> str | None:
        found = self._observed(path)
        if found is not None:
            text = found.files.get(file)
            if text is not None:
                normalised = self.values.normalise(file, text)
                if normalised is not None:
                    return normalised
        default = kernel_default(file)
        return None if default is None else self.values.normalise(file, default)

    def desired_text(self, path: str, file: str) -> str:
        text = self.desired[path].files[file]
        normalised = self.values.normalise(file, text)
        if normalised is None:
            raise InvariantViolation(f"{path}/{file}: the target {text!r} is not a valid value")
        return normalised

    def _protection_now(self, path: str, file: str) -> int:
        text = self.current_text(path, file)
        return 0 if text is None else self.values.number(text)

    # --- removals --------------------------------------------------------------------------

    def _classify_children(self) -> None:
        """Find pod cgroups under kubepods and the QoS cgroups that are not desired."""
        for pod in undesired_pod_cgroups(
            self.targets,
            self.observed,
            self.config,
            self.retired,
            self.target_index,
            # Carried answers are followed from the carried index's changes only.
            carried=self.undesired if self.target_index is not None else None,
        ):
            action = self._removal_action(pod.kind, pod.path, pod.populated)
            removal = Removal(
                path=pod.path, uid=pod.uid, kind=pod.kind, action=action, populated=pod.populated
            )
            self.removals.append(removal)
            self.removal_by_path[pod.path] = removal
            parent = parent_path(pod.path)
            if parent is not None:
                self._removed_children.setdefault(parent, []).append(pod.path)

    def _removal_action(
        self, kind: RemovalKind, path: str, populated: bool | None
    ) -> RemovalAction:
        if not self.profile.owns_cgroups:
            # The kubelet removes pod cgroups (and kills what is left in them).
            if kind == "orphan":
                self.warnings.append(
                    f"pod cgroup {path!r} of a pod memstate does not hold: left to the kubelet"
                )
                return "keep"
            self.warnings.append(
                f"retired pod cgroup {path!r}: protection zeroed, left for the kubelet to remove"
            )
            return "wait"
        if kind == "orphan":
            if self.remove_orphans and populated is False:
                return "remove"
            reason = "populated" if populated else "remove_orphans is off"
            if populated is None and self.remove_orphans:
                reason = "its cgroup.events could not be read"
            self.warnings.append(f"orphan pod cgroup {path!r} left in place ({reason})")
            return "keep"
        if populated:
            if self.pod_removal == "kill":
                return "kill"
            self.warnings.append(
                f"retired pod cgroup {path!r} is still populated: waiting for it to empty "
                "(pod_removal=wait)"
            )
            return "wait"
        return "remove"

    def _subtree_bottom_up(self, path: str) -> Iterator[str]:
        """`path` and its observed descendants, children before parents, by name."""
        found = self._observed(path)
        if found is not None and found.children is not None:
            for name in sorted(found.children):
                if is_valid_cgroup_name(name):
                    yield from self._subtree_bottom_up(join_path(path, name))
                else:
                    self.warnings.append(
                        f"{join_path(path, name)!r} has a name memstate cannot handle; "
                        f"{path!r} cannot be removed"
                    )
        yield path

    # --- controllers -----------------------------------------------------------------------

    def _plan_controllers(self) -> None:
        """Which controllers each managed cgroup will have enabled, and which files are usable."""
        controllers = plan_controllers(
            self.desired,
            self.order,
            self.observed,
            enables=self.profile.owns_cgroups,
            settled=self._settled,
        )
        # Taken only if its children's sums are the settled ones too (`_compute_protections`).
        self._candidates = controllers.reused
        self.enabled_after = dict(controllers.enabled_after)
        self.managed = dict(controllers.managed)
        self.blocked.extend(controllers.blocked)
        self.warnings.extend(controllers.warnings)
        self.created.update(path for path in self.order if not self._exists(path))

    # --- protections -----------------------------------------------------------------------

    def _compute_protections(self) -> None:
        """raise and final values of memory.min/low, bottom-up (see the module docstring)."""
        for removal in self.removals:
            for file in PROTECTION_FILES:
                self.protection_gone[(removal.path, file)] = None
        candidates = self._candidates
        for path in reversed(self.order):
            managed = self.managed[path]
            given: tuple[Sums | None, ...] | None = None
            candidate = candidates.get(path)
            if candidate is not None:
                # A settled cgroup's target, observation and controllers: its protections are
                # the settled ones when its children's sums are too.
                given = tuple(self._children_sums(path, file) for file, _ in candidate.protections)
                if given == candidate.sums:
                    # Its protections are not stored: nothing reads them but its parent's
                    # `_contribution`, which finds them as its value now (a settled cgroup's is
                    # the same at every stage), when the carried sums do not leave it out.
                    self._reused[path] = candidate
                    continue
            self._protections_of(path, managed, given)

    def _protections_of(
        self, path: str, managed: tuple[str, ...], given: tuple[Sums | None, ...] | None
    ) -> None:
        """`path`'s protections, from its children's sums (`given`: already summed, one per
        managed protection file in order); records the sums when nothing is unknown or
        warned about (a settled cgroup's, if the plan has no operation on it)."""
        values = self.values
        found = self._observed(path)
        # `is_unreadable` is False unless the cgroup has an unreadable file.
        holes = found is not None and bool(found.unreadable)
        if holes:
            for file in managed:
                if file_kind(file) != "protection" and self.is_unreadable(path, file):
                    self.unknown.add((path, file))
        summed: list[Sums] = []
        clean = not holes
        for file in PROTECTION_FILES:
            if file not in managed:
                continue
            key = (path, file)
            sums = self._children_sums(path, file) if given is None else given[len(summed)]
            if (
                sums is None
                or (holes and self.is_unreadable(path, file))
                or (found is not None and found.children is None)
            ):
                # Without every value the sums are guesses: leave this file (and, through
                # the contribution, its ancestors' and children's raises) for a later round.
                self.unknown.add(key)
                clean = False
                summed.append((0, 0, 0))  # keeps `given`'s places; never recorded
                continue
            summed.append(sums)
            children_now, children_raised, children_final = sums
            now = self._protection_now(path, file)
            target = values.number(self.desired_text(path, file))
            shortfall = max(0, children_now - now)
            final = values.clamp(max(target, children_final))
            raised = values.clamp(max(now, final, children_raised - shortfall))
            self.current[key] = now
            self.final[key] = final
            self.raised[key] = raised
            if final > target:
                clean = False
                self.warnings.append(
                    f"{path or '<root>'} {file} kept at {self.values.render(final)}, above its "
                    f"target {self.values.render(target)}: its children hold that much"
                )
        if clean:
            self._sums_of[path] = tuple(summed)

    def _children_sums(self, path: str, file: str) -> tuple[int, int, int] | None:
        """The children's `file` summed: (now, after the raise pass, at the end); None if one
        of them is unknown. Children this round neither plans nor removes (nearly all of a QoS
        cgroup's in a scoped round) only count their value now: read here in a tight loop, the
        others through `_contribution`."""
        if self.child_sums is not None and self.child_sums.usable(path):
            return self._children_sums_carried(path, file, self.child_sums)
        values = self.values
        default = kernel_default(file)
        normalised_default = None if default is None else values.normalise(file, default)
        default_now = 0 if normalised_default is None else values.number(normalised_default)
        cgroups = self.observed.cgroups
        planned, removed = self._planned, self.removal_by_path
        prefix = f"{path}/" if path else ""
        contributing: list[str] = []  # children planned, removed or unreadable: `_contribution`
        settled = 0  # the summed value now of the children left alone
        for name in self._child_names(path):
            child = prefix + name
            found = cgroups.get(child)
            if (
                child in planned
                or child in removed
                or (found is not None and found.exists and file in found.unreadable)
            ):
                contributing.append(name)
                continue
            if found is None or not found.exists:
                continue
            text = found.files.get(file)
            normalised = None if text is None else values.normalise(file, text)
            settled += default_now if normalised is None else values.number(normalised)
        return self._with_contributions(path, file, contributing, settled)

    def _children_sums_carried(
        self, path: str, file: str, sums: ChildSums
    ) -> tuple[int, int, int] | None:
        """`_children_sums` from the carried sums: their total of every listed child's value now,
        less the children this round plans, removes or cannot read, plus their contributions."""
        self._visit_children(path)
        index = PROTECTION_FILES.index(file)
        planned: Iterable[str] = self._planned_children.get(path, ())
        if planned and self._reused and not sums.invalid_names(path):
            # A settled child adds to the sums what the carried total counts for it (its
            # protection now, at every stage; listed under a valid name, readable): no names.
            planned = set(planned).difference(self._reused)
        removed = self._removed_children.get(path, ())
        unreadable = sums.unreadable_children(path, index)
        settled = sums.total(path, index)
        if not planned and not removed and not unreadable:
            return settled, settled, settled  # a leaf (every pod in a full round): no names
        special = {*planned, *removed, *unreadable}
        skip = len(path) + 1 if path else 0
        names = [child[skip:] for child in sorted(special)]
        for name in names:
            settled -= sums.counted(path, name, index)
        return self._with_contributions(path, file, names, settled)

    def _with_contributions(
        self, path: str, file: str, names: list[str], settled: int
    ) -> tuple[int, int, int] | None:
        """(now, raised, final) sums: `settled` (the children left alone, the same at every
        stage) plus each named child's `_contribution`; None if one of them is unknown."""
        now_sum = raised_sum = final_sum = settled
        for name in names:
            contribution = self._contribution(path, name, file)
            if contribution is None:
                return None
            now_sum += contribution.current
            raised_sum += contribution.raised
            final_sum += contribution.final
        return now_sum, raised_sum, final_sum

    def _contribution(self, parent: str, name: str, file: str) -> _Contribution | None:
        """A child's value of `file` now, after the raise pass and at the end; None if unknown."""
        path = join_path(parent, name)
        key = (path, file)
        if path in self.desired:
            if key in self.unknown:
                return None
            final = self.final.get(key)
            if final is not None:
                return _Contribution(
                    current=self.current[key], raised=self.raised[key], final=final
                )
        # A child this round leaves alone (most of them in a scoped round), or a settled one
        # (its protections not stored: readable, now = raised = final): its value now.
        found = self.observed.cgroups.get(path)
        if found is None or not found.exists:
            now = 0
        elif file in found.unreadable and self.is_unreadable(path, file):
            return None
        else:
            now = self._protection_of(found, file)
        removal = self.removal_by_path.get(path)
        if removal is not None and removal.action != "keep":
            # Gone at the end of the round: removed, or zeroed because it is populated.
            return _Contribution(current=now, raised=now, final=0)
        return _Contribution(current=now, raised=now, final=now)

    def _protection_of(self, found: ObservedCgroup, file: str) -> int:
        """`_protection_now` of an observed, existing cgroup."""
        text = found.files.get(file)
        normalised = None if text is None else self.values.normalise(file, text)
        if normalised is None:
            default = kernel_default(file)
            normalised = None if default is None else self.values.normalise(file, default)
        return 0 if normalised is None else self.values.number(normalised)

    # --- emission --------------------------------------------------------------------------

    def _add(
        self,
        phase: Phase,
        kind: OperationKind,
        path: str,
        file: str = "",
        value: str = "",
        *,
        requires: Iterable[int | None] = (),
        observed: str | None = None,
        reason: str = "target",
    ) -> int:
        index = len(self.operations)
        # In C (set, discard, sort): no comprehension or generator frame per operation.
        wanted = set(requires)
        wanted.discard(None)
        needed = tuple(sorted(cast("set[int]", wanted)))
        if needed and needed[-1] >= index:
            raise InvariantViolation(f"operation {index} requires a later operation {needed}")
        self.operations.append(
            Operation(
                index=index,
                phase=phase,
                kind=kind,
                path=path,
                file=file,
                value=value,
                requires=needed,
                observed=observed,
                reason=reason,
            )
        )
        self.index[(phase, path, file or kind)] = index
        return index

    def _op(self, phase: str, path: str | None, file: str) -> int | None:
        if path is None:
            return None
        return self.index.get((phase, path, file))

    def _emit_create(self) -> None:
        reused = self._reused
        for path in self.order:
            if path in reused:
                continue  # settled: exists, enables nothing
            parent = parent_path(path)
            if path in self.created:
                if parent is None:
                    raise InvariantViolation("the managed root does not exist")
                self._add("create", "mkdir", path, requires=[self._op("create", parent, "mkdir")])
            found = self._observed(path)
            enabled_now = (
                frozenset(found.subtree_control or ()) if found is not None else frozenset()
            )
            to_enable = self.enabled_after[path] - enabled_now
            if to_enable:
                value = " ".join(f"+{name}" for name in format_controller_list(to_enable).split())
                self._add(
                    "create",
                    "enable",
                    path,
                    SUBTREE_CONTROL,
                    value,
                    requires=[
                        self._op("create", path, "mkdir"),
                        self._op("create", parent, SUBTREE_CONTROL),
                    ],
                    observed=" ".join(sorted(enabled_now)),
                )

    def _base_requirements(self, path: str, file: str) -> list[int | None]:
        """The cgroup must exist and its parent must offer the file's controller."""
        return [
            self._op("create", path, "mkdir"),
            self._op("create", parent_path(path), SUBTREE_CONTROL),
        ]

    def _write_value(self, path: str, file: str, value_bytes: int | None, normalised: str) -> str:
        """The text to write: the target's own spelling when it means the same, else ours."""
        target_text = self.desired[path].files.get(file)
        if target_text is not None and self.values.normalise(file, target_text) == normalised:
            written = target_text
        elif value_bytes is not None:
            written = self.values.render(value_bytes)
        else:
            written = normalised
        return written if written else EMPTY_WRITE

    def _raise_requirements(self, path: str, parent: str | None, file: str) -> list[int | None]:
        """What a raise of `file` in `path` waits for: the base requirements, and the parent's
        raise when the kind's order is bound to it. Looked up only for a raise emitted (a
        converged full round emits none): nothing is emitted between here and its `_add`."""
        requires = self._base_requirements(path, file)
        if file_kind(file) in _ORDER_BOUND:
            requires.append(self._op("raise", parent, file))
        return requires

    def _emit_raise(self) -> None:
        reused = self._reused
        for path in self.order:
            if path in reused:
                continue  # settled: every file at its final value
            parent = parent_path(path)
            for file in self.managed[path]:
                kind = file_kind(file)
                now = self.current_text(path, file)
                if (path, file) in self.unknown:
                    continue
                if kind == "protection":
                    raised = self.raised[(path, file)]
                    if raised == self.current[(path, file)]:
                        continue
                    if parent is not None and (
                        (parent, file) in self.unknown or (parent, file) in self.held
                    ):
                        # The parent's value is unknown, or it needed a raise it will not get:
                        # nothing guarantees it covers this raise. Hold it (and, through
                        # `held`, every raise below it) for a later round.
                        self.held.add((path, file))
                        continue
                    value = self._write_value(path, file, raised, self.values.render(raised))
                    reason = "target" if raised == self.final[(path, file)] else "cover"
                    self._add(
                        "raise",
                        "write",
                        path,
                        file,
                        value,
                        requires=self._raise_requirements(path, parent, file),
                        observed=now,
                        reason=reason,
                    )
                    continue
                wanted = self.desired_text(path, file)
                if now == wanted:
                    continue
                if now is not None and kind == "limit":
                    if self.values.number(wanted) < self.values.number(now):
                        continue  # a shrink: lower pass
                elif (
                    now is not None
                    and kind == "cpuset"
                    and not cpuset_ids(wanted) >= cpuset_ids(now)
                ):
                    continue  # not a pure widening: lower pass
                value = self._write_value(path, file, None, wanted)
                requires = self._raise_requirements(path, parent, file)
                self._add("raise", "write", path, file, value, requires=requires, observed=now)

    def _emit_removals(self) -> None:
        for removal in self.removals:
            if removal.action == "keep":
                continue
            subtree = list(self._subtree_bottom_up(removal.path))
            reason = removal.kind
            kill: int | None = None
            if removal.action in ("wait", "kill"):
                self._emit_zeroing(subtree, reason)
            if removal.action == "kill":
                kill = self._add("remove", "kill", removal.path, CGROUP_KILL, "1", reason=reason)
            if removal.action == "wait":
                continue
            for path in subtree:
                found = self._observed(path)
                names = (found.children or ()) if found is not None else ()
                children = [self._op("remove", join_path(path, name), "rmdir") for name in names]
                index = self._add(
                    "remove", "rmdir", path, requires=[kill, *children], reason=reason
                )
                if path == removal.path and removal.action == "remove":
                    # Unpopulated: removal is what takes the protection away.
                    for file in PROTECTION_FILES:
                        if self._protection_now(path, file) > 0:
                            self.protection_gone[(path, file)] = index

    def _emit_zeroing(self, subtree: list[str], reason: str) -> None:
        """Zero the protections of a populated pod being removed, leaf-first."""
        for path in subtree:
            found = self._observed(path)
            if found is None:
                continue
            for file in PROTECTION_FILES:
                text = found.files.get(file)
                normalised = self.values.normalise(file, text) if text is not None else None
                # An unreadable protection is zeroed anyway: zeroing is always safe.
                if normalised == ZERO or (
                    normalised is None and not self.is_unreadable(path, file)
                ):
                    continue
                children = [
                    self._op("remove", join_path(path, name), file)
                    for name in (found.children or ())
                ]
                index = self._add(
                    "remove",
                    "write",
                    path,
                    file,
                    ZERO,
                    requires=children,
                    observed=normalised,
                    reason=reason,
                )
                if (path, file) in self.protection_gone:
                    self.protection_gone[(path, file)] = index

    def _emit_lower(self) -> None:
        reused = self._reused
        for path in reversed(self.order):
            settled = reused.get(path)
            if settled is not None:
                # Nothing to lower; its children's names visited where they always were.
                if settled.visits:
                    self._visit_children(path)
                continue
            for file in self.managed[path]:
                if (path, file) in self.unknown:
                    continue
                kind = file_kind(file)
                now = self.current_text(path, file)
                if kind in _ORDER_BOUND:
                    self._visit_children(path)  # its warnings, in the order they always came
                if kind == "protection":
                    raised = self.raised[(path, file)]
                    final = self.final[(path, file)]
                    if final == raised:
                        continue
                    value = self._write_value(path, file, final, self.values.render(final))
                    requires = self._lower_requirements(path, file, kind)
                    self._add("lower", "write", path, file, value, requires=requires, observed=now)
                    continue
                wanted = self.desired_text(path, file)
                if now == wanted or self._op("raise", path, file) is not None:
                    continue
                value = self._write_value(path, file, None, wanted)
                requires = self._lower_requirements(path, file, kind)
                self._add("lower", "write", path, file, value, requires=requires, observed=now)

    def _lower_requirements(self, path: str, file: str, kind: str) -> list[int | None]:
        """What a lower of `file` in `path` waits for: the base requirements, its own raise, and
        for an order-bound kind every child's raise and lower (and a removed child's protection
        gone). Looked up only for a lower emitted: a converged full round emits none, and the
        children of a QoS cgroup are every pod."""
        requires = self._base_requirements(path, file)
        requires.append(self._op("raise", path, file))
        for child in self._children_with_operations(path) if kind in _ORDER_BOUND else ():
            requires.append(self._op("raise", child, file))
            requires.append(self._op("lower", child, file))
            if kind == "protection" and child in self.removal_by_path:
                requires.append(self.protection_gone.get((child, file)))
        return requires

    # --- results ---------------------------------------------------------------------------

    def _final_values(self) -> dict[str, dict[str, str]]:
        result = self._final
        reused = self._reused
        for path in self.order:
            settled = reused.get(path)
            if settled is not None:
                result[path] = settled.final  # shared with the earlier plan's: never changed
                continue
            files: dict[str, str] = {}
            for file in self.managed[path]:
                if (path, file) in self.unknown:
                    continue
                if file_kind(file) == "protection":
                    files[file] = self.values.render(self.final[(path, file)])
                else:
                    files[file] = self.desired_text(path, file)
            result[path] = files
        return result

    def settled(self, plan: Plan) -> SettledCgroups:
        """The cgroups `plan` (this run's, a full one) found settled: below the root, observed
        to exist with every file readable and listed, every target file managed, nothing
        unknown, held or warned about in its protections, and no operation on it (so each
        protection is at its final value, raised and lowered alike, and every other file at
        its target). Their results depend only on `SettledCgroup`'s key."""
        with_operations = {operation.path for operation in plan.operations}
        unknown = {path for path, _ in self.unknown | self.held}
        by_path: dict[str, SettledCgroup] = {}
        for path in self.order:
            reused = self._reused.get(path)
            if reused is not None:
                by_path[path] = reused
                continue
            sums = self._sums_of.get(path)
            parent = parent_path(path)
            if sums is None or parent is None or path in with_operations or path in unknown:
                continue
            found = self._observed(path)
            target = self.desired[path]
            managed = self.managed[path]
            if (
                found is None
                or found.unreadable
                or found.children is None
                or path in self.created
                or len(managed) != len(target.files)
            ):
                continue
            by_path[path] = SettledCgroup(
                target=target,
                found=found,
                available=self.enabled_after.get(parent, frozenset()),
                sums=sums,
                managed=managed,
                enabled_after=self.enabled_after[path],
                protections=tuple(
                    (file, self.final[(path, file)]) for file in PROTECTION_FILES if file in managed
                ),
                visits=any(file_kind(file) in _ORDER_BOUND for file in managed),
                final=self._final[path],
            )
        return SettledCgroups(
            page_size_bytes=self.values.page_size_bytes,
            enables=self.profile.owns_cgroups,
            naming=(self.config.cgroup_driver, self.config.cgroup_root),
            by_path=by_path,
        )

    def _check_operation_scope(self, operation: Operation) -> None:
        """Refuse any operation outside the managed set (module docstring, "Ownership")."""
        if operation.kind in ("write", "kill", "enable") and operation.value == "":
            raise InvariantViolation(f"refusing a zero-length write: {operation.describe()}")
        if not self.profile.owns_cgroups and operation.kind != "write":
            raise InvariantViolation(
                f"ownership {self.profile.ownership} creates and removes nothing: "
                f"{operation.describe()}"
            )
        if operation.phase == "remove":
            roots = [r.path for r in self.removals if r.action != "keep"]
            inside = any(
                operation.path == root or operation.path.startswith(root + "/") for root in roots
            )
            if not inside or operation.path in self.desired:
                raise InvariantViolation(
                    f"removal outside retired/orphan pods: {operation.describe()}"
                )
            return
        if operation.path not in self.desired or operation.kind in ("rmdir", "kill"):
            raise InvariantViolation(f"operation outside the target tree: {operation.describe()}")
        target = self.desired[operation.path]
        allowed = self.profile.allows(target.level, operation.file)
        if operation.kind == "write" and (operation.file not in target.files or not allowed):
            raise InvariantViolation(f"write to an unmanaged file: {operation.describe()}")
