"""The event catalogue: everything that ever influences memstate's state is one of these.

Every event body is a frozen Struct in one tagged union. The tag (`kind`) is an explicit stable
string (`"pod_admitted"`), never a Python class path, so renaming a class never changes stored data.
An `Envelope` carries the sequence number, the UTC timestamp in integer nanoseconds (stamped by the
shell: the only way time enters) and the schema version of the body.

Three roles:
- **input** — something observed or requested: a pod manifest, a removal, the topology, the
  config, a daemon start. The shell records it; the reducer's `decide` turns it into decisions.
- **decision** — the reducer's verdict on an input (`pod_admitted`, `pod_rejected`,
  `pod_removed`, `node_reconfigured`...). The shell appends the decisions right after their input,
  in the same fsync batch, and the input's envelope says how many follow (`decisions`), so a
  transition is never half-recorded and replay can re-derive and compare each verdict.
- **note** — an outcome reported by the shell that does not change reducer state (a cgroup write
  that failed, drift corrected, a truncated log tail). Kept for audit.

Schema evolution (docs/event-log.md): additive changes (new optional fields with defaults, new
kinds) need nothing; a rename or a change of meaning needs a new `SCHEMA_VERSION` and an upcaster
in `memstate.core.codec` that rewrites the old raw form before typed decoding.
"""

from __future__ import annotations

from typing import ClassVar, Literal, cast

import msgspec

from memstate.core.config import NodeConfig
from memstate.core.errors import InvariantViolation
from memstate.core.kubelet_checkpoint import CheckpointPod
from memstate.core.numa_policy import PodAllocation, ProviderHints
from memstate.core.pod import Pod, QOSClass
from memstate.core.targets import PodTargets
from memstate.core.topology import Topology

# v1 → v2: `daemon_started.version` was renamed `memstate_version` (see memstate.core.codec).
SCHEMA_VERSION = 2

EventRole = Literal["input", "decision", "note"]


class Event(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="kind"
):
    """Base of every event body."""

    role: ClassVar[EventRole]

    @property
    def kind(self) -> str:
        """The stable tag of this event type."""
        tag = type(self).__struct_config__.tag
        if not isinstance(tag, str):
            raise InvariantViolation(f"{type(self).__name__} has no string tag")
        return tag


# --- inputs ---------------------------------------------------------------------------------------


class DaemonStarted(Event, frozen=True, tag="daemon_started"):
    """A memstate process started (recorded at every start, before anything else)."""

    role: ClassVar[EventRole] = "input"
    memstate_version: str
    reducer_version: int
    python: str = ""
    hostname: str = ""
    boot_id: str = ""
    kernel_release: str = ""


class DaemonRestarted(Event, frozen=True, tag="daemon_restarted"):
    """A start with history: every running pod now awaits readmission.

    Until `readmission_completed`, pods that were running keep their memory, and only the same pod
    (same UID and spec) gets it back; new pods cannot take it.
    """

    role: ClassVar[EventRole] = "input"


class TopologyObserved(Event, frozen=True, tag="topology_observed"):
    """The NUMA topology as observed (sysfs or a topology file)."""

    role: ClassVar[EventRole] = "input"
    topology: Topology
    source: str = ""


class ConfigLoaded(Event, frozen=True, tag="config_loaded"):
    """A validated configuration (at start or on reload)."""

    role: ClassVar[EventRole] = "input"
    config: NodeConfig
    source: str = ""


class ConfigRejected(Event, frozen=True, tag="config_rejected"):
    """A configuration that failed validation; the previous one stays in force."""

    role: ClassVar[EventRole] = "note"
    source: str
    error: str


class PodAdmissionRequested(Event, frozen=True, tag="pod_admission_requested"):
    """A pod to admit (a new manifest, or readmission after a restart)."""

    role: ClassVar[EventRole] = "input"
    pod: Pod
    source: str = ""
    provider_hints: tuple[ProviderHints, ...] = ()
    # Which pod source asked ("manifests", "kubelet", "apiserver"); "" in logs written before
    # pod sources existed and in hand-written scenarios. Never read by the reducer.
    pod_source: str = ""


class PodRemovalRequested(Event, frozen=True, tag="pod_removal_requested"):
    """A pod to remove (its manifest was deleted, it finished, or it was deleted
    and its cgroup is gone)."""

    role: ClassVar[EventRole] = "input"
    uid: str
    source: str = ""
    # Which pod source asked ("manifests", "kubelet", "apiserver"); "" in logs written before
    # pod sources existed and in hand-written scenarios. Never read by the reducer.
    pod_source: str = ""


class ManifestInvalid(Event, frozen=True, tag="manifest_invalid"):
    """A manifest that could not be decoded; turned into a `pod_rejected` decision."""

    role: ClassVar[EventRole] = "input"
    source: str
    error: str
    # Which pod source asked ("manifests", "kubelet", "apiserver"); "" in logs written before
    # pod sources existed and in hand-written scenarios. Never read by the reducer.
    pod_source: str = ""


class PodInitCompleted(Event, frozen=True, tag="pod_init_completed"):
    """A pod's regular init containers finished and its app containers started.

    Like the kubelet's `AddContainer`, this frees what the init containers still held. History
    then says those init containers ran, so readmission after a restart reserves nothing for them
    (upstream fails such pods, k/k#123971).
    """

    role: ClassVar[EventRole] = "input"
    uid: str
    # Which pod source asked ("manifests", "kubelet", "apiserver"); "" in logs written before
    # pod sources existed and in hand-written scenarios. Never read by the reducer.
    pod_source: str = ""


class KubeletStateImported(Event, frozen=True, tag="kubelet_state_imported"):
    """The kubelet Memory Manager's checkpoint (`memstate import kubelet-state`): its pods'
    blocks become their allocations, kept when the pods come back (docs/operations.md, "Moving
    from the kubelet's Memory Manager"). `checksum` is the one verified (`dataChecksum` for v3)."""

    role: ClassVar[EventRole] = "input"
    source: str
    policy_name: str
    layout: str
    checksum: int
    pods: tuple[CheckpointPod, ...] = ()


class ReadmissionCompleted(Event, frozen=True, tag="readmission_completed"):
    """Every pod that still runs has been re-requested; the rest are gone."""

    role: ClassVar[EventRole] = "input"


# --- decisions ------------------------------------------------------------------------------------


class PodAdmitted(Event, frozen=True, tag="pod_admitted"):
    """The pod may run; `allocation` is its NUMA pinning (None when nothing is pinned).

    The decision carries the pod spec, so audit reads one self-contained record per admission.
    `restored` marks a readmission after a restart that got back exactly what the pod held.
    """

    role: ClassVar[EventRole] = "decision"
    pod: Pod
    qos_class: QOSClass
    spec_hash: str
    allocation: PodAllocation | None = None
    targets: PodTargets | None = None
    restored: bool = False
    pinning_requests: int = 0
    source: str = ""

    @property
    def uid(self) -> str:
        return self.pod.uid


class PodRejected(Event, frozen=True, tag="pod_rejected"):
    """The pod may not run. `reason` is the upstream reason name."""

    role: ClassVar[EventRole] = "decision"
    reason: str
    message: str
    uid: str = ""
    name: str = ""
    namespace: str = ""
    source: str = ""
    pinning_requests: int = 0
    pinning_errors: int = 0


RemovalReason = Literal["requested", "not_readmitted", "spec_changed"]


class PodRemoved(Event, frozen=True, tag="pod_removed"):
    """The pod is gone from state; everything it held is free again."""

    role: ClassVar[EventRole] = "decision"
    uid: str
    reason: RemovalReason


class ReadmissionDeferred(Event, frozen=True, tag="readmission_deferred"):
    """A pod awaiting readmission that cannot simply get its allocation back (it was revoked,
    the pod was admitted unpinned under another policy, or its spec changed) is decided when
    readmission completes, in UID order, so the outcome never depends on the order in which pods
    come back. The request is kept until then."""

    role: ClassVar[EventRole] = "decision"
    pod: Pod
    reason: str
    source: str = ""
    provider_hints: tuple[ProviderHints, ...] = ()

    @property
    def uid(self) -> str:
        return self.pod.uid


class AllocationRevoked(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pod whose NUMA allocation could not be kept after a topology or config change."""

    uid: str
    reason: str
    message: str


class NodeReconfigured(Event, frozen=True, tag="node_reconfigured"):
    """The observed topology and config become the ones decisions are made under.

    Allocations are re-placed exactly as recorded; those that no longer fit are listed in
    `revoked` with the reason and lose their pinning (the pods keep running unpinned).
    """

    role: ClassVar[EventRole] = "decision"
    revoked: tuple[AllocationRevoked, ...] = ()


class NodeReconfigurationDeferred(Event, frozen=True, tag="node_reconfiguration_deferred"):
    """The observed topology and config do not fit together (yet); the previous pair stays."""

    role: ClassVar[EventRole] = "decision"
    message: str


# --- notes ----------------------------------------------------------------------------------------


class ShadowDisagreement(Event, frozen=True, tag="shadow_disagreement"):
    """In shadow mode: memstate's decision for a pod and what the kubelet did differ (or, with
    `resolved`, no longer differ). Recorded when a disagreement starts, changes or ends, never
    once per poll.

    `subject` says what differs: `numa_nodes` (the kubelet checkpoint's blocks against memstate's
    allocation), `not_pinned_by_kubelet` / `not_pinned_by_memstate`, or a cgroup file of the pod
    (`memory.min`, `memory.low`, `memory.high`, `memory.max`, `cpuset.mems`). `where` is the
    checkpoint file or the cgroup path."""

    role: ClassVar[EventRole] = "note"
    uid: str
    subject: str
    memstate: str
    kubelet: str
    where: str = ""
    resolved: bool = False


class LogTailTruncated(Event, frozen=True, tag="log_tail_truncated"):
    """Recovery cut a torn tail off the log (never anything acknowledged)."""

    role: ClassVar[EventRole] = "note"
    segment: str
    offset: int
    bytes_dropped: int
    broken_copy: str = ""


class CgroupDriftCorrected(Event, frozen=True, tag="cgroup_drift_corrected"):
    """A cgroup file had been changed behind memstate's back and was rewritten."""

    role: ClassVar[EventRole] = "note"
    path: str
    file: str
    expected: str
    found: str


class CgroupWriteFailed(Event, frozen=True, tag="cgroup_write_failed"):
    """A cgroup operation failed; the reconciler retries."""

    role: ClassVar[EventRole] = "note"
    path: str
    op: str
    errno: int
    message: str
    file: str = ""
    value: str = ""


class CgroupOrphanFound(Event, frozen=True, tag="cgroup_orphan_found"):
    """A pod cgroup under the managed root that no state explains."""

    role: ClassVar[EventRole] = "note"
    path: str
    removed: bool = False


class PodCgroupRemoved(Event, frozen=True, tag="pod_cgroup_removed"):
    """A retired pod cgroup (its pod removed, rejected or moved to another QoS cgroup) was seen
    gone; until this note, recovery keeps it among the removals to finish
    (`memstate.core.removals`)."""

    role: ClassVar[EventRole] = "note"
    path: str
    uid: str


AnyEvent = (
    DaemonStarted
    | DaemonRestarted
    | TopologyObserved
    | ConfigLoaded
    | ConfigRejected
    | PodAdmissionRequested
    | PodRemovalRequested
    | ManifestInvalid
    | PodInitCompleted
    | ReadmissionCompleted
    | KubeletStateImported
    | PodAdmitted
    | PodRejected
    | PodRemoved
    | ReadmissionDeferred
    | NodeReconfigured
    | NodeReconfigurationDeferred
    | LogTailTruncated
    | CgroupDriftCorrected
    | CgroupWriteFailed
    | CgroupOrphanFound
    | PodCgroupRemoved
    | ShadowDisagreement
)

EVENT_TYPES: tuple[type[Event], ...] = (
    DaemonStarted,
    DaemonRestarted,
    TopologyObserved,
    ConfigLoaded,
    ConfigRejected,
    PodAdmissionRequested,
    PodRemovalRequested,
    ManifestInvalid,
    PodInitCompleted,
    ReadmissionCompleted,
    KubeletStateImported,
    PodAdmitted,
    PodRejected,
    PodRemoved,
    ReadmissionDeferred,
    NodeReconfigured,
    NodeReconfigurationDeferred,
    LogTailTruncated,
    CgroupDriftCorrected,
    CgroupWriteFailed,
    CgroupOrphanFound,
    PodCgroupRemoved,
    ShadowDisagreement,
)

EVENT_KINDS: dict[str, type[Event]] = {str(t.__struct_config__.tag): t for t in EVENT_TYPES}

# The notes: no decision follows them and no state changes with them. The reducer's fast paths
# join this set into their own classifications, so a new note kind is classified everywhere.
NOTE_EVENTS: frozenset[type[Event]] = frozenset(t for t in EVENT_TYPES if t.role == "note")

_KNOWN_TYPES = frozenset(EVENT_TYPES)


def known_event(event: Event) -> AnyEvent:
    """`event` as a member of the catalogue union, so a `match` over it can be exhaustive.

    Raises InvariantViolation for an `Event` subclass outside the catalogue (it could not be
    stored or replayed)."""
    if type(event) not in _KNOWN_TYPES:
        raise InvariantViolation(f"{type(event).__name__} is not an event of the catalogue")
    return cast("AnyEvent", event)


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One log record: a body plus where and when it happened.

    `schema_v` has no default on purpose: it is always stored, so a future build never mistakes
    an old record for its own version. `decisions` is set on inputs written by the daemon: the
    number of decision records that follow as part of the same transition (None in hand-written
    scenarios, where decisions are derived). Field defaults of events are never changed once
    released (omitted defaults would be misread), only new optional fields added.
    """

    seq: int
    ts_ns: int
    schema_v: int
    event: AnyEvent
    decisions: int | None = None


def pod_uid_of(event: Event) -> str:
    """The pod UID an event is about, or "" (used by audit and log filters)."""
    if isinstance(event, PodAdmissionRequested):
        return event.pod.uid
    uid = getattr(event, "uid", "")
    return uid if isinstance(uid, str) else ""
