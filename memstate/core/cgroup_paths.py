"""cgroup naming: where the node, QoS and pod cgroups live, for both cgroup drivers.

Theory of operation (memory-qos.md §6). The kubelet first builds an *internal name*, a tuple of
components, and only then renders it for a driver:

- node allocatable root: cgroupRoot components + ``kubepods``;
- QoS cgroups: node root + ``burstable`` / ``besteffort`` (there is no Guaranteed QoS cgroup);
- Guaranteed pods: node root + ``pod<uid>``; Burstable/BestEffort pods: QoS cgroup + ``pod<uid>``.

Rendering:

- **cgroupfs**: components joined with "/" (``kubepods/burstable/pod<uid>``);
- **systemd**: in each component "-" becomes "_", components are joined with "-" and ``.slice``
  appended, and the slice is expanded into its ancestors, one directory per "-" prefix
  (``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``).

Every path is relative to the cgroup2 mount; "" is the mount root. Components are validated
defensively even though pods and configs were validated on the way in: a component is the only
thing standing between a pod UID and a path that escapes the tree ("/", ".."), so anything that is
not letters, digits and inner '-' (UIDs) or inner '.' (cgroupRoot) is an `InvariantViolation`.
Components never contain "_", which is what makes the systemd rendering reversible:
`parse_cgroup_path` turns "_" back into "-" for orphan detection.

The kernel's hugetlb file names (``hugetlb.2MB.max``) are rendered here as well, because they are
naming, not values. (memstate/host or core cgroup_values may carry a similar helper; to be
deduplicated.)
"""

from __future__ import annotations

import re

import msgspec

from memstate.core.cgroup_values import hugetlb_file
from memstate.core.config import CGROUP_ROOT_COMPONENT_RE, CgroupDriver, NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.pod import BEST_EFFORT, BURSTABLE, GUARANTEED, UID_RE, QOSClass
from memstate.core.targets import CgroupLevel

NODE_COMPONENT = "kubepods"
POD_PREFIX = "pod"
SLICE_SUFFIX = ".slice"
QOS_COMPONENTS: dict[QOSClass, str] = {BURSTABLE: "burstable", BEST_EFFORT: "besteffort"}

# A systemd-escaped UID as found in a slice name ("-" became "_").
_ESCAPED_UID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_]{0,126}[A-Za-z0-9])?")

# The directory names memstate turns into paths, in the live tree and through the host adapter:
# what kubelet (cgroupfs and systemd drivers), containerd, CRI-O and systemd produce (kubepods,
# pod<uid>, kubepods-burstable-pod<uid>.slice, cri-containerd-<id>.scope, user@1000.service). A
# leading dot or dash is refused; so are backslashes (systemd's \x2d escapes) and anything else
# exotic: such names found in the tree are listed but never used.
_CGROUP_NAME_RE = re.compile(r"[A-Za-z0-9_@:+=,][A-Za-z0-9_@:+=,.-]*")
MAX_NAME_BYTES = 255  # NAME_MAX

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB


class ParsedCgroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a path in the managed tree is: its level, and for pods the UID and the QoS class
    implied by where the cgroup sits (Guaranteed directly under kubepods)."""

    level: CgroupLevel
    pod_uid: str = ""
    qos_class: QOSClass | None = None


# --- validation -----------------------------------------------------------------------------------


def is_valid_cgroup_name(name: str) -> bool:
    """True if `name` (a directory name) may be one component of a cgroup path."""
    return (
        _CGROUP_NAME_RE.fullmatch(name) is not None
        and len(name.encode("utf-8")) <= MAX_NAME_BYTES
        and name not in (".", "..")
    )


def validate_pod_uid(uid: str) -> str:
    """Return `uid` if it can safely become part of a cgroup name, else raise
    `InvariantViolation` (admission should have rejected it)."""
    if not UID_RE.fullmatch(uid):
        raise InvariantViolation(
            f"pod uid {uid!r} cannot be used in a cgroup name (letters, digits and inner '-' only)"
        )
    return uid


def _validate_root(components: tuple[str, ...]) -> tuple[str, ...]:
    for component in components:
        if not CGROUP_ROOT_COMPONENT_RE.fullmatch(component):
            raise InvariantViolation(
                f"cgroupRoot component {component!r} cannot be used in a cgroup name"
            )
    return components


# --- internal names -------------------------------------------------------------------------------


def node_components(config: NodeConfig) -> tuple[str, ...]:
    """Internal name of the node allocatable cgroup: cgroupRoot + ``kubepods``."""
    return (*_validate_root(config.cgroup_root), NODE_COMPONENT)


def qos_components(config: NodeConfig, qos_class: QOSClass) -> tuple[str, ...]:
    """Internal name of the Burstable or BestEffort QoS cgroup (Guaranteed has none)."""
    if qos_class not in QOS_COMPONENTS:
        raise InvariantViolation(f"QoS class {qos_class!r} has no QoS-level cgroup")
    return (*node_components(config), QOS_COMPONENTS[qos_class])


# The parent of a pod cgroup by (cgroupRoot, QoS class), validated once: every pod cgroup path
# rendered for a new UID (start-up's removals fold, an admission's targets) needs it. A handful
# of entries per node; the limit only guards a caller cycling through cgroup roots.
_POD_COMPONENT_PARENTS: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
_POD_COMPONENT_PARENTS_LIMIT = 64


def pod_components(config: NodeConfig, uid: str, qos_class: QOSClass) -> tuple[str, ...]:
    """Internal name of a pod cgroup: Guaranteed pods directly under kubepods, the others under
    their QoS cgroup."""
    name = POD_PREFIX + validate_pod_uid(uid)
    key = (config.cgroup_root, qos_class)
    parent = _POD_COMPONENT_PARENTS.get(key)
    if parent is None:
        if qos_class == GUARANTEED:
            parent = node_components(config)
        else:
            parent = qos_components(config, qos_class)
        if len(_POD_COMPONENT_PARENTS) >= _POD_COMPONENT_PARENTS_LIMIT:
            _POD_COMPONENT_PARENTS.clear()
        _POD_COMPONENT_PARENTS[key] = parent
    return (*parent, name)


# --- rendering ------------------------------------------------------------------------------------


def cgroup_path(components: tuple[str, ...], driver: CgroupDriver) -> str:
    """Render an internal name for a driver, relative to the mount ("" for no components)."""
    for component in components:
        # The components were built from validated parts; this guards new callers.
        if not component or "/" in component or "_" in component or component in (".", ".."):
            raise InvariantViolation(f"cgroup name component {component!r} is not safe")
    if driver == "cgroupfs":
        return "/".join(components)
    if driver == "systemd":
        escaped = [c.replace("-", "_") for c in components]
        return "/".join(
            "-".join(escaped[: index + 1]) + SLICE_SUFFIX for index in range(len(escaped))
        )
    raise InvariantViolation(f"unknown cgroup driver {driver!r}")


def node_path(config: NodeConfig) -> str:
    """Path of the node allocatable cgroup (``kubepods`` or ``kubepods.slice``)."""
    return cgroup_path(node_components(config), config.cgroup_driver)


def qos_path(config: NodeConfig, qos_class: QOSClass) -> str:
    """Path of the Burstable or BestEffort QoS cgroup."""
    return cgroup_path(qos_components(config, qos_class), config.cgroup_driver)


# Pod paths by (driver, cgroupRoot, uid, QoS class): every admission's targets name the pod's
# cgroup and start-up's removals fold compares pods' paths transaction by transaction, so the
# same few hundred paths are rendered again and again. Bounded; clearing only costs rendering.
_POD_PATHS: dict[tuple[str, tuple[str, ...], str, str], str] = {}
_POD_PATHS_LIMIT = 65536


def pod_path(config: NodeConfig, uid: str, qos_class: QOSClass) -> str:
    """Path of a pod cgroup."""
    key = (config.cgroup_driver, config.cgroup_root, uid, qos_class)
    found = _POD_PATHS.get(key)
    if found is None:
        found = _render_pod_path(config, uid, qos_class)
        if len(_POD_PATHS) >= _POD_PATHS_LIMIT:
            _POD_PATHS.clear()
        _POD_PATHS[key] = found
    return found


# The rendered parent of every pod cgroup of one (driver, cgroupRoot, QoS class), and the
# prefix a pod's own last component takes under it: every admission of a new pod misses the
# paths memo above, and only its own name differs from the last one's.
_POD_RENDERED_PARENTS: dict[tuple[str, tuple[str, ...], str], tuple[str, str]] = {}


def _render_pod_path(config: NodeConfig, uid: str, qos_class: QOSClass) -> str:
    """`cgroup_path(pod_components(...))`, the parent rendered once per (driver, root, QoS)."""
    driver = config.cgroup_driver
    key = (driver, config.cgroup_root, qos_class)
    parent = _POD_RENDERED_PARENTS.get(key)
    if parent is None:
        components = pod_components(config, "0", qos_class)[:-1]
        rendered = cgroup_path(components, driver)
        if driver == "systemd":
            prefix = "-".join(c.replace("-", "_") for c in components) + "-"
        else:
            prefix = ""
        if len(_POD_RENDERED_PARENTS) >= _POD_COMPONENT_PARENTS_LIMIT:
            _POD_RENDERED_PARENTS.clear()
        parent = _POD_RENDERED_PARENTS[key] = (rendered, prefix)
    name = POD_PREFIX + validate_pod_uid(uid)
    if "_" in name:  # `cgroup_path`'s guard; a valid UID never has one
        raise InvariantViolation(f"cgroup name component {name!r} is not safe")
    rendered, prefix = parent
    if driver == "systemd":
        return f"{rendered}/{prefix}{name.replace('-', '_')}{SLICE_SUFFIX}"
    return f"{rendered}/{name}"


def pod_paths_of_uid(config: NodeConfig, uid: str) -> tuple[str, ...]:
    """Every place a pod cgroup of `uid` can have: under kubepods (Guaranteed) and under each
    QoS cgroup."""
    return tuple(pod_path(config, uid, qos) for qos in (GUARANTEED, *QOS_COMPONENTS))


def root_paths(config: NodeConfig) -> tuple[str, ...]:
    """The managed cgroups above kubepods: the mount root "" and one path per cgroupRoot
    component (``foo`` / ``foo.slice``), top-down."""
    return ancestor_paths(node_path(config))


# --- path arithmetic ------------------------------------------------------------------------------


def path_depth(path: str) -> int:
    """Number of components of a rendered path ("" is 0)."""
    return 0 if path == "" else path.count("/") + 1


def parent_path(path: str) -> str | None:
    """The parent of `path`, or None for the mount root ""."""
    if path == "":
        return None
    head, _, _ = path.rpartition("/")
    return head


def ancestor_paths(path: str) -> tuple[str, ...]:
    """Every proper ancestor of `path`, from the mount root "" down to its parent."""
    if path == "":
        return ()
    parts = path.split("/")
    return tuple("/".join(parts[:index]) for index in range(len(parts)))


# --- reverse mapping ------------------------------------------------------------------------------


def parse_cgroup_path(path: str, config: NodeConfig) -> ParsedCgroup | None:
    """What `path` is in the tree memstate manages under `config`, or None if it is not a
    memstate-managed name (a container, another agent's cgroup, a malformed pod name).

    Used for orphan detection: the reconciler lists the children of kubepods and the QoS cgroups
    and removes pod cgroups whose UID is no longer wanted. Live directory names are foreign input,
    so a bad name yields None, never an exception.
    """
    roots, node, qos_by_path = _naming(config)
    if path in roots:
        return ParsedCgroup(level="root")
    if path == node:
        return ParsedCgroup(level="node")
    if path in qos_by_path:
        return ParsedCgroup(level="qos")
    parent = parent_path(path)
    if parent is None:
        return None
    if parent == node:
        qos_class: QOSClass = GUARANTEED
    elif parent in qos_by_path:
        qos_class = qos_by_path[parent]
    else:
        return None
    leaf = path.rpartition("/")[2]
    uid = _pod_uid_from_leaf(leaf, parent, config.cgroup_driver)
    if uid is None or pod_path(config, uid, qos_class) != path:
        return None
    return ParsedCgroup(level="pod", pod_uid=uid, qos_class=qos_class)


# The fixed names `parse_cgroup_path` compares a path with, by (driver, cgroupRoot): a full
# round checks every pod cgroup target with it, and rendering them again per path was most of
# that check. A handful of entries per node; never mutated once stored.
_NAMINGS: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, ...], str, dict[str, QOSClass]]] = {}


def _naming(config: NodeConfig) -> tuple[tuple[str, ...], str, dict[str, QOSClass]]:
    """(`root_paths`, `node_path`, QoS cgroup path -> class) of `config`'s naming (memoised)."""
    key = (config.cgroup_driver, config.cgroup_root)
    found = _NAMINGS.get(key)
    if found is None:
        qos_by_path: dict[str, QOSClass] = {qos_path(config, cls): cls for cls in QOS_COMPONENTS}
        found = (root_paths(config), node_path(config), qos_by_path)
        if len(_NAMINGS) >= _POD_COMPONENT_PARENTS_LIMIT:
            _NAMINGS.clear()
        _NAMINGS[key] = found
    return found


def _pod_uid_from_leaf(leaf: str, parent: str, driver: CgroupDriver) -> str | None:
    if driver == "cgroupfs":
        if not leaf.startswith(POD_PREFIX):
            return None
        uid = leaf[len(POD_PREFIX) :]
        return uid if UID_RE.fullmatch(uid) else None
    # systemd: the leaf is "<parent slice name without .slice>-pod<escaped uid>.slice".
    parent_leaf = parent.rpartition("/")[2]
    prefix = parent_leaf[: -len(SLICE_SUFFIX)] + "-" + POD_PREFIX
    if not (leaf.startswith(prefix) and leaf.endswith(SLICE_SUFFIX)):
        return None
    escaped = leaf[len(prefix) : -len(SLICE_SUFFIX)]
    if not _ESCAPED_UID_RE.fullmatch(escaped):
        return None
    uid = escaped.replace("_", "-")
    return uid if UID_RE.fullmatch(uid) else None


# --- hugetlb file names ---------------------------------------------------------------------------


def hugetlb_max_file(page_size_bytes: int) -> str:
    """``hugetlb.<size>.max``, the hugetlb limit file for one page size, named as the kernel's
    `mem_fmt` names it (2 MiB → ``hugetlb.2MB.max``; see `cgroup_values.hugetlb_size_name`)."""
    if page_size_bytes <= 0 or page_size_bytes % _KIB:
        raise InvariantViolation(f"hugepage size {page_size_bytes} is not a multiple of 1 KiB")
    return hugetlb_file(page_size_bytes)
