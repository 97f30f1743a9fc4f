"""What every part of the daemon shares: settings, adapters, the writer, health, the wake-ups.

`DaemonContext` holds the daemon's state (memstate.node.daemon.Daemon is it plus the wiring); the
start-up (memstate.node.startup) and the loops (memstate.node.loops) are functions of it. The
writer's effects (publishing the new state, waking the reconciler) and the status file live here
because every part calls them.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

import msgspec
import trio

from memstate import __version__
from memstate.core.errors import HostError, InvariantViolation
from memstate.core.events import Event, NodeReconfigured, PodAdmitted
from memstate.core.qos import MEMORY_HIGH_SAFE_KERNEL, kernel_version
from memstate.core.removals import PendingRemovals
from memstate.core.state import State
from memstate.core.state_targets import TargetsTracker, pods_changed_by
from memstate.core.targets import NodeTargets, PodTargets, TargetsChange
from memstate.core.topology import Topology
from memstate.host.cgroupfs import is_populated
from memstate.node.adapters import Adapters, LogStorage
from memstate.node.admissions import AdmissionsInFlight
from memstate.node.cgroup_echo import OwnWrites
from memstate.node.cgroup_tree import TreeClaim
from memstate.node.health import Heartbeat, Readiness
from memstate.node.manifests import ManifestDirectory
from memstate.node.metrics import Metrics, Snapshot
from memstate.node.nri_decider import NriService
from memstate.node.sdnotify import Notifier
from memstate.node.settings import Settings
from memstate.node.shadow import ShadowWatch
from memstate.node.sources.feed import SourceFeed
from memstate.node.sources.rejection_events import RejectionEvents
from memstate.node.sources.tracker import PodTracker
from memstate.node.worker_threads import InlineWhileFast
from memstate.node.writer import Writer

# The daemon's log lines keep the name operators filter on, whichever module writes them.
logger = logging.getLogger("memstate.node.daemon")

# The log append runs on the event loop while it takes at most this long (an fsync on a local
# disk: a fraction of a millisecond to a few); once one took longer, appends go to the worker
# thread for the pause (memstate.node.worker_threads.InlineWhileFast).
INLINE_APPEND_SLOW_SECONDS = 0.01
INLINE_APPEND_PAUSE_SECONDS = 60.0
# A scoped reconcile round (an admission's, a removal's, a watch hint's) runs on the event loop
# while rounds take at most this long (about a millisecond at 500 pods); once one took longer,
# rounds go to the worker thread for the pause. A full round always runs there
# (memstate.node.loops.converge).
INLINE_ROUND_SLOW_SECONDS = 0.01
INLINE_ROUND_PAUSE_SECONDS = 60.0
# After a reconcile round daemon-status.json is rewritten at most this often (trio's clock): a
# round within the interval of the last write leaves it to `status_loop` (`write_status_soon`).
STATUS_INTERVAL_SECONDS = 1.0


# How often the sources loop rechecks while the pod tracker is not settled (a deleted pod waits
# for its cgroup to empty): the delay before such a pod is released.
SOURCES_RECHECK_SECONDS = 1.0


class Wakeup:
    """A level-triggered wake-up: `set()` any number of times, `wait()` returns once."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._waiting: trio.CancelScope | None = None

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        """Set and not yet taken by a `wait`."""
        return self._event.is_set()

    async def wait(self, timeout: float) -> bool:
        """Wait until set or `timeout` passes; True if it was set. Resets it."""
        with trio.move_on_after(timeout) as scope:
            self._waiting = scope
            try:
                await self._event.wait()
            finally:
                self._waiting = None
        woken = self._event.is_set()
        self._event = trio.Event()
        return woken

    def due_within(self, seconds: float) -> None:
        """A `wait` in progress returns within `seconds` (its timeout shortened, not set now),
        so what several callers ask for in that time costs one wake-up."""
        if self._waiting is not None:
            deadline = trio.current_time() + seconds
            self._waiting.deadline = min(self._waiting.deadline, deadline)


class DaemonContext:
    """The daemon's state and the parts every task shares (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        cli_overrides: dict[str, object] | None = None,
        fsync: bool = True,
        on_ready: Callable[[Self], None] | None = None,
        stop_after_seconds: float | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        self.adapters = adapters if adapters is not None else Adapters()
        self.settings = settings
        # Called with the daemon once READY (memstate.node.daemon.Daemon.run); Self keeps the
        # callers' type check, Any only what mypy cannot bind on the attribute.
        self.on_ready: Callable[[Any], None] | None = on_ready
        self.stop_after_seconds = stop_after_seconds
        self.cli_overrides = dict(cli_overrides or {})
        self.notifier = notifier or self.adapters.notifier or Notifier.from_environment()
        self.fsync = fsync
        self.metrics = Metrics()
        self.wall_clock_ns = self.adapters.wall_clock_ns
        self.run_io = self.adapters.run_io
        # The one path every event takes, before and after READY (memstate.node.writer).
        self.writer = Writer(
            metrics=self.metrics,
            wall_clock_ns=self.wall_clock_ns,
            run_io=self.run_io,
            on_commit=self._note_effects,
            checkpoint_every=lambda: self.settings.checkpoint_every,
            # Timed by trio's clock: a MockClock does not move during the call, so the
            # simulation always appends inline, whatever the machine's load.
            inline=InlineWhileFast(
                slow_seconds=INLINE_APPEND_SLOW_SECONDS,
                pause_seconds=INLINE_APPEND_PAUSE_SECONDS,
                clock=trio.current_time,
            ),
        )
        self.storage: LogStorage | None = None
        self.targets: NodeTargets | None = None
        # The change records of the latest publications up to `targets` (`_note_effects`).
        self.targets_changes: tuple[TargetsChange, ...] = ()
        # Every pod source feeds one tracker (memstate.node.sources): one set of diffing rules.
        self.tracker = PodTracker(cgroup_gone=self._pod_cgroup_gone, holder_of=self._holder_of)
        # Wakes the sources loop (memstate.node.loops.pods): cgroup hints, source health changes
        # and a tracker that stopped being settled.
        self._sources_wake = Wakeup()
        self.feed = SourceFeed(
            self.tracker,
            self._record,
            on_container_ids=self._container_ids_changed,
            # A pod now waits for its cgroup (or the view needs the full evaluation): the sources
            # loop rechecks within a second, and every second while so; not at once, since an
            # admission by the delta path unsettles the tracker too, and a recheck per admission
            # would cost a full evaluation each (memstate.node.loops.pods).
            on_unsettled=functools.partial(self._sources_wake.due_within, SOURCES_RECHECK_SECONDS),
        )
        self.manifests = ManifestDirectory(settings.manifest_dir, tracker=self.tracker)
        self.sources: list[Any] = []  # NetworkSource, or the simulation's stand-ins
        self.config_topology: Topology | None = None
        self._cgroup_limiter = trio.CapacityLimiter(1)
        # Timed by trio's clock, as the log append's (a MockClock: always on the loop).
        self.inline_rounds: InlineWhileFast | None = (
            InlineWhileFast(
                slow_seconds=INLINE_ROUND_SLOW_SECONDS,
                pause_seconds=INLINE_ROUND_PAUSE_SECONDS,
                clock=trio.current_time,
            )
            if self.adapters.inline_rounds
            else None
        )
        # The reconciler's own operations, so the cgroup watch drops their echo (set at start-up
        # when the watch runs: memstate.node.cgroup_echo).
        self.own_writes: OwnWrites | None = None
        self._reconcile_wake = Wakeup()
        self._manifest_wake = Wakeup()
        # Rounds wait for admissions on their way (memstate.node.admissions).
        self.admissions = AdmissionsInFlight(self._manifest_wake.is_set)
        self._config_wake = Wakeup()
        self._scope: set[str] | None = set()  # None: the next round is a full resync
        self._failure_notes: dict[tuple[str, str, str, int], float] = {}
        self._config_digest = ""
        self._targets = TargetsTracker()  # the state's NodeTargets, each pod's computed once
        self._warned_old_kernel = False
        self._converged = False
        # Bumped whenever the published targets change: a round converges the node only if the
        # targets it converged are still the current ones (a round that ends after a commit it
        # did not see must not report the new targets converged).
        self.targets_generation = 0
        self._pending_removals = 0
        self.heartbeat = Heartbeat()
        self.readiness = Readiness()
        self._nursery: trio.Nursery | None = None  # the root nursery, for the HTTP endpoint
        self.reconciler: object | None = None
        self._tree_claim: TreeClaim | None = None
        self.ready = trio.Event()
        # host:port the metrics endpoint is bound to (port 0 in the config: the kernel's pick).
        self.metrics_bound: str | None = None
        self.nri: NriService | None = None  # set by run_nri when `nri:` is configured
        # Runtime container ids (pod UID -> {id -> name}) from the pod sources and from NRI,
        # merged for the reconciler (_converge_containers).
        self._source_container_ids: dict[str, dict[str, str]] = {}
        self._nri_container_ids: dict[str, dict[str, str]] = {}
        # Their merge as last handed to the reconciler while NRI knows containers (None: none).
        self._merged_container_ids: dict[str, dict[str, str]] | None = None
        self.shadow: ShadowWatch | None = None  # set with the reconciler in `mode: shadow`
        self.rejection_events: RejectionEvents | None = None  # with the API-server source
        # The status file's coalescing (`write_status_soon`): when it was last written, whether a
        # newer one is due, and the wake-up of the loop that writes it then.
        self.status_written_at = -math.inf
        self.status_due = False
        self.status_wake = Wakeup()

    # The writer owns the state, the pending removals (retired pod cgroups still to remove,
    # folded from the log with the state and handed whole to every reconcile round) and the seq.
    @property
    def state(self) -> State:
        """The state after the last durable record."""
        return self.writer.state

    @state.setter
    def state(self, state: State) -> None:
        self.writer.state = state

    @property
    def removals(self) -> PendingRemovals:
        """Retired pod cgroups still to remove."""
        return self.writer.removals

    @property
    def last_seq(self) -> int:
        """The seq of the last durable record."""
        return self.writer.last_seq

    # --- the writer's effects -------------------------------------------------------------------

    async def submit(self, events: Sequence[Event]) -> None:
        """Have `events` decided and recorded (memstate.node.writer); returns once durable."""
        await self.writer.submit(events)

    def _note_effects(self, decisions: Sequence[Event], applied: Sequence[Event]) -> None:
        """Publish the new state and tell the reconciler what changed (the cgroups of retired
        pods are in `self.removals`, which every round covers). `applied`: every event the
        commit applied, which name the pods whose targets may have changed."""
        before = self.targets
        self.targets = self._targets.update(self.state, decisions, changed=pods_changed_by(applied))
        # Published with the targets: what they replaced of the targets published before them
        # (the reconciler's indexes follow it when they hold those; a round that missed a
        # publication compares everything instead).
        self.targets_changes = self._targets.recent
        # The same object when no pod's part changed; a new one may still be equal.
        if self.targets is not before and self.targets != before:
            # Not converged until a round over these targets ends (metrics, /readyz).
            self.targets_generation += 1
            self._converged = False
            self.readiness.converged = False
        full = any(isinstance(d, NodeReconfigured) for d in decisions)
        for decision in decisions:
            if (
                isinstance(decision, PodAdmitted)
                and self.targets is not None
                and self._scope is not None
            ):
                # The decision carries the pod's targets (else a look-up by UID).
                admitted = decision.targets or self._targets.pod(decision.uid)
                if admitted is not None:
                    self._scope.add(admitted.cgroup)
        if full:
            self._scope = None
        self._publish()
        if self.nri is not None:
            self.nri.decider.state_changed()  # wakes NRI requests waiting for a decision
        if self.rejection_events is not None:
            self.rejection_events.note(decisions)
        if decisions:
            self._reconcile_wake.set()

    def write_status_soon(self) -> None:
        """`_write_status`, at most once per `STATUS_INTERVAL_SECONDS`: at once when the last
        write is that old, else left due to `memstate.node.loops.upkeep.status_loop`, which
        writes what is current then at the interval's end. After every reconcile round: a busy
        daemon does not rewrite the file per admission, and it lags by at most the interval."""
        if not self.adapters.host_loops:
            return
        if trio.current_time() - self.status_written_at >= STATUS_INTERVAL_SECONDS:
            self._write_status()
        else:
            self.status_due = True
            self.status_wake.set()

    def manages_cgroup(self, path: str) -> bool:
        """Whether `path` is a cgroup of `self.targets` (a look-up in the targets tracker, which
        keeps them sorted; the published targets list them)."""
        return self.targets is not None and self._targets.holds(path)

    def published_pod(self, uid: str) -> PodTargets | None:
        """The targets of pod `uid` in `self.targets` (None: not there), by a look-up (the
        targets tracker keeps them by UID; `NodeTargets.pod` walks the pods)."""
        return self._targets.pod(uid)

    def _write_status(self) -> None:
        """`<state_dir>/daemon-status.json` for `memstate status` (advisory, not durable),
        written now (see `write_status_soon` for the write after each reconcile round)."""
        if not self.adapters.host_loops:
            return
        self.status_due = False
        self.status_written_at = trio.current_time()
        document = {
            "pid": os.getpid(),
            "version": __version__,
            "ready": self.ready.is_set(),
            "seq": self.last_seq,
            "converged": self._converged,
            "pending_removals": self._pending_removals,
            "metrics_address": self.metrics_bound or self.settings.metrics_address,
            "manifest_dir": str(self.settings.manifest_dir),
            "cgroup_tree": str(self.settings.cgroup_sim or self.settings.cgroup_root),
            "pod_sources": list(self.settings.pod_sources),
            "ownership": self.settings.ownership,
            "mode": self.settings.mode,
            "pod_source_health": [source.health.as_dict() for source in self.sources],
            "nri": self.nri.as_dict() if self.nri is not None else None,
            "updated_ts_ns": self.wall_clock_ns(),
        }
        path = self.settings.state_dir / "daemon-status.json"
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            temporary.write_bytes(msgspec.json.encode(document))
            temporary.replace(path)
        except OSError as exc:
            logger.debug("cannot write %s: %s", path, exc)

    def _old_kernel_with_memory_high(self) -> str:
        """The kernel release when memory.high is in use on a kernel older than 5.9, else ""."""
        topology, targets = self.state.topology, self.targets
        if topology is None or targets is None:
            return ""
        version = kernel_version(topology.kernel_release)
        if version is None or version >= MEMORY_HIGH_SAFE_KERNEL:
            return ""
        # The tracker counts the containers with a memory.high (no walk over every pod).
        return topology.kernel_release if self._targets.throttled else ""

    def _publish(self) -> None:
        old_kernel = self._old_kernel_with_memory_high()
        if old_kernel and not self._warned_old_kernel:
            self._warned_old_kernel = True
            logger.warning(
                "memory.high is in use on kernel %s, older than 5.9: allocations faster than "
                "reclaim can stall at memory.high (the livelock that kept Memory QoS in alpha); "
                "use a 5.9 or newer kernel",
                old_kernel,
            )
        self.metrics.publish(
            Snapshot(
                state=self.state,
                targets=self.targets,
                last_seq=self.last_seq,
                converged=self._converged,
                pending_removals=self._pending_removals,
                old_kernel_with_memory_high=old_kernel,
            )
        )

    def _write_checkpoint(
        self, state: State, seq: int, chain_crc: int, removals: PendingRemovals
    ) -> None:
        """The writer's checkpoint writer: the storage's, once it is open."""
        if self.storage is None:
            raise InvariantViolation("a checkpoint before the log was opened")
        self.storage.write_checkpoint(state, seq, chain_crc, removals)

    # --- sources -------------------------------------------------------------------------------

    async def _record(self, events: Sequence[Event]) -> None:
        """Make source events durable (through the writer, before and after READY)."""
        await self.writer.submit(events)

    def _holder_of(self, uid: str) -> str | None:
        """Where the running (or deferred) pod `uid` came from: that locator keeps its UID
        against any other declaring it, also right after a restart (memstate.node.sources)."""
        record = self.state.pods.get(uid)
        if record is not None:
            return record.source
        waiting = self.state.deferred.get(uid)
        return waiting.source if waiting is not None else None

    def _pod_cgroup_gone(self, uid: str) -> bool:
        """No process is left in the pod's cgroup (it is gone, or empty): a terminating or
        deleted pod may be released. Asked by the tracker; reads one cgroup.events file."""
        if self.targets is None or self.reconciler is None:
            return True
        pod = self._targets.pod(uid)
        if pod is None:
            return True
        path = pod.cgroup
        try:
            return not is_populated(self.reconciler.fs, path)  # type: ignore[attr-defined]
        except HostError as exc:
            return exc.errno == errno.ENOENT

    def _container_ids_changed(self, ids: dict[str, dict[str, str]], pods: frozenset[str]) -> None:
        """New runtime container ids from the sources: converge those pods' containers now."""
        self._source_container_ids = ids
        self._converge_containers(pods)

    def nri_containers_changed(self, ids: dict[str, dict[str, str]], pods: frozenset[str]) -> None:
        """The containers the NRI plugin knows changed: converge those pods' containers now."""
        self._nri_container_ids = ids
        self._converge_containers(pods)

    def _converge_containers(self, pods: frozenset[str]) -> None:
        if self.reconciler is None:
            return
        # Both name the same runtime's containers (the sources' name wins for an id both know);
        # a new dict each time (the reconciler reads it from a worker thread). `pods` names
        # every pod whose ids changed, so only those are merged again, after a copy in C.
        ids = self._source_container_ids
        if not self._nri_container_ids:
            self._merged_container_ids = None
        else:
            merged = self._merged_container_ids
            if merged is None:
                nri, sources = self._nri_container_ids, self._source_container_ids
                ids = merge_container_ids(nri, sources, [*nri, *sources])
            else:
                ids = dict(merged)
                for uid in pods:
                    ids.pop(uid, None)
                ids.update(
                    merge_container_ids(self._nri_container_ids, self._source_container_ids, pods)
                )
            self._merged_container_ids = ids
        self.reconciler.container_ids = ids  # type: ignore[attr-defined]
        if self.targets is not None and self._scope is not None:
            for uid in pods:
                held = self._targets.pod(uid)  # a look-up, not a pass over every pod
                if held is not None:
                    self._scope.add(held.cgroup)
        self._reconcile_wake.set()


def merge_container_ids(
    nri: Mapping[str, Mapping[str, str]],
    sources: Mapping[str, Mapping[str, str]],
    uids: Iterable[str],
) -> dict[str, dict[str, str]]:
    """Pod UID -> {container id -> name} for `uids`, from NRI's and the pod sources' ids (the
    sources' name wins for an id both know); a pod neither names is left out."""
    merged: dict[str, dict[str, str]] = {}
    for uid in uids:
        if uid in nri or uid in sources:
            merged[uid] = {**nri.get(uid, {}), **sources.get(uid, {})}
    return merged
