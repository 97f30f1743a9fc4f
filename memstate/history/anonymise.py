"""Anonymise a log for a bug report, keeping it replayable (`memstate replay anonymise`).

What is replaced, consistently across the whole log: pod UIDs, pod names, namespaces,
container names, manifest and config sources, hostnames and boot ids. What is kept, because it
is the bug: every size, the topology, the config, the timestamps, the order of records, the
number and order of containers, kernel release and versions.

Theory of operation
-------------------
Two passes over the source, both streaming.

1. Collect every pod UID and sort them. The reducer orders pods by UID wherever order matters
   (readmission, reconfiguration), so pseudonyms must sort like the originals: the n-th UID in
   sorted order becomes `pod-<n>` with a fixed width. Other names get sequential pseudonyms in
   order of appearance (`name-1`, `ns-1`, `ctr-1`, `source-1`, `host-1`, `boot-1`).
2. Walk the original transition by transition beside an anonymised state. Each input is mapped
   field by field (the pod's UID, name, namespace and container names; sources; hostnames).
   Decisions are never edited as text where that can be avoided: where the original's recorded
   decisions agree with this build, the anonymised decisions are *re-derived* by this build from
   the anonymised input and state, so messages, spec hashes and cgroup paths are exactly what
   replay will derive. Where the original diverges (the interesting part of a bug report), its
   recorded decisions are mapped field by field, and their messages rewritten token by token
   (known pod keys, UIDs, container names after "container", source paths).

   Every transition is checked as it is written: the anonymised decisions must equal the
   original's once names are set aside (kinds, reasons, allocations, takes, cgroup file values,
   counters), and the anonymised replay must diverge exactly where the original does. Anything
   else stops the command (`AnonymiseError`) rather than produce a misleading report.

Limits, stated plainly: free text that memstate did not write (a manifest error, a cgroup
write's error message) is rewritten only where it names a known identifier; numbers (sizes,
NUMA ids, timestamps) are never touched, which is the point.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from memstate.core.errors import InvariantViolation, MemstateError
from memstate.core.events import (
    AllocationRevoked,
    CgroupDriftCorrected,
    CgroupOrphanFound,
    CgroupWriteFailed,
    ConfigLoaded,
    ConfigRejected,
    DaemonStarted,
    Envelope,
    Event,
    KubeletStateImported,
    LogTailTruncated,
    ManifestInvalid,
    NodeReconfigurationDeferred,
    NodeReconfigured,
    PodAdmissionRequested,
    PodAdmitted,
    PodCgroupRemoved,
    PodInitCompleted,
    PodRejected,
    PodRemovalRequested,
    PodRemoved,
    ReadmissionDeferred,
    ShadowDisagreement,
    TopologyObserved,
    pod_uid_of,
)
from memstate.core.kubelet_checkpoint import CheckpointPod
from memstate.core.kubelet_import import IMPORTED_SPEC_HASH
from memstate.core.numa_policy import PodAllocation, ProviderHints
from memstate.core.pod import Pod, spec_hash
from memstate.core.reducer import apply, apply_all, decide
from memstate.core.scenario import envelope_to_object
from memstate.core.shadow import NUMA_NODES
from memstate.core.state import State
from memstate.core.targets import PodTargets
from memstate.history.replay import LogSource, Transition, transitions


class AnonymiseError(MemstateError):
    """The anonymised log would not replay like the original (a bug, or a log this tool does
    not understand); nothing misleading is kept."""


@dataclass
class Pseudonyms:
    """Original → pseudonym, per kind of identifier."""

    uids: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    boot_ids: dict[str, str] = field(default_factory=dict)

    def uid(self, value: str) -> str:
        if not value:
            return value
        if value not in self.uids:  # a UID first seen in a note (an orphan cgroup): no order
            self.uids[value] = f"unknown-{len(self.uids) + 1}"
        return self.uids[value]

    @staticmethod
    def _next(table: dict[str, str], value: str, prefix: str) -> str:
        if not value:
            return value
        if value not in table:
            table[value] = f"{prefix}-{len(table) + 1}"
        return table[value]

    def name(self, value: str) -> str:
        return self._next(self.names, value, "name")

    def namespace(self, value: str) -> str:
        return self._next(self.namespaces, value, "ns")

    def container(self, value: str) -> str:
        return self._next(self.containers, value, "ctr")

    def source(self, value: str) -> str:
        return self._next(self.sources, value, "source")

    def host(self, value: str) -> str:
        return self._next(self.hosts, value, "host")

    def boot_id(self, value: str) -> str:
        return self._next(self.boot_ids, value, "boot")


def sorted_uid_pseudonyms(uids: set[str]) -> dict[str, str]:
    """`pod-0001`, … in the originals' sort order (fixed width keeps the order)."""
    width = max(len(str(len(uids))), 4)
    return {uid: f"pod-{index:0{width}d}" for index, uid in enumerate(sorted(uids), start=1)}


# --- mapping events -------------------------------------------------------------------------------

_PATH = re.compile(r"/[^\s,;()'\"]+")
_SYSTEMD_POD = re.compile(r"^(kubepods(?:-[a-z]+)?-pod)(.+)\.slice$")
_TOKEN = re.compile(r"(container )?([A-Za-z0-9][A-Za-z0-9._-]*)(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class Mapper:
    """Maps events field by field with one `Pseudonyms` table."""

    def __init__(self, names: Pseudonyms) -> None:
        self.names = names
        self._keys: dict[str, str] = {}  # "namespace/name" → pseudonym key, as pods are seen

    def pod(self, pod: Pod) -> Pod:
        namespace, name = self.names.namespace(pod.namespace), self.names.name(pod.name)
        self._keys[pod.key] = f"{namespace}/{name}"
        containers = tuple(
            msgspec.structs.replace(c, name=self.names.container(c.name)) for c in pod.containers
        )
        return msgspec.structs.replace(
            pod, uid=self.names.uid(pod.uid), name=name, namespace=namespace, containers=containers
        )

    def hints(self, hints: tuple[ProviderHints, ...]) -> tuple[ProviderHints, ...]:
        return tuple(
            msgspec.structs.replace(h, container=self.names.container(h.container)) for h in hints
        )

    def text(self, text: str) -> str:
        """Free text: known source paths, pod keys, UIDs and `container <name>` rewritten."""
        text = _PATH.sub(lambda m: self.names.sources.get(m.group(0), m.group(0)), text)

        def token(match: re.Match[str]) -> str:
            prefix, head, tail = match.group(1) or "", match.group(2), match.group(3) or ""
            whole = head + tail
            if tail and whole in self._keys:
                return prefix + self._keys[whole]
            if prefix and not tail and head in self.names.containers:
                return prefix + self.names.containers[head]
            if not tail and head in self.names.uids:
                return prefix + self.names.uids[head]
            return match.group(0)

        return _TOKEN.sub(token, text)

    def path(self, path: str) -> str:
        """A cgroup path: the pod component (`pod<uid>`, or systemd's
        `kubepods-<qos>-pod<uid with underscores>.slice`) gets the pseudonym; a UID no record
        names (an orphan cgroup) gets one too, so it does not leak."""
        parts = []
        for part in path.split("/"):
            systemd = _SYSTEMD_POD.match(part)
            if systemd is not None:
                uid = self.names.uid(systemd.group(2).replace("_", "-"))
                part = systemd.group(1) + uid.replace("-", "_") + ".slice"
            elif part.startswith("pod") and len(part) > 3:
                part = "pod" + self.names.uid(part[3:])
            parts.append(part)
        return "/".join(parts)

    def allocation(self, allocation: PodAllocation | None) -> PodAllocation | None:
        if allocation is None:
            return None
        containers = tuple(
            msgspec.structs.replace(c, name=self.names.container(c.name))
            for c in allocation.containers
        )
        return msgspec.structs.replace(allocation, containers=containers)

    def targets(self, targets: PodTargets | None) -> PodTargets | None:
        if targets is None:
            return None
        containers = tuple(
            msgspec.structs.replace(c, name=self.names.container(c.name))
            for c in targets.containers
        )
        return msgspec.structs.replace(
            targets,
            uid=self.names.uid(targets.uid),
            cgroup=self.path(targets.cgroup),
            containers=containers,
        )

    def event(self, event: Event) -> Event:
        """The event with every identifier replaced (events that carry none are returned as is)."""
        match event:
            case DaemonStarted():
                return msgspec.structs.replace(
                    event,
                    hostname=self.names.host(event.hostname),
                    boot_id=self.names.boot_id(event.boot_id),
                )
            case TopologyObserved():
                return msgspec.structs.replace(event, source=self.names.source(event.source))
            case ConfigLoaded():
                return msgspec.structs.replace(event, source=self.names.source(event.source))
            case ConfigRejected():
                return msgspec.structs.replace(
                    event, source=self.names.source(event.source), error=self.text(event.error)
                )
            case PodAdmissionRequested():
                return msgspec.structs.replace(
                    event,
                    pod=self.pod(event.pod),
                    source=self.names.source(event.source),
                    provider_hints=self.hints(event.provider_hints),
                )
            case PodRemovalRequested():
                return msgspec.structs.replace(
                    event, uid=self.names.uid(event.uid), source=self.names.source(event.source)
                )
            case ManifestInvalid():
                source = self.names.source(event.source)
                return msgspec.structs.replace(event, source=source, error=self.text(event.error))
            case PodInitCompleted():
                return msgspec.structs.replace(event, uid=self.names.uid(event.uid))
            case PodAdmitted() if event.spec_hash == IMPORTED_SPEC_HASH:
                # A stand-in from the kubelet's checkpoint: named by its UID, as the reducer
                # re-derives it from the (anonymised) `kubelet_state_imported`.
                pod = self.pod(event.pod)
                pod = msgspec.structs.replace(pod, name=pod.uid, namespace=event.pod.namespace)
                return msgspec.structs.replace(
                    event,
                    pod=pod,
                    allocation=self.allocation(event.allocation),
                    targets=self.targets(event.targets),
                    source=self.names.source(event.source),
                )
            case KubeletStateImported():
                pods = tuple(
                    CheckpointPod(
                        uid=self.names.uid(p.uid),
                        containers=tuple(
                            msgspec.structs.replace(c, name=self.names.container(c.name))
                            for c in p.containers
                        ),
                    )
                    for p in event.pods
                )
                return msgspec.structs.replace(
                    event, source=self.names.source(event.source), pods=pods
                )
            case ShadowDisagreement():
                return msgspec.structs.replace(
                    event,
                    uid=self.names.uid(event.uid),
                    # The checkpoint file for NUMA nodes, else the pod cgroup's path.
                    where=self.names.source(event.where)
                    if event.subject == NUMA_NODES
                    else self.path(event.where),
                )
            case PodAdmitted():
                pod = self.pod(event.pod)
                return msgspec.structs.replace(
                    event,
                    pod=pod,
                    spec_hash=spec_hash(pod),
                    allocation=self.allocation(event.allocation),
                    targets=self.targets(event.targets),
                    source=self.names.source(event.source),
                )
            case PodRejected():
                return msgspec.structs.replace(
                    event,
                    message=self.text(event.message),
                    uid=self.names.uid(event.uid),
                    name=self.names.name(event.name),
                    namespace=self.names.namespace(event.namespace)
                    if event.name
                    else event.namespace,
                    source=self.names.source(event.source),
                )
            case PodRemoved():
                return msgspec.structs.replace(event, uid=self.names.uid(event.uid))
            case ReadmissionDeferred():
                return msgspec.structs.replace(
                    event,
                    pod=self.pod(event.pod),
                    source=self.names.source(event.source),
                    provider_hints=self.hints(event.provider_hints),
                )
            case NodeReconfigured():
                revoked = tuple(
                    AllocationRevoked(
                        uid=self.names.uid(r.uid), reason=r.reason, message=self.text(r.message)
                    )
                    for r in event.revoked
                )
                return msgspec.structs.replace(event, revoked=revoked)
            case NodeReconfigurationDeferred():
                return msgspec.structs.replace(event, message=self.text(event.message))
            case LogTailTruncated():
                return msgspec.structs.replace(
                    event, broken_copy=Path(event.broken_copy).name if event.broken_copy else ""
                )
            case CgroupDriftCorrected():
                return msgspec.structs.replace(event, path=self.path(event.path))
            case CgroupWriteFailed():
                return msgspec.structs.replace(
                    event, path=self.path(event.path), message=self.text(event.message)
                )
            case CgroupOrphanFound():
                return msgspec.structs.replace(event, path=self.path(event.path))
            case PodCgroupRemoved():
                return msgspec.structs.replace(
                    event, path=self.path(event.path), uid=self.names.uid(event.uid)
                )
            case _:
                return event


# --- the name-free view used for checking ---------------------------------------------------------


def shape(event: Event, uid: Callable[[str], str]) -> Any:
    """What must survive anonymisation: the event without names, messages or hashes, with
    UIDs passed through `uid` (the pseudonym map for the original, identity for the copy)."""
    if isinstance(event, PodAdmitted):
        allocation = event.allocation
        targets = event.targets
        return (
            event.kind,
            uid(event.uid),
            event.qos_class,
            event.restored,
            event.pinning_requests,
            _pod_shape(event.pod),
            None
            if allocation is None
            else (
                tuple((c.hint, c.blocks) for c in allocation.containers),
                allocation.takes,
            ),
            None
            if targets is None
            else (
                sorted(targets.files.items()),
                tuple(sorted(c.files.items()) for c in targets.containers),
            ),
        )
    if isinstance(event, PodRejected):
        return (
            event.kind,
            uid(event.uid),
            event.reason,
            event.pinning_requests,
            event.pinning_errors,
        )
    if isinstance(event, (PodRemoved, ReadmissionDeferred)):
        return (event.kind, uid(event.uid), event.reason)
    if isinstance(event, NodeReconfigured):
        return (event.kind, tuple((uid(r.uid), r.reason) for r in event.revoked))
    return (event.kind, uid(pod_uid_of(event)))


def _pod_shape(pod: Pod) -> Any:
    return (tuple((c.kind, c.requests, c.limits) for c in pod.containers), pod.overhead)


# --- the command's engine -------------------------------------------------------------------------


@dataclass
class AnonymiseResult:
    records: int
    pods: int
    names: int
    divergence_seq: int | None  # first divergence (the same in the original and the copy)
    pseudonyms: Pseudonyms

    def mapping_json(self) -> str:
        """The pseudonym table, original → pseudonym (keep it private)."""
        return msgspec.json.format(msgspec.json.encode(self.pseudonyms)).decode() + "\n"


def collect_uids(source: LogSource) -> set[str]:
    """Every pod UID the log names (pass 1)."""
    uids: set[str] = set()
    for envelope in source.envelopes():
        event = envelope.event
        uid = pod_uid_of(event)
        if uid:
            uids.add(uid)
        if isinstance(event, (PodAdmitted, ReadmissionDeferred)):
            uids.add(event.pod.uid)
        if isinstance(event, NodeReconfigured):
            uids.update(r.uid for r in event.revoked)
    return uids


def anonymise_log(source: LogSource, output: Path) -> AnonymiseResult:
    """Write an anonymised JSON-lines copy of `source` to `output` (see the module docstring).
    Raises `AnonymiseError` (and removes the partial file) if the copy would not replay like the
    original."""
    names = Pseudonyms(uids=sorted_uid_pseudonyms(collect_uids(source)))
    mapper = Mapper(names)
    encoder = msgspec.json.Encoder()
    records = 0
    first_divergence: int | None = None
    state = State()
    try:
        with output.open("w", encoding="utf-8") as out:
            out.write(
                "# memstate log, anonymised by `memstate replay anonymise`: pod UIDs, names, "
                "namespaces, containers, sources, hosts and boot ids replaced; sizes, topology, "
                "config and times kept.\n"
            )
            for transition in transitions(source.envelopes()):
                written, state = _anonymise_transition(transition, mapper, state)
                for envelope in written:
                    out.write(encoder.encode(envelope_to_object(envelope)).decode() + "\n")
                records += len(written)
                if transition.diverges and first_divergence is None:
                    first_divergence = transition.record.seq
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return AnonymiseResult(
        records=records,
        pods=len(names.uids),
        names=len(names.names),
        divergence_seq=first_divergence,
        pseudonyms=names,
    )


def _anonymise_transition(
    transition: Transition, mapper: Mapper, state: State
) -> tuple[list[Envelope], State]:
    record = transition.record
    event = mapper.event(record.event)
    derived = decide(state, event)
    original_shape = tuple(shape(d, mapper.names.uid) for d in transition.derived)
    if tuple(shape(d, _same) for d in derived) != original_shape:
        raise AnonymiseError(
            f"seq {record.seq} ({record.event.kind}): the anonymised input leads this build to "
            "other decisions than the original; the log cannot be anonymised faithfully"
        )
    recorded: tuple[Event, ...] | None = None
    if transition.recorded is not None:
        if transition.diverges:
            recorded = tuple(mapper.event(e.event) for e in transition.recorded)
            if recorded == derived:
                raise AnonymiseError(
                    f"seq {record.seq}: the original diverges here but the anonymised copy "
                    "would not (the divergence is only in names or messages); nothing written"
                )
        else:
            recorded = derived
    applied = recorded if recorded is not None else derived
    try:
        after = apply_all(apply(state, event), applied)
    except InvariantViolation:
        if transition.apply_error is None:
            raise
        after = state  # the original's recorded decisions do not fit either
    out = [msgspec.structs.replace(record, event=event)]
    if transition.recorded is not None:
        if recorded is None:
            raise InvariantViolation(f"seq {record.seq}: recorded decisions were not anonymised")
        out.extend(
            msgspec.structs.replace(original, event=decision)
            for original, decision in zip(transition.recorded, recorded, strict=True)
        )
    return out, after


def _same(uid: str) -> str:
    return uid
