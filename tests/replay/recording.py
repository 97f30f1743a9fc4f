"""Logs recorded the way the daemon records them, and a deliberately altered reducer.

`record_log` plays the daemon's decide-then-append loop: for each input it asks the reducer
(`memstate.core.reducer.step`, whatever it is patched to be at the time) for the decisions,
appends input and decisions as one batch through the real writer (`EventLog`, fsync off), and
writes a checkpoint every `checkpoint_every` transactions with the writer's own chain CRC.

`churn_inputs` is a deterministic node history: start, topology (two 8Gi nodes), a Static
config with the Topology Manager off (so the Static policy's own fill order decides), then
admissions and removals of small Guaranteed pods that never fill a node. `TRIGGER_PREFIX` pods
are inserted at chosen positions: the altered reducers below treat only them differently, so the
first divergent event is known by construction (and the tests check the precondition that makes
it diverge).

Altered reducers (test-only, installed with `monkeypatch`, so they are undone after the test):
- `fill_highest_first`: the Static policy prefers the *highest* NUMA node among equally good
  hints for trigger pods (the real one prefers the lowest): a different allocation, a different
  state.
- `alter_memory_high`: the container `memory.high` written into trigger pods' admission
  decisions is one page lower: a different decision, but the same state (targets are not state).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from pathlib import Path

import msgspec
import pytest

from memstate.core import numa_policy, reducer
from memstate.core.config import NodeConfig
from memstate.core.events import (
    CgroupOrphanFound,
    ConfigLoaded,
    DaemonStarted,
    Envelope,
    Event,
    PodAdmissionRequested,
    PodRemovalRequested,
    TopologyObserved,
)
from memstate.core.machine import Machine, Mask
from memstate.core.numa_policy import Admission, PodAllocation, ProviderHints
from memstate.core.pod import Pod
from memstate.core.qos import pod_targets
from memstate.core.state import REDUCER_VERSION, State
from memstate.core.targets import PodTargets
from memstate.core.topology import Topology
from memstate.core.topology_hints import TopologyHint, to_bits
from memstate.store.checkpoint import write_checkpoint
from memstate.store.writer import EventLog
from tests import factories

BASE_TS_NS = 1_772_330_400 * 10**9  # 2026-03-01T02:00:00Z
TRIGGER_PREFIX = "zz-"


def start_inputs(hostname: str = "node-a") -> list[Event]:
    return [
        DaemonStarted(memstate_version="0.1.0", reducer_version=REDUCER_VERSION, hostname=hostname),
        TopologyObserved(topology=factories.topology("8Gi", "8Gi")),
        ConfigLoaded(config=factories.static_config(["512Mi", "512Mi"])),
    ]


def churn_inputs(count: int, *, seed: int = 7, triggers: Sequence[int] = ()) -> list[Event]:
    """Start, then `count` churn inputs; a trigger pod is requested before churn input i for
    every i in `triggers`. At most ~40 small pods run at once: no node ever fills up."""
    rng = random.Random(seed)
    inputs = start_inputs()
    running: list[str] = []
    made = 0
    for index in range(count):
        if index in triggers:
            uid = f"{TRIGGER_PREFIX}{index:06d}"
            inputs.append(
                PodAdmissionRequested(
                    pod=factories.pod(uid, "64Mi", name=f"trigger-{index}", namespace="ops"),
                    source=f"/etc/memstate/pods/trigger-{index}.yaml",
                )
            )
            running.append(uid)
        roll = rng.random()
        if roll < 0.1:
            inputs.append(CgroupOrphanFound(path=f"/sys/fs/cgroup/kubepods/orphan-{index}"))
        elif roll < 0.55 or len(running) < 5:
            made += 1
            uid = f"uid-{made:06d}"
            size = rng.choice(["64Mi", "128Mi", "256Mi"])
            inputs.append(
                PodAdmissionRequested(
                    pod=factories.pod(uid, size, name=f"web-{made}", namespace="shop"),
                    source=f"/etc/memstate/pods/web-{made}.yaml",
                )
            )
            running.append(uid)
        else:
            uid = running.pop(rng.randrange(len(running)))
            inputs.append(PodRemovalRequested(uid=uid, source=""))
        if len(running) > 40:
            inputs.append(PodRemovalRequested(uid=running.pop(0)))
    return inputs


def steady_inputs(records: int) -> list[Event]:
    """Start, 30 resident pods, then admit/remove cycles of 20 churn pods until about `records`
    records: a log of any length over a state of constant size (memory tests, benchmarks)."""
    inputs = start_inputs()
    inputs.extend(
        PodAdmissionRequested(pod=factories.pod(f"resident-{i:03d}", "64Mi", namespace="prod"))
        for i in range(30)
    )
    cycle = 0
    while len(inputs) * 2 < records:
        uid = f"churn-{cycle % 20:03d}"
        inputs.append(PodAdmissionRequested(pod=factories.pod(uid, "128Mi", namespace="batch")))
        inputs.append(PodRemovalRequested(uid=uid))
        cycle += 1
    return inputs


def record_log(
    state_dir: Path,
    inputs: Sequence[Event],
    *,
    checkpoint_every: int = 25,
    checkpoint_at: Collection[int] | None = None,
    segment_bytes: int = 64 << 10,
    step_ns: int = 10**9,
) -> list[Envelope]:
    """Decide, append (one batch per transaction) and checkpoint, as the daemon does: after
    every `checkpoint_every`-th input, or after the inputs whose indexes are in
    `checkpoint_at`. Returns every envelope written. Notes are appended alone (they have no
    decisions)."""
    written: list[Envelope] = []
    state = State()
    with EventLog.open(state_dir, fsync=False, segment_bytes=segment_bytes) as log:
        for index, event in enumerate(inputs):
            ts_ns = BASE_TS_NS + index * step_ns
            if event.role == "note":
                written.extend(log.append([(event, None)], ts_ns=ts_ns))
                continue
            transition = reducer.step(state, event)
            state = transition.state
            batch: list[tuple[Event, int | None]] = [(event, len(transition.decisions))]
            batch.extend((d, None) for d in transition.decisions)
            written.extend(log.append(batch, ts_ns=ts_ns))
            due = (
                index in checkpoint_at
                if checkpoint_at is not None
                else (index + 1) % checkpoint_every == 0
            )
            if due:
                write_checkpoint(
                    state_dir, state, seq=log.last_seq, chain_crc=log.chain_crc, fsync=False
                )
    return written


def input_seq(written: Sequence[Envelope], uid: str) -> int:
    """Seq of the first admission request for `uid`."""
    for envelope in written:
        event = envelope.event
        if isinstance(event, PodAdmissionRequested) and event.pod.uid == uid:
            return envelope.seq
    raise AssertionError(f"no request for {uid}")


# --- altered reducers -----------------------------------------------------------------------------


def _highest_first(hints: Sequence[TopologyHint]) -> TopologyHint:
    def key(hint: TopologyHint) -> tuple[bool, int, int]:
        mask: Mask = hint.numa_affinity or ()
        bits = to_bits(mask)
        return (not hint.preferred, bits.bit_count(), -bits)

    return min(hints, key=key)


def fill_highest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trigger pods get the highest NUMA node among equally good hints."""
    real_admit = numa_policy.admit
    real_best = numa_policy.find_best_hint

    def altered(
        machine: Machine,
        topology: Topology,
        config: NodeConfig,
        pod: Pod,
        provider_hints: Sequence[ProviderHints] = (),
    ) -> Admission:
        if not pod.uid.startswith(TRIGGER_PREFIX):
            return real_admit(machine, topology, config, pod, provider_hints)
        numa_policy.find_best_hint = _highest_first
        try:
            return real_admit(machine, topology, config, pod, provider_hints)
        finally:
            numa_policy.find_best_hint = real_best

    monkeypatch.setattr(reducer, "admit", altered)


def alter_memory_high(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trigger pods' containers get `memory.high` one 4 KiB page lower in the decision."""

    def altered(
        pod: Pod, allocation: PodAllocation | None, config: NodeConfig, topology: Topology
    ) -> PodTargets:
        targets = pod_targets(pod, allocation, config, topology)
        if not pod.uid.startswith(TRIGGER_PREFIX):
            return targets
        containers = []
        for container in targets.containers:
            files = dict(container.files)
            high = files.get("memory.high", "max")
            files["memory.high"] = str(int(high) - 4096) if high.isdigit() else "1073741824"
            containers.append(msgspec.structs.replace(container, files=files))
        return msgspec.structs.replace(targets, containers=tuple(containers))

    monkeypatch.setattr(reducer, "pod_targets", altered)
