"""Real HTTP servers on 127.0.0.1 playing the kubelet and the API server.

Both are `http.server` servers in a background thread (real sockets, real TLS from `trustme`,
real chunked transfer encoding), controlled by the test through thread-safe methods:

- `KubeletStandIn`: `GET /pods` answers a v1 PodList of the pods set with `set_pods`, HTTPS with a
  bearer token; it can be told to fail with a status, to send a body that is not a PodList, or
  to close connections without answering.
- `ApiServerStandIn`: `GET /api/v1/pods` lists (with resourceVersion and pagination) and watches
  (chunked, one JSON event per line). The test drives the pod set with `add`/`modify`/`delete`,
  which are appended to the history and streamed to open watches; `bookmark()`, `expire()` (the
  history is compacted: a watch from any rv older than the current one gets `410 Gone`, as after
  an etcd compaction; a fresh list's rv stays watchable), `error_410_in_stream()`,
  `drop_watches()` and a per-chunk delay simulate the server's behaviour. Every request is
  recorded; `streaming_count()` tells how many watches reached the stream. `POST
  /api/v1/namespaces/<ns>/events` stores the core/v1 Event in `events` (201), or answers
  `event_status` when set.

`kube_pod` builds a pod of the shape the kubelet and the API server serve, with many fields
memstate ignores.
"""

from __future__ import annotations

import copy
import json
import queue
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme


def kube_pod(
    name: str,
    uid: str,
    *,
    memory: str = "1Gi",
    namespace: str = "default",
    node: str = "node-a",
    phase: str = "Running",
    init_containers: list[str] | None = None,
    init_exit_codes: dict[str, int] | None = None,
    deletion: bool = False,
    annotations: dict[str, str] | None = None,
    resource_version: str = "1",
    pod_level_resources: bool = False,
    limit_memory: str | None = None,
    container_id: str | None = None,
    init_container_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A v1 Pod as the kubelet or API server serve it (many fields memstate ignores).

    `limit_memory` other than `memory` makes it Burstable; `container_id` (``containerd://<id>``)
    is the app container's status once the runtime created it, `init_container_ids` the init
    containers' by name."""
    resources = {
        "requests": {"cpu": "1", "memory": memory},
        "limits": {"cpu": "1", "memory": limit_memory or memory},
    }
    inits = [
        {"name": n, "image": "busybox:1.36", "command": ["true"], "resources": resources}
        for n in init_containers or []
    ]
    statuses = []
    for n in init_containers or []:
        code = (init_exit_codes or {}).get(n)
        state: dict[str, Any] = (
            {"waiting": {"reason": "PodInitializing"}}
            if code is None
            else {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": "2026-12-01T10:00:00Z",
                    "finishedAt": "2026-12-01T10:00:01Z",
                    "containerID": (init_container_ids or {}).get(n, "containerd://" + "ab" * 32),
                }
            }
        )
        statuses.append(
            {
                "name": n,
                "state": state,
                "lastState": {},
                **({} if code is None else {"containerID": state["terminated"]["containerID"]}),
                "ready": code == 0,
                "restartCount": 0,
                "image": "docker.io/library/busybox:1.36",
                "imageID": "docker.io/library/busybox@sha256:" + "cd" * 32,
                "started": False,
            }
        )
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "resourceVersion": resource_version,
        "creationTimestamp": "2026-12-01T10:00:00Z",
        "labels": {"app": name, "pod-template-hash": "7d9f8c6b5"},
        "annotations": {"kubernetes.io/config.seen": "2026-12-01T10:00:00Z", **(annotations or {})},
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-rs", "uid": "x"}
        ],
        "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1"}],
    }
    if deletion:
        metadata["deletionTimestamp"] = "2026-12-01T11:00:00Z"
        metadata["deletionGracePeriodSeconds"] = 30
    spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}],
        "containers": [
            {
                "name": "app",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "A", "value": "b"}],
                "resources": resources,
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets"}],
                "imagePullPolicy": "IfNotPresent",
            }
        ],
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
    }
    if inits:
        spec["initContainers"] = inits
    if pod_level_resources:
        spec["resources"] = {"limits": {"memory": "2Gi", "cpu": "2"}}
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True"}],
            "hostIP": "10.0.0.5",
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}],
            "startTime": "2026-12-01T10:00:00Z",
            "initContainerStatuses": statuses,
            "containerStatuses": [] if container_id is None else [_running("app", container_id)],
            "qosClass": "Guaranteed",
        },
    }


def _running(name: str, container_id: str) -> dict[str, Any]:
    """A running container's status, as the kubelet reports it."""
    return {
        "name": name,
        "state": {"running": {"startedAt": "2026-12-01T10:00:02Z"}},
        "lastState": {},
        "ready": True,
        "restartCount": 0,
        "image": "docker.io/library/nginx:1.27",
        "imageID": "docker.io/library/nginx@sha256:" + "ef" * 32,
        "containerID": container_id,
        "started": True,
    }


class Certificates:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("memstate@node-a")

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        if require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _StandIn:
    """A threaded HTTP(S) server on 127.0.0.1 with a request log."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        handler = self._handler_class()
        self.httpd = _Server(("127.0.0.1", 0), handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((path, query, headers))

    def requests_to(self, path: str) -> list[dict[str, list[str]]]:
        with self.lock:
            return [q for p, q, _ in self.requests if p == path]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go's net/http (the real kubelet and API server) sets TCP_NODELAY; without it Nagle's
    # algorithm holds small watch events back until the client's delayed ACK.
    disable_nagle_algorithm = True
    standin: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send_json(self, status: int, obj: Any, *, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class KubeletStandIn(_StandIn):
    """The kubelet's `/pods` over HTTPS with a bearer token."""

    def __init__(
        self,
        certificates: Certificates,
        token: str,
        *,
        require_client_cert: bool = False,
        read_only_port: bool = False,
    ) -> None:
        self.token = token
        # The read-only port: plain HTTP, no authentication at all.
        self.read_only_port = read_only_port
        self.pods: list[dict[str, Any]] = []
        self.failure: int | None = None  # answer this HTTP status instead
        self.garbage: bytes | None = None  # answer this body instead of a PodList
        self.hang_up = False  # close the connection without answering
        self.hang_ups = 0  # … this many requests (then answer again)
        self.close_after_answer = False  # close each connection after answering (no header)
        self.chunked = False  # send the PodList with chunked transfer encoding
        self.stall = False  # never answer (until stopped)
        self.connections: set[tuple[str, int]] = set()  # client addresses that sent a request
        self.served_at: list[float] = []  # perf_counter() after each PodList sent (benchmarks)
        super().__init__(
            None
            if read_only_port
            else certificates.server_context(require_client_cert=require_client_cert)
        )

    def set_pods(self, pods: list[dict[str, Any]]) -> None:
        with self.lock:
            self.pods = copy.deepcopy(pods)

    def polls(self) -> int:
        return len(self.requests_to("/pods"))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                standin.record(split.path, parse_qs(split.query), dict(self.headers))
                with standin.lock:
                    standin.connections.add(self.client_address)
                    hang_up = standin.hang_up or standin.hang_ups > 0
                    standin.hang_ups = max(0, standin.hang_ups - 1)
                if hang_up:
                    self.close_connection = True
                    self.connection.close()
                    return
                if standin.stall:
                    standin.stopping.wait()
                    return
                authorised = self.headers.get("Authorization") == f"Bearer {standin.token}"
                if not authorised and not standin.read_only_port:
                    self.send_json(401, None, raw=b"Unauthorized")
                    return
                if split.path != "/pods":
                    self.send_json(404, None, raw=b"404 page not found")
                    return
                with standin.lock:
                    failure, garbage, pods = standin.failure, standin.garbage, standin.pods
                    body = {
                        "kind": "PodList",
                        "apiVersion": "v1",
                        "metadata": {},
                        "items": copy.deepcopy(pods),
                    }
                if failure is not None:
                    self.send_json(failure, None, raw=b"kubelet is unhappy")
                elif garbage is not None:
                    self.send_json(200, None, raw=garbage)
                elif standin.chunked:
                    data = json.dumps(body).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(data), 1000):
                        self.chunk(data[start : start + 1000])
                    self.chunk(b"")
                else:
                    self.send_json(200, body)
                    standin.served_at.append(time.perf_counter())
                if standin.close_after_answer:
                    self.close_connection = True

        return Handler


class ApiServerStandIn(_StandIn):
    """The API server's pod list + watch (see the module docstring)."""

    def __init__(self, certificates: Certificates, token: str, node: str = "node-a") -> None:
        self.token = token
        self.node = node
        self.version = 100
        self.pods: dict[str, dict[str, Any]] = {}  # uid → pod
        self.history: list[tuple[int, str, dict[str, Any]]] = []  # (rv, type, pod)
        self.oldest_watchable = 0  # a watch from an rv below this gets 410
        self.page_size_cap = 2  # pages of at most this many pods (pagination is exercised)
        self.chunk_delay = 0.0
        self.list_delay = 0.0
        self.watch_status: int | None = None  # answer watches with this status …
        self.watch_status_times = 0  # … this many times
        self._watchers: list[queue.Queue[tuple[str, Any]]] = []
        self._registered = 0  # watches that reached the stream (and so see drops and 410s)
        self.events: list[dict[str, Any]] = []  # POSTed core/v1 Events
        self.event_status: int | None = None  # answer event POSTs with this status instead
        super().__init__(certificates.server_context())

    # --- control -----------------------------------------------------------------------------

    def _next(self) -> int:
        self.version += 1
        return self.version

    def _emit(self, kind: str, pod: dict[str, Any]) -> None:
        with self.lock:
            rv = self._next()
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(rv)
            uid = pod["metadata"]["uid"]
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = pod
            self.history.append((rv, kind, pod))
            for watcher in self._watchers:
                watcher.put(("event", (rv, kind, pod)))

    def add(self, pod: dict[str, Any]) -> None:
        self._emit("ADDED", pod)

    def modify(self, pod: dict[str, Any]) -> None:
        self._emit("MODIFIED", pod)

    def delete(self, pod: dict[str, Any]) -> None:
        self._emit("DELETED", pod)

    def bookmark(self) -> int:
        with self.lock:
            rv = self._next()
            for watcher in self._watchers:
                watcher.put(("bookmark", rv))
            return rv

    def expire(self) -> None:
        """Compact the history: a watch from any rv before now gets 410 Gone.

        Like the real server: other objects' writes move the global revision on, the compaction
        drops everything before it, and the resourceVersion a new list returns is watchable
        (a stand-in that refused it too would make a correct client relist in a loop).
        """
        with self.lock:
            self.oldest_watchable = self._next()

    def error_410_in_stream(self) -> None:
        with self.lock:
            for watcher in self._watchers:
                watcher.put(("gone", None))

    def drop_watches(self) -> None:
        with self.lock:
            for watcher in self._watchers:
                watcher.put(("drop", None))

    def watch_count(self) -> int:
        return len([q for q in self.requests_to("/api/v1/pods") if q.get("watch") == ["1"]])

    def streaming_count(self) -> int:
        """Watches that got as far as streaming: a drop or an in-stream 410 sent after this
        count moved reaches them (`watch_count` counts requests, which may not be there yet)."""
        with self.lock:
            return self._registered

    def list_count(self) -> int:
        return len(
            [
                q
                for q in self.requests_to("/api/v1/pods")
                if q.get("watch") != ["1"] and "continue" not in q
            ]
        )

    # --- serving -----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                query = parse_qs(split.query)
                standin.record(split.path, query, dict(self.headers))
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    self.send_json(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                    return
                if query.get("fieldSelector") != [f"spec.nodeName={standin.node}"]:
                    self.send_json(400, {"kind": "Status", "code": 400, "message": "selector"})
                    return
                if query.get("watch") == ["1"]:
                    self.watch(query)
                else:
                    self.list(query)

            def do_POST(self) -> None:
                split = urlsplit(self.path)
                standin.record(split.path, {}, dict(self.headers))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    self.send_json(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                    return
                parts = split.path.strip("/").split("/")
                if parts[:3] != ["api", "v1", "namespaces"] or parts[4:] != ["events"]:
                    self.send_json(404, {"kind": "Status", "code": 404})
                    return
                if standin.event_status is not None:
                    code = standin.event_status
                    self.send_json(code, {"kind": "Status", "code": code, "message": "refused"})
                    return
                event = json.loads(body)
                if event.get("metadata", {}).get("namespace") != parts[3]:
                    self.send_json(400, {"kind": "Status", "code": 400, "message": "namespace"})
                    return
                with standin.lock:
                    standin.events.append(event)
                self.send_json(201, event)

            def list(self, query: dict[str, list[str]]) -> None:
                time.sleep(standin.list_delay)
                with standin.lock:
                    pods = sorted(standin.pods.values(), key=lambda p: p["metadata"]["name"])
                    rv = standin.version
                start = int(query.get("continue", ["0"])[0])
                limit = min(int(query.get("limit", ["500"])[0]), standin.page_size_cap)
                page = pods[start : start + limit]
                metadata: dict[str, Any] = {"resourceVersion": str(rv)}
                if start + limit < len(pods):
                    metadata["continue"] = str(start + limit)
                self.send_json(
                    200,
                    {"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page},
                )

            def watch(self, query: dict[str, list[str]]) -> None:
                since = int(query.get("resourceVersion", ["0"])[0] or 0)
                inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
                with standin.lock:
                    status = standin.watch_status if standin.watch_status_times > 0 else None
                    standin.watch_status_times = max(0, standin.watch_status_times - 1)
                    gone = since < standin.oldest_watchable
                    backlog = [h for h in standin.history if h[0] > since]
                    if not gone and status is None:
                        standin._watchers.append(inbox)
                        standin._registered += 1
                if status is not None:
                    self.send_json(status, {"kind": "Status", "code": status, "message": "x"})
                    return
                if gone:
                    self.send_json(
                        410,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "reason": "Expired",
                            "code": 410,
                            "message": f"too old resource version: {since}",
                        },
                    )
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for _rv, kind, pod in backlog:
                        self.send_event(kind, pod)
                    self.stream(inbox)
                except OSError:
                    pass  # the client went away
                finally:
                    with standin.lock:
                        if inbox in standin._watchers:
                            standin._watchers.remove(inbox)

            def stream(self, inbox: queue.Queue[tuple[str, Any]]) -> None:
                self._stream(inbox)
                # Stopped or dropped: the connection dies without the terminating chunk.
                self.close_connection = True
                self.connection.shutdown(2)

            def _stream(self, inbox: queue.Queue[tuple[str, Any]]) -> None:
                while not standin.stopping.is_set():
                    try:
                        what, data = inbox.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if what == "event":
                        self.send_event(data[1], data[2])
                    elif what == "bookmark":
                        self.send_event(
                            "BOOKMARK",
                            {
                                "kind": "Pod",
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(data)},
                            },
                        )
                    elif what == "gone":
                        self.send_event(
                            "ERROR",
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "reason": "Expired",
                                "code": 410,
                                "message": "too old resource version",
                            },
                        )
                    elif what == "drop":
                        return

            def send_event(self, kind: str, obj: dict[str, Any]) -> None:
                line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                if standin.chunk_delay:
                    # Split the event across two chunks, slowly: boundaries need not align.
                    middle = len(line) // 2
                    self.chunk(line[:middle])
                    time.sleep(standin.chunk_delay)
                    self.chunk(line[middle:])
                else:
                    self.chunk(line)

        return Handler


@contextmanager
def running(standin: _StandIn) -> Iterator[_StandIn]:
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
