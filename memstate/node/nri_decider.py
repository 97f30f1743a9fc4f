"""The daemon's NRI decider: memstate's durable decisions, answered to the runtime.

Theory of operation
-------------------
The NRI plugin (memstate.nri) calls an `NriDecider` for every runtime event; this module is the
daemon's implementation, and `run_nri` runs the plugin in the daemon's root nursery when the
`nri:` settings are present.

Decisions come from the daemon's state, never from NRI: NRI carries limits, not requests (nri.md
§12), so a pod is admitted or rejected when a pod source (manifest directory, kubelet, API server)
delivers its spec, through the one tracker and the daemon's writer. The state the daemon
publishes only ever holds committed records (the writer applies a batch after its fsync), so a
pod found in it has its admission decision durable in the log: answering from it satisfies
"durable before the answer". A pod the state does not know yet (the runtime often starts a
sandbox before the kubelet source's next poll) makes the decider nudge the sources (a kubelet
poll at once, a manifest rescan) and wait, up to `unknownPodWaitSeconds`, for a commit that
decides it; the writer's group commit (fsync included) is part of that wait, and the daemon
wakes the waiting requests as it publishes each commit (`state_changed`), so the answer leaves
as soon as the decision is durable. When the wait ends
without a decision the creation is let through unchanged (fail-open, counted as `unknown_pod`):
the reconciler still converges the pod cgroup once the source delivers the pod, and the next
Synchronize applies the container values. The wait stays well below the runtime's 2 s deadline
(settings validation enforces it), since a late answer gets the plugin dropped, which is fail-open
for every container after it.

Look-ups are by pod UID, in the published state (its rejections are keyed by UID) and in the
published targets (the daemon's targets tracker finds a pod by UID, and only that pod's targets
are filtered by the write profile), remembered per UID in a snapshot started afresh at each commit:
per request and per commit the work is bounded by the pod, never by the node.

The containers the runtime tells about (id -> pod UID and name: Synchronize, CreateContainer,
UpdateContainer; forgotten at RemoveContainer and RemovePodSandbox) are handed to the daemon
(`on_containers`), which gives them to the reconciler beside the ids the kubelet and API-server
sources report: the container cgroups the runtime names by id (docs/reconciler.md "Container
cgroups") get their values converged like those of the sources' containers, with only the
manifest directory as a pod source too.

Releases stay where they are: RemovePodSandbox does not remove a pod from the state (a source that
still lists the pod would contradict it); it nudges the sources, whose tracker releases a deleted
pod once its cgroup is gone, exactly as without NRI. Synchronize (after either side restarted)
re-applies each running container's values from the state recovered from the log, so a running
pod keeps exactly its allocation whatever order the runtime lists it in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from memstate.core.config import NodeConfig
from memstate.core.plan.profile import WriteProfile, profile_pod
from memstate.core.state import Rejection, State
from memstate.core.targets import NodeTargets, PodTargets
from memstate.node.metrics import Metrics
from memstate.node.settings import Settings
from memstate.node.sources.configure import NetworkSource
from memstate.nri.adapter import adjustment_for, refusal_for
from memstate.nri.decider import (
    ContainerInfo,
    ContainerUpdate,
    Refusal,
    ResourceAdjustment,
    SandboxInfo,
    container_updates,
)
from memstate.nri.plugin import NriPlugin, PluginSettings, PluginStatus

logger = logging.getLogger("memstate.node.nri")

_STATUS_SECONDS = 0.5

PodLookup = Callable[[str], "PodTargets | None"]
"""The targets of pod UID in the published targets, as NRI hands them to the runtime."""
Current = Callable[[], tuple[State, "PodLookup | None"]]


class _Snapshot:
    """One published state's answers by pod UID, each looked up once (see the module
    docstring): `admitted(uid)`, the pod's targets; `rejected(uid)`, its rejection."""

    __slots__ = ("_admitted", "_lookup", "config", "state")

    def __init__(self, state: State, lookup: PodLookup | None) -> None:
        self.state = state
        self.config: NodeConfig | None = state.config
        self._lookup = lookup
        self._admitted: dict[str, PodTargets | None] = {}

    def admitted(self, uid: str) -> PodTargets | None:
        """The admitted pod's targets (None: not admitted, or no targets in force)."""
        if self._lookup is None:
            return None
        try:
            return self._admitted[uid]
        except KeyError:
            found = self._admitted[uid] = self._lookup(uid)
            return found

    def rejected(self, uid: str) -> Rejection | None:
        """The pod's rejection (rejections of pods with a UID are keyed by it)."""
        rejection = self.state.rejections.get(uid) if uid else None
        return rejection if rejection is not None and rejection.uid == uid else None


class DaemonNriDecider:
    """An `NriDecider` answering from the daemon's committed state.

    `current()` returns the published (state, targets) pair; `nudge()` asks the pod sources to
    look again now. Both are called on the trio thread.
    """

    def __init__(
        self,
        current: Current,
        nudge: Callable[[], None],
        *,
        unknown_pod_wait_seconds: float,
        metrics: Metrics | None = None,
        on_containers: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self._current = current
        self._nudge = nudge
        # Told the pod UIDs whose known containers changed (the module docstring).
        self._on_containers = on_containers
        self._wait = unknown_pod_wait_seconds
        self._metrics = metrics
        self._snap: _Snapshot | None = None
        # Set (and replaced) at each commit: wakes the requests waiting for a pod's decision
        # at once, instead of them looking at the published state on a timer.
        self._committed = trio.Event()
        # container id -> (pod uid, container name), for updates of running containers.
        self.containers: dict[str, tuple[str, str]] = {}
        # The same by pod: uid -> {container id -> name}. A pod's dict is replaced, never
        # changed, once `containers_by_pod` handed it out (so a change costs the pod's
        # containers, not a pass over every container).
        self._by_pod: dict[str, dict[str, str]] = {}

    def containers_by_pod(self) -> dict[str, dict[str, str]]:
        """Pod UID -> {runtime container id -> container name}: the reconciler's form (a new
        dict each call; its pods' dicts are never changed afterwards)."""
        return dict(self._by_pod)

    def _set_by_pod(self, uid: str, container_id: str, name: str | None) -> None:
        """Pod `uid`'s entry for `container_id` becomes `name` (None: removed), in a new dict."""
        known = dict(self._by_pod.get(uid, ()))
        if name is None:
            known.pop(container_id, None)
        else:
            known[container_id] = name
        if known:
            self._by_pod[uid] = known
        else:
            self._by_pod.pop(uid, None)

    def _learn(self, container_id: str, uid: str, name: str) -> None:
        before = self.containers.get(container_id)
        self.containers[container_id] = (uid, name)
        if before != (uid, name):
            if before is not None:
                self._set_by_pod(before[0], container_id, None)
            self._set_by_pod(uid, container_id, name)
            self._changed({uid} if before is None else {uid, before[0]})

    def _changed(self, pods: set[str]) -> None:
        if pods and self._on_containers is not None:
            self._on_containers(frozenset(pods))

    def state_changed(self) -> None:
        """The daemon published a newly committed state (call on the trio thread)."""
        self._committed.set()
        self._committed = trio.Event()

    def snapshot(self) -> _Snapshot:
        """The look-ups for the current state (started afresh once per commit)."""
        state, lookup = self._current()
        if self._snap is None or self._snap.state is not state:
            self._snap = _Snapshot(state, lookup)
        return self._snap

    def _known(self, uid: str) -> bool:
        snap = self.snapshot()
        return snap.admitted(uid) is not None or snap.rejected(uid) is not None

    async def _await_decision(self, uid: str) -> bool:
        """True once the pod's decision is committed; False after the wait (fail-open)."""
        if not uid or self._known(uid):
            return bool(uid)
        self._nudge()
        with trio.move_on_after(self._wait):
            while not self._known(uid):
                await self._committed.wait()
            return True
        return False

    def _decide(self, uid: str, container_name: str) -> ResourceAdjustment | Refusal | None:
        """None: no decision for the pod."""
        snap = self.snapshot()
        targets = snap.admitted(uid)
        if targets is not None and snap.config is not None:
            return adjustment_for(targets, container_name, snap.config)
        rejection = snap.rejected(uid)
        if rejection is not None:
            return refusal_for(rejection)
        return None

    def _count(self, method: str, result: str, started: float | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.nri_requests.labels(method=method, result=result).inc()
        if started is not None:
            elapsed = time.perf_counter() - started
            self._metrics.nri_decision_seconds.labels(method=method).observe(elapsed)

    def _updates(self, container_ids: Sequence[str]) -> list[ContainerUpdate]:
        return container_updates(container_ids, self.containers, self._decide)

    async def synchronize(
        self, pods: Sequence[SandboxInfo], containers: Sequence[ContainerInfo]
    ) -> Sequence[ContainerUpdate]:
        """Re-learn every running container; re-apply memstate's values to each."""
        before = self.containers
        self.containers = {c.id: (c.pod_uid, c.name) for c in containers}
        self._by_pod = {}  # the runtime's whole list: every pod anew
        for container_id, (uid, name) in self.containers.items():
            self._by_pod.setdefault(uid, {})[container_id] = name
        self._changed({uid for _, (uid, _) in before.items() ^ self.containers.items()})
        updates = self._updates([c.id for c in containers])
        unknown = {c.pod_uid for c in containers if not self._known(c.pod_uid)}
        if unknown:
            # Pods that run but no source has delivered: the sources will; the reconciler then
            # converges them, and the next Synchronize gives their containers the values.
            logger.info("NRI: synchronize: %d running pods without a decision yet", len(unknown))
            self._nudge()
        self._count("Synchronize", "adjusted" if updates else "unchanged")
        return updates

    async def run_pod_sandbox(self, pod: SandboxInfo) -> Refusal | None:
        """Refuse the sandbox of a rejected pod; allow everything else (after waiting for the
        pod's decision, see the module docstring)."""
        started = time.perf_counter()
        if not await self._await_decision(pod.uid):
            self._count("RunPodSandbox", "unknown_pod", started)
            return None
        snap = self.snapshot()
        rejection = snap.rejected(pod.uid)
        if snap.admitted(pod.uid) is not None or rejection is None:
            self._count("RunPodSandbox", "unchanged", started)
            return None
        self._count("RunPodSandbox", "refused", started)
        return refusal_for(rejection)

    async def create_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> ResourceAdjustment | Refusal:
        """The container's adjustment from the pod's durable decision, or the pod's refusal."""
        started = time.perf_counter()
        decision = (
            self._decide(pod.uid, container.name) if await self._await_decision(pod.uid) else None
        )
        if decision is None:
            logger.info(
                "NRI: no decision for pod %s (%s/%s) after %gs: container %s created unchanged",
                pod.uid,
                pod.namespace,
                pod.name,
                self._wait,
                container.name,
            )
            self._learn(container.id, pod.uid, container.name)
            self._count("CreateContainer", "unknown_pod", started)
            return ResourceAdjustment()
        if isinstance(decision, Refusal):
            self._count("CreateContainer", "refused", started)
            return decision
        self._learn(container.id, pod.uid, container.name)
        self._count("CreateContainer", "unchanged" if decision.empty else "adjusted", started)
        return decision

    async def update_container(
        self, pod: SandboxInfo, container: ContainerInfo
    ) -> Sequence[ContainerUpdate]:
        """Re-apply memstate's values over whatever the update brings."""
        self._learn(container.id, pod.uid, container.name)
        updates = self._updates([container.id])
        self._count("UpdateContainer", "adjusted" if updates else "unchanged")
        return updates

    async def stop_container(self, pod: SandboxInfo, container: ContainerInfo) -> None:
        """Nothing to release per container: allocations are per pod."""

    async def remove_container(self, pod: SandboxInfo, container: ContainerInfo) -> None:
        """Forget the container."""
        forgotten = self.containers.pop(container.id, None)
        if forgotten is not None:
            self._set_by_pod(forgotten[0], container.id, None)
        self._changed(set() if forgotten is None else {forgotten[0]})

    async def stop_pod_sandbox(self, pod: SandboxInfo) -> None:
        """The pod's cgroup empties: let the sources look again (a deleted pod is released
        once its cgroup is gone)."""
        self._nudge()

    async def remove_pod_sandbox(self, pod: SandboxInfo) -> None:
        """Forget the pod's containers; the release comes from the sources, as without NRI."""
        known = self._by_pod.pop(pod.uid, None)
        if known:
            for container_id in known:  # the pod's containers only, not every container
                self.containers.pop(container_id, None)
            self._changed({pod.uid})
        self._nudge()


class _Settable(Protocol):
    def set(self) -> None: ...


class NriHost(Protocol):
    """What the NRI service uses of the daemon (memstate.node.daemon.Daemon); a protocol so that
    this module does not import the daemon and the daemon's split can move the pieces freely."""

    settings: Settings
    state: State
    targets: NodeTargets | None
    metrics: Metrics
    sources: list[NetworkSource]
    nri: NriService | None

    @property
    def _manifest_wake(self) -> _Settable: ...

    @property
    def _sources_wake(self) -> _Settable: ...

    def _write_status(self) -> None: ...

    def published_pod(self, uid: str) -> PodTargets | None:
        """The targets of pod `uid` in `targets` (None: not there), by a look-up."""

    def nri_containers_changed(self, ids: dict[str, dict[str, str]], pods: frozenset[str]) -> None:
        """The runtime's containers as NRI reported them (pod UID -> {id -> name}) changed for
        `pods`."""


class NriService:
    """The plugin and its decider, as the daemon runs them; `as_dict` for `memstate status`."""

    def __init__(self, plugin: NriPlugin, decider: DaemonNriDecider) -> None:
        self.plugin = plugin
        self.decider = decider

    @property
    def status(self) -> PluginStatus:
        """The plugin's connection state."""
        return self.plugin.status

    def as_dict(self) -> dict[str, Any]:
        """The `nri` entry of daemon-status.json."""
        status = self.plugin.status
        return {
            "socket": self.plugin.settings.socket,
            "plugin": f"{self.plugin.settings.index}-{self.plugin.settings.name}",
            "connected": status.connected,
            "runtime": status.runtime,
            "sessions": status.sessions,
            "synchronized_sessions": status.synchronized_sessions,
            "last_error": status.last_error,
        }


def nri_service_for(daemon: NriHost) -> NriService | None:
    """The daemon's NRI plugin per its settings (None when `nri:` is not set)."""
    nri = daemon.settings.nri
    if nri is None:
        return None
    from memstate.node.sources.kubelet import KubeletSource

    profile = WriteProfile(ownership=daemon.settings.ownership, mode=daemon.settings.mode)

    def as_written(uid: str) -> PodTargets | None:
        # The runtime writes what NRI answers: only what the profile lets memstate write (no
        # cpuset.mems in qos mode), as `profile_targets` filters it; one pod, not the node.
        pod = daemon.published_pod(uid)
        return None if pod is None else profile_pod(pod, profile)

    def current() -> tuple[State, PodLookup | None]:
        return daemon.state, (None if daemon.targets is None else as_written)

    def nudge() -> None:
        # What a cgroup hint does (daemon.cgroup_watch_loop): poll the kubelet now, rescan the
        # manifest directory, recheck pods waiting for their cgroup to empty.
        for source in daemon.sources:
            if isinstance(source, KubeletSource):
                source.nudge()
        daemon._manifest_wake.set()
        daemon._sources_wake.set()

    def containers_changed(pods: frozenset[str]) -> None:
        daemon.nri_containers_changed(decider.containers_by_pod(), pods)

    decider = DaemonNriDecider(
        current,
        nudge,
        unknown_pod_wait_seconds=nri.unknown_pod_wait_seconds,
        metrics=daemon.metrics,
        on_containers=containers_changed,
    )
    plugin = NriPlugin(
        PluginSettings(socket=nri.socket, name=nri.plugin_name, index=nri.plugin_index), decider
    )
    return NriService(plugin, decider)


async def run_nri(daemon: NriHost) -> None:
    """Run the NRI plugin for the daemon's lifetime (after READY; returns at once without
    `nri:`), publishing its connection state to metrics and daemon-status.json on change."""
    service = nri_service_for(daemon)
    if service is None:
        return
    daemon.nri = service
    logger.info("NRI: plugin %s-%s on %s", *_describe(service.plugin.settings))
    # Read at each scrape, like daemon-status.json's `nri` at each write (which other loops do
    # too): the two never disagree.
    daemon.metrics.nri_connected.set_function(lambda: 1.0 if service.status.connected else 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.plugin.run)
        last: tuple[bool, str, int] | None = None
        while True:
            status = service.status
            current = (status.connected, status.last_error, status.sessions)
            if current != last:
                last = current
                daemon._write_status()
            await trio.sleep(_STATUS_SECONDS)


def _describe(settings: PluginSettings) -> tuple[str, str, str]:
    return settings.index, settings.name, settings.socket
