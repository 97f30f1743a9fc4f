"""Pods: the normalised spec memstate decides on, its QoS class and its request sums.

A Kubernetes `v1` Pod manifest is decoded into `Pod`, which keeps only what matters here —
identity, containers with their cpu/memory/hugepages requests and limits, pod overhead and
pod-level resources (`spec.resources`, KEP-2837) — after the API server's defaulting (a limit
without a request makes request = limit) and validation (request <= limit, hugepages request ==
limit, sidecars only among init containers, names that can be used in cgroup paths, pod-level
requests covering the containers' aggregate and pod-level limits covering each container's).
Every other Pod field is accepted and ignored.

Pod-level resources, where set, decide the QoS class alone and replace the container aggregate
in the pod's request and limit, per resource (kubelet-node.md §9, memory-qos.md §2).

Containers are kept in execution order: init containers (regular and sidecars) in spec order,
then app containers in spec order — the order the Topology Manager allocates in.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec

from memstate.core.errors import InputError, ManifestError, echo
from memstate.core.quantity import QuantityInput, parse_bytes, parse_millis
from memstate.core.topology import MEMORY, canonical_resource_name, is_hugepage_resource
from memstate.core.validation import convert_input, reraise_as

CPU = "cpu"
ContainerKind = Literal["init", "sidecar", "app"]
QOSClass = Literal["Guaranteed", "Burstable", "BestEffort"]
GUARANTEED: QOSClass = "Guaranteed"
BURSTABLE: QOSClass = "Burstable"
BEST_EFFORT: QOSClass = "BestEffort"

# A UID becomes part of a cgroup path: letters, digits and inner dashes only, so that no value
# can contain "/", "..", "_" (the systemd escape) or be empty.
UID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,126}[A-Za-z0-9])?")
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
# Kubernetes sets no number; a Pod is bounded by etcd's 1.5 MiB object size. Real pods have a
# handful of containers; every container costs a Topology Manager round and cgroup writes.
MAX_CONTAINERS = 1000
_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)


class ContainerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One container after defaulting. cpu is in millicores, memory and hugepages in bytes."""

    name: str
    kind: ContainerKind
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}

    @property
    def is_init(self) -> bool:
        """A regular (run-to-completion) init container."""
        return self.kind == "init"

    @property
    def is_restartable(self) -> bool:
        """App containers and sidecars: they keep running."""
        return self.kind != "init"


class PodResources(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pod-level requests and limits (`spec.resources`) after defaulting; cpu in millicores,
    memory and hugepages in bytes. Never empty: a `spec.resources` without a quantity is unset."""

    requests: dict[str, int] = {}
    limits: dict[str, int] = {}


class Pod(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """The part of a pod memstate decides on.

    `dict=True` lets the pure functions of a pod that an admission asks for several times
    (`qos_class`, `spec_hash`, the predicate's requests) keep their answer with it: a pod is
    immutable, so the answer cannot go stale. Never encoded, hashed or compared.
    """

    uid: str
    name: str
    namespace: str
    containers: tuple[ContainerSpec, ...]
    overhead: dict[str, int] = {}
    # UNSET is left out of the encoding (unlike omit_defaults, which would also drop an empty
    # `overhead`): a pod without pod-level resources encodes, hashes and replays as before.
    resources: PodResources | msgspec.UnsetType = msgspec.UNSET

    @property
    def pod_level(self) -> PodResources | None:
        """The pod-level resources, or None when the pod has none."""
        return None if isinstance(self.resources, msgspec.UnsetType) else self.resources

    @property
    def key(self) -> str:
        """``namespace/name``, what operators type."""
        return f"{self.namespace}/{self.name}"

    def container(self, name: str) -> ContainerSpec:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(name)


_SPEC_ENCODER = msgspec.msgpack.Encoder(order="deterministic")


def spec_hash(pod: Pod) -> str:
    """A stable digest of the normalised spec: equal specs hash equal in every process."""
    cache = vars(pod)
    digest: str | None = cache.get("_spec_hash")
    if digest is None:
        digest = cache["_spec_hash"] = hashlib.blake2b(
            _SPEC_ENCODER.encode(pod), digest_size=16
        ).hexdigest()
    return digest


_SHAPE_ENCODER = msgspec.msgpack.Encoder()


def resource_shape(pod: Pod) -> bytes:
    """What the pod's requests, limits and cgroup targets depend on (its containers, overhead
    and pod-level resources, not its identity), as bytes: equal bytes are equal resources;
    equal dicts in another order are only a memo miss. Kept with the pod."""
    cache = vars(pod)
    shape: bytes | None = cache.get("_resource_shape")
    if shape is None:
        shape = cache["_resource_shape"] = _SHAPE_ENCODER.encode(
            (pod.containers, pod.overhead, pod.pod_level)
        )
    return shape


# --- QoS class ------------------------------------------------------------------------------------


def container_qos_class(container: ContainerSpec) -> QOSClass:
    """BestEffort without cpu/memory requests or limits; Guaranteed with request == limit > 0 for
    both; Burstable otherwise. Zero quantities count as unset."""
    return _resources_qos_class(container.requests, container.limits)


def _resources_qos_class(requests: dict[str, int], limits: dict[str, int]) -> QOSClass:
    # Four lookups, no intermediate dicts: this runs for every container of every admission.
    cpu_request, cpu_limit = requests.get(CPU, 0), limits.get(CPU, 0)
    memory_request, memory_limit = requests.get(MEMORY, 0), limits.get(MEMORY, 0)
    if not (cpu_request or memory_request or cpu_limit or memory_limit):
        return BEST_EFFORT
    if 0 < cpu_limit == cpu_request and 0 < memory_limit == memory_request:
        return GUARANTEED
    return BURSTABLE


def qos_class(pod: Pod) -> QOSClass:
    """Guaranteed iff every container (init and sidecars included) is Guaranteed; BestEffort iff
    every one is BestEffort; Burstable otherwise. Hugepages and other resources do not count.

    With pod-level resources the class is decided from them alone (kubelet-node.md §9): the same
    rule applied to the pod-level requests and limits.
    """
    cache = vars(pod)
    found: QOSClass | None = cache.get("_qos_class")
    if found is None:
        # Pods of one workload share their resources (and so their class) but not their spec
        # hash: remembered by the resource shape too.
        shape = resource_shape(pod)
        found = _QOS_BY_SHAPE.get(shape)
        if found is None:
            if len(_QOS_BY_SHAPE) >= _QOS_MEMO_LIMIT:
                _QOS_BY_SHAPE.clear()
            found = _QOS_BY_SHAPE[shape] = _qos_class(pod)
        cache["_qos_class"] = found
    return found


_QOS_BY_SHAPE: dict[bytes, QOSClass] = {}
_QOS_MEMO_LIMIT = 65536


def _qos_class(pod: Pod) -> QOSClass:
    pod_level = pod.pod_level
    if pod_level is not None:
        return _resources_qos_class(pod_level.requests, pod_level.limits)
    classes = {container_qos_class(c) for c in pod.containers}
    if len(classes) == 1:
        (only,) = classes
        if only != BURSTABLE:
            return only
    return BURSTABLE


# --- request sums ---------------------------------------------------------------------------------


def aggregate(pod: Pod, resource: str, *, field: Literal["requests", "limits"]) -> int:
    """Kubernetes' pod-level aggregate of one resource over containers, without overhead.

    ``max(Σ app + Σ sidecars, max over regular init containers i of (request_i + Σ sidecars
    declared before i))`` — sidecars run beside everything that starts after them.
    """
    sidecars_so_far = 0
    init_peak = 0
    steady = 0
    for c in pod.containers:
        value = getattr(c, field).get(resource, 0)
        if c.kind == "init":
            init_peak = max(init_peak, value + sidecars_so_far)
        elif c.kind == "sidecar":
            sidecars_so_far += value
            steady += value
        else:
            steady += value
    return max(steady, init_peak)


def pod_request(pod: Pod, resource: str = MEMORY) -> int:
    """The pod's effective request (`PodRequests`): the pod-level request where set, else the
    aggregate; plus pod overhead."""
    pod_level = pod.pod_level
    if pod_level is not None and resource in pod_level.requests:
        request = pod_level.requests[resource]
    else:
        request = aggregate(pod, resource, field="requests")
    return request + pod.overhead.get(resource, 0)


def pod_limit(pod: Pod, resource: str = MEMORY) -> int | None:
    """The pod's limit (plus overhead): the pod-level limit where set, else the aggregate when
    *every* container declares one; None otherwise."""
    pod_level = pod.pod_level
    if pod_level is not None and resource in pod_level.limits:
        return pod_level.limits[resource] + pod.overhead.get(resource, 0)
    if not all(c.limits.get(resource, 0) > 0 for c in pod.containers):
        return None
    return aggregate(pod, resource, field="limits") + pod.overhead.get(resource, 0)


def pod_limits_total(pod: Pod, resource: str) -> int:
    """`PodLimits` of one resource: the pod-level limit where set, else the aggregate of the
    declared limits (no "every container declares one" rule); plus overhead. What the kubelet
    writes as the pod's hugetlb limit."""
    pod_level = pod.pod_level
    if pod_level is not None and resource in pod_level.limits:
        limit = pod_level.limits[resource]
    else:
        limit = aggregate(pod, resource, field="limits")
    return limit + pod.overhead.get(resource, 0)


def container_limit(pod: Pod, container: ContainerSpec, resource: str = MEMORY) -> int:
    """The limit the runtime gets for a container (0 = none): its own, else the pod-level limit
    (the kubelet's `getMemoryLimit`, with pod-level resources set)."""
    own = container.limits.get(resource, 0)
    pod_level = pod.pod_level
    if own == 0 and pod_level is not None:
        return pod_level.limits.get(resource, 0)
    return own


def requested_resources(pod: Pod) -> set[str]:
    """Every resource the pod names a request for: its containers', overhead, pod level."""
    named = {r for c in pod.containers for r in c.requests} | set(pod.overhead)
    pod_level = pod.pod_level
    if pod_level is not None:
        named |= set(pod_level.requests)
    return named


def numa_requests(container: ContainerSpec) -> dict[str, int]:
    """What the Memory Manager pins for a container: memory and hugepages, non-zero only."""
    return {
        r: v
        for r, v in sorted(container.requests.items())
        if v > 0 and (r == MEMORY or is_hugepage_resource(r))
    }


def pod_numa_requests(pod: Pod) -> dict[str, int]:
    """Pod-scope Memory Manager request per resource (the aggregate, without overhead)."""
    resources = sorted({r for c in pod.containers for r in numa_requests(c)})
    return {r: aggregate(pod, r, field="requests") for r in resources}


# --- manifest decoding ----------------------------------------------------------------------------


class _RawResources(msgspec.Struct):
    requests: dict[str, QuantityInput] | None = None
    limits: dict[str, QuantityInput] | None = None


class _RawContainer(msgspec.Struct):
    name: str
    resources: _RawResources | None = None
    restartPolicy: str | None = None


class _RawMetadata(msgspec.Struct):
    name: str
    uid: str
    namespace: str = "default"


class _RawPodSpec(msgspec.Struct):
    containers: list[_RawContainer]
    initContainers: list[_RawContainer] | None = None
    overhead: dict[str, QuantityInput] | None = None
    resources: _RawResources | None = None


class _RawPod(msgspec.Struct):
    metadata: _RawMetadata
    spec: _RawPodSpec
    apiVersion: str = "v1"
    kind: str = "Pod"


def pod_from_manifest(obj: Any, *, source: str = "") -> Pod:
    """Decode and validate a Pod manifest (already parsed from YAML/JSON).

    Raises `ManifestError` naming `source` and the field path of the first problem.
    """
    if not isinstance(obj, dict):
        raise ManifestError("a pod manifest must be a mapping", source=source, path="$")
    kind = obj.get("kind", "Pod")
    if kind != "Pod":
        # Before the type check, which would report what a Deployment lacks ("containers").
        raise ManifestError(
            f"kind {echo(kind)} is not a Pod: memstate admits Pod manifests only",
            source=source,
            path="$.kind",
        )
    raw = convert_input(obj, _RawPod, source=source, error=ManifestError)
    try:
        return _normalise_pod(raw)
    except ManifestError as exc:
        raise exc.with_source(source) from None
    except InputError as exc:
        raise reraise_as(exc, ManifestError, source=source) from None


def _normalise_pod(raw: _RawPod) -> Pod:
    if raw.kind != "Pod" or raw.apiVersion != "v1":
        raise ManifestError(
            f"expected apiVersion v1, kind Pod; got {echo(raw.apiVersion)}/{echo(raw.kind)}",
            path="$.kind",
        )
    meta = raw.metadata
    if len(meta.uid) > 128 or not UID_RE.fullmatch(meta.uid):
        raise ManifestError(
            f"uid {echo(meta.uid)} is not usable in a cgroup path (letters, digits and inner '-', "
            "at most 128 characters)",
            path="$.metadata.uid",
        )
    if len(meta.name) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(meta.name):
        raise ManifestError(
            f"name {echo(meta.name)} is not a DNS-1123 subdomain", path="$.metadata.name"
        )
    if len(meta.namespace) > 63 or not _DNS_LABEL_RE.fullmatch(meta.namespace):
        raise ManifestError(
            f"namespace {echo(meta.namespace)} is not a DNS-1123 label", path="$.metadata.namespace"
        )
    if not raw.spec.containers:
        raise ManifestError("a pod needs at least one container", path="$.spec.containers")
    count = len(raw.spec.containers) + len(raw.spec.initContainers or [])
    if count > MAX_CONTAINERS:
        raise ManifestError(
            f"{count} containers; memstate accepts at most {MAX_CONTAINERS} per pod",
            path="$.spec.containers",
        )
    containers: list[ContainerSpec] = []
    for index, rc in enumerate(raw.spec.initContainers or []):
        containers.append(_normalise_container(rc, f"$.spec.initContainers[{index}]", init=True))
    for index, rc in enumerate(raw.spec.containers):
        containers.append(_normalise_container(rc, f"$.spec.containers[{index}]", init=False))
    duplicate = first_duplicate(c.name for c in containers)
    if duplicate is not None:
        raise ManifestError(f"container name {echo(duplicate)} is used twice", path="$.spec")
    overhead = _resource_map(raw.spec.overhead or {}, "$.spec.overhead")
    pod = Pod(
        uid=meta.uid,
        name=meta.name,
        namespace=meta.namespace,
        containers=tuple(containers),
        overhead=overhead,
    )
    if raw.spec.resources is None:
        return pod
    pod_level = _normalise_pod_resources(raw.spec.resources, "$.spec.resources")
    if pod_level is None:
        return pod
    _check_pod_level_covers_containers(pod, pod_level)
    return msgspec.structs.replace(pod, resources=pod_level)


def _normalise_pod_resources(raw: _RawResources, where: str) -> PodResources | None:
    """Pod-level resources after defaulting and validation; None when no quantity is set (zero
    counts as unset, as in the kubelet's helpers)."""
    for field_name, values in (("requests", raw.requests), ("limits", raw.limits)):
        for name in sorted(values or {}):
            if name not in (CPU, MEMORY) and not is_hugepage_resource(name):
                raise ManifestError(
                    f"{name} is not supported at pod level (cpu, memory and hugepages are)",
                    path=f"{where}.{field_name}.{name}",
                )
    requests = {
        r: v for r, v in _resource_map(raw.requests or {}, where + ".requests").items() if v > 0
    }
    limits = {r: v for r, v in _resource_map(raw.limits or {}, where + ".limits").items() if v > 0}
    if not requests and not limits:
        return None
    for resource, size in limits.items():
        requests.setdefault(resource, size)  # API defaulting, as for containers
    for resource, request in sorted(requests.items()):
        limit = limits.get(resource)
        path = f"{where}.requests.{resource}"
        if is_hugepage_resource(resource) and limit is not None and request != limit:
            raise ManifestError(f"{resource} request must equal its limit", path=path)
        if limit is not None and request > limit:
            raise ManifestError(
                f"{resource} request {request} must be less than or equal to limit {limit}",
                path=path,
            )
    return PodResources(requests=requests, limits=limits)


def _check_pod_level_covers_containers(pod: Pod, pod_level: PodResources) -> None:
    """The API server's consistency rule: a pod-level limit is at least every container's limit
    (checked first: a container limit also defaults its request), a pod-level request at least
    the containers' aggregate request."""
    for resource, limit in sorted(pod_level.limits.items()):
        for c in pod.containers:
            own = c.limits.get(resource, 0)
            if own > limit:
                raise ManifestError(
                    f"pod-level {resource} limit {limit} is below container {c.name}'s limit {own}",
                    path=f"$.spec.resources.limits.{resource}",
                )
    for resource, request in sorted(pod_level.requests.items()):
        containers = aggregate(pod, resource, field="requests")
        if containers > request:
            raise ManifestError(
                f"pod-level {resource} request {request} is below the aggregate container "
                f"request {containers}",
                path=f"$.spec.resources.requests.{resource}",
            )


def first_duplicate(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, or None; one set lookup per name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _normalise_container(raw: _RawContainer, where: str, *, init: bool) -> ContainerSpec:
    if not _DNS_LABEL_RE.fullmatch(raw.name):
        raise ManifestError(
            f"container name {echo(raw.name)} is not a DNS-1123 label", path=where + ".name"
        )
    kind: ContainerKind = "init" if init else "app"
    if raw.restartPolicy is not None:
        if not init:
            raise ManifestError(
                "restartPolicy may only be set on init containers", path=where + ".restartPolicy"
            )
        if raw.restartPolicy != "Always":
            raise ManifestError(
                f"init container restartPolicy must be Always, got {echo(raw.restartPolicy)}",
                path=where + ".restartPolicy",
            )
        kind = "sidecar"
    resources = raw.resources or _RawResources()
    requests = _resource_map(resources.requests or {}, where + ".resources.requests")
    limits = _resource_map(resources.limits or {}, where + ".resources.limits")
    for resource, size in limits.items():
        requests.setdefault(resource, size)  # API defaulting: a limit alone sets the request
    for resource, request in sorted(requests.items()):
        limit = limits.get(resource)
        path = f"{where}.resources.requests.{resource}"
        if is_hugepage_resource(resource):
            if limit is None:
                raise ManifestError(f"{resource} must be set in limits", path=path)
            if request != limit:
                raise ManifestError(f"{resource} request must equal its limit", path=path)
        elif limit is not None and request > limit:
            raise ManifestError(
                f"{resource} request {request} must be less than or equal to limit {limit}",
                path=path,
            )
    return ContainerSpec(name=raw.name, kind=kind, requests=requests, limits=limits)


def _resource_map(values: dict[str, QuantityInput], where: str) -> dict[str, int]:
    """cpu (millicores), memory and hugepages-* (bytes); other resources are validated and
    dropped."""
    result: dict[str, int] = {}
    for name, value in sorted(values.items()):
        path = f"{where}.{name}"
        if name == CPU:
            result[CPU] = _quantity(parse_millis, value, path)
        elif name == MEMORY or is_hugepage_resource(name):
            resource = canonical_resource_name(name, path=path)
            if resource in result:
                raise ManifestError(f"{name} duplicates {resource}", path=path)
            result[resource] = _quantity(parse_bytes, value, path)
        else:
            _quantity(parse_bytes, value, path)  # still a quantity: reject garbage
    return result


def _quantity(parse: Callable[..., int], value: QuantityInput, path: str) -> int:
    """`parse(value, path=path)`, remembered for the few quantities manifests spell (exact
    arithmetic on fractions is most of a pod's decoding); an error names `path` as before."""
    try:
        return _remembered_quantity(parse, value)
    except TypeError:  # not hashable: the parser says what it is
        return parse(value, path=path)
    except InputError:
        return parse(value, path=path)  # raises again, naming the field


@functools.lru_cache(maxsize=256, typed=True)  # typed: 1, 1.0 and True are different inputs
def _remembered_quantity(parse: Callable[..., int], value: QuantityInput) -> int:
    return parse(value)
