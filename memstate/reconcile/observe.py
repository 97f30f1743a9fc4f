"""Observing the live cgroup tree for the reconciler: what is there, read through `CgroupFS`.

A full observation reads every managed cgroup, lists every managed directory, reads the
protections of the children memstate does not manage and walks every pod cgroup no target
explains; a scoped one reads only the scoped paths and their ancestors over a cached picture
(see `memstate.reconcile.reconciler` for why); `observe_children` refreshes, before a scoped
round lowers a parent's protection, what that parent's children hold now. Read-only, synchronous,
never raises `HostError`: a failed call becomes a `ReadError` and the value is reported unknown,
never guessed.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import msgspec

from memstate.core.cgroup_paths import (
    ancestor_paths,
    is_valid_cgroup_name,
    parent_path,
    parse_cgroup_path,
)
from memstate.core.cgroup_values import CgroupValueError, parse_controller_list, parse_flat_keyed
from memstate.core.config import NodeConfig
from memstate.core.errors import HostError
from memstate.core.plan import (
    CGROUP_CONTROLLERS,
    CGROUP_EVENTS,
    PROTECTION_FILES,
    SUBTREE_CONTROL,
    ObservedCgroup,
    ObservedTree,
    closed_cgroups,
    join_path,
    merge_observations,
    naming_config,
)
from memstate.core.plan.containers import ContainerIndex
from memstate.core.targets import CgroupTarget, NodeTargets, TargetsChange
from memstate.host.cgroupfs import CgroupFS

# Deeper than any pod subtree a runtime creates (pod/container/sub-scope); bounds the walk.
MAX_REMOVAL_DEPTH = 8

# What a read or write meets when the cgroup itself was removed meanwhile: ENOENT when the file
# is opened after the removal, ENODEV from kernfs when it was opened before (the read or write on
# an open file of a removed cgroup). A read or a write beside the kubelet takes either as
# "gone" only once the cgroup is seen absent (a missing file is still a failure).
GONE_ERRNOS = frozenset({errno_module.ENOENT, errno_module.ENODEV})


@dataclass(frozen=True)
class ReadError:
    """An observation call that failed (anything but "not there")."""

    op: str
    path: str
    file: str
    errno: int
    message: str


class _Observer:
    """Reads the tree through a CgroupFS; counts calls; never raises HostError."""

    def __init__(
        self,
        fs: CgroupFS,
        targets: NodeTargets,
        config: NodeConfig,
        desired: Mapping[str, CgroupTarget] | None = None,
    ) -> None:
        self.fs = fs
        self.targets = targets
        self.config = config
        # path -> target of `targets` (given by a caller that keeps one: a `TargetIndex`'s),
        # built on first use otherwise.
        self._desired = desired
        self.reads = 0
        self.errors: list[ReadError] = []
        self.found: dict[str, ObservedCgroup] = {}

    @property
    def desired(self) -> Mapping[str, CgroupTarget]:
        if self._desired is None:
            self._desired = {t.path: t for t in self.targets.cgroups}
        return self._desired

    def _failed(self, op: str, path: str, file: str, exc: HostError) -> None:
        if exc.errno in GONE_ERRNOS and op != "exists" and self._vanished(path):
            # The cgroup itself went away during the round (beside the kubelet, its owner
            # removes pod and container cgroups whenever it likes): the value is unknown this
            # round and the next one sees the cgroup absent; not a failure worth a note.
            return
        self.errors.append(ReadError(op, path, file, exc.errno or 0, str(exc)))

    def _vanished(self, path: str) -> bool:
        self.reads += 1
        try:
            return not self.fs.exists(path)
        except HostError:
            return False

    def exists(self, path: str) -> bool | None:
        self.reads += 1
        try:
            return self.fs.exists(path)
        except HostError as exc:
            self._failed("exists", path, "", exc)
            return None

    def cgroup(
        self,
        path: str,
        files: Iterable[str],
        *,
        known_exists: bool | None,
        children: bool = True,
        subtree_control: bool = False,
        controllers: bool = False,
        populated: bool = False,
    ) -> ObservedCgroup:
        """Observe one cgroup. `known_exists` None asks the filesystem first."""
        exists = known_exists if known_exists is not None else self.exists(path)
        if exists is False:
            return ObservedCgroup(exists=False)
        wanted = tuple(files)
        if exists is None:
            # Whether it exists is unknown: everything about it is unknown, never guessed.
            return ObservedCgroup(exists=True, unreadable=wanted)
        values: dict[str, str] = {}
        unreadable: list[str] = []
        for file in wanted:
            text = self._read(path, file, quiet_enoent=True)
            if text is None:
                unreadable.append(file)
            else:
                values[file] = text
        names = self._list(path) if children else None
        enabled = self._controllers(path, SUBTREE_CONTROL) if subtree_control else None
        offered = self._controllers(path, CGROUP_CONTROLLERS) if controllers else None
        is_populated = self._populated(path) if populated else None
        return ObservedCgroup(
            exists=True,
            files=values,
            unreadable=tuple(unreadable),
            children=names,
            populated=is_populated,
            controllers=offered,
            subtree_control=enabled,
        )

    def _read(self, path: str, file: str, *, quiet_enoent: bool = False) -> str | None:
        self.reads += 1
        try:
            return self.fs.read(path, file)
        except HostError as exc:
            # ENOENT: the controller is not enabled above (the planner tells that apart from a
            # cgroup that vanished); not worth a note.
            if not (quiet_enoent and exc.errno == errno_module.ENOENT):
                self._failed("read", path, file, exc)
            return None

    def _list(self, path: str) -> tuple[str, ...] | None:
        self.reads += 1
        try:
            return tuple(self.fs.list_children(path))
        except HostError as exc:
            self._failed("list_children", path, "", exc)
            return None

    def _controllers(self, path: str, file: str) -> tuple[str, ...] | None:
        text = self._read(path, file)
        return None if text is None else parse_controller_list(text)

    def _populated(self, path: str) -> bool | None:
        text = self._read(path, CGROUP_EVENTS)
        if text is None:
            return None
        try:
            return parse_flat_keyed(text).get("populated", 0) == 1
        except CgroupValueError:
            return None

    # --- composite observations ------------------------------------------------------------

    def desired_cgroup(self, path: str, known_exists: bool | None, *, list_children: bool) -> None:
        """A managed cgroup: its files, controllers, children, and what its children hold."""
        target = self.desired[path]
        found = self.cgroup(
            path,
            target.files,
            known_exists=known_exists,
            children=list_children,
            subtree_control=bool(target.controllers),
            controllers=parent_path(path) is None,
        )
        self.found[path] = found
        if not found.exists or found.children is None:
            return
        protections = [f for f in PROTECTION_FILES if f in target.files]
        missing_files = False
        for name in found.children:
            child = join_path(path, name)
            if child in self.desired or not is_valid_cgroup_name(name):
                continue
            parsed = (
                parse_cgroup_path(child, self.config) if target.level in ("node", "qos") else None
            )
            if parsed is not None and parsed.level == "pod":
                self.removal_subtree(child, known_exists=True)
            elif protections:
                observed = self.cgroup(child, protections, known_exists=True, children=False)
                self.found[child] = observed
                missing_files = missing_files or bool(observed.unreadable)
        if missing_files and found.subtree_control is None:
            # A child without memory files: tells "not enabled here" from "unreadable".
            enabled = self._controllers(path, SUBTREE_CONTROL)
            self.found[path] = msgspec.structs.replace(found, subtree_control=enabled)

    def removal_subtree(self, path: str, *, known_exists: bool | None, depth: int = 0) -> None:
        """A pod cgroup no target explains, with everything below it (for leaf-first rmdir)."""
        found = self.cgroup(
            path,
            PROTECTION_FILES,
            known_exists=known_exists,
            subtree_control=True,
            populated=depth == 0,
        )
        self.found[path] = found
        if not found.exists or found.children is None or depth >= MAX_REMOVAL_DEPTH:
            return
        for name in found.children:
            if is_valid_cgroup_name(name):
                self.removal_subtree(join_path(path, name), known_exists=True, depth=depth + 1)

    def full(self) -> ObservedTree:
        """Everything under the managed tree (see the module docstring)."""
        for target in self.targets.cgroups:
            parent = parent_path(target.path)
            if parent is None:
                known: bool | None = None
            else:
                above = self.found.get(parent)
                if above is None or not above.exists:
                    self.found[target.path] = ObservedCgroup(exists=False)
                    continue
                name = target.path.rpartition("/")[2]
                known = (name in above.children) if above.children is not None else None
            self.desired_cgroup(target.path, known, list_children=True)
        # Closed under parents when every target's parent was found (what lets a later
        # scoped round skip looking for a new pod's descendants).
        return ObservedTree(cgroups=closed_cgroups(self.found))

    def scoped(
        self,
        base: ObservedTree,
        paths: Iterable[str],
        touched: set[str] | None = None,
        *,
        take: bool = False,
    ) -> ObservedTree:
        """Fresh reads of `paths` and their ancestors over the cached `base` (`touched`, `take`:
        see `merge_observations`)."""
        scoped = sorted(set(paths))
        ancestors = sorted(
            {a for path in scoped for a in ancestor_paths(path) if a in self.desired} - set(scoped),
            key=lambda p: (p.count("/"), p),
        )
        for path in ancestors:
            # The ancestors' children come from the cache: listing kubepods would be O(pods).
            self.desired_cgroup(path, None, list_children=False)
        for path in scoped:
            if path in self.desired:
                self.desired_cgroup(path, None, list_children=True)
            else:
                self.removal_subtree(path, known_exists=None)
        return merge_observations(base, self.found, touched, take=take)


def observe_tree(
    fs: CgroupFS,
    targets: NodeTargets,
    *,
    scope: Iterable[str] | None = None,
    base: ObservedTree | None = None,
    desired: Mapping[str, CgroupTarget] | None = None,
    touched: set[str] | None = None,
    take_base: bool = False,
) -> tuple[ObservedTree, list[ReadError], int]:
    """Observe the tree for `targets`: (tree, read errors, number of calls).

    With `scope` and a cached `base`, only the scoped paths and their ancestors are read (see
    the module docstring); otherwise everything. Read-only: never writes. `desired`: path ->
    target of `targets`, when the caller keeps one (else built here). `touched`: a scoped
    observation adds the paths whose observation it replaced in `base` (`merge_observations`);
    a full one builds a new tree and adds nothing. `take_base`: a scoped observation may take
    `base`'s table over (`merge_observations`' `take`: nothing reads `base` afterwards).
    """
    observer = _Observer(fs, targets, naming_config(targets), desired)
    # A tree that can hold still for the reads does (the directory-backed simulator: one
    # catch-up with other writers per observation, not one per read).
    snapshot = getattr(fs, "snapshot", None)
    with snapshot() if callable(snapshot) else contextlib.nullcontext():
        if scope is None or base is None:
            tree = observer.full()
        else:
            tree = observer.scoped(base, scope, touched, take=take_base)
    return tree, observer.errors, observer.reads


def observe_children(
    fs: CgroupFS,
    targets: NodeTargets,
    parents: Mapping[str, Iterable[str]],
    *,
    base: ObservedTree,
    observed: Iterable[str] = (),
    touched: set[str] | None = None,
) -> tuple[ObservedTree, list[ReadError], int]:
    """Fresh values of `files` in every child of each parent (`parents` maps a parent to the
    protection files it is about to lower), merged into `base`: (tree, read errors, calls).

    Each parent is listed (a child someone else created counts as much as one whose value
    changed); every listed child not in `observed` (read this round already) has those files
    read, its other cached values kept; a cached child no longer listed is recorded absent. If
    the listing fails, the parent's files are recorded unreadable, so nothing lowers them this
    round. Costs one listing per parent and one read per child and file. `touched`: see
    `merge_observations`.
    """
    observer = _Observer(fs, targets, naming_config(targets))
    skip = set(observed)
    for parent, wanted in sorted(parents.items()):
        files = tuple(sorted(set(wanted)))
        found = base.get(parent)
        if found is None or not found.exists:
            continue
        names = observer._list(parent)
        if names is None:
            unreadable = tuple(sorted({*found.unreadable, *files}))
            observer.found[parent] = msgspec.structs.replace(found, unreadable=unreadable)
            continue
        observer.found[parent] = msgspec.structs.replace(found, children=names)
        for name in names:
            child = join_path(parent, name)
            if child in skip or not is_valid_cgroup_name(name):
                continue
            fresh = observer.cgroup(child, files, known_exists=True, children=False)
            cached = base.get(child)
            if cached is not None and cached.exists:
                kept = {f: v for f, v in cached.files.items() if f not in files}
                fresh = msgspec.structs.replace(
                    cached,
                    files={**kept, **fresh.files},
                    unreadable=tuple(
                        sorted(
                            {f for f in cached.unreadable if f not in files} | {*fresh.unreadable}
                        )
                    ),
                )
            observer.found[child] = fresh
        for name in found.children or ():
            child = join_path(parent, name)
            if name not in names and child not in skip:
                observer.found[child] = ObservedCgroup(exists=False)
    return merge_observations(base, observer.found, touched), observer.errors, observer.reads


def observe_containers(
    fs: CgroupFS,
    targets: NodeTargets,
    paths: Iterable[str],
    *,
    base: ObservedTree,
    desired: Mapping[str, CgroupTarget] | None = None,
    touched: set[str] | None = None,
) -> tuple[ObservedTree, list[ReadError], int]:
    """Read the managed files of the container cgroups `paths` (targets of `targets`, listed by
    their pod cgroup in `base`) and their pod cgroups' `cgroup.subtree_control` (the runtime
    enables the memory controller there; without it the files do not exist), and merge them
    into `base`: (tree, read errors, calls). `desired`: path -> target of `targets`, when the
    caller keeps one. `touched`: see `merge_observations`."""
    observer = _Observer(fs, targets, naming_config(targets), desired)
    for pod in sorted({path.rpartition("/")[0] for path in paths}):
        found = base.get(pod)
        if found is not None and found.exists:
            enabled = observer._controllers(pod, SUBTREE_CONTROL)
            observer.found[pod] = msgspec.structs.replace(found, subtree_control=enabled)
    for path in paths:
        # Listed, with what its own children hold (crun may nest one): the planner covers them.
        observer.desired_cgroup(path, None, list_children=True)
    return merge_observations(base, observer.found, touched), observer.errors, observer.reads


class _Overlay(Mapping[str, CgroupTarget]):
    """`extra` over `base`, read-only, without copying `base`."""

    def __init__(self, extra: dict[str, CgroupTarget], base: Mapping[str, CgroupTarget]) -> None:
        self._extra = extra
        self._base = base

    def __getitem__(self, path: str) -> CgroupTarget:
        found = self._extra.get(path)
        return found if found is not None else self._base[path]

    def __contains__(self, path: object) -> bool:
        return path in self._extra or path in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._extra
        yield from (path for path in self._base if path not in self._extra)

    def __len__(self) -> int:
        return len(self._extra) + sum(1 for path in self._base if path not in self._extra)


def add_container_cgroups(
    fs: CgroupFS,
    targets: NodeTargets,
    tree: ObservedTree,
    container_ids: Mapping[str, Mapping[str, str]] | None = None,
    *,
    pods: Iterable[str] | None = None,
    index: ContainerIndex | None = None,
) -> tuple[NodeTargets, ObservedTree, list[str], list[ReadError], int]:
    """After `observe_tree`: the container cgroups listed under the pod cgroups of `tree` (only
    under `pods`, when given) read and added to the targets. Returns (targets, tree, the
    container paths read, read errors, calls). Read-only."""
    complete, tree, wanted, errors, reads, _index = add_container_cgroups_carried(
        fs, targets, tree, container_ids, pods=pods, index=index or ContainerIndex()
    )
    return complete, tree, wanted, errors, reads


def add_container_cgroups_carried(
    fs: CgroupFS,
    targets: NodeTargets,
    tree: ObservedTree,
    container_ids: Mapping[str, Mapping[str, str]] | None,
    *,
    pods: Iterable[str] | None,
    index: ContainerIndex,
    desired: Mapping[str, CgroupTarget] | None = None,
    change: TargetsChange | None = None,
    tree_paths: Iterable[str] | None = None,
    touched: set[str] | None = None,
) -> tuple[NodeTargets, ObservedTree, list[str], list[ReadError], int, ContainerIndex]:
    """`add_container_cgroups` with the container index carried from the previous round (the
    reconciler's): the index of the returned targets and tree comes last. `desired`: path ->
    target of `targets`, when the caller keeps one. `change`: the targets' record against the
    index's (`TargetsChange`), if known. `tree_paths`: the paths whose observation may differ
    between the index's tree and `tree` (`touched_since`), if known. `touched` gets the paths
    whose observation the container reads replaced in `tree` (`merge_observations`)."""
    index = index.updated(targets, tree, container_ids, change, tree_paths)
    candidates = index.listed(pods)
    wanted = [t.path for t in candidates]
    errors: list[ReadError] = []
    reads = 0
    if wanted:
        listed = msgspec.structs.replace(targets, cgroups=(*targets.cgroups, *candidates))
        known = None if desired is None else _Overlay({t.path: t for t in candidates}, desired)
        merged: set[str] = set()
        tree, errors, reads = observe_containers(
            fs, listed, wanted, base=tree, desired=known, touched=merged
        )
        index = index.updated(targets, tree, container_ids, tree_paths=merged)
        if touched is not None:
            touched.update(merged)
    return index.complete, tree, wanted, errors, reads, index
