"""The reconcile planner: desired targets × observed tree → an ordered, dependency-tagged plan.

Theory of operation
-------------------
The reconciler observes the live cgroup tree (memstate.reconciler), hands the result to
`plan_operations` as an `ObservedTree`, and executes the returned operations in order. Planning is
pure: the same targets and observations always give the same plan, so the ordering rules below can
be tested exhaustively without a kernel, and `memstate plan` prints exactly what the daemon would
do.

**Fewest writes, compared as the kernel prints.** A file is written only when its value differs
from what observation found, and both sides are compared after normalising them the way the kernel
would read them back (memstate.core.cgroup_values): ``1000000000`` and ``999997440`` are equal with
4 KiB pages, ``9223372036854775807`` is ``max``, ``0,1`` is ``0-1``, and 6.18's never-written
hugetlb limit 9223372036854771712 is ``max``. Without this every resync would rewrite page-rounded
values forever. A fresh cgroup is assumed to hold the kernel defaults (`KERNEL_DEFAULTS`), so
creating a pod writes only the files whose target differs from the default.

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

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import msgspec

from memstate.core.cgroup_paths import (
    NODE_COMPONENT,
    QOS_COMPONENTS,
    SLICE_SUFFIX,
    ancestor_paths,
    node_path,
    parent_path,
    parse_cgroup_path,
    qos_path,
)
from memstate.core.cgroup_values import (
    CONTROLLER_ORDER,
    CgroupValueError,
    format_controller_list,
    kernel_strip,
    normalise_cpuset_value,
    normalise_hugetlb_value,
    normalise_memory_value,
    page_counter_max,
    parse_bitmap_list,
    parse_hugetlb_size_name,
)
from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.targets import MEMORY_LOW, MEMORY_MIN, CgroupTarget, NodeTargets

Phase = Literal["create", "raise", "remove", "lower"]
OperationKind = Literal["mkdir", "enable", "write", "kill", "rmdir"]
FileKind = Literal["protection", "limit", "cpuset", "other"]
RemovalKind = Literal["retired", "orphan"]
RemovalAction = Literal["remove", "kill", "wait", "keep"]
PodRemoval = Literal["wait", "kill"]

PHASES: tuple[Phase, ...] = ("create", "raise", "remove", "lower")
PROTECTION_FILES = (MEMORY_MIN, MEMORY_LOW)
SUBTREE_CONTROL = "cgroup.subtree_control"
CGROUP_KILL = "cgroup.kill"
CGROUP_EVENTS = "cgroup.events"
CGROUP_CONTROLLERS = "cgroup.controllers"
# What to write to clear a cpuset: the kernel strips it to "", which means "empty". Equal to
# memstate.host.cgroupfs.EMPTY_VALUE (the core cannot import the host layer; a test pins it).
EMPTY_WRITE = "\n"
ZERO = "0"
UNLIMITED = "max"
DEFAULT_CPUSET_BITS = 8192

# What a freshly created cgroup reads (memory-qos.md §7.1, real-kernel-vm.md defaults table).
# hugetlb.<size>.max and .rsvd.max default to "max" (6.18 prints a number that normalises to it).
KERNEL_DEFAULTS: dict[str, str] = {
    "memory.min": ZERO,
    "memory.low": ZERO,
    "memory.high": UNLIMITED,
    "memory.max": UNLIMITED,
    "memory.swap.max": UNLIMITED,
    "memory.oom.group": ZERO,
    "cpuset.cpus": "",
    "cpuset.mems": "",
}
_LIMIT_FILES = frozenset({"memory.high", "memory.max", "memory.swap.max"})
# Kinds whose parent/child order is a correctness condition, so a write *requires* the writes
# it must follow: protections (the covering invariant) and cpusets (EBUSY on kernels < 5.17).
# Limits are only ordered (grow parent-first, shrink child-first); the kernel accepts a child
# limit above its parent's, so one failing pod never holds kubepods' memory.max back.
_ORDER_BOUND = frozenset({"protection", "cpuset"})
_NORMALISE_CACHE_ENTRIES = 65536
_CPUSET_FILES = frozenset({"cpuset.cpus", "cpuset.mems"})
_HUGETLB_LIMIT_RE = re.compile(r"hugetlb\.([0-9]+[KMG]B)\.(?:max|rsvd\.max)")
# The directory names the host adapter accepts (memstate.host.cgroupfs); anything else found in
# the live tree is left alone, never turned into a path.
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9_@:+=,][A-Za-z0-9_@:+=,.-]*")
_MAX_NAME_LENGTH = 255


# --- values ---------------------------------------------------------------------------------------


class ObservedCgroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What observation found at one cgroup path.

    `files` holds the raw text read (newline included is fine) of the files that were read; a
    file absent from it is assumed to hold its kernel default. `unreadable` names files whose
    read failed: their value is *unknown* — unless the parent is known not to enable their
    controller, in which case they simply do not exist yet. Unknown values are never guessed:
    the planner writes neither them nor anything whose safety depends on them this round.
    `children` is None when the directory was not (or could not be) listed, `populated` None
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

    A desired path missing from `cgroups` is treated as absent (it will be created).
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
    is unknown are left out). `blocked` lists ``path/file`` entries that cannot be managed
    (their controller is not available), `unknown` those left alone this round because a value
    they depend on could not be read.
    """

    operations: tuple[Operation, ...]
    removals: tuple[Removal, ...] = ()
    final_values: dict[str, dict[str, str]] = {}
    blocked: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

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


def file_kind(file: str) -> FileKind:
    """How a managed file is ordered: protection, limit, cpuset or other."""
    if file in PROTECTION_FILES:
        return "protection"
    if file in _LIMIT_FILES or _HUGETLB_LIMIT_RE.fullmatch(file):
        return "limit"
    if file in _CPUSET_FILES:
        return "cpuset"
    return "other"


def file_controller(file: str) -> str | None:
    """The controller providing `file` (``memory.max`` → ``memory``); None for core files."""
    prefix = file.split(".", 1)[0]
    return prefix if prefix in CONTROLLER_ORDER else None


def kernel_default(file: str) -> str | None:
    """What `file` reads in a fresh cgroup, or None when not known."""
    if _HUGETLB_LIMIT_RE.fullmatch(file):
        return UNLIMITED
    return KERNEL_DEFAULTS.get(file)


def is_safe_name(name: str) -> bool:
    """True if a directory name found in the live tree may become part of a path."""
    return (
        bool(_SAFE_NAME_RE.fullmatch(name))
        and len(name) <= _MAX_NAME_LENGTH
        and name not in (".", "..")
    )


def join_path(parent: str, name: str) -> str:
    """``join_path("", "a") == "a"``, ``join_path("a", "b") == "a/b"``."""
    return f"{parent}/{name}" if parent else name


class ValueModel:
    """Kernel-normalised comparison and arithmetic for one page size (see the module doc)."""

    def __init__(self, page_size_bytes: int) -> None:
        self.page_size_bytes = page_size_bytes
        # What "max" means in bytes: PAGE_COUNTER_MAX pages. Sums are clamped to it.
        self.unlimited_bytes = page_counter_max(page_size_bytes) * page_size_bytes
        # Planning 500 pods normalises the same few values thousands of times.
        self._normalised: dict[tuple[str, str], str | None] = {}

    def normalise(self, file: str, text: str) -> str | None:
        """What `file` reads back after writing `text`; None when the kernel would refuse it."""
        key = (file, text)
        if key not in self._normalised:
            if len(self._normalised) > _NORMALISE_CACHE_ENTRIES:
                self._normalised.clear()
            self._normalised[key] = self._normalise(file, text)
        return self._normalised[key]

    def _normalise(self, file: str, text: str) -> str | None:
        try:
            kind = file_kind(file)
            if kind == "protection" or file in _LIMIT_FILES:
                return normalise_memory_value(text, page_size_bytes=self.page_size_bytes)
            hugetlb = _HUGETLB_LIMIT_RE.fullmatch(file)
            if hugetlb is not None:
                return normalise_hugetlb_value(
                    text,
                    huge_page_size_bytes=parse_hugetlb_size_name(hugetlb.group(1)),
                    page_size_bytes=self.page_size_bytes,
                )
            if kind == "cpuset":
                return normalise_cpuset_value(text, nbits=DEFAULT_CPUSET_BITS)
            return kernel_strip(text)
        except (CgroupValueError, ValueError):
            return None

    def equal(self, file: str, desired: str, observed: str) -> bool:
        """True when writing `desired` would leave `file` reading like `observed` does."""
        wanted = self.normalise(file, desired)
        return wanted is not None and wanted == self.normalise(file, observed)

    def number(self, normalised: str) -> int:
        """A normalised byte value as an int ("max" → `unlimited_bytes`)."""
        return self.unlimited_bytes if normalised == UNLIMITED else int(normalised)

    def render(self, value_bytes: int) -> str:
        """The text to write for a byte count (saturating at "max")."""
        return UNLIMITED if value_bytes >= self.unlimited_bytes else str(value_bytes)

    def clamp(self, value_bytes: int) -> int:
        return min(value_bytes, self.unlimited_bytes)


def _cpuset_ids(normalised: str) -> frozenset[int]:
    return parse_bitmap_list(normalised, nbits=DEFAULT_CPUSET_BITS) if normalised else frozenset()


# --- naming ---------------------------------------------------------------------------------------


def naming_config(targets: NodeTargets) -> NodeConfig:
    """The NodeConfig naming fields (driver, cgroupRoot) that produced `targets`' paths.

    NodeTargets does not carry its config; the reconciler needs the naming to recognise pod
    cgroups (`parse_cgroup_path`). The driver and root are read off the node cgroup's path and
    checked by rendering every level back.
    """
    nodes = [c for c in targets.cgroups if c.level == "node"]
    if len(nodes) != 1:
        raise InvariantViolation(f"targets have {len(nodes)} node-level cgroups, expected 1")
    path = nodes[0].path
    leaf = path.rpartition("/")[2]
    if leaf.endswith(SLICE_SUFFIX):
        components = leaf[: -len(SLICE_SUFFIX)].split("-")
        config = NodeConfig(cgroup_driver="systemd", cgroup_root=tuple(components[:-1]))
    else:
        components = path.split("/")
        config = NodeConfig(cgroup_driver="cgroupfs", cgroup_root=tuple(components[:-1]))
    if components[-1:] != [NODE_COMPONENT] or node_path(config) != path:
        raise InvariantViolation(f"node cgroup {path!r} is not a memstate-rendered path")
    qos = {c.path for c in targets.cgroups if c.level == "qos"}
    if qos != {qos_path(config, cls) for cls in QOS_COMPONENTS}:
        raise InvariantViolation(f"QoS cgroups {sorted(qos)} do not match node cgroup {path!r}")
    return config


def check_target_tree(targets: NodeTargets) -> None:
    """Raise InvariantViolation unless the targets form a tree the planner can work on:
    unique paths, every parent listed before its children, pod cgroups that parse as pods."""
    config = naming_config(targets)
    seen: set[str] = set()
    for target in targets.cgroups:
        if target.path in seen:
            raise InvariantViolation(f"cgroup {target.path!r} is listed twice in the targets")
        parent = parent_path(target.path)
        if parent is not None and parent not in seen:
            raise InvariantViolation(f"cgroup {target.path!r} is listed before its parent")
        if target.level == "pod":
            parsed = parse_cgroup_path(target.path, config)
            if parsed is None or parsed.level != "pod" or parsed.pod_uid != target.pod_uid:
                raise InvariantViolation(f"pod cgroup {target.path!r} is not a pod cgroup name")
        for value in target.files.values():
            if "\0" in value or "\n" in value:
                raise InvariantViolation(f"{target.path}: target value {value!r} is not one line")
        seen.add(target.path)
    if "" not in seen:
        raise InvariantViolation("the targets do not include the managed root ''")


# --- the planner ----------------------------------------------------------------------------------


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
    """
    if pod_removal not in ("wait", "kill"):
        raise InvariantViolation(f"pod_removal {pod_removal!r} is not 'wait' or 'kill'")
    check_target_tree(targets)
    planner = _Planner(
        targets,
        observed,
        values=ValueModel(page_size_bytes),
        retired=frozenset(retired_paths),
        pod_removal=pod_removal,
        remove_orphans=remove_orphans,
        focus=None if focus is None else frozenset(focus),
    )
    return planner.run()


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
        focus: frozenset[str] | None,
    ) -> None:
        self.targets = targets
        self.observed = observed
        self.values = values
        self.retired = retired
        self.pod_removal = pod_removal
        self.remove_orphans = remove_orphans
        self.config = naming_config(targets)
        self.desired: dict[str, CgroupTarget] = {t.path: t for t in targets.cgroups}
        self.order = [t.path for t in targets.cgroups]  # parents first
        if focus is not None:
            # Planned: the focus and its ancestors; the rest stays as observed.
            wanted = set(focus)
            for path in focus:
                wanted.update(ancestor_paths(path))
            self.order = [path for path in self.order if path in wanted]
        self.desired_children: dict[str, list[str]] = {}
        for target in targets.cgroups:
            parent = parent_path(target.path)
            if parent is not None:
                name = target.path.rpartition("/")[2]
                self.desired_children.setdefault(parent, []).append(name)
        self._children_cache: dict[str, list[str]] = {}
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
        # (path, file) -> the operation after which the removed pod's protection is gone
        self.protection_gone: dict[tuple[str, str], int | None] = {}
        self.raised: dict[tuple[str, str], int] = {}
        self.final: dict[tuple[str, str], int] = {}
        self.current: dict[tuple[str, str], int] = {}
        # (path, file) whose value (or a value its safe ordering depends on) is unknown.
        self.unknown: set[tuple[str, str]] = set()
        # (path, file) protections that needed a raise but cannot get one this round.
        self.held: set[tuple[str, str]] = set()

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
        )

    # --- observation helpers ---------------------------------------------------------------

    def _observed(self, path: str) -> ObservedCgroup | None:
        found = self.observed.get(path)
        return found if found is not None and found.exists else None

    def _exists(self, path: str) -> bool:
        """Exists now (and was not just created by this plan)."""
        return self._observed(path) is not None

    def _child_names(self, path: str) -> list[str]:
        """Desired children and observed children (safe names only), sorted (memoised)."""
        cached = self._children_cache.get(path)
        if cached is not None:
            return cached
        names: set[str] = set(self.desired_children.get(path, ()))
        found = self._observed(path)
        if found is not None and found.children is not None:
            for name in found.children:
                if is_safe_name(name):
                    names.add(name)
                elif (path, name) not in self._unsafe_reported:
                    self._unsafe_reported.add((path, name))
                    self.warnings.append(
                        f"{join_path(path, name)!r}: a cgroup name memstate cannot handle; "
                        "left alone"
                    )
        result = sorted(names)
        self._children_cache[path] = result
        return result

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
        """Normalised value of `file` in `path` now; defaults for missing files/new cgroups."""
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
        holders = [t.path for t in self.targets.cgroups if t.level in ("node", "qos")]
        for holder in holders:
            found = self._observed(holder)
            if found is None or found.children is None:
                continue
            for name in sorted(found.children):
                path = join_path(holder, name)
                if path in self.desired or not is_safe_name(name):
                    continue
                parsed = parse_cgroup_path(path, self.config)
                if parsed is None or parsed.level != "pod":
                    continue  # not a memstate name: never touched
                child = self._observed(path)
                populated = child.populated if child is not None else None
                kind: RemovalKind = "retired" if path in self.retired else "orphan"
                action = self._removal_action(kind, path, populated)
                removal = Removal(
                    path=path, uid=parsed.pod_uid, kind=kind, action=action, populated=populated
                )
                self.removals.append(removal)
                self.removal_by_path[path] = removal

    def _removal_action(
        self, kind: RemovalKind, path: str, populated: bool | None
    ) -> RemovalAction:
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
                if is_safe_name(name):
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
        for path in self.order:
            target = self.desired[path]
            found = self._observed(path)
            parent = parent_path(path)
            if parent is None:
                offered = found.controllers if found is not None else None
                available = (
                    frozenset(offered) if offered is not None else frozenset(target.controllers)
                )
            else:
                available = self.enabled_after.get(parent, frozenset())
            enabled_now = (
                frozenset(found.subtree_control or ()) if found is not None else frozenset()
            )
            wanted = frozenset(target.controllers)
            missing = sorted(wanted - available - enabled_now)
            if missing and parent is None:
                self.warnings.append(
                    f"controller(s) {', '.join(missing)} not available at the managed root "
                    "(cgroup.controllers): their files are not managed"
                )
            self.enabled_after[path] = enabled_now | (wanted & available)
            usable = []
            for file in sorted(target.files):
                controller = file_controller(file)
                from_parent = (
                    self.enabled_after.get(parent, frozenset()) if parent is not None else None
                )
                if (
                    from_parent is not None
                    and controller is not None
                    and controller not in from_parent
                ):
                    self.blocked.append(f"{path}/{file}" if path else file)
                    continue
                usable.append(file)
            self.managed[path] = tuple(usable)
            if not self._exists(path):
                self.created.add(path)

    # --- protections -----------------------------------------------------------------------

    def _compute_protections(self) -> None:
        """raise and final values of memory.min/low, bottom-up (see the module docstring)."""
        for removal in self.removals:
            for file in PROTECTION_FILES:
                self.protection_gone[(removal.path, file)] = None
        for path in reversed(self.order):
            for file in self.managed[path]:
                if file_kind(file) != "protection" and self.is_unreadable(path, file):
                    self.unknown.add((path, file))
            for file in PROTECTION_FILES:
                if file not in self.managed[path]:
                    continue
                names = self._child_names(path)
                contributions = [self._contribution(path, name, file) for name in names]
                found = self._observed(path)
                if (
                    None in contributions
                    or self.is_unreadable(path, file)
                    or (found is not None and found.children is None)
                ):
                    # Without every value the sums are guesses: leave this file (and, through
                    # the contribution, its ancestors' and children's raises) for a later round.
                    self.unknown.add((path, file))
                    continue
                known = [c for c in contributions if c is not None]
                now = self._protection_now(path, file)
                target = self.values.number(self.desired_text(path, file))
                shortfall = max(0, sum(c.current for c in known) - now)
                final = self.values.clamp(max(target, sum(c.final for c in known)))
                raised = self.values.clamp(
                    max(now, final, sum(c.raised for c in known) - shortfall)
                )
                self.current[(path, file)] = now
                self.final[(path, file)] = final
                self.raised[(path, file)] = raised
                if final > target:
                    self.warnings.append(
                        f"{path or '<root>'} {file} kept at {self.values.render(final)}, above its "
                        f"target {self.values.render(target)}: its children hold that much"
                    )

    def _contribution(self, parent: str, name: str, file: str) -> _Contribution | None:
        """A child's value of `file` now, after the raise pass and at the end; None if unknown."""
        path = join_path(parent, name)
        if path in self.desired and (path, file) in self.unknown:
            return None
        if path in self.desired and (path, file) in self.final:
            return _Contribution(
                current=self.current[(path, file)],
                raised=self.raised[(path, file)],
                final=self.final[(path, file)],
            )
        if self._exists(path) and self.is_unreadable(path, file):
            return None
        now = self._protection_now(path, file) if self._exists(path) else 0
        removal = self.removal_by_path.get(path)
        if removal is not None and removal.action != "keep":
            # Gone at the end of the round: removed, or zeroed because it is populated.
            return _Contribution(current=now, raised=now, final=0)
        return _Contribution(current=now, raised=now, final=now)

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
        needed = tuple(sorted({r for r in requires if r is not None}))
        if any(r >= index for r in needed):
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
        for path in self.order:
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

    def _emit_raise(self) -> None:
        for path in self.order:
            parent = parent_path(path)
            for file in self.managed[path]:
                kind = file_kind(file)
                now = self.current_text(path, file)
                if (path, file) in self.unknown:
                    continue
                requires = self._base_requirements(path, file)
                if kind in _ORDER_BOUND:
                    requires.append(self._op("raise", parent, file))
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
                        requires=requires,
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
                    and not _cpuset_ids(wanted) >= _cpuset_ids(now)
                ):
                    continue  # not a pure widening: lower pass
                value = self._write_value(path, file, None, wanted)
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
        for path in reversed(self.order):
            for file in self.managed[path]:
                if (path, file) in self.unknown:
                    continue
                kind = file_kind(file)
                now = self.current_text(path, file)
                requires = self._base_requirements(path, file)
                requires.append(self._op("raise", path, file))
                for name in self._child_names(path) if kind in _ORDER_BOUND else ():
                    child = join_path(path, name)
                    requires.append(self._op("raise", child, file))
                    requires.append(self._op("lower", child, file))
                    if kind == "protection" and child in self.removal_by_path:
                        requires.append(self.protection_gone.get((child, file)))
                if kind == "protection":
                    raised = self.raised[(path, file)]
                    final = self.final[(path, file)]
                    if final == raised:
                        continue
                    value = self._write_value(path, file, final, self.values.render(final))
                    self._add("lower", "write", path, file, value, requires=requires, observed=now)
                    continue
                wanted = self.desired_text(path, file)
                if now == wanted or self._op("raise", path, file) is not None:
                    continue
                value = self._write_value(path, file, None, wanted)
                self._add("lower", "write", path, file, value, requires=requires, observed=now)

    # --- results ---------------------------------------------------------------------------

    def _final_values(self) -> dict[str, dict[str, str]]:
        result: dict[str, dict[str, str]] = {}
        for path in self.order:
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

    def _check_operation_scope(self, operation: Operation) -> None:
        """Refuse any operation outside the managed set (module docstring, "Ownership")."""
        if operation.kind in ("write", "kill", "enable") and operation.value == "":
            raise InvariantViolation(f"refusing a zero-length write: {operation.describe()}")
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
        if operation.kind == "write" and operation.file not in self.desired[operation.path].files:
            raise InvariantViolation(f"write to an unmanaged file: {operation.describe()}")


# --- diff -----------------------------------------------------------------------------------------


def diff_tree(
    targets: NodeTargets,
    observed: ObservedTree,
    *,
    page_size_bytes: int,
    retired_paths: Iterable[str] = (),
) -> tuple[FileDiff, ...]:
    """Every managed file (and each cgroup's controllers) of `targets` against `observed`, plus a
    row per undesired pod cgroup. Comparison is in kernel-normalised form."""
    plan = plan_operations(
        targets, observed, page_size_bytes=page_size_bytes, retired_paths=retired_paths
    )
    values = ValueModel(page_size_bytes)
    blocked = set(plan.blocked)
    rows: list[FileDiff] = []
    for target in targets.cgroups:
        found = observed.get(target.path)
        exists = found is not None and found.exists
        if target.controllers:
            enabled = tuple(found.subtree_control or ()) if found is not None and exists else ()
            wanted = format_controller_list(target.controllers).strip()
            have = format_controller_list(set(enabled) & set(CONTROLLER_ORDER)).strip()
            equal = exists and set(target.controllers) <= set(enabled)
            rows.append(
                FileDiff(
                    path=target.path,
                    file=SUBTREE_CONTROL,
                    desired=wanted,
                    observed=have if exists else None,
                    desired_normalised=wanted,
                    observed_normalised=have if exists else None,
                    equal=equal,
                    status="equal" if equal else ("differs" if exists else "missing"),
                )
            )
        for file, text in sorted(target.files.items()):
            where = f"{target.path}/{file}" if target.path else file
            desired_normalised = values.normalise(file, text)
            raw = found.files.get(file) if found is not None and exists else None
            observed_text = kernel_strip(raw) if raw is not None else None
            if exists and raw is None:
                default = kernel_default(file)
                observed_normalised = (
                    values.normalise(file, default) if default is not None else None
                )
            else:
                observed_normalised = values.normalise(file, raw) if raw is not None else None
            equal = exists and desired_normalised == observed_normalised
            if where in blocked:
                status = "blocked"
            elif not exists:
                status = "missing"
            else:
                status = "equal" if equal else "differs"
            rows.append(
                FileDiff(
                    path=target.path,
                    file=file,
                    desired=text,
                    observed=observed_text,
                    desired_normalised=desired_normalised,
                    observed_normalised=observed_normalised,
                    equal=equal,
                    status=status,
                )
            )
    for removal in plan.removals:
        rows.append(
            FileDiff(
                path=removal.path,
                file="",
                desired=None,
                observed="populated" if removal.populated else "present",
                desired_normalised=None,
                observed_normalised=None,
                equal=False,
                status=removal.kind,
            )
        )
    return tuple(rows)


# --- the protection invariant ---------------------------------------------------------------------


def protection_shortfalls(
    tree: ObservedTree, *, page_size_bytes: int = 4096
) -> dict[tuple[str, str], int]:
    """For every cgroup whose memory.min (memory.low) is below the sum of its children's: by how
    many bytes, keyed by (path, file). Files not observed are not checked; "max" counts as
    PAGE_COUNTER_MAX pages."""
    values = ValueModel(page_size_bytes)
    result: dict[tuple[str, str], int] = {}
    for path, found in sorted(tree.cgroups.items()):
        if not found.exists or not found.children:
            continue
        for file in PROTECTION_FILES:
            own = _number_of(values, found, file)
            if own is None:
                continue
            total = 0
            for name in found.children:
                child = tree.cgroups.get(join_path(path, name))
                if child is None or not child.exists:
                    continue
                total += _number_of(values, child, file) or 0
            if values.clamp(total) > own:
                result[(path, file)] = values.clamp(total) - own
    return result


def _number_of(values: ValueModel, found: ObservedCgroup, file: str) -> int | None:
    text = found.files.get(file)
    if text is None:
        return None
    normalised = values.normalise(file, text)
    return None if normalised is None else values.number(normalised)


def check_protection(tree: ObservedTree, *, page_size_bytes: int = 4096) -> list[str]:
    """Sentences naming each parent whose memory.min or memory.low is below the sum of its
    children's (empty when the invariant of memory-qos.md §12.3 holds)."""
    return [
        f"{path or '<root>'}: {file} is {shortfall} bytes below the sum of its children's"
        for (path, file), shortfall in sorted(
            protection_shortfalls(tree, page_size_bytes=page_size_bytes).items()
        )
    ]


# --- predicting the tree after a plan ------------------------------------------------------------


def apply_operations(tree: ObservedTree, operations: Iterable[Operation]) -> ObservedTree:
    """The observation one would expect after `operations` succeeded on `tree`.

    Used by the reconciler to keep its picture of the tree current between full resyncs. A new
    cgroup starts with no files read (defaults assumed) and no children; after a kill its
    populated flag is unknown.
    """
    cgroups = dict(tree.cgroups)
    for operation in operations:
        path = operation.path
        found = cgroups.get(path)
        if operation.kind == "mkdir":
            cgroups[path] = ObservedCgroup(
                exists=True, files={}, children=(), populated=False, subtree_control=()
            )
            _set_child(cgroups, path, present=True)
        elif operation.kind == "rmdir":
            for other in [p for p in cgroups if p == path or p.startswith(path + "/")]:
                del cgroups[other]
            _set_child(cgroups, path, present=False)
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
    return ObservedTree(cgroups=cgroups)


def _set_child(cgroups: dict[str, ObservedCgroup], path: str, *, present: bool) -> None:
    parent = parent_path(path)
    if parent is None:
        return
    found = cgroups.get(parent)
    if found is None or found.children is None:
        return
    name = path.rpartition("/")[2]
    names = set(found.children)
    if present:
        names.add(name)
    else:
        names.discard(name)
    cgroups[parent] = msgspec.structs.replace(found, children=tuple(sorted(names)))


def merge_observations(base: ObservedTree, fresh: Mapping[str, ObservedCgroup]) -> ObservedTree:
    """`base` with the cgroups in `fresh` replaced (a scoped observation over a cached tree).

    A fresh cgroup that was not listed keeps the base's children; a fresh cgroup that no longer
    exists drops its cached descendants; parents' children lists follow existence.
    """
    cgroups = dict(base.cgroups)
    for path, found in sorted(fresh.items()):
        previous = cgroups.get(path)
        if not found.exists:
            for other in [p for p in cgroups if p.startswith(path + "/")]:
                del cgroups[other]
        elif found.children is None and previous is not None and previous.exists:
            found = msgspec.structs.replace(found, children=previous.children)
        cgroups[path] = found
        _set_child(cgroups, path, present=found.exists)
    return ObservedTree(cgroups=cgroups)
