"""The kubelet Memory Manager's checkpoint at the edge: reading the file, and
`memstate import kubelet-state` (recording its assignments as the starting allocation).

Parsing and the checksum are pure (memstate.core.kubelet_checkpoint); the stand-in pods and the
fit checks too (memstate.core.kubelet_import). Here: file I/O, the node's topology and config,
and the offline append to the event log under the writer's lock (like `memstate log import`),
so a running daemon makes the import refuse with exit 75.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from memstate.core.config import NodeConfig
from memstate.core.errors import ConfigError
from memstate.core.events import ConfigLoaded, Event, KubeletStateImported, TopologyObserved
from memstate.core.kubelet_checkpoint import (
    KubeletCheckpoint,
    KubeletCheckpointError,
    parse_checkpoint,
)
from memstate.core.kubelet_import import import_problems
from memstate.core.machine import MachineBuilder
from memstate.core.reducer import step
from memstate.core.state import State
from memstate.core.topology import Topology
from memstate.store.recovery import recover_state
from memstate.store.writer import EventLog

DEFAULT_CHECKPOINT = Path("/var/lib/kubelet/memory_manager_state")
# The file is a few KB per hundred pods; anything far larger is not a checkpoint.
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024


def read_checkpoint(path: Path) -> KubeletCheckpoint:
    """Read and verify `path`; `KubeletCheckpointError` (exit 65) names the file and reason."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as exc:
        raise KubeletCheckpointError(f"cannot read: {exc.strerror}", source=str(path)) from None
    if len(raw) > MAX_CHECKPOINT_BYTES:
        raise KubeletCheckpointError(
            f"larger than {MAX_CHECKPOINT_BYTES} bytes: not a Memory Manager checkpoint",
            source=str(path),
        )
    return parse_checkpoint(raw, source=str(path))


class ImportResult(msgspec.Struct, frozen=True):
    """What `import_kubelet_state` recorded."""

    checkpoint: KubeletCheckpoint
    pods: tuple[str, ...]  # UIDs now holding their imported blocks
    first_seq: int
    last_seq: int


def import_kubelet_state(
    checkpoint: KubeletCheckpoint,
    *,
    source: str,
    state_dir: Path,
    topology: Topology,
    config: NodeConfig,
    topology_source: str,
    config_source: str,
    fsync: bool = True,
    wall_clock_ns: Callable[[], int] = time.time_ns,
) -> ImportResult:
    """Record the assignments of a verified `checkpoint` (`read_checkpoint`; `source` names its
    file) in the log at `state_dir`.

    Refuses, recording nothing: an assignment that does not fit this machine, a pod memstate
    already knows or pod-level assignments (`KubeletCheckpointError`, 65), a
    policy memstate's config does not share (`ConfigError`, 78), a state directory a daemon
    holds (`LockHeld`, 75). The topology and config are recorded first when they differ from
    the ones the log holds, so the next start finds them unchanged.
    """
    pinned = [p for p in checkpoint.pods if any(c.blocks for c in p.containers)]
    if checkpoint.pod_entries:
        raise KubeletCheckpointError(
            f"{len(checkpoint.pod_entries)} pod-level assignment(s) (podEntries, "
            "PodLevelResourceManagers): memstate leaves pods with pod-level resources unpinned, "
            "as the kubelet does without that gate; import them unpinned by removing the gate "
            "first",
            source=source,
            path="$.podEntries",
        )
    with EventLog.open(state_dir, fsync=fsync) as log:
        state = recover_state(state_dir).state
        batch: list[tuple[Event, int | None]] = []
        truncated = log.recovery.tail_truncated_event()
        if truncated is not None:
            batch.append((truncated, None))
        for observed in _observations(state, topology, config, topology_source, config_source):
            transition = step(state, observed)
            state = transition.state
            batch.append((observed, len(transition.decisions)))
            batch.extend((d, None) for d in transition.decisions)
        if state.topology is None or state.config is None:
            raise ConfigError(
                "the node's topology and config cannot be put in force (see `memstate "
                "status`); fix the config before importing",
                source=config_source,
            )
        if pinned and (
            checkpoint.policy_name != "Static" or state.config.memory_manager_policy != "Static"
        ):
            raise ConfigError(
                f"the checkpoint {source} has pinned pods under the kubelet's "
                f"{checkpoint.policy_name} policy but memstate's memoryManagerPolicy is "
                f"{state.config.memory_manager_policy}: set memoryManagerPolicy: Static to keep "
                "them on their NUMA nodes",
                source=config_source,
                path="$.memoryManagerPolicy",
            )
        problems = import_problems(
            pinned,
            known_uids=[*state.pods, *state.deferred],
            builder=MachineBuilder(state.machine),
            config=state.config,
            policy_name=checkpoint.policy_name,
        )
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise KubeletCheckpointError(
                f"does not fit this machine: {problems[0]}{more}", source=source
            )
        imported = KubeletStateImported(
            source=source,
            policy_name=checkpoint.policy_name,
            layout=checkpoint.layout,
            checksum=checkpoint.checksum,
            pods=tuple(pinned),
        )
        transition = step(state, imported)
        batch.append((imported, len(transition.decisions)))
        batch.extend((d, None) for d in transition.decisions)
        first = log.last_seq + 1
        log.append(batch, ts_ns=wall_clock_ns())
        admitted = tuple(p.uid for p in pinned if p.uid in transition.state.pods)
        return ImportResult(
            checkpoint=checkpoint, pods=admitted, first_seq=first, last_seq=log.last_seq
        )


def _observations(
    state: State,
    topology: Topology,
    config: NodeConfig,
    topology_source: str,
    config_source: str,
) -> list[Event]:
    events: list[Event] = []
    if topology != state.observed_topology:
        events.append(TopologyObserved(topology=topology, source=topology_source))
    if config != state.observed_config:
        events.append(ConfigLoaded(config=config, source=config_source))
    return events
