"""Container cgroups: which directories under a pod cgroup are which container, and their targets.

memstate never creates a container cgroup (the runtime does); it discovers them under the pod
cgroups it observes and manages the Memory QoS files the kubelet would have put into the CRI
`unified` map: `memory.min`, `memory.low` (TieredReservation, per the *pod* class) and
`memory.high` (memory-qos.md §3, §4.1). `memory.max`, hugetlb and cpuset files of containers
belong to the runtime and are never written.

Naming rule (kubelet-node.md §6): a directory directly under the pod cgroup is the container

- whose **name** it is (the standalone layout, `<pod cgroup>/<container name>`: a runtime or test
  harness that names container cgroups after the container); else
- whose **runtime container id** it carries: `<64 hex>` (containerd, cgroupfs),
  `cri-containerd-<id>.scope` (containerd, systemd), `crio-<id>` / `crio-<id>.scope` (CRI-O). The
  id comes from the kubelet's pod status (`containerStatuses[].containerID`, with its
  `containerd://` / `cri-o://` prefix stripped) or from NRI; without a known id such a directory
  is left alone.

Everything else (the sandbox's pause container, `crio-conmon-<id>`, unknown names) is left alone.
Pure: the observed tree and the ids are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import msgspec

from memstate.core.plan.model import ObservedTree, join_path
from memstate.core.targets import (
    MEMORY_HIGH,
    MEMORY_LOW,
    MEMORY_MIN,
    CgroupTarget,
    NodeTargets,
    PodTargets,
)

# The files memstate manages on a container cgroup; the runtime owns the rest.
CONTAINER_FILES = (MEMORY_MIN, MEMORY_LOW, MEMORY_HIGH)

_RUNTIME_DIR_RES = (
    re.compile(r"(?P<id>[0-9a-f]{64})"),
    re.compile(r"cri-containerd-(?P<id>[0-9a-f]{64})\.scope"),
    re.compile(r"crio-(?P<id>[0-9a-f]{64})(?:\.scope)?"),
)
_ID_PREFIX_RE = re.compile(r"[a-z0-9.+-]+://")


def runtime_container_id(container_id: str) -> str:
    """The bare id of a `containerStatuses[].containerID` (``containerd://<id>`` → ``<id>``)."""
    match = _ID_PREFIX_RE.match(container_id)
    return container_id[match.end() :] if match else container_id


def container_for_directory(
    name: str, container_names: frozenset[str], ids: Mapping[str, str]
) -> str | None:
    """The container a directory under its pod cgroup belongs to (the module's naming rule), or
    None. `ids` maps bare runtime container ids to container names for this pod."""
    if name in container_names:
        return name
    for pattern in _RUNTIME_DIR_RES:
        match = pattern.fullmatch(name)
        if match is not None:
            found = ids.get(match.group("id"))
            return found if found in container_names else None
    return None


def container_targets_for_pod(
    pod: PodTargets, children: tuple[str, ...], ids: Mapping[str, str]
) -> list[CgroupTarget]:
    """Targets for the container cgroups found among `children` of the pod's cgroup."""
    files_by_name = {
        c.name: {f: c.files[f] for f in CONTAINER_FILES if f in c.files} for c in pod.containers
    }
    names = frozenset(files_by_name)
    found: list[CgroupTarget] = []
    for directory in sorted(children):
        container = container_for_directory(directory, names, ids)
        if container is None or not files_by_name[container]:
            continue
        found.append(
            CgroupTarget(
                path=join_path(pod.cgroup, directory),
                level="container",
                files=files_by_name[container],
                pod_uid=pod.uid,
            )
        )
    return found


# (pod, its cgroup's listing, its runtime ids) -> the container targets that listing shows
DeriveContainers = Callable[[PodTargets, tuple[str, ...], Mapping[str, str]], list[CgroupTarget]]
_NO_IDS: Mapping[str, str] = {}


def with_container_targets(
    targets: NodeTargets,
    observed: ObservedTree,
    container_ids: Mapping[str, Mapping[str, str]] | None = None,
    *,
    listed_is_enough: bool = False,
    derive: DeriveContainers | None = None,
) -> NodeTargets:
    """`targets` plus a target for every container cgroup `observed` shows under a desired pod
    cgroup (never one that does not exist: memstate creates no container cgroup).

    A container cgroup must have been observed to exist itself, or, with `listed_is_enough`,
    merely be listed by its pod cgroup (to know which cgroups to observe next; the planner must
    only ever get the observed ones, or it would create the missing). `container_ids`: pod UID →
    {bare runtime container id → container name}. Container targets come after every other
    cgroup, so parents stay listed before children. `derive` computes one pod's candidates
    (`container_targets_for_pod` unless given: the reconciler passes a memo of it, since every
    round looks at every pod's listing).
    """
    ids = container_ids or {}
    derive = derive or container_targets_for_pod
    extra: list[CgroupTarget] = []
    for pod in targets.pods:
        found = observed.get(pod.cgroup)
        if found is None or not found.exists or not found.children:
            continue
        candidates = [
            t
            for t in derive(pod, found.children, ids.get(pod.uid, _NO_IDS))
            if listed_is_enough or observed.exists(t.path)
        ]
        extra.extend(candidates)
    if not extra:
        return targets
    return msgspec.structs.replace(targets, cgroups=(*targets.cgroups, *extra))


def container_paths(targets: NodeTargets) -> dict[str, list[str]]:
    """Pod cgroup path → the container cgroup paths of `targets` under it."""
    by_pod: dict[str, list[str]] = {}
    for target in targets.cgroups:
        if target.level == "container":
            parent = target.path.rpartition("/")[0]
            by_pod.setdefault(parent, []).append(target.path)
    return by_pod
