"""The kubelet's `/pods` endpoint as a pod source.

`GET /pods` returns the kubelet's own pod set as a v1 `PodList`: regular pods and static pods (with
the kubelet-side UIDs the cgroups are named after), no mirror pods, no resourceVersion and no
watch. So it is polled: every `interval` seconds, and at once when `nudge()` is called (the daemon
nudges when the cgroup watcher sees a pod cgroup appear, the way koordinator's koordlet does).
Each successful poll hands the full set to the tracker; a failed poll (connection, TLS, HTTP
status, a body that is not a PodList) is logged and counted in `health`, and the last set stays in
force — an outage changes nothing already decided.

The GET goes over one kept-alive connection (memstate.node.sources.httpget: h11 over trio, not
httpx, whose layers cost more CPU per poll than everything else an idle node does).
"""

from __future__ import annotations

import logging

import httpx
import trio

from memstate.core.errors import MemstateError, SourceError
from memstate.node.sources.connection import Connection
from memstate.node.sources.feed import Deliver
from memstate.node.sources.httpget import KeptConnection
from memstate.node.sources.httpio import describe_http_error, status_error
from memstate.node.sources.kube import MAX_BODY_BYTES, ObservationCache, decode_pod_list
from memstate.node.sources.observation import ObservedPod, SourceHealth, SourceName

logger = logging.getLogger("memstate.sources.kubelet")

# How long the connection is kept between polls: Go's HTTP client keeps an idle one 90 s, and
# so does the kubelet's server (its IdleTimeout); closing it a little earlier than the server
# does avoids sending a poll into a connection the server is closing. Longer poll intervals
# connect again each time.
KEEPALIVE_SECONDS = 60.0


class KubeletSource:
    """Polls the kubelet's `/pods` (see the module docstring)."""

    name: SourceName = "kubelet"

    def __init__(
        self,
        connection: Connection,
        *,
        interval: float = 5.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        min_interval: float = 0.5,
    ) -> None:
        self.connection = connection
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # Nudges come with every cgroup hint: never poll more often than this.
        self.min_interval = min_interval
        self.health = SourceHealth(self.name)
        self._nudged = trio.Event()
        self.where = f"{connection.base_url}/pods"
        self._observations = ObservationCache(self.name)
        # The last answer and its observations: an unchanged answer (an idle node's) gives the
        # same observations without decoding it (~1.7 ms at 500 pods), and the tracker then
        # sees the same objects (memstate.node.sources.tracker: no pass over the pods either).
        self._last: tuple[bytes, list[ObservedPod]] = (b"", [])

    def nudge(self) -> None:
        """Poll now (a pod cgroup appeared)."""
        self._nudged.set()

    def transport(self) -> KeptConnection:
        """The connection `poll` takes (one for the source's lifetime: it is kept alive)."""
        return KeptConnection(
            self.connection.base_url,
            self.connection.tls,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            keepalive_seconds=KEEPALIVE_SECONDS,
        )

    async def poll(self, client: KeptConnection) -> list[ObservedPod]:
        """One `GET /pods`; `SourceError` when the answer is unusable."""
        try:
            status, body = await client.get("/pods", self.connection.headers(), MAX_BODY_BYTES)
        except httpx.HTTPError as exc:
            raise SourceError(describe_http_error(exc), source=self.where) from None
        if status != 200:
            raise status_error(status, body, where=self.where)
        if body == self._last[0]:
            return list(self._last[1])
        pods = decode_pod_list(body, where=self.where)
        observed = self._observations.observe_all(pods.items or [])
        self._last = (body, observed)
        return list(observed)

    async def run(self, deliver: Deliver) -> None:
        """Poll until cancelled, handing every successful poll's pods to `deliver`."""
        async with self.transport() as client:
            while True:
                self._nudged = trio.Event()
                polled = trio.current_time()
                await self._poll_once(client, deliver)
                with trio.move_on_after(self.interval):
                    await self._nudged.wait()
                await trio.sleep_until(polled + self.min_interval)

    async def _poll_once(self, client: KeptConnection, deliver: Deliver) -> None:
        try:
            pods = await self.poll(client)
        except SourceError as exc:
            first = self.health.consecutive_failures == 0
            self.health.failed(exc.describe())
            # The first failure of an outage is an error, the repeats are not news.
            log = logger.error if first else logger.debug
            log("kubelet source: %s (keeping the last view)", exc.describe())
            return
        try:
            await deliver(pods)
        except MemstateError as exc:
            logger.error("kubelet source: cannot record the changes (retrying): %s", exc)
            return
        if self.health.consecutive_failures:
            logger.info(
                "kubelet source: back after %d failed polls", self.health.consecutive_failures
            )
        self.health.succeeded(len(pods))
