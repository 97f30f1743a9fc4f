"""What the planner reads and what it returns: the observed tree, operations, plans, diffs.

An `ObservedTree` is what the reconciler found in the live tree; a `Plan` is the ordered
operations that bring it to the targets. `apply_operations` and `merge_observations` predict how
an observation changes (after a plan succeeded, or with a fresh scoped observation) so that the
reconciler can keep its picture of the tree between full resyncs.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from operator import lt
from typing import Literal, TypeVar

import msgspec

from memstate.core.cgroup_paths import parent_path
from memstate.core.cgroup_values import EMPTY_WRITE

Phase = Literal["create", "raise", "remove", "lower"]
OperationKind = Literal["mkdir", "enable", "write", "kill", "rmdir"]
RemovalKind = Literal["retired", "orphan"]
RemovalAction = Literal["remove", "kill", "wait", "keep"]
PodRemoval = Literal["wait", "kill"]

PHASES: tuple[Phase, ...] = ("create", "raise", "remove", "lower")
T = TypeVar("T")


class ObservedCgroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What observation found at one cgroup path.

    `files` holds the raw text read (newline included is fine) of the files that were read; a
    file absent from it is assumed to hold its kernel default. `unreadable` names files whose
    read failed: their value is *unknown* — unless the parent is known not to enable their
    controller, in which case they simply do not exist yet. Unknown values are never guessed:
    the planner writes neither them nor anything whose safety depends on them this round.
    `children` (the names listed, sorted and unique as `CgroupFS.list_children` gives them; a
    listing made otherwise is only put in order where a name is added or dropped) is None
    when the directory was not (or could not be) listed, `populated` None
    when cgroup.events was not read, `controllers` (cgroup.controllers) and `subtree_control`
    None when not read.
    """

    exists: bool = True
    files: dict[str, str] = {}
    unreadable: tuple[str, ...] = ()
    children: tuple[str, ...] | None = None
    populated: bool | None = None
    controllers: tuple[str, ...] | None = None
    subtree_control: tuple[str, ...] | None = None


class ObservedTree(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Observation of the managed tree, keyed by cgroup path ("" is the managed root).

    A desired path missing from `cgroups` is treated as absent (it will be created). `cgroups`
    may be a `ClosedCgroups` (a plain dict that is known closed under parents) and a listing a
    `SortedNames`: proofs by type that spare a derivation a pass; equal to the plain ones.
    """

    cgroups: dict[str, ObservedCgroup] = {}

    def get(self, path: str) -> ObservedCgroup | None:
        """The observation of `path`, or None if it was not observed."""
        return self.cgroups.get(path)

    def exists(self, path: str) -> bool:
        """True if `path` was observed to exist."""
        found = self.cgroups.get(path)
        return found is not None and found.exists


class Operation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a plan.

    `kind`: ``mkdir``, ``enable`` (a write of ``+a +b`` to cgroup.subtree_control), ``write`` (one
    write of `value` to `file`), ``kill`` (``1`` to cgroup.kill) or ``rmdir``. `requires` lists
    the indices of earlier operations that must have succeeded. `observed` is the normalised value
    found before the plan (for writes and enables; "" for an empty cpuset), None when not
    applicable or unknown. `reason` says why: ``target``, ``cover`` (a protection raised or kept
    above target to cover the children), ``retired``, ``orphan``.
    """

    index: int
    phase: Phase
    kind: OperationKind
    path: str
    file: str = ""
    value: str = ""
    requires: tuple[int, ...] = ()
    observed: str | None = None
    reason: str = "target"

    def describe(self) -> str:
        """One line for people: ``write kubepods/memory.min = 1073741824``."""
        where = self.path or "<root>"
        if self.kind in ("mkdir", "rmdir"):
            return f"{self.kind} {where}"
        shown = '"\\n" (empty)' if self.value == EMPTY_WRITE else self.value
        return f"{self.kind} {where}/{self.file} = {shown}"


class Removal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pod cgroup found under kubepods/QoS that is not desired, and what the plan does with it.

    `action`: ``remove`` (rmdir leaf-first), ``kill`` (cgroup.kill, then rmdir), ``wait`` (still
    populated: protection zeroed, removal retried later), ``keep`` (an orphan left alone).
    """

    path: str
    uid: str
    kind: RemovalKind
    action: RemovalAction
    populated: bool | None = None


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ordered operations, the removals found, and what the tree looks like afterwards.

    `final_values` maps each managed cgroup to its managed files' normalised values once every
    operation succeeded (what the reconciler expects to read back next time; files whose value
    is unknown are left out; an entry may be the very dict of an earlier plan's, a settled
    cgroup's: never changed). `blocked` lists ``path/file`` entries that cannot be managed
    (their controller is not available), `unknown` those left alone this round because a value
    they depend on could not be read. `awaiting` lists desired cgroups that do not exist and
    that the profile does not create (beside the kubelet: not made by the kubelet yet).
    """

    operations: tuple[Operation, ...]
    removals: tuple[Removal, ...] = ()
    final_values: dict[str, dict[str, str]] = {}
    blocked: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    awaiting: tuple[str, ...] = ()

    @property
    def orphans(self) -> tuple[Removal, ...]:
        """Pod cgroups nothing explains."""
        return tuple(r for r in self.removals if r.kind == "orphan")

    @property
    def pending_removals(self) -> tuple[Removal, ...]:
        """Retired pods left in place this round because they are populated (wait mode)."""
        return tuple(r for r in self.removals if r.action == "wait")


class FileDiff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One managed file (or a cgroup's controllers) compared with the live tree.

    `status`: ``equal``; ``differs``; ``missing`` (the cgroup does not exist); ``blocked`` (the
    controller is not available); ``orphan`` / ``retired`` (a pod cgroup no target explains).
    `observed` is the stripped text read, None when there is nothing to read.
    """

    path: str
    file: str
    desired: str | None
    observed: str | None
    desired_normalised: str | None
    observed_normalised: str | None
    equal: bool
    status: str


def join_path(parent: str, name: str) -> str:
    """``join_path("", "a") == "a"``, ``join_path("a", "b") == "a/b"``."""
    return f"{parent}/{name}" if parent else name


# A listing edited by one name: (the listing before, the listing after, the name, put in).
ListingEdit = tuple[tuple[str, ...], tuple[str, ...], str, bool]


class TreeChange(msgspec.Struct, frozen=True):
    """How `tree` was derived from `previous` (by `merge_observations` or `apply_operations`):
    `paths` holds every path whose observation in `tree` may not be the same object as in
    `previous` (added, replaced or dropped); every other path's observation is shared. Lets
    what is carried from tree to tree (`ChildSums`, `ContainerIndex`) look at those paths
    instead of comparing every cgroup. `edits`: parent path -> the last edit of its listing
    by one name made in the derivation (`recorded_edit`)."""

    previous: ObservedTree
    tree: ObservedTree
    paths: frozenset[str]
    edits: dict[str, ListingEdit] = {}


def recorded_edit(
    changes: Sequence[TreeChange], path: str, before: tuple[str, ...], after: tuple[str, ...]
) -> tuple[str, bool] | None:
    """(name, put in) if one of `changes` made listing `after` from listing `before` (these
    very objects: the record is the proof) by putting `name` in or taking it out, as
    `one_edit(before, after)` would answer; None when none says so (then ask `one_edit`)."""
    for change in changes:
        edit = change.edits.get(path)
        if edit is not None and edit[0] is before and edit[1] is after:
            return edit[2], edit[3]
    return None


def touched_since(
    changes: Sequence[TreeChange], held: ObservedTree, tree: ObservedTree
) -> frozenset[str] | None:
    """The paths whose observation may differ between `held` and `tree`, composed from the
    consecutive records `changes` (oldest first); None when they do not lead from `held` to
    `tree` (then compare everything). Work proportional to the records and their paths."""
    if held is tree:
        return frozenset()
    for start in range(len(changes) - 1, -1, -1):
        if changes[start].previous is held:
            break
    else:
        return None
    paths: set[str] = set()
    at = held
    for change in changes[start:]:
        if change.previous is not at:
            return None  # not one chain
        paths.update(change.paths)
        at = change.tree
        if at is tree:
            return frozenset(paths)
    return None


def apply_operations(
    tree: ObservedTree,
    operations: Iterable[Operation],
    touched: set[str] | None = None,
    edits: dict[str, ListingEdit] | None = None,
) -> ObservedTree:
    """The observation one would expect after `operations` succeeded on `tree`.

    Used by the reconciler to keep its picture of the tree current between full resyncs. A new
    cgroup starts with no files read (defaults assumed) and no children; after a kill its
    populated flag is unknown. `touched`, if given, gets every path whose observation this
    replaced or dropped, and `edits` each listing edited by one name (for a `TreeChange`).
    """
    closed = type(tree.cgroups) is ClosedCgroups
    cgroups = ClosedCgroups(tree.cgroups) if closed else dict(tree.cgroups)
    marked = touched if touched is not None else set()
    for operation in operations:
        path = operation.path
        found = cgroups.get(path)
        marked.add(path)
        if operation.kind == "mkdir":
            if closed and found is None and not _parent_held(cgroups, path):
                closed = False
            cgroups[path] = ObservedCgroup(
                exists=True, files={}, children=(), populated=False, subtree_control=()
            )
            _set_child(cgroups, path, present=True, touched=marked, edits=edits)
        elif operation.kind == "rmdir":
            # Looked for while `path` is still held (a closed table answers "none" for a path
            # it does not hold).
            for other in _descendants(cgroups, path, closed=closed):
                del cgroups[other]
                marked.add(other)
            if path == "":
                closed = False  # the root's children are not found by prefix: they stay
            cgroups.pop(path, None)
            _set_child(cgroups, path, present=False, touched=marked, edits=edits)
        elif found is None or not found.exists:
            continue
        elif operation.kind == "enable":
            enabled = set(found.subtree_control or ())
            enabled.update(token[1:] for token in operation.value.split() if token[:1] == "+")
            cgroups[path] = msgspec.structs.replace(found, subtree_control=tuple(sorted(enabled)))
        elif operation.kind == "kill":
            cgroups[path] = msgspec.structs.replace(found, populated=None)
        else:
            files = dict(found.files)
            files[operation.file] = operation.value
            cgroups[path] = msgspec.structs.replace(found, files=files)
    return ObservedTree(cgroups=_proven(cgroups, closed))


class ClosedCgroups(dict[str, ObservedCgroup]):
    """An `ObservedTree`'s table known to be closed under parents: every path but the root's
    has its parent as a key, so a path it does not hold has no descendants in it. The type is
    the proof (made by `closed_cgroups`, kept by `merge_observations` and `apply_operations`
    where their edits keep the property): `_descendants` of a new pod cgroup observed absent
    then needs no pass over every path. Equal to (and encoded as) the plain dict."""

    __slots__ = ()


def closed_cgroups(cgroups: Mapping[str, ObservedCgroup]) -> dict[str, ObservedCgroup]:
    """A copy of `cgroups`: a `ClosedCgroups` when every path but the root "" has its parent
    among them, else a plain dict. One pass (a full observation's, which reads every cgroup)."""
    table = ClosedCgroups(cgroups)
    parents = {path.rpartition("/")[0] for path in table if path}
    return table if parents.issubset(table) else dict(cgroups)


def _parent_held(cgroups: Mapping[str, ObservedCgroup], path: str) -> bool:
    """True if `path` is the root or its parent is a key of `cgroups`."""
    return path == "" or path.rpartition("/")[0] in cgroups


def _proven(cgroups: dict[str, ObservedCgroup], closed: bool) -> dict[str, ObservedCgroup]:
    """`cgroups`, a plain dict when the edits may have broken its closure (a rare table made
    by hand: a path added without its parent)."""
    if closed or type(cgroups) is not ClosedCgroups:
        return cgroups
    return dict(cgroups)


def _descendants(cgroups: Mapping[str, ObservedCgroup], path: str, *, closed: bool) -> list[str]:
    """The paths of `cgroups` that start with ``path + "/"``. Most calls find none (a new pod
    cgroup observed absent before its mkdir): a table `closed` under parents (as far as the
    caller's edits so far keep it so) that does not hold `path` has none; otherwise one search
    of the joined paths, in C, says so before a Python pass over every path looks for them (a
    path holding a newline can make the search find a false candidate, never miss one)."""
    if closed and path not in cgroups:
        return []
    prefix = f"{path}/"
    if f"\n{prefix}" not in "\n" + "\n".join(cgroups):
        return []
    return [other for other in cgroups if other.startswith(prefix)]


class SortedNames(tuple[str, ...]):
    """A listing known to be sorted without duplicates: the type is the proof. `_set_child`
    makes every listing it edits one, so a listing edited once (kubepods', by each admission's
    mkdir) is edited again by bisection, without a pass over its names to check their order or
    to look the name up. Equal to (and hashed as) the plain tuple of the same names; encodes
    as one."""

    __slots__ = ()


def _set_child(
    cgroups: dict[str, ObservedCgroup],
    path: str,
    *,
    present: bool,
    touched: set[str],
    edits: dict[str, ListingEdit] | None = None,
) -> None:
    parent = parent_path(path)
    if parent is None:
        return
    found = cgroups.get(parent)
    if found is None or found.children is None:
        return
    name = path.rpartition("/")[2]
    listing = found.children
    if type(listing) is SortedNames:
        at = bisect_left(listing, name)
        if (at < len(listing) and listing[at] == name) == present:
            return  # listed (or not) as it should be: the parent keeps its observation
        ordered = True
    else:
        if (name in listing) == present:
            # Listed (or not) as it should be: the parent keeps its observation (one scan in
            # C). Listings are sorted, without duplicates (`CgroupFS.list_children`; this keeps
            # them so), and are not checked again here: that is a pass over every pod of
            # kubepods.
            return
        # Checked once; the edited listing carries the proof (`SortedNames`).
        ordered = _strictly_ascending(listing)
        at = bisect_left(listing, name) if ordered else 0
    if ordered:
        # `name` put in or taken out by bisection and slicing, in C, without a sorted copy and
        # a set of every pod's name: slices concatenated, not a display of starred slices
        # (built through a list and copied twice more: ~2 us of kubepods' 500 names).
        if present:
            children = SortedNames(listing[:at] + (name,) + listing[at:])  # noqa: RUF005
        else:
            children = SortedNames(listing[:at] + listing[at + 1 :])
        if edits is not None:
            # Made from `listing` by this one name: what `one_edit` would find, recorded.
            edits[parent] = (listing, children, name, present)
    else:
        # Out of order or with duplicates (a listing made by hand): the sorted set of names.
        names = set(listing)
        if present:
            names.add(name)
        else:
            names.discard(name)
        children = SortedNames(sorted(names))
    if ordered or children != listing:  # an ordered edit changed the length: no comparison
        cgroups[parent] = msgspec.structs.replace(found, children=children)
        touched.add(parent)


def one_edit(old: tuple[T, ...] | None, new: tuple[T, ...]) -> tuple[T, bool] | None:
    """(name, True) if `new` is `old` with `name` put in at one place, (name, False) if with
    `name` taken out at one place; None otherwise (of any items: names, pods). Compared in C,
    by identity first (a listing edited by `merge_observations` or `apply_operations` shares
    the names of the one before)."""
    if old is None or abs(len(new) - len(old)) != 1:
        return None
    # The longest common prefix, by bisection on slices (halving: about two tuple copies and
    # comparisons in all, by identity first), not a Python step per name.
    at, end = 0, min(len(old), len(new))
    while at < end:
        middle = (at + end + 1) // 2
        if old[at:middle] == new[at:middle]:
            at = middle
        else:
            end = middle - 1
    if len(new) > len(old):
        return (new[at], True) if new[at + 1 :] == old[at:] else None
    return (old[at], False) if old[at + 1 :] == new[at:] else None


def _strictly_ascending(names: tuple[str, ...]) -> bool:
    """True if `names` is sorted without duplicates (compared in C)."""
    return all(map(lt, names, names[1:]))


def merge_observations(
    base: ObservedTree,
    fresh: Mapping[str, ObservedCgroup],
    touched: set[str] | None = None,
    *,
    take: bool = False,
) -> ObservedTree:
    """`base` with the cgroups in `fresh` replaced (a scoped observation over a cached tree).

    A fresh cgroup that was not listed keeps the base's children; a fresh cgroup that no longer
    exists drops its cached descendants; parents' children lists follow existence. `touched`,
    if given, gets every path whose observation this replaced or dropped (for a `TreeChange`).

    `take`: the caller hands `base` over (nothing reads it afterwards: the reconciler's picture
    after a round, `Reconciler.prepare`): its table is edited in place and becomes the result's,
    instead of a copy of every cgroup's entry (and the copy freed a few rounds later). `base`
    itself is then spent: its table is the result's.
    """
    closed = type(base.cgroups) is ClosedCgroups
    if take:
        cgroups = base.cgroups
    else:
        cgroups = ClosedCgroups(base.cgroups) if closed else dict(base.cgroups)
    marked = touched if touched is not None else set()
    for path, found in sorted(fresh.items()):
        # Sorted: a parent comes before its children, so it is held when they are checked.
        previous = cgroups.get(path)
        if not found.exists:
            for other in _descendants(cgroups, path, closed=closed):
                del cgroups[other]
                marked.add(other)
        elif found.children is None and previous is not None and previous.exists:
            found = msgspec.structs.replace(found, children=previous.children)
        if closed and previous is None and not _parent_held(cgroups, path):
            closed = False
        cgroups[path] = found
        marked.add(path)
        _set_child(cgroups, path, present=found.exists, touched=marked)
    return ObservedTree(cgroups=_proven(cgroups, closed))
