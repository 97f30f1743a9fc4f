"""The Kubernetes API server as a pod source: list + watch of this node's pods.

Protocol (docs "Kubernetes API Concepts"; specs/kubelet-node.md §4):

1. list `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>&limit=<n>` (following `continue`
   tokens); the list's `metadata.resourceVersion` is where the watch starts; the full set goes to
   the tracker;
2. watch `GET /api/v1/pods?watch=1&fieldSelector=…&resourceVersion=<rv>&allowWatchBookmarks=true
   &timeoutSeconds=<s>`: one JSON event per line (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
   `ERROR`); after every event the set goes to the tracker and the event's resourceVersion is
   remembered; a bookmark only moves the resourceVersion;
3. when the stream ends (server timeout, dropped connection, read timeout — `read_timeout` should
   exceed the bookmark interval of about a minute), watch again from the last resourceVersion;
4. `410 Gone` (as the HTTP status or as an `ERROR` event with code 410, also for an expired
   `continue` token): the resourceVersion is too old — list again (relist); a second 410 before
   a watch connected again waits with the same capped backoff (no tight relist loop);
5. any other failure: wait with capped exponential backoff (`backoff_initial` doubling up to
   `backoff_max`; trio's clock, so tests can use `MockClock`), then resume.

The pod set is cached here between events (keyed by the API server's UID, as mirror pods map to
kubelet-side UIDs in `kube.observe`). During an outage the last set stays in force.
"""

from __future__ import annotations

import logging

import httpx
import trio

from memstate.core.errors import ConfigError, MemstateError, SourceError
from memstate.node.sources.connection import Connection
from memstate.node.sources.feed import Deliver
from memstate.node.sources.httpio import (
    describe_http_error,
    lines_bounded,
    read_bounded,
    status_error,
)
from memstate.node.sources.kube import (
    MAX_BODY_BYTES,
    MAX_PODS,
    KubePod,
    decode_pod,
    decode_pod_list,
    decode_status,
    decode_watch_event,
    observe,
)
from memstate.node.sources.observation import ObservedPod, SourceHealth, SourceName

logger = logging.getLogger("memstate.sources.apiserver")

MAX_EVENT_BYTES = 4 << 20  # one Pod object (etcd refuses objects above ~1.5 MiB)
PODS_PATH = "/api/v1/pods"
MIN_WATCH_SECONDS = 1.0


class Gone(SourceError):
    """410 Gone: the resourceVersion (or continue token) is too old; relist."""


class ApiServerSource:
    """List + watch of the pods bound to `node_name` (see the module docstring)."""

    name: SourceName = "apiserver"

    def __init__(
        self,
        connection: Connection,
        node_name: str,
        *,
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        connect_timeout: float = 5.0,
        read_timeout: float = 90.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if not node_name:
            raise ConfigError(
                "the API server source needs the node name", path="$.memstate.nodeName"
            )
        self.connection = connection
        self.node_name = node_name
        self.page_size = page_size
        self.watch_timeout_seconds = watch_timeout_seconds
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.health = SourceHealth(self.name)
        self.resource_version = ""
        self.relists = 0
        self._gone_in_a_row = 0  # 410s without a watch that connected in between
        self._pods: dict[str, ObservedPod] = {}
        self.where = f"{connection.base_url}{PODS_PATH}"

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, deliver: Deliver) -> None:
        """List and watch until cancelled, handing the pod set to `deliver` on every change."""
        client = self.connection.client(
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout
        )
        async with client:
            while True:
                try:
                    if not self.resource_version:
                        await self._list(client, deliver)
                    started = trio.current_time()
                    await self._watch(client, deliver)
                    if trio.current_time() - started < MIN_WATCH_SECONDS:
                        # A server that ends every watch at once must not be hammered.
                        await trio.sleep(self.backoff_initial)
                except Gone as exc:
                    logger.info("apiserver source: %s; listing again", exc.message)
                    self.resource_version = ""
                    self.relists += 1
                    self._gone_in_a_row += 1
                    if self._gone_in_a_row > 1:
                        # A fresh list's resourceVersion was too old again: a server that keeps
                        # answering 410 must not be relisted in a tight loop (client-go's
                        # reflector backs off between list-and-watch attempts too).
                        await trio.sleep(self._gone_backoff())
                except SourceError as exc:
                    first = self.health.consecutive_failures == 0
                    self.health.failed(exc.describe())
                    (logger.error if first else logger.debug)(
                        "apiserver source: %s (keeping the last view)", exc.describe()
                    )
                    await trio.sleep(self.backoff_delay())
                except MemstateError as exc:
                    # The changes could not be recorded: relist so that nothing is skipped.
                    logger.error("apiserver source: cannot record the changes (retrying): %s", exc)
                    self.resource_version = ""
                    await trio.sleep(self.backoff_delay())

    def _gone_backoff(self) -> float:
        exponent = min(self._gone_in_a_row - 2, 30)
        return min(self.backoff_max, self.backoff_initial * float(2**exponent))

    def backoff_delay(self) -> float:
        """Capped exponential backoff after `health.consecutive_failures` failures."""
        failures = max(1, self.health.consecutive_failures)
        return min(self.backoff_max, self.backoff_initial * float(2 ** min(failures - 1, 30)))

    # --- list --------------------------------------------------------------------------------

    def _selector(self) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={self.node_name}"}

    async def _list(self, client: httpx.AsyncClient, deliver: Deliver) -> None:
        pods: dict[str, ObservedPod] = {}
        params = {**self._selector(), "limit": str(self.page_size)}
        version = ""
        while True:
            body = await self._get(client, params)
            page = decode_pod_list(body, where=self.where)
            for item in page.items or ():
                if self._ours(item):
                    pods[item.metadata.uid] = observe(item, self.name)
            if len(pods) > MAX_PODS:
                raise SourceError(f"more than {MAX_PODS} pods on this node", source=self.where)
            version = page.metadata.resourceVersion
            token = page.metadata.continue_token
            if not token:
                break
            params = {**params, "continue": token}
        if not version:
            raise SourceError("the pod list has no resourceVersion", source=self.where)
        self._pods = pods
        await deliver(list(pods.values()))
        self.resource_version = version
        self.health.succeeded(len(pods))

    async def _get(self, client: httpx.AsyncClient, params: dict[str, str]) -> bytes:
        try:
            async with client.stream(
                "GET", PODS_PATH, params=params, headers=self.connection.headers()
            ) as reply:
                body = await read_bounded(reply, MAX_BODY_BYTES, where=self.where)
                _check_status(reply, body, self.where)
                return body
        except httpx.HTTPError as exc:
            raise SourceError(describe_http_error(exc), source=self.where) from None

    # --- watch -------------------------------------------------------------------------------

    async def _watch(self, client: httpx.AsyncClient, deliver: Deliver) -> None:
        params = {
            **self._selector(),
            "watch": "1",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_seconds),
        }
        try:
            async with client.stream(
                "GET", PODS_PATH, params=params, headers=self.connection.headers()
            ) as reply:
                if reply.status_code != 200:
                    body = await read_bounded(reply, MAX_EVENT_BYTES, where=self.where)
                    _check_status(reply, body, self.where)
                # Connected: the view is current again.
                self.health.succeeded(len(self._pods))
                self._gone_in_a_row = 0
                async for line in lines_bounded(reply, MAX_EVENT_BYTES, where=self.where):
                    await self._handle(line, deliver)
        except httpx.HTTPError as exc:
            # A dropped or timed-out stream: resume from the last resourceVersion.
            raise SourceError(describe_http_error(exc), source=self.where) from None

    async def _handle(self, line: bytes, deliver: Deliver) -> None:
        event = decode_watch_event(line, where=self.where)
        if event.type == "ERROR":
            status = decode_status(event.object)
            if status is not None and status.code == 410:
                raise Gone(status.message or "410 Gone", source=self.where)
            detail = status.message if status is not None else "unreadable Status"
            raise SourceError(f"watch error: {detail}", source=self.where)
        pod = decode_pod(event.object, where=self.where)
        if event.type == "BOOKMARK":
            self.resource_version = pod.metadata.resourceVersion or self.resource_version
            return
        if event.type not in ("ADDED", "MODIFIED", "DELETED"):
            raise SourceError(f"unknown watch event type {event.type!r}", source=self.where)
        uid = pod.metadata.uid
        if event.type == "DELETED" or not self._ours(pod):
            changed = self._pods.pop(uid, None) is not None
        else:
            observed = observe(pod, self.name)
            changed = self._pods.get(uid) != observed
            self._pods[uid] = observed
        if changed:
            await deliver(list(self._pods.values()))
        self.resource_version = pod.metadata.resourceVersion or self.resource_version
        self.health.counted(len(self._pods))

    def api_pod(self, uid: str) -> tuple[str, str, str] | None:
        """(namespace, name, the API server's UID) of the listed pod whose kubelet-side UID is
        `uid` (a mirror pod's differs from its `metadata.uid`), or None."""
        for api_uid, observed in self._pods.items():
            if observed.uid == uid and observed.pod is not None:
                return observed.pod.namespace, observed.pod.name, api_uid
        return None

    def _ours(self, pod: KubePod) -> bool:
        # The field selector already filters; a pod of another node is never ours.
        return pod.spec.nodeName in (None, "", self.node_name)


def _check_status(reply: httpx.Response, body: bytes, where: str) -> None:
    if reply.status_code == 200:
        return
    if reply.status_code == 410:
        status = decode_status(body)
        raise Gone((status.message if status else "") or "410 Gone", source=where)
    raise status_error(reply.status_code, body, where=where)
