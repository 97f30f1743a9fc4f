"""Look-ups over one `NodeTargets`, carried from one round's targets to the next.

Every round's planning and reconciling asks the same questions of the targets: the target at a
path, whether a path is desired, how many desired children a cgroup has, where a cgroup stands in
the targets' order, which cgroups hold pods (the node and QoS cgroups). Built from scratch that
is a Python pass over every cgroup per question per round. `TargetIndex.updated(targets)` derives
the index of the next targets from the previous one by the cgroups that are not the same objects
(found in C: the targets tracker keeps every unchanged pod's `CgroupTarget`), so a round that
admits one pod costs a few C-level passes (a dict of object ids, set differences) plus work for
the cgroups that changed. The answers are those of `TargetIndex.of(targets)` computed from scratch
(tests/reconcile/test_target_index.py compares them over random sequences).

Handed on, not copied: `updated` edits the tables (path -> target of every cgroup, the
cgroups with controllers, each parent's set of its children's names) in place for the cgroups
that changed and returns a new index over them; the index it was called on is spent (`spent`:
its `check` refuses, so the planner never answers from it, and updating it again starts afresh,
`TargetIndex.of`). Copying the tables cost a pass in C over every cgroup per round (and again to
free the copy): what made a one-pod round grow with the node; kubepods' set of names, copied per
admission until stop 24, holds every pod. A caller that carries an answer over a parent's names
from one index to the next keeps the index's `token`, not the set (`child_names_changed`).
Pure: no I/O, no clock; the tables are only looked up, never iterated in an order that could
leak into a result (`ordered` sorts by position in the targets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from memstate.core.errors import InvariantViolation
from memstate.core.plan.profile import WriteProfile, filters
from memstate.core.targets import CgroupTarget, NodeTargets, TargetsChange

_HOLDER_LEVELS = frozenset({"root", "node", "qos"})
_NO_NAMES: frozenset[str] = frozenset()


class TargetIndex:
    """Look-ups over `targets.cgroups` (see the module docstring). Build with
    `TargetIndex.of(targets)` or `previous.updated(targets)`."""

    __slots__ = (
        "_by_path",
        "_children",
        "_controlled",
        "_filtered",
        "_holders",
        "_holders_passed",
        "_name_edits",
        "_positions",
        "by_path",
        "changed",
        "derived_from",
        "dropped",
        "profile",
        "spent",
        "targets",
        "token",
    )

    def __init__(
        self,
        targets: NodeTargets,
        *,
        by_path: dict[str, CgroupTarget],
        children: dict[str, set[str]],
        holders: dict[str, str],
        controlled: dict[str, CgroupTarget],
        profile: WriteProfile | None = None,
        filtered: frozenset[str] = frozenset(),
        derived_from: object = None,
        changed: tuple[str, ...] = (),
        dropped: frozenset[str] = frozenset(),
        name_edits: dict[str, frozenset[str]] | None = None,
        holders_passed: object = None,
    ) -> None:
        self.targets = targets
        # The write profile whose filter is followed (None: none), and the paths whose files
        # it would filter (`profile_targets`): none means filtering changes no cgroup.
        self.profile = profile
        self._filtered = filtered
        # This index, by identity (the tables are shared along a line of updates, so they do
        # not tell one index from the next), and the `token` of the index it was derived from
        # (None when built from scratch).
        self.token = object()
        self.derived_from = derived_from
        # What `updated` found against the index it was derived from: the paths whose target
        # is new or another object, and the paths no longer desired. Lets a caller that keeps
        # its own tables by path follow the change without comparing every path itself.
        self.changed = changed
        self.dropped = dropped
        # True once `updated` handed the tables on to the next index.
        self.spent = False
        # path -> its target (the last one listed, as a dict built in order would keep)
        self.by_path: Mapping[str, CgroupTarget] = by_path
        self._by_path = by_path  # the same table, edited in place by `updated`
        # path -> its index in targets.cgroups, found when first asked (a scoped round asks
        # for its few planned paths; the root, node and QoS cgroups come first).
        self._positions: dict[str, int] = {}
        # parent path -> the names of its desired children (edited in place by `updated`)
        self._children = children
        self._holders = holders  # path -> level, of the root, node and QoS cgroups
        # The naming whose check of the holders passed (`holders_passed`), carried by `updated`
        # while every holder keeps its path and level: the check is a function of those alone.
        self._holders_passed = holders_passed
        self._controlled = controlled  # path -> target, of those with controllers
        # parent -> the names desired under it in one of this index and the one it was
        # derived from and not the other: lets a carried answer over a parent's names follow
        # them by the names that changed (`child_names_changed`).
        self._name_edits = name_edits or {}

    @classmethod
    def of(cls, targets: NodeTargets, profile: WriteProfile | None = None) -> TargetIndex:
        """The index of `targets`, computed from scratch (following `profile`'s filter)."""
        by_path: dict[str, CgroupTarget] = {}
        names: dict[str, set[str]] = {}
        holders: dict[str, str] = {}
        controlled: dict[str, CgroupTarget] = {}
        for target in targets.cgroups:
            by_path[target.path] = target
        for path, target in by_path.items():
            if path:
                parent, _, name = path.rpartition("/")
                names.setdefault(parent, set()).add(name)
            _add(path, target, holders, controlled)
        children = names
        filtered = (
            frozenset()
            if profile is None
            else frozenset(t.path for t in targets.cgroups if filters(t, profile))
        )
        return cls(
            targets,
            profile=profile,
            filtered=filtered,
            by_path=by_path,
            children=children,
            holders=holders,
            controlled=controlled,
        )

    def updated(self, targets: NodeTargets, change: TargetsChange | None = None) -> TargetIndex:
        """The index of `targets`, from this one's by the cgroups that are not the same objects:
        those `change` lists when it is relative to this index's targets (work proportional
        to the change), else found by comparing every cgroup.

        A spent index (updated before) starts afresh: its tables are another index's."""
        if self.spent:
            return TargetIndex.of(targets, self.profile)
        if targets is self.targets:
            return self
        self.spent = True
        cgroups = targets.cgroups
        before = self._by_path
        get = before.get
        # path -> its target before this update edited the table in place (None: none).
        prior: dict[str, CgroupTarget | None] = {}
        if change is not None and change.previous is self.targets:
            # Only the listed cgroups can differ: the table edited by the change, in place.
            by_path = before
            changed = [target for target in change.cgroups if get(target.path) is not target]
            gone = []
            for path in change.dropped_paths:
                if path in by_path:
                    held = by_path.pop(path)
                    prior.setdefault(path, held)
                    gone.append(held)
            for target in changed:
                prior.setdefault(target.path, get(target.path))
                by_path[target.path] = target
            if len(by_path) != len(cgroups):
                return TargetIndex.of(targets, self.profile)  # a path listed twice: start over
        else:
            # One pass to key the new targets by path (a comprehension: cheaper than keying by
            # object id, which allocates an int per cgroup), one to find the replaced ones.
            by_path = {target.path: target for target in cgroups}
            if len(by_path) != len(cgroups):
                return TargetIndex.of(targets, self.profile)  # a path listed twice: start over
            changed = [target for path, target in by_path.items() if get(path) is not target]
            added = sum(1 for target in changed if target.path not in before)
            gone = (
                [before[path] for path in before.keys() - by_path.keys()]
                if len(by_path) - added != len(before)
                else []
            )
        if not changed and not gone:
            return TargetIndex(
                targets,
                profile=self.profile,
                filtered=self._filtered,
                by_path=by_path,
                children=self._children,
                holders=self._holders,
                controlled=self._controlled,
                derived_from=self.token,
                holders_passed=self._holders_passed,
            )
        children, holders, controlled = self._children, self._holders, self._controlled
        # parent -> (names no longer desired, names now desired): each parent's set of names is
        # edited in place (kubepods' holds every pod: a copy of it per admission cost as much as
        # the rest of the update).
        edits: dict[str, tuple[list[str], list[str]]] = {}
        # Every holder kept at its path and level (a QoS cgroup's target replaced by one with
        # other values, as each admission does, is still the same holder), none put in or
        # taken out: their naming's verdict (`holders_passed`) stands.
        holders_kept = all(t.path not in holders for t in gone) and all(
            holders.get(t.path) == (t.level if t.level in _HOLDER_LEVELS else None) for t in changed
        )
        for target in gone:
            _remove(target.path, holders, controlled)
            if target.path:
                parent, _, name = target.path.rpartition("/")
                edits.setdefault(parent, ([], []))[0].append(name)
        for target in changed:
            path = target.path
            if (prior[path] is not None) if path in prior else path in before:
                _remove(path, holders, controlled)
            elif target.path:
                parent, _, name = target.path.rpartition("/")
                edits.setdefault(parent, ([], []))[1].append(name)
            _add(target.path, target, holders, controlled)
        name_edits: dict[str, frozenset[str]] = {}
        for parent, (dropped_names, added_names) in edits.items():
            # Each dropped name was desired under `parent`, each added one was not.
            name_edits[parent] = frozenset((*dropped_names, *added_names))
            names = children.get(parent)
            if names is None:
                names = children[parent] = set()
            names.difference_update(dropped_names)
            names.update(added_names)
            if not names:
                del children[parent]
        filtered = self._filtered
        if self.profile is not None:
            profile = self.profile
            out = {t.path for t in gone} | {t.path for t in changed}
            filtered = frozenset(
                (filtered - out) | {t.path for t in changed if filters(t, profile)}
            )
        return TargetIndex(
            targets,
            profile=self.profile,
            filtered=filtered,
            by_path=by_path,
            children=children,
            holders=holders,
            controlled=controlled,
            derived_from=self.token,
            changed=tuple(target.path for target in changed),
            dropped=frozenset(target.path for target in gone),
            name_edits=name_edits,
            holders_passed=self._holders_passed if holders_kept else None,
        )

    def check(self, targets: NodeTargets) -> None:
        """Refuse (InvariantViolation) an index made for other targets, or spent."""
        if self.spent:
            raise InvariantViolation("a target index used after it was updated (spent: handed on)")
        if targets is not self.targets:
            raise InvariantViolation("a target index given for other targets")

    # --- queries ---------------------------------------------------------------------------

    def unfiltered_under(self, profile: WriteProfile) -> bool:
        """True if `profile_targets(targets, profile)` changes no cgroup of the targets (it may
        still filter the pods' own files, which planning does not read)."""
        return profile == self.profile and not self._filtered

    @property
    def unique(self) -> bool:
        """True if no path is listed twice."""
        return len(self.by_path) == len(self.targets.cgroups)

    def position(self, path: str) -> int | None:
        """The index of `path`'s target in `targets.cgroups`; None if not desired. Only
        meaningful when the paths are `unique`."""
        at = self._positions.get(path)
        if at is None:
            target = self.by_path.get(path)
            if target is None:
                return None
            # In C: the first element equal to it, which is itself when paths are unique.
            at = self._positions[path] = self.targets.cgroups.index(target)
        return at

    def after(self, path: str, at: int) -> bool:
        """True if desired `path`'s target stands after index `at` in `targets.cgroups`. Only
        meaningful when the paths are `unique`. Without its position known, a C search of the
        first ``at + 1`` targets answers (a new pod's parent stands near the front: no search
        of every pod for the pod's own position)."""
        known = self._positions.get(path)
        if known is not None:
            return known > at
        target = self.by_path.get(path)
        if target is None:
            raise InvariantViolation(f"{path!r} is not desired: it has no place in the targets")
        try:
            self.targets.cgroups.index(target, 0, at + 1)
        except ValueError:
            return True  # not among the first at + 1: after them (it is listed, once)
        return False

    def ordered(self, paths: Iterable[str]) -> list[str]:
        """The desired ones of `paths`, in the targets' order (parents first), once each.

        The positions not yet known cost a search of the targets each (`tuple.index`); a
        scoped round's one new cgroup among its ancestors (whose positions are known or near
        the front) is placed last when `after` says it stands after all of them."""
        found: dict[int, str] = {}
        unknown: dict[str, None] = {}  # desired paths without a known position, once each
        for path in paths:
            at = self._positions.get(path)
            if at is not None:
                found[at] = path
            elif path in self.by_path:
                unknown[path] = None
        if len(unknown) == 1 and self.unique:
            (last,) = unknown
            if not found or self.after(last, max(found)):
                return [*(found[at] for at in sorted(found)), last]
        for path in unknown:
            at = self.position(path)
            if at is not None:
                found[at] = path
        return [found[at] for at in sorted(found)]

    def children(self, path: str) -> int:
        """How many desired children `path` has."""
        return len(self._children.get(path, _NO_NAMES))

    def child_names(self, path: str) -> AbstractSet[str]:
        """The names of `path`'s desired children: the index's own set, to read while this
        index is not spent (`updated` edits it in place), never to keep."""
        return self._children.get(path, _NO_NAMES)

    def child_names_changed(self, path: str, since: object) -> AbstractSet[str] | None:
        """The names desired under `path` in one of `child_names(path)` and the names the index
        whose `token` is `since` gave, and not in the other, when that index is this one or
        the one it was derived from (the index `updated` was called on); None when that cannot
        be told without comparing them."""
        if since is self.token:
            return _NO_NAMES
        if since is self.derived_from and since is not None:
            return self._name_edits.get(path, _NO_NAMES)
        return None

    def holders(self, *levels: str) -> list[str]:
        """The paths of the targets of `levels` ("root", "node" or "qos"), in the targets'
        order (several levels at once: one ordering, not one per level and another of them)."""
        for level in levels:
            if level not in _HOLDER_LEVELS:
                raise InvariantViolation(f"not a holder level: {level!r}")
        return self.ordered(p for p, at in self._holders.items() if at in levels)

    def holders_passed(self, naming: object) -> bool:
        """True if `passed_holders(naming)` was said of this index, or of one it was derived
        from along updates that changed no holder (the root, node and QoS cgroups' targets)."""
        return self._holders_passed is not None and self._holders_passed == naming

    def passed_holders(self, naming: object) -> None:
        """Note that the holders passed the check of `naming` (a hashable, comparable key of the
        naming they were checked against), for `holders_passed`: a memo of a verdict on the
        holders alone, kept while they are unchanged."""
        self._holders_passed = naming

    def controlled(self) -> Mapping[str, CgroupTarget]:
        """path -> target, of the targets with controllers (a look-up table: its order is not
        the targets')."""
        return self._controlled


def _add(
    path: str,
    target: CgroupTarget,
    holders: dict[str, str],
    controlled: dict[str, CgroupTarget],
) -> None:
    if target.level in _HOLDER_LEVELS:
        holders[path] = target.level
    if target.controllers:
        controlled[path] = target


def _remove(
    path: str,
    holders: dict[str, str],
    controlled: dict[str, CgroupTarget],
) -> None:
    holders.pop(path, None)
    controlled.pop(path, None)
