"""A Kubernetes Event on the pod for each rejection, where the API-server source is configured.

Beside the kubelet a rejection by memstate cannot stop the pod: the pod runs, unpinned and
unprotected. The Event makes that visible where operators look (`kubectl describe pod`,
`kubectl get events`), like the kubelet's own admission failures: a core/v1 Event of type
`Warning` whose reason is the rejection's upstream reason (`TopologyAffinityError`,
`UnexpectedAdmissionError`, ...), its message, and `involvedObject` naming the pod by the API
server's UID (for a static pod, its mirror pod). POSTed to
`/api/v1/namespaces/<namespace>/events` with the source's own credentials (RBAC: `create` on
`events`).

Once per rejection: each `pod_rejected` decision is reported once (a repeat of the same reason and
message for the same pod in this process is not). Best effort: a failed POST is logged and
counted, never retried in a loop and never fatal; a pod the API server does not list (a manifest
pod) gets no Event. Nothing is sent in shadow mode, where memstate's rejection stops nothing and
shows as a disagreement instead.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx
import msgspec
import trio

from memstate.core.events import Event, PodRejected
from memstate.node.sources.apiserver import ApiServerSource
from memstate.node.sources.httpio import describe_http_error

logger = logging.getLogger("memstate.sources.events")

QUEUE_SIZE = 1000  # rejections waiting to be reported; beyond that they are dropped and logged
COMPONENT = "memstate"


class RejectionEvents:
    """Queues rejections (from the writer's callback, synchronous) and POSTs them (`run`)."""

    def __init__(
        self,
        source: ApiServerSource,
        *,
        node_name: str,
        wall_clock_ns: Callable[[], int],
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.node_name = node_name
        self.wall_clock_ns = wall_clock_ns
        self.on_result = on_result or (lambda _result: None)
        self._send, self._receive = trio.open_memory_channel[PodRejected](QUEUE_SIZE)
        self._reported: set[tuple[str, str, str]] = set()

    def note(self, decisions: Sequence[Event]) -> None:
        """Queue every new rejection of a pod among `decisions` (never blocks)."""
        for decision in decisions:
            if not isinstance(decision, PodRejected) or not decision.uid:
                continue
            key = (decision.uid, decision.reason, decision.message)
            if key in self._reported:
                continue
            self._reported.add(key)
            try:
                self._send.send_nowait(decision)
            except trio.WouldBlock:
                logger.warning("too many rejections queued: no Event for pod %s", decision.uid)
                self.on_result("dropped")

    async def run(self) -> None:
        """POST the queued rejections until cancelled."""
        client = self.source.connection.client(connect_timeout=5.0, read_timeout=10.0)
        async with client:
            async for rejection in self._receive:
                await self._report(client, rejection)

    async def _report(self, client: httpx.AsyncClient, rejection: PodRejected) -> None:
        pod = self.source.api_pod(rejection.uid)
        if pod is None:
            logger.debug("no Event for pod %s: the API server does not list it", rejection.uid)
            self.on_result("not_listed")
            return
        namespace, name, api_uid = pod
        body = event_body(
            rejection,
            namespace=namespace,
            name=name,
            api_uid=api_uid,
            node_name=self.node_name,
            now_ns=self.wall_clock_ns(),
        )
        path = f"/api/v1/namespaces/{namespace}/events"
        where = f"{self.source.connection.base_url}{path}"
        try:
            reply = await client.post(
                path,
                content=msgspec.json.encode(body),
                headers={**self.source.connection.headers(), "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            logger.warning(
                "Event for rejected pod %s/%s: %s", namespace, name, describe_http_error(exc)
            )
            self.on_result("failed")
            return
        if reply.status_code not in (200, 201):
            logger.warning(
                "Event for rejected pod %s/%s: %s answered HTTP %d",
                namespace,
                name,
                where,
                reply.status_code,
            )
            self.on_result("failed")
            return
        logger.info("Event %s for rejected pod %s/%s posted", rejection.reason, namespace, name)
        self.on_result("posted")


def event_body(
    rejection: PodRejected,
    *,
    namespace: str,
    name: str,
    api_uid: str,
    node_name: str,
    now_ns: int,
) -> dict[str, Any]:
    """The core/v1 Event for one rejection, shaped like the kubelet's admission failures."""
    moment = _dt.datetime.fromtimestamp(now_ns // 10**9, tz=_dt.UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{now_ns:x}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": name,
            "uid": api_uid,
        },
        "reason": rejection.reason,
        "message": rejection.message,
        "type": "Warning",
        "source": {"component": COMPONENT, "host": node_name},
        "reportingComponent": COMPONENT,
        "reportingInstance": node_name,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def rejection_events_for(
    sources: Sequence[object],
    *,
    node_name: str,
    wall_clock_ns: Callable[[], int],
    shadow: bool,
    on_result: Callable[[str], None] | None = None,
) -> RejectionEvents | None:
    """The reporter when an API-server source is configured and memstate is not in shadow mode."""
    if shadow:
        return None
    for source in sources:
        if isinstance(source, ApiServerSource):
            return RejectionEvents(
                source, node_name=node_name, wall_clock_ns=wall_clock_ns, on_result=on_result
            )
    return None


class RejectionEventsHost(Protocol):
    """What `run_rejection_events` uses of the daemon."""

    rejection_events: RejectionEvents | None


async def run_rejection_events(daemon: RejectionEventsHost) -> None:
    """The daemon's loop posting rejection Events; returns at once without a reporter."""
    if daemon.rejection_events is not None:
        await daemon.rejection_events.run()
