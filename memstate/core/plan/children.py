"""The observed children's protections summed per cgroup, carried from one tree to the next.

A scoped reconcile round plans a few pods, but their parents' protections (`memory.min`,
`memory.low` of kubepods and the QoS cgroups) must still cover *every* child: the planner sums
what the children it leaves alone hold now. Summed afresh each round, that is a loop over every
pod. `ChildSums` holds those sums for one `ObservedTree`; `updated(tree)` derives the sums of the
next tree from the cgroups whose observation changed (compared by identity: the reconciler's
trees share every unchanged `ObservedCgroup` with the previous one), so a round costs in
proportion to what it observed, not to the number of pods. The planner
(memstate.core.plan.planner) subtracts the children it plans, removes or cannot read from the
total and adds their own contributions; `plan_operations` gives the same plan with or without.

Handed on, not copied: `updated` edits the tables in place for the cgroups that changed and
returns a new value over them; the value it was called on is spent: its `check` (which the
planner calls before any query) and `updated` raise `InvariantViolation`, so no plan is made
from answers that changed under it. A plan made with a value is finished before the reconciler
updates it (nothing the planner returns holds the sums). The queries themselves do not check:
a full round asks them for every planned child. Copying the tables instead cost a pass in C
over every pod per round (a dict of every cgroup's protections, kubepods' sets of every pod's
name), what made a one-pod round grow with the node. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from itertools import compress
from operator import is_not, ne

from memstate.core.cgroup_paths import is_valid_cgroup_name
from memstate.core.errors import InvariantViolation
from memstate.core.plan.model import (
    ObservedCgroup,
    ObservedTree,
    TreeChange,
    one_edit,
    recorded_edit,
)
from memstate.core.plan.values import PROTECTION_FILES, ValueModel, kernel_default, value_model

# One child's protections as its parent's sums count them, in PROTECTION_FILES order; None for a
# file whose read failed (the planner decides what an unreadable value means).
Protections = tuple[int | None, ...]
_ZERO_SUMS = (0,) * len(PROTECTION_FILES)
_NO_NAMES: frozenset[str] = frozenset()
_EMPTY_TREE = ObservedTree(cgroups={})


class ChildSums:
    """For one `ObservedTree`: per existing, listed cgroup, its listed children's protections
    summed (see the module docstring). Build with `ChildSums.of(tree, page_size_bytes)` or
    `previous.updated(tree)`."""

    __slots__ = (
        "_entries",
        "_invalid",
        "_listed",
        "_totals",
        "_unreadable",
        "_unusable",
        "_values",
        "page_size_bytes",
        "spent",
        "tree",
    )

    def __init__(
        self,
        *,
        tree: ObservedTree,
        page_size_bytes: int,
        values: dict[str, Protections],
        listed: dict[str, set[str]],
        invalid: dict[str, frozenset[str]],
        entries: dict[str, set[str]],
        totals: dict[str, tuple[int, ...]],
        unreadable: set[str],
        unusable: set[str],
    ) -> None:
        self.tree = tree
        # True once `updated` handed the tables on: its answers are no longer this tree's.
        self.spent = False
        self.page_size_bytes = page_size_bytes
        self._values = values  # path -> its protections, for every existing cgroup
        self._listed = listed  # path -> the names it lists, for every existing listed cgroup
        self._invalid = invalid  # path -> the names it lists that memstate cannot handle
        self._entries = (
            entries  # parent path -> the names of its children the tree holds as existing
        )
        # listed path -> Σ of its valid listed children's protections, held only for the paths
        # whose sum moved since they were listed (the others are all zero: a pod's, mostly), so
        # the table is a few parents, not one entry per listed cgroup copied every round.
        self._totals = totals
        self._unreadable = unreadable  # existing cgroups with an unreadable protection
        self._unusable = unusable  # listed paths with an existing child they do not list

    @classmethod
    def of(cls, tree: ObservedTree, page_size_bytes: int) -> ChildSums:
        """The sums of `tree`, computed from scratch."""
        empty = cls(
            tree=_EMPTY_TREE,
            page_size_bytes=page_size_bytes,
            values={},
            listed={},
            invalid={},
            entries={},
            totals={},
            unreadable=set(),
            unusable=set(),
        )
        return empty.updated(tree)

    # --- queries (the planner's) ---------------------------------------------------------------

    def usable(self, path: str) -> bool:
        """True if `path` exists, is listed, and every child the tree holds as existing is
        listed: then its total counts every child the planner could find (a desired child
        absent from the listing is absent from the tree, or held as not existing)."""
        return path in self._listed and path not in self._unusable

    def existing_children(self, path: str) -> Set[str]:
        """The names of `path`'s children the tree holds as existing, listed or not (a view
        valid until this value is updated)."""
        return self._entries.get(path, _NO_NAMES)

    def total(self, path: str, index: int) -> int:
        """Σ of `path`'s valid listed children's protection `PROTECTION_FILES[index]` (an
        unreadable one counts 0)."""
        return self._totals.get(path, _ZERO_SUMS)[index]

    def counted(self, parent: str, name: str, index: int) -> int:
        """What child `name` of `parent` adds to `total(parent, index)`."""
        # `_counted(...)[index]` without building the tuple: a full round asks for every
        # planned child of every cgroup, twice (a pod's container cgroups included).
        found = _listed_values(self._values, self._listed, self._invalid, parent, name)
        value = None if found is None else found[index]
        return 0 if value is None else value

    def unreadable_children(self, parent: str, index: int) -> list[str]:
        """The valid listed children of `parent` whose protection `index` could not be read
        (paths, in no particular order)."""
        if not self._unreadable:
            return []  # every protection read (the usual tree): no pass
        listed = self._listed.get(parent, _NO_NAMES)
        invalid = self._invalid.get(parent, _NO_NAMES)
        found: list[str] = []
        for path in self._unreadable:
            head, _, name = path.rpartition("/")
            if (
                path
                and head == parent
                and name in listed
                and name not in invalid
                and self._values[path][index] is None
            ):
                found.append(path)
        return found

    def invalid_names(self, path: str) -> frozenset[str]:
        """The names `path` lists that are not valid cgroup names."""
        return self._invalid.get(path, frozenset())

    # --- update ----------------------------------------------------------------------------

    def updated(
        self,
        tree: ObservedTree,
        paths: Iterable[str] | None = None,
        changes: Sequence[TreeChange] = (),
    ) -> ChildSums:
        """The sums of `tree`, from this value's by the cgroups whose observation is not the
        same object in both trees (all of them when nothing is shared). `paths`: every path
        whose observation may differ between this value's tree and `tree` (composed from
        `TreeChange` records, `touched_since`), when known: only those are compared.
        `changes`: records whose listing edits (`recorded_edit`) say how a listing changed
        without comparing it name by name.

        The tables are handed on, edited in place for the cgroups that changed (no copy of
        every cgroup's entry, nor of kubepods' sets of every pod's name): this value is spent
        (its `check` and `updated` refuse, `spent`), unless `tree` is its own."""
        if tree is self.tree:
            return self
        self._spend()
        old, new = self.tree.cgroups, tree.cgroups
        if paths is not None:
            # Work proportional to the change: the others are shared by both trees.
            changed = []
            for path in paths:
                was, now = old.get(path), new.get(path)
                if was is not now and was != now:
                    changed.append(path)
        else:
            # Compared in C (no Python-level loop over every cgroup): the paths whose
            # observation is not the same object, then of those the ones that differ (a full
            # round observes every cgroup afresh, mostly equal to what it was).
            others = list(compress(new, map(is_not, map(old.get, new), new.values())))
            changed = list(
                compress(others, map(ne, map(old.get, others), map(new.__getitem__, others)))
            )
            added = sum(1 for path in changed if path not in old)
            if len(new) - added != len(old):  # some were dropped (else every old path is kept)
                changed.extend(old.keys() - new.keys())
        values, listed, invalid = self._values, self._listed, self._invalid
        entries, totals = self._entries, self._totals
        unreadable, unusable = self._unreadable, self._unusable
        if not changed:
            return self._handed(tree)
        model = value_model(self.page_size_bytes)
        defaults = _defaults(model)
        # What the edited entries held before (the old answers the contributions are taken
        # out by): path -> its old protections / listed names / invalid names (None: none),
        # or, for a listing edited in place by one name, (that name, put in).
        prior = _Before(values, listed, invalid)
        # (parent, name) pairs whose contribution may differ: their old one is taken out, their
        # new one put in (everything else adds the same to the same total).
        pairs: set[tuple[str, str]] = set()
        recheck: set[str] = set()  # paths whose listing or existing children changed
        # listed path -> the names its listing gained or lost (listed in both trees)
        listing_changes: dict[str, Set[str]] = {}
        # parent -> (children now existing, children no longer existing)
        edits: dict[str, tuple[list[str], list[str]]] = {}
        for path in changed:
            found = new.get(path)
            exists = found is not None and found.exists
            prior.values.setdefault(path, values.get(path))
            if exists and found is not None:
                protections = _protections(found, model, defaults)
                values[path] = protections
                if None in protections:
                    unreadable.add(path)
                else:
                    unreadable.discard(path)
            else:
                values.pop(path, None)
                unreadable.discard(path)
            if path:
                parent, _, name = path.rpartition("/")
                pairs.add((parent, name))
                if (name in entries.get(parent, ())) != exists:
                    edits.setdefault(parent, ([], []))[0 if exists else 1].append(name)
            before = listed.get(path)  # each changed path comes once: still the old set
            previous = old.get(path)
            listing = found.children if exists and found is not None else None
            if (
                listing is not None
                and before is not None
                and previous is not None
                and listing == previous.children
            ):
                continue  # the same listing (compared as tuples, without a set of every name)
            edit = (
                recorded_edit(changes, path, previous.children, listing)
                or one_edit(previous.children, listing)
                if listing is not None
                and before is not None
                and previous is not None
                and previous.children is not None
                else None
            )
            if edit is not None and before is not None and listing is not None:
                # One name put in or taken out (an admission's pod under kubepods): the set
                # follows by that name, in place, without a set of every listed name.
                name, put = edit
                differ: Set[str]
                if put:
                    differ = _NO_NAMES if name in before else frozenset((name,))
                else:
                    gone_name = name in before and name not in listing
                    differ = frozenset((name,)) if gone_name else _NO_NAMES
                if not differ:
                    continue
                listing_changes[path] = differ
                prior.listed[path] = (name, put)
                prior.invalid.setdefault(path, invalid.get(path))
                if put:
                    before.add(name)
                else:
                    before.discard(name)
                after: set[str] | None = before
            else:
                after = None if listing is None else set(listing)
                differ = (before or _NO_NAMES) ^ (after or _NO_NAMES)  # the names added or dropped
                if before is None and after is None:
                    continue
                if before is not None and after is not None:
                    if not differ:
                        continue
                    listing_changes[path] = differ
                prior.listed[path] = before  # replaced by a new set: the old one is left as it was
                prior.invalid.setdefault(path, invalid.get(path))
            recheck.add(path)
            pairs.update((path, name) for name in differ)
            if after is None:
                listed.pop(path, None)
                invalid.pop(path, None)
                totals.pop(path, None)
            else:
                listed[path] = after
                bad = {name for name in differ & after if not is_valid_cgroup_name(name)}
                bad.update(invalid.get(path, _NO_NAMES) & after)
                if bad:
                    invalid[path] = frozenset(bad)
                else:
                    invalid.pop(path, None)
        for parent, (now_existing, gone) in edits.items():
            names = entries.get(parent)
            if names is None:
                names = entries[parent] = set()
            names.update(now_existing)
            names.difference_update(gone)
            recheck.add(parent)
        for path in recheck:
            listing_now = listed.get(path)
            if listing_now is None:
                unusable.discard(path)
                continue
            entries_now = entries.get(path, _NO_NAMES)
            delta = listing_changes.get(path)
            if delta is None and path not in prior.listed:
                delta = _NO_NAMES  # the same listing; only which children exist changed
            if delta is not None and prior.had_listing(path) and path not in unusable:
                # Every child that existed was listed (`usable` before: `unusable` is edited
                # for this path only, below): only the children that exist now and did not,
                # and the names the listing lost, can make that untrue (no pass over every
                # listed name).
                appeared = edits.get(path, ([], []))[0]
                fine = all(map(listing_now.__contains__, appeared)) and entries_now.isdisjoint(
                    delta - listing_now
                )
            else:
                fine = entries_now <= listing_now
            if fine:
                unusable.discard(path)
            else:
                unusable.add(path)
        for parent, name in pairs:
            if parent not in listed:
                continue
            taken = prior.counted(parent, name)
            given = _counted(values, listed, invalid, parent, name)
            if taken != given:
                sums = totals.get(parent, _ZERO_SUMS)
                totals[parent] = tuple(
                    s - t + g for s, t, g in zip(sums, taken, given, strict=True)
                )
        return self._handed(tree)

    def _spend(self) -> None:
        """Refuse every later use of this value: its tables are handed on to the next."""
        if self.spent:
            _refuse()
        self.spent = True

    def _handed(self, tree: ObservedTree) -> ChildSums:
        """A new value over this (spent) value's tables, for `tree`."""
        return ChildSums(
            tree=tree,
            page_size_bytes=self.page_size_bytes,
            values=self._values,
            listed=self._listed,
            invalid=self._invalid,
            entries=self._entries,
            totals=self._totals,
            unreadable=self._unreadable,
            unusable=self._unusable,
        )

    def check(self, tree: ObservedTree, page_size_bytes: int) -> None:
        """Refuse (InvariantViolation) sums made for another tree or page size, or spent."""
        if self.spent:
            _refuse()
        if tree is not self.tree or page_size_bytes != self.page_size_bytes:
            raise InvariantViolation("child sums given for another observed tree or page size")


def _refuse() -> None:
    raise InvariantViolation("child sums used after they were updated (spent: handed on)")


class _Before:
    """What `ChildSums.updated`'s tables held before it edited them, for the contributions it
    takes out: the old entry of each edited path is noted before its first edit (a listed set
    edited in place by one name: that name and whether it was put in); every other path's
    entry is the table's own."""

    __slots__ = ("_invalid_now", "_listed_now", "_values_now", "invalid", "listed", "values")

    def __init__(
        self,
        values: dict[str, Protections],
        listed: dict[str, set[str]],
        invalid: dict[str, frozenset[str]],
    ) -> None:
        self._values_now, self._listed_now, self._invalid_now = values, listed, invalid
        self.values: dict[str, Protections | None] = {}
        self.listed: dict[str, set[str] | tuple[str, bool] | None] = {}
        self.invalid: dict[str, frozenset[str] | None] = {}

    def had_listing(self, path: str) -> bool:
        """True if `path` was listed."""
        if path not in self.listed:
            return path in self._listed_now
        return self.listed[path] is not None

    def _was_listed(self, parent: str, name: str) -> bool:
        if parent not in self.listed:
            now = self._listed_now.get(parent)
            return now is not None and name in now
        before = self.listed[parent]
        if before is None:
            return False
        if isinstance(before, tuple):
            edited, put = before
            if name == edited:
                return not put  # put in: it was not listed; taken out: it was
            return name in self._listed_now[parent]
        return name in before

    def counted(self, parent: str, name: str) -> tuple[int, ...]:
        """What child `name` of `parent` added to its total before (`_counted`'s answer on
        the tables as they were)."""
        if not self._was_listed(parent, name):
            return _ZERO_SUMS
        bad = self.invalid[parent] if parent in self.invalid else self._invalid_now.get(parent)
        if bad is not None and name in bad:
            return _ZERO_SUMS
        child = _join(parent, name)
        found = self.values[child] if child in self.values else self._values_now.get(child)
        if found is None:
            return _ZERO_SUMS
        return tuple(0 if value is None else value for value in found)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _defaults(model: ValueModel) -> tuple[int, ...]:
    """Each protection file's value in a cgroup that does not show it (the kernel default)."""
    result: list[int] = []
    for file in PROTECTION_FILES:
        default = kernel_default(file)
        normalised = None if default is None else model.normalise(file, default)
        result.append(0 if normalised is None else model.number(normalised))
    return tuple(result)


def _protections(found: ObservedCgroup, model: ValueModel, defaults: Iterable[int]) -> Protections:
    """An existing cgroup's protections as its parent's sums count them."""
    result: list[int | None] = []
    for file, default in zip(PROTECTION_FILES, defaults, strict=True):
        if file in found.unreadable:
            result.append(None)
            continue
        text = found.files.get(file)
        normalised = None if text is None else model.normalise(file, text)
        result.append(default if normalised is None else model.number(normalised))
    return tuple(result)


def _listed_values(
    values: Mapping[str, Protections],
    listed: Mapping[str, Set[str]],
    invalid: Mapping[str, frozenset[str]],
    parent: str,
    name: str,
) -> Protections | None:
    """Child `name`'s protections if its parent's total counts it (a valid listed name), else
    None."""
    if name not in listed.get(parent, ()) or name in invalid.get(parent, ()):
        return None
    return values.get(_join(parent, name))


def _counted(
    values: Mapping[str, Protections],
    listed: Mapping[str, Set[str]],
    invalid: Mapping[str, frozenset[str]],
    parent: str,
    name: str,
) -> tuple[int, ...]:
    found = _listed_values(values, listed, invalid, parent, name)
    if found is None:
        return _ZERO_SUMS
    return tuple(0 if value is None else value for value in found)
