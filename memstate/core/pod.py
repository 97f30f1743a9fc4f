"""Pods: the normalised spec memstate decides on, its QoS class and its request sums.

A Kubernetes `v1` Pod manifest is decoded into `Pod`, which keeps only what matters here —
identity, containers with their cpu/memory/hugepages requests and limits, pod overhead — after
the API server's defaulting (a limit without a request makes request = limit) and validation
(request <= limit, hugepages request == limit, sidecars only among init containers, names that
can be used in cgroup paths). Every other Pod field is accepted and ignored.

Containers are kept in execution order: init containers (regular and sidecars) in spec order,
then app containers in spec order — the order the Topology Manager allocates in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
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


class Pod(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The part of a pod memstate decides on."""

    uid: str
    name: str
    namespace: str
    containers: tuple[ContainerSpec, ...]
    overhead: dict[str, int] = {}

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
    return hashlib.blake2b(_SPEC_ENCODER.encode(pod), digest_size=16).hexdigest()


# --- QoS class ------------------------------------------------------------------------------------


def container_qos_class(container: ContainerSpec) -> QOSClass:
    """BestEffort without cpu/memory requests or limits; Guaranteed with request == limit > 0 for
    both; Burstable otherwise. Zero quantities count as unset."""
    # Four lookups, no intermediate dicts: this runs for every container of every admission.
    requests, limits = container.requests, container.limits
    cpu_request, cpu_limit = requests.get(CPU, 0), limits.get(CPU, 0)
    memory_request, memory_limit = requests.get(MEMORY, 0), limits.get(MEMORY, 0)
    if not (cpu_request or memory_request or cpu_limit or memory_limit):
        return BEST_EFFORT
    if 0 < cpu_limit == cpu_request and 0 < memory_limit == memory_request:
        return GUARANTEED
    return BURSTABLE


def qos_class(pod: Pod) -> QOSClass:
    """Guaranteed iff every container (init and sidecars included) is Guaranteed; BestEffort iff
    every one is BestEffort; Burstable otherwise. Hugepages and other resources do not count."""
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
    """The pod's effective request (`PodRequests`): the aggregate plus pod overhead."""
    return aggregate(pod, resource, field="requests") + pod.overhead.get(resource, 0)


def pod_limit(pod: Pod, resource: str = MEMORY) -> int | None:
    """The pod's limit when *every* container declares one (plus overhead), else None."""
    if not all(c.limits.get(resource, 0) > 0 for c in pod.containers):
        return None
    return aggregate(pod, resource, field="limits") + pod.overhead.get(resource, 0)


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
    resources: dict[str, Any] | None = None


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
    if raw.spec.resources is not None:
        raise ManifestError(
            "pod-level resources (spec.resources) are not supported; set container resources",
            path="$.spec.resources",
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
    return pod


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
            result[CPU] = parse_millis(value, path=path)
        elif name == MEMORY or is_hugepage_resource(name):
            resource = canonical_resource_name(name, path=path)
            if resource in result:
                raise ManifestError(f"{name} duplicates {resource}", path=path)
            result[resource] = parse_bytes(value, path=path)
        else:
            parse_bytes(value, path=path)  # still a quantity: reject garbage
    return result
