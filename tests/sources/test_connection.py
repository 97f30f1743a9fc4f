"""Credentials: kubeconfig files, the in-cluster service account, the kubelet's settings.

Goal: every supported credential form connects to a real HTTPS server (trustme CA, client
certificate required where used) and authenticates; exec plugins and auth providers are refused
with a message saying so; missing pieces are ConfigErrors naming the file. Method: files written
to a temporary directory, a real `KubeletStandIn` (it serves `/pods`) as the server.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from memstate.core.errors import ConfigError, SourceError
from memstate.node.sources.connection import (
    Connection,
    in_cluster_connection,
    kubeconfig_connection,
    kubelet_connection,
)
from memstate.node.sources.kubelet import KubeletSource
from tests.sources.standins import Certificates, KubeletStandIn, kube_pod

TOKEN = "s3cr3t-token"


def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "memstate",
                "contexts": [{"name": "memstate", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


async def poll_once(connection: Connection) -> int:
    source = KubeletSource(connection, connect_timeout=10.0, read_timeout=30.0)
    async with source.transport() as client:
        return len(await source.poll(client))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_kubeconfig_forms_connect(certificates: Certificates, tmp_path: Path) -> None:
    standin = KubeletStandIn(certificates, TOKEN)
    standin.set_pods([kube_pod("a", "u1")])
    standin.start()
    try:
        ca_pem = certificates.ca.cert_pem.bytes()
        (tmp_path / "ca.crt").write_bytes(ca_pem)
        (tmp_path / "token").write_text(TOKEN)
        forms = [
            ({"server": standin.url, "certificate-authority-data": b64(ca_pem)}, {"token": TOKEN}),
            ({"server": standin.url, "certificate-authority": "ca.crt"}, {"tokenFile": "token"}),
            ({"server": standin.url, "insecure-skip-tls-verify": True}, {"token": TOKEN}),
        ]
        for cluster, user in forms:
            connection = kubeconfig_connection(kubeconfig(tmp_path, cluster, user))
            assert await poll_once(connection) == 1, (cluster, user)
    finally:
        standin.stop()


async def test_client_certificate_data_and_files(
    certificates: Certificates, tmp_path: Path
) -> None:
    # A server that requires a client certificate (and still the token: the stand-in checks it).
    required = KubeletStandIn(certificates, TOKEN, require_client_cert=True)
    required.set_pods([kube_pod("a", "u1")])
    required.start()
    try:
        cert = certificates.client.cert_chain_pems[0].bytes()
        key = certificates.client.private_key_pem.bytes()
        ca = certificates.ca.cert_pem.bytes()
        user = {"token": TOKEN, "client-certificate-data": b64(cert), "client-key-data": b64(key)}
        cluster = {"server": required.url, "certificate-authority-data": b64(ca)}
        assert await poll_once(kubeconfig_connection(kubeconfig(tmp_path, cluster, user))) == 1
        (tmp_path / "client.crt").write_bytes(cert)
        (tmp_path / "client.key").write_bytes(key)
        (tmp_path / "ca.crt").write_bytes(ca)
        (tmp_path / "token").write_text(TOKEN)
        direct = kubelet_connection(
            required.url,
            token_file=tmp_path / "token",
            ca_file=tmp_path / "ca.crt",
            cert_file=tmp_path / "client.crt",
            key_file=tmp_path / "client.key",
        )
        assert await poll_once(direct) == 1
        # without the client certificate the TLS handshake fails
        bare = kubelet_connection(
            required.url, token_file=tmp_path / "token", ca_file=tmp_path / "ca.crt"
        )
        with pytest.raises(SourceError) as info:
            await poll_once(bare)
        assert info.value.source == f"{required.url}/pods"
        assert required.polls() == 2  # the bare attempt never reached the handler
    finally:
        required.stop()


def test_exec_plugins_and_auth_providers_are_refused(tmp_path: Path) -> None:
    for user in (
        {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}},
        {"auth-provider": {"name": "gcp"}},
    ):
        path = kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443"}, user)
        with pytest.raises(ConfigError, match="not supported") as info:
            kubeconfig_connection(path)
        assert info.value.source == str(path)


def test_kubeconfig_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        kubeconfig_connection(tmp_path / "absent")
    path = kubeconfig(tmp_path, {"server": "ftp://x"}, {"token": "t"})
    with pytest.raises(ConfigError, match="not an http"):
        kubeconfig_connection(path)
    path = kubeconfig(tmp_path, {"server": "https://x"}, {"token": "t"})
    with pytest.raises(ConfigError, match="no context named 'other'"):
        kubeconfig_connection(path, context_name="other")
    path = kubeconfig(tmp_path, {"server": "https://x"}, {"client-certificate-data": b64(b"x")})
    with pytest.raises(ConfigError, match="certificate and key must both"):
        kubeconfig_connection(path)


def test_in_cluster(certificates: Certificates, tmp_path: Path) -> None:
    certificates.ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    (tmp_path / "token").write_text("tok\n")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    connection = in_cluster_connection(env, tmp_path)
    assert connection.base_url == "https://[fd00::1]:443"
    assert connection.headers() == {"Authorization": "Bearer tok"}
    (tmp_path / "token").write_text("rotated")  # bound tokens rotate: read at every request
    assert connection.headers() == {"Authorization": "Bearer rotated"}
    with pytest.raises(ConfigError, match="not running in a pod"):
        in_cluster_connection({}, tmp_path)
