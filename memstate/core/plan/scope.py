"""What the planner manages: the target tree, the files it can manage, the pod cgroups it must
account for.

Shared by the planner and the diff, so that both agree on what is blocked and what is an orphan:
`naming_config` gives the cgroup naming the targets carry, `check_target_tree`
refuses targets the planner cannot work on, `plan_controllers` decides which controllers each
managed cgroup gets and which of its files are usable (the others are *blocked*: their
controller is not available), and `undesired_pod_cgroups` finds the pod cgroups under kubepods
and the QoS cgroups that no target explains (*retired* when a decision removed the pod, else
*orphans*). Names memstate cannot handle (`is_valid_cgroup_name`) are never turned into paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import filterfalse

import msgspec

from memstate.core.cgroup_paths import (
    QOS_COMPONENTS,
    is_valid_cgroup_name,
    node_path,
    parent_path,
    parse_cgroup_path,
    qos_path,
)
from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.plan.index import TargetIndex
from memstate.core.plan.model import (
    ObservedCgroup,
    ObservedTree,
    RemovalKind,
    TreeChange,
    one_edit,
    recorded_edit,
)
from memstate.core.plan.settled import SettledCgroup
from memstate.core.plan.values import file_controller
from memstate.core.targets import CgroupTarget, NodeTargets


def naming_config(targets: NodeTargets) -> NodeConfig:
    """A NodeConfig with the naming fields (driver, cgroupRoot) `targets` were rendered with,
    for `parse_cgroup_path` (the other fields are defaults and mean nothing here)."""
    return NodeConfig(cgroup_driver=targets.cgroup_driver, cgroup_root=targets.cgroup_root)


def _check_naming(targets: NodeTargets, config: NodeConfig) -> None:
    """The node and QoS cgroups are where the targets' own naming puts them."""
    nodes = [c.path for c in targets.cgroups if c.level == "node"]
    if nodes != [node_path(config)]:
        raise InvariantViolation(
            f"node cgroups {nodes} do not match the targets' naming ({config.cgroup_driver}, "
            f"root {'/'.join(config.cgroup_root) or '/'})"
        )
    qos = {c.path for c in targets.cgroups if c.level == "qos"}
    if qos != {qos_path(config, cls) for cls in QOS_COMPONENTS}:
        raise InvariantViolation(f"QoS cgroups {sorted(qos)} do not match node cgroup {nodes[0]!r}")


def check_target_tree(
    targets: NodeTargets,
    paths: Iterable[str] | None = None,
    index: TargetIndex | None = None,
    checked: Mapping[str, SettledCgroup] | None = None,
) -> None:
    """Raise InvariantViolation unless the targets form a tree the planner can work on:
    unique paths, every parent listed before its children, pod cgroups that parse as pods.

    `paths` (a scoped round: the cgroups it plans, each with its ancestors) limits the per-cgroup
    checks to those cgroups, so a round's cost does not grow with the pods it leaves alone; the
    naming, the root and the uniqueness of paths are checked whole (cheap set operations). A full
    round (None) checks every cgroup. `index` (`TargetIndex` of `targets`) answers the whole
    checks of a scoped round without a pass over every cgroup; the verdict is the same.
    `checked` (a full round): settled cgroups of an earlier full plan under the same naming
    (`SettledCgroups.checked`), whose target objects passed the per-cgroup checks then: those
    are not checked again (the same verdict: they depend on the target and the naming only).
    """
    config = naming_config(targets)
    if paths is not None:
        # One check for both: without a carried index, a throwaway one answers the same.
        if index is None:
            index = TargetIndex.of(targets)
        else:
            index.check(targets)
        if not index.unique:
            _check_naming(targets, config)
            _check_unique(targets)
        _check_indexed(index, config, paths)
        return
    _check_naming(targets, config)
    seen: set[str] = set()
    for target in targets.cgroups:
        if target.path in seen:
            raise InvariantViolation(f"cgroup {target.path!r} is listed twice in the targets")
        parent = parent_path(target.path)
        if parent is not None and parent not in seen:
            raise InvariantViolation(f"cgroup {target.path!r} is listed before its parent")
        memo = checked.get(target.path) if checked else None
        if memo is None or memo.target is not target:
            _check_target(target, config)
        seen.add(target.path)
    if "" not in seen:
        raise InvariantViolation("the targets do not include the managed root ''")


def _check_unique(targets: NodeTargets) -> None:
    """Raise on the first path listed twice."""
    seen: set[str] = set()
    for target in targets.cgroups:
        if target.path in seen:
            raise InvariantViolation(f"cgroup {target.path!r} is listed twice in the targets")
        seen.add(target.path)


def _check_indexed(index: TargetIndex, config: NodeConfig, paths: Iterable[str]) -> None:
    """The naming, the root and the per-cgroup checks of `paths`, answered by the index of
    targets whose paths are unique. The holders' naming is checked once along a line of
    index updates that leave the holders as they were (`TargetIndex.holders_passed`): every
    admission's round would otherwise render the node and QoS paths and look up the holders'
    order again for the same verdict."""
    naming = (config.cgroup_driver, config.cgroup_root)
    if not index.holders_passed(naming):
        nodes = index.holders("node")
        if nodes != [node_path(config)]:
            raise InvariantViolation(
                f"node cgroups {nodes} do not match the targets' naming ({config.cgroup_driver}, "
                f"root {'/'.join(config.cgroup_root) or '/'})"
            )
        qos = set(index.holders("qos"))
        if qos != {qos_path(config, cls) for cls in QOS_COMPONENTS}:
            raise InvariantViolation(
                f"QoS cgroups {sorted(qos)} do not match node cgroup {nodes[0]!r}"
            )
        index.passed_holders(naming)
    if index.position("") is None:
        raise InvariantViolation("the targets do not include the managed root ''")
    for path in paths:
        target = index.by_path.get(path)
        if target is None:
            continue  # not desired (a retired or container cgroup): nothing to check
        parent = parent_path(path)
        if parent is not None:
            # After its parent: a search of the targets up to the parent's place (near the
            # front), not of every pod for the path's own.
            above = index.position(parent)
            if above is None or not index.after(path, above):
                raise InvariantViolation(f"cgroup {path!r} is listed before its parent")
        _check_target(target, config)


def _check_target(target: CgroupTarget, config: NodeConfig) -> None:
    if target.level == "pod":
        parsed = parse_cgroup_path(target.path, config)
        if parsed is None or parsed.level != "pod" or parsed.pod_uid != target.pod_uid:
            raise InvariantViolation(f"pod cgroup {target.path!r} is not a pod cgroup name")
    for value in target.files.values():
        if "\0" in value or "\n" in value:
            raise InvariantViolation(f"{target.path}: target value {value!r} is not one line")


def existing(observed: ObservedTree, path: str) -> ObservedCgroup | None:
    """The observation of `path` if it was observed to exist, else None."""
    found = observed.get(path)
    return found if found is not None and found.exists else None


@dataclass(frozen=True)
class Controllers:
    """Per managed cgroup: the controllers enabled once the plan ran (`enabled_after`) and the
    target files that can be managed (`managed`); `blocked` lists ``path/file`` of the others."""

    enabled_after: dict[str, frozenset[str]]
    managed: dict[str, tuple[str, ...]]
    blocked: tuple[str, ...]
    warnings: tuple[str, ...]
    # The cgroups whose answers were a settled cgroup's (`settled`): path -> that cgroup.
    reused: dict[str, SettledCgroup]


_NO_CONTROLLERS: frozenset[str] = frozenset()


def plan_controllers(
    desired: Mapping[str, CgroupTarget],
    order: Iterable[str],
    observed: ObservedTree,
    *,
    enables: bool = True,
    settled: Mapping[str, SettledCgroup] | None = None,
) -> Controllers:
    """Which controllers each cgroup of `order` (parents first) will have enabled, and which of
    its files are usable: a file's controller must be enabled in the parent after the plan.

    `enables` False: memstate enables nothing (another owner does, the kubelet): only what
    observation found enabled counts. `settled` (memstate.core.plan.settled, settled under the
    same `enables`): a cgroup below the root whose target, observation and parent's controllers
    are a settled cgroup's gets that cgroup's answers (the same: they depend on nothing else,
    and a settled cgroup has no blocked file and no warning); listed in `reused`."""
    enabled_after: dict[str, frozenset[str]] = {}
    managed: dict[str, tuple[str, ...]] = {}
    blocked: list[str] = []
    warnings: list[str] = []
    reused: dict[str, SettledCgroup] = {}
    for path in order:
        target = desired[path]
        found = existing(observed, path)
        parent = parent_path(path)
        if settled and parent is not None:
            memo = settled.get(path)
            if memo is not None and memo.matches(
                target, found, enabled_after.get(parent, _NO_CONTROLLERS)
            ):
                enabled_after[path] = memo.enabled_after
                managed[path] = memo.managed
                reused[path] = memo
                continue
        if parent is None:
            offered = found.controllers if found is not None else None
            available = frozenset(offered) if offered is not None else frozenset(target.controllers)
        else:
            available = enabled_after.get(parent, frozenset())
        enabled_now = frozenset(found.subtree_control or ()) if found is not None else frozenset()
        wanted = frozenset(target.controllers)
        missing = sorted(wanted - available - enabled_now)
        if missing and parent is None and enables:
            warnings.append(
                f"controller(s) {', '.join(missing)} not available at the managed root "
                "(cgroup.controllers): their files are not managed"
            )
        enabled_after[path] = enabled_now | (wanted & available) if enables else enabled_now
        if parent is None:
            managed[path] = tuple(sorted(target.files))  # the root's files: none is blocked
            continue
        from_parent = enabled_after.get(parent, _NO_CONTROLLERS)  # looked up once per cgroup
        usable = []
        for file in sorted(target.files):
            controller = file_controller(file)
            if controller is not None and controller not in from_parent:
                blocked.append(f"{path}/{file}" if path else file)
                continue
            usable.append(file)
        managed[path] = tuple(usable)
    return Controllers(
        enabled_after=enabled_after,
        managed=managed,
        blocked=tuple(blocked),
        warnings=tuple(warnings),
        reused=reused,
    )


class UndesiredPod(msgspec.Struct, frozen=True):
    """A pod cgroup found under kubepods or a QoS cgroup that no target explains."""

    path: str
    uid: str
    kind: RemovalKind
    populated: bool | None


class UndesiredNames:
    """Per holder (kubepods, a QoS cgroup): the names its listing holds that are not its desired
    children's, sorted, carried from one planning to the next by the reconciler.

    A holder lists every pod, so filtering its listing against the desired names is a pass
    over every pod each round. Both change by a name or two per admission: `names` follows the
    listing by `one_edit` and the desired names by `TargetIndex.child_names_changed`, and
    rechecks only the names either says changed; otherwise (another listing, an index not
    derived from the last one) it filters the whole listing again. Its answer is always that
    filter's (`sorted(filterfalse(desired.__contains__, listing))`, duplicates included): the
    memo only keeps the last listing, the `token` of the index asked, and the answer per holder,
    held by identity (the index's sets of names are edited in place: they cannot tell one
    round's names from the next). Not thread-safe; one per reconciler.
    """

    __slots__ = ("_changes", "_memo")

    def __init__(self) -> None:
        # holder -> (listing, the `token` of the index asked, the listed names not desired,
        # sorted)
        self._memo: dict[str, tuple[tuple[str, ...], object, tuple[str, ...]]] = {}
        self._changes: Sequence[TreeChange] = ()

    def follow(self, changes: Sequence[TreeChange]) -> None:
        """Take the latest `TreeChange` records: a listing one of them edited by one name is
        followed by that edit (`recorded_edit`) instead of `one_edit`'s comparison."""
        self._changes = changes

    def names(self, holder: str, listing: tuple[str, ...], index: TargetIndex) -> tuple[str, ...]:
        """The names in `listing` (`holder`'s children, as observed) that are not among
        `index.child_names(holder)`, sorted, each as often as it is listed."""
        desired = index.child_names(holder)
        memo = self._memo.get(holder)
        result: tuple[str, ...] | None = None
        if memo is not None:
            before, asked, found = memo
            dropped_or_added = index.child_names_changed(holder, asked)
            if listing is before and dropped_or_added is not None and not dropped_or_added:
                if asked is not index.token:
                    self._memo[holder] = (listing, index.token, found)
                return found
            # The listing the same (shared, or equal: compared in C), or one name in or out.
            same = len(listing) == len(before) and listing == before
            edit = (
                None
                if same
                else recorded_edit(self._changes, holder, before, listing)
                or one_edit(before, listing)
            )
            if dropped_or_added is not None and (same or edit is not None):
                recheck = set(dropped_or_added)
                if edit is not None:
                    recheck.add(edit[0])
                kept = [name for name in found if name not in recheck]
                for name in recheck:
                    if name not in desired:
                        kept.extend([name] * listing.count(name))  # a C scan per name
                result = tuple(sorted(kept))
        if result is None:
            result = tuple(sorted(filterfalse(desired.__contains__, listing)))
        self._memo[holder] = (listing, index.token, result)
        return result

    def held(self) -> dict[str, tuple[tuple[str, ...], object, tuple[str, ...]]]:
        """holder -> (listing, the `token` of the index asked, answer) as last given (for
        tests)."""
        return dict(self._memo)


def undesired_pod_cgroups(
    targets: NodeTargets,
    observed: ObservedTree,
    config: NodeConfig,
    retired: frozenset[str],
    index: TargetIndex | None = None,
    *,
    carried: UndesiredNames | None = None,
) -> list[UndesiredPod]:
    """The pod cgroups observed under kubepods and the QoS cgroups that are not desired, in
    holder then name order: ``retired`` if their path is in `retired` (memstate.core.removals),
    else ``orphan``. Names that do not parse as memstate pod cgroups are never touched, so never
    listed. `index`: the `TargetIndex` of `targets` (the same answer without a pass over every
    target; a throwaway one is built without it). `carried`: the reconciler's `UndesiredNames`
    (the same answer without filtering every holder's whole listing each round)."""
    if index is None:
        index = TargetIndex.of(targets)
    else:
        index.check(targets)
    if index.unique:
        holders = index.holders("node", "qos")
    else:
        holders = [t.path for t in targets.cgroups if t.level in ("node", "qos")]
    found_pods: list[UndesiredPod] = []
    for holder in holders:
        found = existing(observed, holder)
        if found is None or found.children is None:
            continue
        # The listed names no target explains, filtered in C against the holder's desired
        # children's names (a holder lists every pod: no Python step, and no path built, per
        # desired child), in name order (one prefix: path order is name order).
        prefix = f"{holder}/" if holder else ""
        if carried is not None:
            undesired: Iterable[str] = carried.names(holder, found.children, index)
        else:
            desired = index.child_names(holder)
            undesired = sorted(filterfalse(desired.__contains__, found.children))
        for name in undesired:
            if not is_valid_cgroup_name(name):
                continue
            path = prefix + name
            parsed = parse_cgroup_path(path, config)
            if parsed is None or parsed.level != "pod":
                continue  # not a memstate name: never touched
            child = existing(observed, path)
            kind: RemovalKind = "retired" if path in retired else "orphan"
            found_pods.append(
                UndesiredPod(
                    path=path,
                    uid=parsed.pod_uid,
                    kind=kind,
                    populated=child.populated if child is not None else None,
                )
            )
    return found_pods
