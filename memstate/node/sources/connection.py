"""Where a pod source connects and with which credentials.

Three ways to build a `Connection`:

- `kubelet_connection`: the kubelet's HTTPS port (10250) with a bearer token file and/or a client
  certificate, verified against a CA file; or its read-only HTTP port (no credentials at all).
- `in_cluster_connection`: the pod's service account — the token and CA under
  `/var/run/secrets/kubernetes.io/serviceaccount/` and `KUBERNETES_SERVICE_HOST`/`_PORT`.
- `kubeconfig_connection`: a kubeconfig file (its current context, or a named one). Supported:
  `server`, `certificate-authority` / `-data`, `insecure-skip-tls-verify`, user `token`,
  `tokenFile`, `client-certificate` / `-data`, `client-key` / `-data`. **Not supported: `exec`
  credential plugins and `auth-provider`** (they run programs or need cloud SDKs); such a file is
  refused with a message saying so. Use a service-account token instead.

Token files are read again for every request, so rotated service-account tokens (bound tokens
expire after about an hour) keep working. Problems with the credentials themselves are
`ConfigError`s naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from memstate.core.errors import ConfigError, SourceError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_TOKEN_BYTES = 64 << 10


@dataclass(frozen=True)
class Connection:
    """A base URL plus what authenticates and verifies it."""

    base_url: str
    token: str = ""
    token_file: Path | None = None
    # An SSLContext for https (CA and client certificate loaded), or None for plain http.
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    described_as: str = ""  # where the settings came from, for messages

    def headers(self) -> dict[str, str]:
        """Request headers: the bearer token (read from its file each time) if there is one."""
        token = self.token
        if self.token_file is not None:
            try:
                with self.token_file.open("rb") as handle:
                    token = handle.read(MAX_TOKEN_BYTES).decode("utf-8", "replace").strip()
            except OSError as exc:
                raise SourceError(
                    f"cannot read the token: {exc.strerror}", source=str(self.token_file)
                ) from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self, *, connect_timeout: float, read_timeout: float) -> httpx.AsyncClient:
        """An httpx client for this connection (runs on trio through anyio)."""
        timeout = httpx.Timeout(connect_timeout, read=read_timeout)
        verify: ssl.SSLContext | bool = self.tls if self.tls is not None else True
        return httpx.AsyncClient(
            base_url=self.base_url, verify=verify, timeout=timeout, trust_env=False
        )


def tls_context(
    *,
    ca_file: Path | None = None,
    ca_data: bytes | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    cert_data: bytes | None = None,
    key_data: bytes | None = None,
    insecure: bool = False,
    source: str = "",
) -> ssl.SSLContext:
    """A client TLS context: the CA to verify with (else the system's) and a client certificate."""
    try:
        context = ssl.create_default_context(
            cafile=str(ca_file) if ca_file else None,
            cadata=ca_data.decode("ascii") if ca_data else None,
        )
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot load the CA: {exc}", source=str(ca_file or source)) from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_data is not None or key_data is not None:
        if cert_data is None or key_data is None:
            raise ConfigError("client certificate and key must both be given", source=source)
        _load_cert_data(context, cert_data, key_data, source)
    elif cert_file is not None or key_file is not None:
        if cert_file is None or key_file is None:
            raise ConfigError("client certificate and key must both be given", source=source)
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate: {exc}", source=str(cert_file)
            ) from None
    return context


def _load_cert_data(context: ssl.SSLContext, cert: bytes, key: bytes, source: str) -> None:
    # The ssl module loads client certificates from files only: write them to a private
    # temporary directory and delete it at once.
    with tempfile.TemporaryDirectory(prefix="memstate-tls-") as directory:
        cert_path = Path(directory) / "client.crt"
        key_path = Path(directory) / "client.key"
        for path, data in ((cert_path, cert), (key_path, key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
        try:
            context.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot load the client certificate: {exc}", source=source) from None


def kubelet_connection(
    url: str,
    *,
    token_file: Path | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    insecure: bool = False,
) -> Connection:
    """The kubelet: `https://<node>:10250` with a token and/or client certificate, or the
    read-only `http://<node>:10255` (no authentication; disabled on most clusters)."""
    if url.startswith("http://"):
        return Connection(base_url=url.rstrip("/"), described_as=url)
    if not url.startswith("https://"):
        raise ConfigError(f"kubelet URL {url!r} must start with https:// or http://")
    context = tls_context(
        ca_file=ca_file, cert_file=cert_file, key_file=key_file, insecure=insecure, source=url
    )
    return Connection(
        base_url=url.rstrip("/"), token_file=token_file, tls=context, described_as=url
    )


def in_cluster_connection(
    environ: Mapping[str, str] | None = None, directory: Path = SERVICE_ACCOUNT_DIR
) -> Connection:
    """The API server as seen from a pod, with the pod's service-account credentials."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "not running in a pod: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are unset "
            "(set apiServer.kubeconfig instead)",
            path="$.memstate.apiServer",
        )
    if ":" in host:
        host = f"[{host}]"
    token_file = directory / "token"
    if not token_file.is_file():
        raise ConfigError("service account token missing", source=str(token_file))
    context = tls_context(ca_file=directory / "ca.crt")
    return Connection(
        base_url=f"https://{host}:{port}",
        token_file=token_file,
        tls=context,
        described_as=f"in-cluster service account ({directory})",
    )


def kubeconfig_connection(path: Path, *, context_name: str = "") -> Connection:
    """The API server and credentials of a kubeconfig file (see the module docstring)."""
    source = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=source) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not a kubeconfig: {exc}", source=source) from None
    if not isinstance(document, dict):
        raise ConfigError("not a kubeconfig (expected a mapping)", source=source)
    name = context_name or str(document.get("current-context") or "")
    if not name:
        raise ConfigError("no current-context and no context named", source=source)
    context = _named(document, "contexts", "context", name, source)
    cluster = _named(document, "clusters", "cluster", str(context.get("cluster", "")), source)
    user = _named(document, "users", "user", str(context.get("user", "")), source)
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if unsupported in user:
            raise ConfigError(
                f"user credential {unsupported!r} is not supported (no exec plugins or auth "
                "providers): use a token, tokenFile or a client certificate",
                source=source,
                path=f"$.users[{context.get('user', '')}].user.{unsupported}",
            )
    server = str(cluster.get("server", ""))
    if not server.startswith("https://") and not server.startswith("http://"):
        raise ConfigError(f"cluster server {server!r} is not an http(s) URL", source=source)
    base = path.parent

    def file_of(mapping: dict[str, Any], key: str) -> Path | None:
        value = mapping.get(key)
        if not value:
            return None
        candidate = Path(str(value))
        return candidate if candidate.is_absolute() else base / candidate

    def data_of(mapping: dict[str, Any], key: str) -> bytes | None:
        value = mapping.get(key)
        if not value:
            return None
        try:
            return base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{key} is not base64", source=source) from None

    tls = None
    if server.startswith("https://"):
        tls = tls_context(
            ca_file=file_of(cluster, "certificate-authority"),
            ca_data=data_of(cluster, "certificate-authority-data"),
            cert_file=file_of(user, "client-certificate"),
            key_file=file_of(user, "client-key"),
            cert_data=data_of(user, "client-certificate-data"),
            key_data=data_of(user, "client-key-data"),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            source=source,
        )
    return Connection(
        base_url=server.rstrip("/"),
        token=str(user.get("token") or ""),
        token_file=file_of(user, "tokenFile"),
        tls=tls,
        described_as=f"kubeconfig {source} (context {name})",
    )


def _named(document: dict[str, Any], section: str, key: str, name: str, source: str) -> Any:
    entries = document.get(section)
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            if isinstance(value, dict):
                return value
    raise ConfigError(f"no {key} named {name!r} in {section}", source=source)
