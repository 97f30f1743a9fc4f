"""The reducer: `decide` turns an input into decisions, `apply` folds any event into state.

Theory of operation
-------------------
The shell records an input event, asks `decide(state, input)` for the decisions it implies,
appends the input and its decisions in one fsync batch, then `apply`s all of them. Replay does the
same with recorded events, which is how it can re-derive every decision and compare it with what
was recorded. Two rules keep this honest:

1. `decide` reads only its arguments; `apply` reads only its arguments. Neither reads a clock,
   a random source, the environment or the iteration order of a set or a dict of strings: every
   order that matters is explicit (NUMA ids ascending, pods by UID, containers in spec order).
2. Judgement lives in `decide`; `apply` of a decision executes it verbatim. A recorded
   `pod_admitted` reserves exactly the recorded takes, even if a newer build would have decided
   differently, so an upgrade never rewrites history. `apply` of an input only records it.

Restarts: `daemon_restarted` marks every running pod as awaiting readmission. Such a pod keeps
its memory; a request with the same UID and spec gets exactly its allocation back (`restored`),
whatever the order; new pods are decided against a machine where that memory is still taken.
A returning pod that needs a fresh decision (its allocation was revoked, it ran unpinned under
another policy, its spec changed) is deferred. At `readmission_completed` the pods still waiting
are removed, then the deferred ones are decided in UID order — so no outcome depends on the
order in which pods come back. Topology and config changes become
effective through `node_reconfigured`, which re-places every allocation exactly and revokes, by
name and with a reason, those that no longer fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, assert_never, cast

import msgspec

from memstate.core.config import NodeConfig, validate_config_for_topology
from memstate.core.errors import ConfigError, InvariantViolation
from memstate.core.events import (
    NOTE_EVENTS,
    AllocationRevoked,
    CgroupDriftCorrected,
    CgroupOrphanFound,
    CgroupWriteFailed,
    ConfigLoaded,
    ConfigRejected,
    DaemonRestarted,
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
    ReadmissionCompleted,
    ReadmissionDeferred,
    ShadowDisagreement,
    TopologyObserved,
    known_event,
)
from memstate.core.kubelet_import import (
    IMPORTED_SPEC_HASH,
    imported_allocation,
    restored_allocation,
    stand_in_pod,
)
from memstate.core.machine import MachineBuilder, default_machine
from memstate.core.numa_policy import (
    ProviderHints,
    admit,
    init_containers_done,
    pins,
    release,
    release_init_containers,
    reserve,
)
from memstate.core.pod import Pod, qos_class, spec_hash
from memstate.core.predicate import carry_request_totals, insufficient_resource_in
from memstate.core.qos import pod_targets
from memstate.core.state import (
    Counters,
    DeferredAdmission,
    PodRecord,
    Rejection,
    State,
    rejection_key,
)
from memstate.core.topology import Topology

INVALID_MANIFEST = "InvalidManifest"
NODE_NOT_READY = "NodeNotReady"


class Transition(msgspec.Struct, frozen=True):
    """The result of `step`: the decisions an input implied and the state after all of them."""

    state: State
    decisions: tuple[Event, ...]


def step(state: State, event: Event) -> Transition:
    """Decide on `event`, then apply it and its decisions."""
    decisions = decide(state, event)
    state = apply(state, event)
    for decision in decisions:
        state = apply(state, decision)
    return Transition(state=state, decisions=decisions)


# --- decide ---------------------------------------------------------------------------------------


def decide(state: State, event: Event, working: MachineBuilder | None = None) -> tuple[Event, ...]:
    """The decisions `event` implies in `state`. Pure; non-inputs imply nothing.

    `working`, when given, is the node map in force in place of `state.machine` (a
    `WorkingState`'s, which `state.machine` lags behind); it is read, never moved.

    The `match` is exhaustive over the catalogue (`assert_never`): a new event kind does not
    type-check until it is given a branch here and in `apply`."""
    kind = type(event)
    # The two inputs of most transactions by exact type, before the `match` (one `isinstance`
    # per `case`), as `apply` does.
    if kind is PodAdmissionRequested:
        return _decide_admission(state, cast(PodAdmissionRequested, event), working)
    if kind is PodRemovalRequested:
        return _decide_removal(state, cast(PodRemovalRequested, event).uid)
    if working is not None and kind not in _DECIDED_WITHOUT_MACHINE:
        state = _evolve(state, machine=working.freeze())  # rare: reads the whole node map
    match known_event(event):
        case PodAdmissionRequested() as request:
            return _decide_admission(state, request, working)
        case PodRemovalRequested(uid=uid):
            return _decide_removal(state, uid)
        case ManifestInvalid(error=error, source=source):
            return (PodRejected(reason=INVALID_MANIFEST, message=error, source=source),)
        case ReadmissionCompleted():
            return _decide_readmission_completed(state)
        case TopologyObserved(topology=topology):
            return _decide_reconfiguration(state, topology, state.observed_config)
        case ConfigLoaded(config=config):
            return _decide_reconfiguration(state, state.observed_topology, config)
        case KubeletStateImported() as imported:
            return _decide_import(state, imported)
        case (
            DaemonStarted()
            | DaemonRestarted()
            | ConfigRejected()
            | PodInitCompleted()
            | PodAdmitted()
            | PodRejected()
            | PodRemoved()
            | ReadmissionDeferred()
            | NodeReconfigured()
            | NodeReconfigurationDeferred()
            | LogTailTruncated()
            | CgroupDriftCorrected()
            | CgroupWriteFailed()
            | CgroupOrphanFound()
            | PodCgroupRemoved()
            | ShadowDisagreement()
        ):
            return ()  # decisions and notes imply nothing; inputs without a judgement
        case unreachable:
            assert_never(unreachable)


def _decide_removal(state: State, uid: str) -> tuple[Event, ...]:
    if uid in state.pods or uid in state.deferred:
        return (PodRemoved(uid=uid, reason="requested"),)
    return ()


def _decide_admission(
    state: State, request: PodAdmissionRequested, working: MachineBuilder | None = None
) -> tuple[Event, ...]:
    # `working` as in `decide`: the node map in force when `state.machine` lags behind it.
    pod = request.pod
    if state.topology is None or state.config is None:
        return (
            PodRejected(
                reason=NODE_NOT_READY,
                message="no topology and config are in force yet; the node cannot admit pods",
                uid=pod.uid,
                name=pod.name,
                namespace=pod.namespace,
                source=request.source,
            ),
        )
    existing = state.pods.get(pod.uid)
    awaiting = existing is not None and existing.status == "awaiting_readmission"
    if state.readmission_open and (awaiting or pod.uid in state.deferred):
        return _decide_readmission(state, request)
    decisions: list[Event] = []
    if existing is not None:
        if existing.spec_hash == spec_hash(pod):
            return ()  # already admitted: a repeated request changes nothing
        # Pod specs are immutable; a new spec under an old UID replaces the pod.
        removal = PodRemoved(uid=pod.uid, reason="spec_changed")
        decisions.append(removal)
        if working is None:
            state = apply(state, removal)
        else:
            working = working.scratch()  # the caller's node map stays as it is
            state = _apply_removed(state, removal, working=working)
    decisions.extend(
        _fresh_admission(state, request.pod, request.source, request.provider_hints, working)
    )
    return tuple(decisions)


def _decide_readmission(state: State, request: PodAdmissionRequested) -> tuple[Event, ...]:
    """A pod that ran before the restart asks to come back.

    Same spec and something to give back (its allocation, or nothing because it is not pinned):
    restored at once, whatever the order. Anything that needs a fresh decision is deferred to
    the end of readmission and decided there in UID order, so the order of requests never
    changes the outcome.
    """
    topology, config = _in_force(state)
    pod = request.pod
    digest = spec_hash(pod)
    waiting = state.deferred.get(pod.uid)
    if waiting is not None:
        if spec_hash(waiting.pod) == digest:
            return ()  # already waiting for the end of readmission
        return (_deferral(request, "spec_changed"),)
    existing = state.pods[pod.uid]
    if existing.spec_hash == IMPORTED_SPEC_HASH and existing.allocation is not None:
        # Imported from the kubelet's checkpoint: the real spec arrives now and takes over the
        # stand-in's blocks (a new record, so not `restored`: that keeps the record as it was).
        restored = restored_allocation(pod, existing.allocation, config)
        if restored is not None:
            return (
                PodAdmitted(
                    pod=pod,
                    qos_class=qos_class(pod),
                    spec_hash=digest,
                    allocation=restored,
                    targets=pod_targets(pod, restored, config, topology),
                    pinning_requests=len(pod.containers),
                    source=request.source,
                ),
            )
    if existing.spec_hash != digest:
        return (PodRemoved(uid=pod.uid, reason="spec_changed"), _deferral(request, "spec_changed"))
    if existing.allocation is None and pins(pod, config):
        return (_deferral(request, "allocation_revoked"),)
    count = len(pod.containers) if pins(pod, config) else 0
    return (
        PodAdmitted(
            pod=pod,
            qos_class=existing.qos_class,
            spec_hash=digest,
            allocation=existing.allocation,
            targets=pod_targets(pod, existing.allocation, config, topology),
            restored=True,
            pinning_requests=count,
            source=request.source,
        ),
    )


def _in_force(state: State) -> tuple[Topology, NodeConfig]:
    """The topology and config in force; callers checked that the node is ready."""
    if state.topology is None or state.config is None:
        raise InvariantViolation("a pod is being decided before a topology and config are in force")
    return state.topology, state.config


def _deferral(request: PodAdmissionRequested, reason: str) -> ReadmissionDeferred:
    return ReadmissionDeferred(
        pod=request.pod,
        reason=reason,
        source=request.source,
        provider_hints=request.provider_hints,
    )


def _decide_readmission_completed(state: State) -> tuple[Event, ...]:
    """Close the window: remove pods that did not come back, then decide deferred pods."""
    if not state.readmission_open:
        return ()
    decisions: list[Event] = []
    for record in state.sorted_pods():
        if record.status == "awaiting_readmission" and record.pod.uid not in state.deferred:
            removal = PodRemoved(uid=record.pod.uid, reason="not_readmitted")
            decisions.append(removal)
            state = apply(state, removal)
    for uid in sorted(state.deferred):
        waiting = state.deferred[uid]
        for decision in _fresh_admission(
            state, waiting.pod, waiting.source, waiting.provider_hints
        ):
            decisions.append(decision)
            state = apply(state, decision)
    return tuple(decisions)


def _fresh_admission(
    state: State,
    pod: Pod,
    source: str,
    provider_hints: tuple[ProviderHints, ...],
    working: MachineBuilder | None = None,
) -> tuple[Event, ...]:
    """Run the pod through the Topology Manager and Memory Manager against `state` (its node
    map is `working` when given: a `WorkingState`'s, read only)."""
    topology, config = _in_force(state)
    machine = state.machine if working is None else working
    admission = admit(machine, topology, config, pod, provider_hints)
    if admission.rejection is not None:
        return (
            PodRejected(
                reason=admission.rejection.reason,
                message=admission.rejection.message,
                uid=pod.uid,
                name=pod.name,
                namespace=pod.namespace,
                source=source,
                pinning_requests=admission.pinning_requests,
                pinning_errors=admission.pinning_errors,
            ),
        )
    # The kubelet's predicate admit handler runs after the resource-allocating one (Topology
    # and Memory Manager), for every pod (docs/deviations.md). Deferred pods await their own
    # decision and hold nothing until then, as in the Memory Manager's accounting.
    short = insufficient_resource_in(state, pod, config, topology)
    if short is not None:
        return (
            PodRejected(
                reason=short.reason,
                message=short.message,
                uid=pod.uid,
                name=pod.name,
                namespace=pod.namespace,
                source=source,
                pinning_requests=admission.pinning_requests,
            ),
        )
    return (
        PodAdmitted(
            pod=pod,
            qos_class=qos_class(pod),
            spec_hash=spec_hash(pod),
            allocation=admission.allocation,
            targets=pod_targets(pod, admission.allocation, config, topology),
            pinning_requests=admission.pinning_requests,
            source=source,
        ),
    )


def _decide_import(state: State, event: KubeletStateImported) -> tuple[Event, ...]:
    """One `pod_admitted` per imported pod that fits, with a stand-in spec and exactly the
    checkpoint's blocks (memstate.core.kubelet_import). `memstate import kubelet-state` refuses
    a checkpoint with any pod that does not fit before recording it; here such a pod, or one
    already known, is left out, so replay stays total."""
    if state.topology is None or state.config is None:
        return ()
    topology, config = state.topology, state.config
    if event.policy_name != "Static" or config.memory_manager_policy != "Static":
        return ()
    builder = MachineBuilder(state.machine)
    decisions: list[Event] = []
    for imported in event.pods:  # in recorded order: the takes depend on it
        if imported.uid in state.pods or imported.uid in state.deferred:
            continue
        if not any(c.blocks for c in imported.containers):
            continue
        allocation, _ = imported_allocation(builder, imported)
        if allocation is None:
            continue
        pod = stand_in_pod(imported)
        decisions.append(
            PodAdmitted(
                pod=pod,
                qos_class=qos_class(pod),
                spec_hash=IMPORTED_SPEC_HASH,
                allocation=allocation,
                targets=pod_targets(pod, allocation, config, topology),
                source=event.source,
            )
        )
    return tuple(decisions)


def _decide_reconfiguration(
    state: State, topology: Topology | None, config: NodeConfig | None
) -> tuple[Event, ...]:
    if topology is None or config is None:
        return ()  # wait for the other half
    if topology == state.topology and config == state.config:
        return ()
    try:
        validate_config_for_topology(config, topology)
    except ConfigError as exc:
        return (NodeReconfigurationDeferred(message=exc.describe()),)
    revoked: list[AllocationRevoked] = []
    builder = MachineBuilder(default_machine(topology, config))
    for record in state.sorted_pods():
        allocation = record.allocation
        if allocation is None:
            continue
        problem = _placement_problem(builder, record, config)
        if problem is not None:
            reason, message = problem
            revoked.append(AllocationRevoked(uid=record.pod.uid, reason=reason, message=message))
            continue
        builder.reserve(allocation.takes)
        builder.assign(allocation.blocks)
    return (NodeReconfigured(revoked=tuple(revoked)),)


def _placement_problem(
    builder: MachineBuilder, record: PodRecord, config: NodeConfig
) -> tuple[str, str] | None:
    """Why a recorded allocation cannot be re-placed on a rebuilt machine, or None."""
    allocation = record.allocation
    if allocation is None:
        raise InvariantViolation(f"pod {record.pod.uid} has no allocation to re-place")
    who = f"pod {record.pod.key} ({record.pod.uid})"
    if config.memory_manager_policy != "Static":
        return (
            "PolicyChanged",
            f"{who}: memoryManagerPolicy is {config.memory_manager_policy}; pinning dropped",
        )
    for block in allocation.blocks:
        for node_id in block.numa_affinity:
            if node_id not in builder.node_ids:
                return ("NUMANodeMissing", f"{who}: NUMA node {node_id} no longer exists")
            if not builder.has(node_id, block.type):
                return (
                    "ResourceMissing",
                    f"{who}: NUMA node {node_id} no longer reports {block.type}",
                )
    for take in allocation.takes:
        free = builder.free(take.numa_node, take.resource)
        if free < take.size_bytes:
            return (
                "NoLongerFits",
                f"{who}: holds {take.size_bytes} bytes of {take.resource} on NUMA node "
                f"{take.numa_node}, which now has {max(free, 0)} bytes free for it",
            )
    return None


# --- apply ----------------------------------------------------------------------------------------


def apply(state: State, event: Event) -> State:
    """Fold one event into the state. Pure.

    Exhaustive over the catalogue (`assert_never`), the most frequent kinds first (each `case`
    is one `isinstance`); `Folder.fold` mirrors the fast ones."""
    kind = type(event)
    if kind in _NO_STATE_EFFECT:
        return state  # inputs and notes without effect: ~60 % of a log, no `match` walk
    if kind is PodAdmitted:
        return _apply_admitted(state, cast(PodAdmitted, event))
    if kind is PodRemoved:
        return _apply_removed(state, cast(PodRemoved, event))
    if kind is PodRemovalRequested:
        return _apply_removal_requested(state, cast(PodRemovalRequested, event))
    match known_event(event):
        case PodAdmitted() as admitted:
            return _apply_admitted(state, admitted)
        case PodRemoved() as removed:
            return _apply_removed(state, removed)
        case PodRejected() as rejected:
            return _apply_rejected(state, rejected)
        case PodRemovalRequested() as requested:
            return _apply_removal_requested(state, requested)
        case PodInitCompleted() as init:
            return _apply_init_completed(state, init)
        case ReadmissionDeferred() as deferral:
            return _apply_deferred(state, deferral)
        case TopologyObserved(topology=topology):
            return _evolve(state, observed_topology=topology)
        case ConfigLoaded(config=config):
            return _evolve(state, observed_config=config)
        case DaemonRestarted():
            return _apply_restarted(state)
        case ReadmissionCompleted():
            return _evolve(state, readmission_open=False)
        case NodeReconfigured() as reconfigured:
            return _apply_reconfigured(state, reconfigured)
        case (
            PodAdmissionRequested()
            | DaemonStarted()
            | ConfigRejected()
            | ManifestInvalid()
            | NodeReconfigurationDeferred()
            | LogTailTruncated()
            | CgroupDriftCorrected()
            | CgroupWriteFailed()
            | CgroupOrphanFound()
            | PodCgroupRemoved()
            | KubeletStateImported()
            | ShadowDisagreement()
        ):
            return state  # notes and inputs without state effect
        case unreachable:
            assert_never(unreachable)


def apply_owned(state: State, event: Event) -> State:
    """`apply` for a caller that owns `state`: no one else holds it, nor any state sharing
    its pods map (the caller made that map itself, as `owned_copy` does). The pods map is then
    updated in place and handed on to the result instead of copied, which on a node with a few
    hundred pods is most of what an admission or a removal costs `apply` (the copy touches every
    record's reference count, and so does freeing it). `state` must not be used afterwards.

    For a long replay whose intermediate states nobody looks at (`memstate replay`); every
    event other than an admission or a removal takes `apply` itself."""
    kind = type(event)
    if kind in _NO_STATE_EFFECT:
        return state
    if kind is PodAdmitted:
        return _apply_admitted(state, cast(PodAdmitted, event), owned=True)
    if kind is PodRemoved:
        return _apply_removed(state, cast(PodRemoved, event), owned=True)
    if kind is PodRemovalRequested:
        return _apply_removal_requested(state, cast(PodRemovalRequested, event))
    return apply(state, event)


def owned_copy(state: State) -> State:
    """`state` with a pods map of its own (and its carried sums): a start for `apply_owned`
    that leaves `state` untouched."""
    owned = msgspec.structs.replace(state, pods=dict(state.pods))
    carry_request_totals(state, owned, None, None)
    return owned


class WorkingState:
    """One state a walk owns and updates in place, whose intermediate states nobody holds
    (`memstate replay`): `apply_owned`'s pods map, and the node map kept as one
    `MachineBuilder` across the walk instead of a frozen `Machine` rebuilt at every pinned
    admission and removal (and wrapped in a new builder at every decision). `state()` freezes
    the node map into the state only where a state is observed (a checkpoint, a divergence,
    the end). The same decisions and states as `decide` and `apply`.

    Admission requests are decided against the working node map (`decide`'s `working`: a
    replaced spec's removal moves a scratch copy of it); admissions, removals, rejections and
    init completions move it; the events whose handlers never look at the node map
    (`_DECIDED_WITHOUT_MACHINE`, `_APPLIED_WITHOUT_MACHINE`, removal requests) take
    `state.machine` along as it is; any other event (a reconfiguration, the end of readmission)
    is decided and applied on `state()`, and the node map starts again from the result's. The
    state given to the constructor is never modified (`owned_copy`). After an
    `InvariantViolation` the working state is unusable (it may hold half an event); the caller
    stops there anyway.
    """

    def __init__(self, state: State) -> None:
        self._state = owned_copy(state)
        self._machine = MachineBuilder(self._state.machine)
        self._ahead = False  # the working node map holds moves `_state.machine` lacks
        # The last `snapshot()`, while no event with a state effect was applied since.
        self._snapshot: State | None = state

    def state(self) -> State:
        """The state after every event applied so far. It shares the working pods map: read
        it (hash it, compare it) before the next `apply`, or copy it with `owned_copy`."""
        if self._ahead:
            machine = self._machine.freeze()
            self._state = _evolve(self._state, machine=machine)
            self._machine = MachineBuilder(machine)
            self._ahead = False
        return self._state

    def snapshot(self) -> State:
        """The state after every event applied so far as a value of its own, which nothing
        the walk does later changes (an observer's copy: `owned_copy` of `state()`). The same
        object again while only events without a state effect were applied in between."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = owned_copy(self.state())
        return snapshot

    def decide(self, event: Event) -> tuple[Event, ...]:
        """`decide(self.state(), event)`, without freezing the node map for the frequent
        inputs (`decide` reads the working one)."""
        kind = type(event)
        # `decide`'s own dispatch of the two frequent inputs, without its extra call.
        if kind is PodAdmissionRequested:
            return _decide_admission(self._state, cast(PodAdmissionRequested, event), self._machine)
        if kind is PodRemovalRequested:
            return _decide_removal(self._state, cast(PodRemovalRequested, event).uid)
        if kind in _DECIDED_WITHOUT_MACHINE:
            return decide(self._state, event)
        return decide(self.state(), event)

    def apply(self, event: Event) -> None:
        """`apply` of `event` to the working state, in place."""
        kind = type(event)
        if kind in _NO_STATE_EFFECT:
            return
        self._snapshot = None
        if kind is PodAdmitted:
            self._state = _apply_admitted(
                self._state, cast(PodAdmitted, event), owned=True, working=self._machine
            )
            self._ahead = True
        elif kind is PodRemoved:
            self._state = _apply_removed(
                self._state, cast(PodRemoved, event), owned=True, working=self._machine
            )
            self._ahead = True
        elif kind is PodRemovalRequested:
            self._state = _apply_removal_requested(self._state, cast(PodRemovalRequested, event))
        elif kind is PodRejected:
            self._state = _apply_rejected(self._state, cast(PodRejected, event), self._machine)
            self._ahead = True
        elif kind is PodInitCompleted:
            self._state = _apply_init_completed(
                self._state, cast(PodInitCompleted, event), self._machine
            )
            self._ahead = True
        elif kind in _APPLIED_WITHOUT_MACHINE:
            self._state = apply(self._state, event)  # keeps `machine` as it is
        else:
            self._state = apply_owned(self.state(), event)
            self._machine = MachineBuilder(self._state.machine)


# Inputs whose `decide` reads no node map (nor `apply`s anything): a `WorkingState` decides them
# without freezing its node map first.
_DECIDED_WITHOUT_MACHINE = NOTE_EVENTS | {
    ManifestInvalid,
    DaemonStarted,
    DaemonRestarted,
    PodInitCompleted,
}

# Events whose `apply` neither reads nor replaces the node map (it carries `state.machine` over
# as it is): a `WorkingState` applies them without freezing.
_APPLIED_WITHOUT_MACHINE = NOTE_EVENTS | {
    ReadmissionDeferred,
    TopologyObserved,
    ConfigLoaded,
    DaemonRestarted,
    ReadmissionCompleted,
}


def apply_all(state: State, events: Iterable[Event]) -> State:
    """Fold a sequence of events (recorded decisions are applied verbatim)."""
    for event in events:
        state = apply(state, event)
    return state


def _evolve(state: State, **changes: Any) -> State:
    """`msgspec.structs.replace` of fields other than `pods`, keeping the sums cached with the
    state (`predicate.pod_request_totals`); a new pods map carries them explicitly."""
    after = msgspec.structs.replace(state, **changes)
    vars(after).update(vars(state))
    return after


def _with_pod(state: State, record: PodRecord) -> dict[str, PodRecord]:
    pods = dict(state.pods)
    pods[record.pod.uid] = record
    return pods


def _apply_restarted(state: State) -> State:
    # A restart during readmission starts it over: deferred requests will be made again.
    pods = {
        uid: msgspec.structs.replace(record, status="awaiting_readmission")
        for uid, record in state.pods.items()
    }
    restarted = msgspec.structs.replace(state, pods=pods, readmission_open=True, deferred={})
    carry_request_totals(state, restarted, None, None)  # same pods, only their status changed
    return restarted


def _apply_deferred(state: State, event: ReadmissionDeferred) -> State:
    deferred = dict(state.deferred)
    deferred[event.uid] = DeferredAdmission(
        pod=event.pod, source=event.source, provider_hints=event.provider_hints
    )
    return _evolve(state, deferred=deferred)


def _without_deferral(state: State, uid: str) -> State:
    if uid not in state.deferred:
        return state
    deferred = dict(state.deferred)
    del deferred[uid]
    return _evolve(state, deferred=deferred)


def _apply_removal_requested(state: State, event: PodRemovalRequested) -> State:
    rejections = state.rejections
    uid = event.uid
    by_source = rejection_key("", event.source) if event.source else ""
    if not ((uid and uid in rejections) or (by_source and by_source in rejections)):
        return state  # the usual case: nothing rejected under either key
    return _without_rejections(state, [k for k in (uid, by_source) if k])


def _without_rejections(state: State, keys: Iterable[str]) -> State:
    """`state` without the rejections under `keys`: a lookup per key, and one C-level copy of
    the map only when there is something to drop (never a walk over every rejection)."""
    present = [k for k in keys if k in state.rejections]
    if not present:
        return state
    rejections = dict(state.rejections)
    for key in present:
        del rejections[key]
    return _evolve(state, rejections=rejections)


def _apply_init_completed(
    state: State, event: PodInitCompleted, working: MachineBuilder | None = None
) -> State:
    # `working` as in `_apply_admitted`: released there, `state.machine` kept as it is.
    record = state.pods.get(event.uid)
    if record is None or record.init_completed:
        return state
    machine = state.machine
    allocation = record.allocation
    if allocation is not None:
        if working is not None:
            freed, dropped, allocation = init_containers_done(record.pod, allocation)
            working.release(freed)
            working.unassign(dropped)
        else:
            machine, allocation = release_init_containers(machine, record.pod, allocation)
    updated = msgspec.structs.replace(record, allocation=allocation, init_completed=True)
    after = msgspec.structs.replace(state, machine=machine, pods=_with_pod(state, updated))
    carry_request_totals(state, after, record, updated)
    return after


def _apply_admitted(
    state: State, event: PodAdmitted, owned: bool = False, working: MachineBuilder | None = None
) -> State:
    # `working`: the caller's working node map (`WorkingState`), updated in place instead of
    # `state.machine`, which the result then keeps as it is.
    uid = event.uid
    existing = state.pods.get(uid)
    if event.restored:
        if existing is None or existing.allocation != event.allocation:
            raise InvariantViolation(
                f"restored admission of pod {event.pod.key} ({uid}) does not match the "
                "allocation in state"
            )
        record = msgspec.structs.replace(existing, status="running", source=event.source)
        machine = state.machine
    else:
        machine = state.machine
        if working is not None:
            # `Folder._admitted`'s moves, container by container (the blocks in `blocks` order).
            if existing is not None and existing.allocation is not None:
                working.release(existing.allocation.takes)
                for container in existing.allocation.containers:
                    working.unassign(container.blocks)
            if event.allocation is not None:
                working.reserve(event.allocation.takes)
                for container in event.allocation.containers:
                    working.assign(container.blocks)
        else:
            if existing is not None and existing.allocation is not None:
                machine = release(machine, existing.allocation)
            if event.allocation is not None:
                machine = reserve(machine, event.allocation)
        record = PodRecord(
            pod=event.pod,
            spec_hash=event.spec_hash,
            qos_class=event.qos_class,
            allocation=event.allocation,
            source=event.source,
        )
    counters = state.counters
    if event.pinning_requests:
        counters = Counters(
            pinning_requests=counters.pinning_requests + event.pinning_requests,
            pinning_errors=counters.pinning_errors,
        )
    deferred = state.deferred
    if uid in deferred:
        deferred = dict(deferred)
        del deferred[uid]
    rejections = state.rejections
    by_source = rejection_key("", event.source)
    if uid in rejections or by_source in rejections:
        rejections = dict(rejections)
        rejections.pop(uid, None)
        rejections.pop(by_source, None)
    if owned:
        pods = state.pods
        pods[uid] = record
    else:
        pods = _with_pod(state, record)
    if (
        working is not None
        and pods is state.pods
        and deferred is state.deferred
        and rejections is state.rejections
        and counters is state.counters
    ):
        # A working state's admission that pins nothing: only its own pods map changed (in
        # place), so the same state object goes on instead of a copy of every field.
        after = state
    else:
        after = msgspec.structs.replace(
            state,
            machine=machine,
            pods=pods,
            deferred=deferred,
            rejections=rejections,
            counters=counters,
        )
    carry_request_totals(state, after, existing, record, owned=owned)
    return after


def rejection_of(event: PodRejected) -> Rejection:
    """The state's record of a rejection (`apply` and `Folder` both keep it by `rejection_key`)."""
    return Rejection(
        reason=event.reason,
        message=event.message,
        uid=event.uid,
        name=event.name,
        namespace=event.namespace,
        source=event.source,
    )


def _apply_rejected(
    state: State, event: PodRejected, working: MachineBuilder | None = None
) -> State:
    counters = Counters(
        pinning_requests=state.counters.pinning_requests + event.pinning_requests,
        pinning_errors=state.counters.pinning_errors + event.pinning_errors,
    )
    rejections = dict(state.rejections)
    rejections[rejection_key(event.uid, event.source)] = rejection_of(event)
    state = _without_deferral(_drop_pod(state, event.uid, working=working), event.uid)
    return _evolve(state, rejections=rejections, counters=counters)


def _apply_removed(
    state: State, event: PodRemoved, owned: bool = False, working: MachineBuilder | None = None
) -> State:
    if event.uid not in state.pods and event.uid not in state.deferred:
        raise InvariantViolation(f"pod_removed for unknown pod {event.uid}")
    return _without_deferral(_drop_pod(state, event.uid, owned, working), event.uid)


def _drop_pod(
    state: State, uid: str, owned: bool = False, working: MachineBuilder | None = None
) -> State:
    # `working` as in `_apply_admitted`: released there, `state.machine` kept as it is.
    record = state.pods.get(uid)
    if record is None:
        return state
    machine = state.machine
    allocation = record.allocation
    if allocation is not None:
        if working is not None:
            working.release(allocation.takes)
            for container in allocation.containers:
                working.unassign(container.blocks)
        else:
            machine = release(machine, allocation)
    if owned:
        pods = state.pods
    else:
        pods = dict(state.pods)  # a C-level copy, then one deletion
    del pods[uid]
    if working is not None and owned:
        after = state  # only its own pods map changed, in place (as in `_apply_admitted`)
    else:
        after = msgspec.structs.replace(state, machine=machine, pods=pods)
    carry_request_totals(state, after, record, None, owned=owned)
    return after


def _apply_reconfigured(state: State, event: NodeReconfigured) -> State:
    topology, config = state.observed_topology, state.observed_config
    if topology is None or config is None:
        raise InvariantViolation("node_reconfigured without an observed topology and config")
    revoked = {r.uid for r in event.revoked}
    builder = MachineBuilder(default_machine(topology, config))
    pods: dict[str, PodRecord] = {}
    for record in state.sorted_pods():
        if record.pod.uid in revoked:
            record = msgspec.structs.replace(record, allocation=None)
        elif record.allocation is not None:
            builder.reserve(record.allocation.takes)
            builder.assign(record.allocation.blocks)
        pods[record.pod.uid] = record
    after = msgspec.structs.replace(
        state, topology=topology, config=config, machine=builder.freeze(), pods=pods
    )
    carry_request_totals(state, after, None, None)  # same pods, only allocations changed
    return after


# Events `apply` gives no state effect (the `pass` case of `Folder.fold`).
_NO_STATE_EFFECT = NOTE_EVENTS | {
    PodAdmissionRequested,
    DaemonStarted,
    ManifestInvalid,
    NodeReconfigurationDeferred,
}


class FoldedChanges(msgspec.Struct, frozen=True):
    """The pods a run of `Folder.fold` changed (`Folder.track_changes`, then `take_changes`).

    `before` maps every UID whose record may have changed to its record before (None: absent);
    the records of other UIDs are the very same objects. `replaced` holds every pod as it was
    before (and `config` the config before) when a slow-path event replaced the whole state;
    `replaced` is None otherwise, and the config did not change. (A struct, not a named tuple:
    start-up makes one per transaction, and a struct is made at C speed.)
    """

    before: Mapping[str, PodRecord | None]
    config: NodeConfig | None
    replaced: Mapping[str, PodRecord] | None


class Folder:
    """Folds a long run of events whose intermediate states nobody looks at (start-up).

    `fold(event)` gives the same state as `apply`, but keeps working copies of the pods,
    rejections, deferrals, node map (a `MachineBuilder`) and counters and mutates them instead of
    building a new `State` per event; `state()` freezes them into a `State` (fresh containers,
    so the folder can go on without touching it). The input state is never modified. The
    events start-up sees all the time (admissions, removals, rejections, removal requests, init
    completions and events without effect) have mutating fast paths written to the letter of
    their `apply` handlers; any other event freezes, goes through `apply`, and the folder
    continues from the result. tests/unit/test_folder.py holds `fold` to `apply`. After an
    `InvariantViolation` the folder is unusable (it may hold half an event); the caller stops
    there anyway. `track_changes`/`take_changes` journal which pods a transaction changed, so that
    start-up's removals fold (`removals.RemovalsFolder.fold_changes`) needs no snapshot.
    """

    _base: State
    _pods: dict[str, PodRecord]

    def __init__(self, state: State) -> None:
        # The change journal (`track_changes`): uid -> its record before the first change since
        # then (None: absent), and the pods and config as they were when a slow-path event
        # replaced everything (None: none did).
        self._journal: dict[str, PodRecord | None] | None = None
        self._replaced: tuple[NodeConfig | None, dict[str, PodRecord]] | None = None
        self._load(state)

    def track_changes(self) -> None:
        """Start a change journal (what `take_changes` returns)."""
        self._journal = {}
        self._replaced = None

    def take_changes(self) -> FoldedChanges | None:
        """What changed since `track_changes` or the previous `take_changes` (see
        `FoldedChanges`; None when no pod's record changed and no slow-path event ran), and a
        fresh journal for what follows."""
        journal = self._journal
        if journal is None:
            raise InvariantViolation("Folder.take_changes without track_changes")
        replaced = self._replaced
        if not journal and replaced is None:
            return None
        self._journal = {}
        self._replaced = None
        if replaced is not None:
            return FoldedChanges(journal, replaced[0], replaced[1])
        return FoldedChanges(journal, self._base.config, None)

    def reload(self, state: State) -> None:
        """Continue from `state` (a state derived from `state()` outside the folder)."""
        self._load(state)

    def _note(self, uid: str) -> None:
        journal = self._journal
        if journal is not None and uid not in journal:
            journal[uid] = self._pods.get(uid)

    def _load(self, state: State) -> None:
        journal = self._journal
        if journal is not None and self._replaced is None:
            # The pods before the first change of the transaction: undo the journal.
            before = dict(self._pods)
            for uid, record in journal.items():
                if record is None:
                    before.pop(uid, None)
                else:
                    before[uid] = record
            self._replaced = (self._base.config, before)
        self._base = state
        self._pods = dict(state.pods)
        self._rejections = dict(state.rejections)
        self._deferred = dict(state.deferred)
        self._machine = MachineBuilder(state.machine)
        self._requests = state.counters.pinning_requests
        self._errors = state.counters.pinning_errors

    @property
    def config(self) -> NodeConfig | None:
        """The config in force after the events folded so far (read-only view)."""
        return self._base.config

    @property
    def pods(self) -> Mapping[str, PodRecord]:
        """The pods after the events folded so far: a live view, not a copy; do not keep it."""
        return self._pods

    def state(self) -> State:
        """The state after every event folded so far."""
        return msgspec.structs.replace(
            self._base,
            machine=self._machine.freeze(),
            pods=dict(self._pods),
            rejections=dict(self._rejections),
            deferred=dict(self._deferred),
            counters=Counters(pinning_requests=self._requests, pinning_errors=self._errors),
        )

    def fold_records(self, records: Sequence[Envelope]) -> None:
        """`fold` the events of `records` in order (start-up's loop: one call per transaction,
        and no call at all for the events without a state effect)."""
        for record in records:
            event = record.event
            kind = type(event)
            if kind in _NO_STATE_EFFECT:
                continue
            fast = _FOLD_FAST_PATHS.get(kind)
            if fast is not None:
                fast(self, event)
            else:
                self.fold(event)

    def fold(self, event: Event) -> None:
        """Apply one event (`apply`'s semantics, including its `InvariantViolation`s)."""
        kind = type(event)
        if kind in _NO_STATE_EFFECT:
            return  # the most frequent events (requests, notes): no class-by-class match
        # The next most frequent ones, by exact type before the match (same handlers).
        if kind is PodAdmitted:
            self._admitted(cast(PodAdmitted, event))
            return
        fast = _FOLD_FAST_PATHS.get(kind)
        if fast is not None:
            fast(self, event)
            return
        match known_event(event):
            case PodAdmitted() as admitted:
                self._admitted(admitted)
            case PodRemoved() as removed:
                self._removed(removed)
            case PodRejected() as rejected:
                self._rejected(rejected)
            case PodInitCompleted(uid=uid):
                record = self._pods.get(uid)
                if record is None or record.init_completed:
                    return
                allocation = record.allocation
                if allocation is not None:
                    freed, dropped, allocation = init_containers_done(record.pod, allocation)
                    self._machine.release(freed)
                    self._machine.unassign(dropped)
                self._note(uid)
                self._pods[uid] = msgspec.structs.replace(
                    record, allocation=allocation, init_completed=True
                )
            case PodRemovalRequested() as requested:
                self._removal_requested(requested)
            case (
                PodAdmissionRequested()
                | DaemonStarted()
                | ConfigRejected()
                | ManifestInvalid()
                | NodeReconfigurationDeferred()
                | LogTailTruncated()
                | CgroupDriftCorrected()
                | CgroupWriteFailed()
                | CgroupOrphanFound()
                | PodCgroupRemoved()
                | KubeletStateImported()
                | ShadowDisagreement()
            ):
                pass  # no state effect, as in `apply`
            case (
                ReadmissionDeferred()
                | TopologyObserved()
                | ConfigLoaded()
                | DaemonRestarted()
                | ReadmissionCompleted()
                | NodeReconfigured()
            ):
                self._load(apply(self.state(), event))  # rare: the slow path through `apply`
            case unreachable:
                assert_never(unreachable)

    def _admitted(self, event: PodAdmitted) -> None:
        self._requests += event.pinning_requests
        pods = self._pods
        uid = event.pod.uid
        existing = pods.get(uid)
        allocation = event.allocation
        if event.restored:
            if existing is None or existing.allocation != allocation:
                raise InvariantViolation(
                    f"restored admission of pod {event.pod.key} ({uid}) does not match "
                    "the allocation in state"
                )
            record = msgspec.structs.replace(existing, status="running", source=event.source)
        else:
            machine = self._machine
            if existing is not None and existing.allocation is not None:
                machine.release(existing.allocation.takes)
                # Container by container: the blocks in `blocks` order, without building it.
                for container in existing.allocation.containers:
                    machine.unassign(container.blocks)
            if allocation is not None:
                machine.reserve(allocation.takes)
                for container in allocation.containers:
                    machine.assign(container.blocks)
            record = PodRecord(
                pod=event.pod,
                spec_hash=event.spec_hash,
                qos_class=event.qos_class,
                allocation=allocation,
                source=event.source,
            )
        if self._deferred:
            self._deferred.pop(uid, None)
        rejections = self._rejections
        if rejections:
            rejections.pop(uid, None)
            rejections.pop(rejection_key("", event.source), None)
        journal = self._journal
        if journal is not None and uid not in journal:
            journal[uid] = existing
        pods[uid] = record

    def _removed(self, event: PodRemoved) -> None:
        uid = event.uid
        if uid not in self._pods and uid not in self._deferred:
            raise InvariantViolation(f"pod_removed for unknown pod {uid}")
        self._drop_pod(uid)

    def _rejected(self, event: PodRejected) -> None:
        self._requests += event.pinning_requests
        self._errors += event.pinning_errors
        self._rejections[rejection_key(event.uid, event.source)] = rejection_of(event)
        self._drop_pod(event.uid)

    def _removal_requested(self, event: PodRemovalRequested) -> None:
        rejections = self._rejections
        if rejections:
            if event.uid:
                rejections.pop(event.uid, None)
            if event.source:
                rejections.pop(rejection_key("", event.source), None)

    def _drop_pod(self, uid: str) -> None:
        record = self._pods.pop(uid, None)
        journal = self._journal
        if journal is not None and uid not in journal:
            journal[uid] = record
        if record is not None and record.allocation is not None:
            machine = self._machine
            machine.release(record.allocation.takes)
            for container in record.allocation.containers:
                machine.unassign(container.blocks)
        if self._deferred:
            self._deferred.pop(uid, None)


# The frequent events with a state effect, by exact type: `Folder.fold` calls these before its
# `match` (the same handlers the `match` reaches).
_FOLD_FAST_PATHS: dict[type[Event], Callable[[Folder, Any], None]] = {
    PodAdmitted: Folder._admitted,
    PodRemoved: Folder._removed,
    PodRejected: Folder._rejected,
    PodRemovalRequested: Folder._removal_requested,
}
