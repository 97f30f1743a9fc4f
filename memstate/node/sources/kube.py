"""The Kubernetes Pod fields memstate needs, as msgspec Structs, and their conversion.

Only what decides or drives events is decoded: identity (name, namespace, UID, the static/mirror
pod annotations), the container resources (through the core's own manifest validation), the phase,
the deletion timestamp and the init containers' termination — plus the runtime container ids
(`containerStatuses[].containerID`), which decide nothing: they tell the reconciler which
runtime-named container cgroup is which container (`container_ids`). Every other field is
skipped by the decoder without being materialised. Sizes are bounded by the callers
(`MAX_BODY_BYTES`, `MAX_PODS`).

Identity: the UID memstate uses is the kubelet-side one. An API-server mirror pod carries it in
the annotation `kubernetes.io/config.mirror` (its own `metadata.uid` is the API server's); a static
pod listed by the kubelet carries it as `metadata.uid`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from memstate.core.errors import InputError, SourceError
from memstate.core.plan.containers import runtime_container_id
from memstate.core.pod import pod_from_manifest, spec_hash
from memstate.node.sources.observation import Lifecycle, ObservedPod, SourceName

MAX_BODY_BYTES = 64 << 20  # a PodList of ~10,000 large pods
MAX_PODS = 20_000  # far above the kubelet's maxPods (default 110)
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
CONFIG_SOURCE_ANNOTATION = "kubernetes.io/config.source"

QuantityValue = str | int | float


class ObjectMeta(msgspec.Struct, frozen=True):
    name: str = ""
    namespace: str = "default"
    uid: str = ""
    resourceVersion: str = ""
    deletionTimestamp: str | None = None
    annotations: dict[str, str] | None = None


class Resources(msgspec.Struct, frozen=True, omit_defaults=True):
    requests: dict[str, QuantityValue] | None = None
    limits: dict[str, QuantityValue] | None = None


class Container(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    resources: Resources | None = None
    restartPolicy: str | None = None


class PodSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    containers: list[Container] = []
    initContainers: list[Container] | None = None
    overhead: dict[str, QuantityValue] | None = None
    # Pod-level resources (KEP-2837): the core validates them and decides on them.
    resources: dict[str, Any] | None = None
    nodeName: str | None = None


class Terminated(msgspec.Struct, frozen=True):
    exitCode: int = -1


class ContainerState(msgspec.Struct, frozen=True):
    terminated: Terminated | None = None


class ContainerStatus(msgspec.Struct, frozen=True):
    name: str = ""
    state: ContainerState | None = None
    # `containerd://<64 hex>` or `cri-o://<64 hex>`; "" before the container was created.
    containerID: str = ""


class PodStatus(msgspec.Struct, frozen=True):
    phase: str = ""
    initContainerStatuses: list[ContainerStatus] | None = None
    containerStatuses: list[ContainerStatus] | None = None


class KubePod(msgspec.Struct, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()
    kind: str = "Pod"
    apiVersion: str = "v1"


class ListMeta(msgspec.Struct, frozen=True):
    resourceVersion: str = ""
    # `continue` is a Python keyword: the field is decoded under another name.
    continue_token: str = msgspec.field(default="", name="continue")


class PodList(msgspec.Struct, frozen=True):
    items: list[KubePod] | None = None
    metadata: ListMeta = ListMeta()
    kind: str = ""
    apiVersion: str = ""


class Status(msgspec.Struct, frozen=True):
    """A Kubernetes `Status` (the object of a watch `ERROR` event, or an error response body)."""

    code: int = 0
    reason: str = ""
    message: str = ""


class WatchEvent(msgspec.Struct, frozen=True):
    """One line of a watch stream; `object` is decoded once the type is known."""

    type: str
    object: msgspec.Raw


_POD_LIST = msgspec.json.Decoder(PodList)
_POD = msgspec.json.Decoder(KubePod)
_STATUS = msgspec.json.Decoder(Status)
_WATCH_EVENT = msgspec.json.Decoder(WatchEvent)


def decode_pod_list(body: bytes, *, where: str) -> PodList:
    """A v1 PodList; `SourceError` naming `where` if the body is not one."""
    if len(body) > MAX_BODY_BYTES:
        raise SourceError(f"response larger than {MAX_BODY_BYTES} bytes", source=where)
    try:
        pods = _POD_LIST.decode(body)
    except msgspec.DecodeError as exc:
        raise SourceError(f"not a PodList: {exc}", source=where) from None
    if pods.kind != "PodList" or pods.apiVersion != "v1":
        raise SourceError(
            f"expected apiVersion v1, kind PodList; got {pods.apiVersion or '?'}/"
            f"{pods.kind or '?'}",
            source=where,
        )
    if len(pods.items or ()) > MAX_PODS:
        raise SourceError(f"more than {MAX_PODS} pods in one list", source=where)
    return pods


def decode_pod(raw: bytes | msgspec.Raw, *, where: str) -> KubePod:
    """One Pod object (from a watch event)."""
    try:
        return _POD.decode(raw)
    except msgspec.DecodeError as exc:
        raise SourceError(f"not a Pod: {exc}", source=where) from None


def decode_status(raw: bytes | msgspec.Raw) -> Status | None:
    """A Status object, or None if the bytes are not one."""
    try:
        return _STATUS.decode(raw)
    except msgspec.DecodeError:
        return None


def decode_watch_event(line: bytes, *, where: str) -> WatchEvent:
    """One watch stream line."""
    try:
        return _WATCH_EVENT.decode(line)
    except msgspec.DecodeError as exc:
        raise SourceError(f"not a watch event: {exc}", source=where) from None


def kubelet_uid(pod: KubePod) -> str:
    """The UID the kubelet, the runtime and the cgroups know this pod by (mirror pods mapped)."""
    annotations = pod.metadata.annotations or {}
    return annotations.get(MIRROR_ANNOTATION) or pod.metadata.uid


def observe(pod: KubePod, source_name: SourceName) -> ObservedPod:
    """A source-neutral observation of one Kubernetes pod."""
    meta = pod.metadata
    locator = f"{source_name}:{meta.namespace}/{meta.name}"
    uid = kubelet_uid(pod)
    document = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": uid},
        "spec": msgspec.to_builtins(pod.spec),
    }
    try:
        core_pod = pod_from_manifest(document, source=locator)
    except InputError as exc:
        where = f"{exc.path}: " if exc.path else ""
        return ObservedPod(locator, error=where + exc.message)
    annotations = meta.annotations or {}
    is_static = annotations.get(CONFIG_SOURCE_ANNOTATION) in ("file", "http")
    return ObservedPod(
        locator,
        pod=core_pod,
        spec_hash=spec_hash(core_pod),
        lifecycle=lifecycle(pod),
        init_completed=init_completed(pod),
        static_key=f"{meta.namespace}/{meta.name}" if is_static else "",
        container_ids=container_ids(pod),
    )


class ObservationCache:
    """`observe` for a whole list, reusing the previous list's results for unchanged pods.

    Validating a pod costs far more than re-encoding its few decoded fields, so a poll of
    hundreds of unchanged pods costs little more than the decode.
    """

    def __init__(self, source_name: SourceName) -> None:
        self.source_name = source_name
        self._last: dict[bytes, ObservedPod] = {}

    def observe_all(self, pods: list[KubePod]) -> list[ObservedPod]:
        """Observations of `pods`; remembers them for the next call."""
        current: dict[bytes, ObservedPod] = {}
        result = []
        for pod in pods:
            key = _ENCODER.encode(pod)
            # pop: each remembered observation serves one pod (the tracker tells entries apart
            # by identity, even two identical ones).
            observed = self._last.pop(key, None) or observe(pod, self.source_name)
            current[key] = observed
            result.append(observed)
        self._last = current
        return result


_ENCODER = msgspec.msgpack.Encoder(order="deterministic")


def lifecycle(pod: KubePod) -> Lifecycle:
    """finished (Succeeded/Failed), terminating (deletion requested) or active."""
    if pod.status.phase in ("Succeeded", "Failed"):
        return "finished"
    if pod.metadata.deletionTimestamp:
        return "terminating"
    return "active"


# A runtime container id as the cgroup names carry it (memstate.core.plan.containers).
_RUNTIME_ID_RE = re.compile(r"[0-9a-f]{64}")


def container_ids(pod: KubePod) -> tuple[tuple[str, str], ...]:
    """(bare runtime id, container name) of every init and app container the runtime has
    created, in status order; ids that are not the runtime's 64 hex digits are left out (no
    cgroup is named after them)."""
    found: list[tuple[str, str]] = []
    for status in (
        *(pod.status.initContainerStatuses or ()),
        *(pod.status.containerStatuses or ()),
    ):
        bare = runtime_container_id(status.containerID)
        if status.name and _RUNTIME_ID_RE.fullmatch(bare):
            found.append((bare, status.name))
    return tuple(found)


def init_completed(pod: KubePod) -> bool:
    """Every regular init container terminated with exit code 0 (False if there are none).

    Sidecars (`restartPolicy: Always`) keep running and do not count.
    """
    regular = [c.name for c in pod.spec.initContainers or () if c.restartPolicy != "Always"]
    if not regular:
        return False
    finished = set()
    for status in pod.status.initContainerStatuses or ():
        terminated = status.state.terminated if status.state is not None else None
        if terminated is not None and terminated.exitCode == 0:
            finished.add(status.name)
    return all(name in finished for name in regular)
