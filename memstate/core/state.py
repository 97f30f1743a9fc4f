"""The node's state: what the reducer folds events into.

`State` is an immutable value. Its dict fields are never mutated after construction (the reducer
copies on write), which keeps old states valid for replay tools and lets the daemon publish a state
to other threads (the metrics server) by swapping one reference. Copy-on-write here means one
C-level `dict()` copy of the map an event changes, never a walk over every entry, and a node map
that shares every NUMA node the event did not touch; a long fold whose intermediate states
nobody sees (start-up) uses `reducer.Folder`, which mutates private copies and freezes once.

What is deliberately *not* here: sequence numbers, timestamps and anything history-shaped. Two
histories that lead to the same situation (for example readmission in a different order) give
equal states and equal `state_hash`es. History lives in the log; audit reads it there.

The canonical encoding is deterministic msgpack (dict keys sorted), so `state_hash` is identical
across processes, machines and PYTHONHASHSEED values.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from memstate.core.config import NodeConfig
from memstate.core.machine import Machine
from memstate.core.numa_policy import PodAllocation, ProviderHints
from memstate.core.pod import Pod, QOSClass
from memstate.core.topology import Topology

PodStatus = Literal["running", "awaiting_readmission"]

# Bumped whenever the reducer's semantics change; recorded in `daemon_started` and checkpoints.
REDUCER_VERSION = 1


class PodRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An admitted pod and what it holds."""

    pod: Pod
    spec_hash: str
    qos_class: QOSClass
    allocation: PodAllocation | None = None
    status: PodStatus = "running"
    init_completed: bool = False
    source: str = ""


class Rejection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The latest rejection of a pod (or of a manifest file that could not be read)."""

    reason: str
    message: str
    uid: str = ""
    name: str = ""
    namespace: str = ""
    source: str = ""


class DeferredAdmission(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A readmission request decided when the readmission window closes."""

    pod: Pod
    source: str = ""
    provider_hints: tuple[ProviderHints, ...] = ()


class Counters(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`memory_manager_pinning_{requests,errors}_total`, cumulative over the log."""

    pinning_requests: int = 0
    pinning_errors: int = 0


class State(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """Everything decisions depend on.

    `topology`/`config` are the pair decisions are made under; `observed_*` the latest
    observations, which become effective through a `node_reconfigured` decision.

    `dict=True` gives each state a `__dict__` for sums derived from its fields and kept with it
    so that the reducer need not recompute them (`predicate.pod_request_totals`). What is there
    is a cache: never encoded, hashed or compared, and recomputed when absent.
    """

    topology: Topology | None = None
    config: NodeConfig | None = None
    observed_topology: Topology | None = None
    observed_config: NodeConfig | None = None
    machine: Machine = Machine()
    pods: dict[str, PodRecord] = msgspec.field(default_factory=dict)
    rejections: dict[str, Rejection] = msgspec.field(default_factory=dict)
    readmission_open: bool = False
    deferred: dict[str, DeferredAdmission] = msgspec.field(default_factory=dict)
    counters: Counters = Counters()

    def sorted_pods(self) -> list[PodRecord]:
        """Pods ordered by UID: the one order every iteration that matters uses."""
        return [self.pods[uid] for uid in sorted(self.pods)]


def rejection_key(uid: str, source: str) -> str:
    """Rejections are keyed by pod UID, or by manifest file when no UID could be read."""
    return uid if uid else f"manifest:{source}"


_CANONICAL = msgspec.msgpack.Encoder(order="deterministic")
_STATE_DECODER = msgspec.msgpack.Decoder(State)


def encode_state(state: State) -> bytes:
    """The canonical byte form of a state (used for hashing and checkpoints)."""
    return _CANONICAL.encode(state)


def decode_state(data: bytes) -> State:
    """Inverse of `encode_state`."""
    return _STATE_DECODER.decode(data)


def state_hash(state: State) -> str:
    """BLAKE2b-128 of the canonical encoding, hex."""
    return hashlib.blake2b(encode_state(state), digest_size=16).hexdigest()
