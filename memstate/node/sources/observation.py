"""What a pod source reports: one `ObservedPod` per pod it sees, and its health.

A source never produces events itself. Each time it learns something it hands the *full set* of
pods it currently sees to the shared `PodTracker` (memstate.node.sources.tracker), which diffs it
against what was already requested and emits the input events. One contract for every source —
the manifest directory, the kubelet's `/pods` and the API server's list + watch — so the diffing
rules (and their corner cases) exist once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from memstate.core.pod import Pod

SourceName = Literal["manifests", "kubelet", "apiserver"]

# Precedence when several sources see one pod (same UID), highest first. The kubelet's `/pods`
# is what the node acts on right now and carries the kubelet-side UIDs of static pods; the API
# server's copy lags by the status round trip; the manifest directory knows static pods only
# under a derived UID.
PRECEDENCE: tuple[SourceName, ...] = ("kubelet", "apiserver", "manifests")

Lifecycle = Literal["active", "terminating", "finished"]


@dataclass(frozen=True)
class ObservedPod:
    """One pod as a source sees it.

    `locator` says where the pod came from within the source and is stable for that place: a
    manifest's file path, or `kubelet:<namespace>/<name>`. It is what an invalid pod is rejected
    under (it has no usable UID) and what events record as `source`.
    """

    locator: str
    pod: Pod | None = None  # None: the pod could not be decoded, see `error`
    error: str = ""
    spec_hash: str = ""
    lifecycle: Lifecycle = "active"
    # Every regular init container has terminated with exit code 0 (False when there are none).
    init_completed: bool = False
    # The UID was derived by memstate (a static pod manifest without metadata.uid).
    derived_uid: bool = False
    # `<namespace>/<name>` under which the kubelet would list this static pod (derived UIDs), or
    # under which a source lists a static/mirror pod (kubelet-side UIDs); "" for other pods.
    static_key: str = ""
    # (bare runtime container id, container name) from the pod's status: which runtime-named
    # container cgroup is which container. Observations of the runtime, never recorded.
    container_ids: tuple[tuple[str, str], ...] = ()

    @property
    def uid(self) -> str:
        return self.pod.uid if self.pod is not None else ""


@dataclass
class SourceHealth:
    """A source's health, for `status`, the metrics and the journal. Mutated by the source."""

    name: SourceName
    # Wall-clock time (Unix seconds) of the last successful list or poll; None: never.
    last_success_unix: float | None = None
    consecutive_failures: int = 0
    # True when the source's view is current: the last poll succeeded, or the watch is running
    # after a successful list. While False, its last view stays in force unchanged.
    in_sync: bool = False
    last_error: str = ""
    pods: int = 0
    # Called after every change recorded here (the daemon publishes the health then:
    # memstate.node.loops.pods).
    on_change: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def succeeded(self, pods: int) -> None:
        """Record a successful list/poll of `pods` pods."""
        self.last_success_unix = time.time()
        self.consecutive_failures = 0
        self.in_sync = True
        self.last_error = ""
        self.pods = pods
        self._changed()

    def failed(self, error: str) -> None:
        """Record a failure; the source's last view stays as it was."""
        self.consecutive_failures += 1
        self.in_sync = False
        self.last_error = error
        self._changed()

    def counted(self, pods: int) -> None:
        """Record that the source sees `pods` pods now (between lists: a watch event)."""
        if pods != self.pods:
            self.pods = pods
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def as_dict(self) -> dict[str, object]:
        """Plain form for the status file."""
        return {
            "name": self.name,
            "last_success_unix": self.last_success_unix,
            "consecutive_failures": self.consecutive_failures,
            "in_sync": self.in_sync,
            "last_error": self.last_error,
            "pods": self.pods,
        }
