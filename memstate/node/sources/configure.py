"""Build the network pod sources the settings ask for (the manifest directory is the daemon's)."""

from __future__ import annotations

import socket
from pathlib import Path

from memstate.node.settings import Settings
from memstate.node.sources.apiserver import ApiServerSource
from memstate.node.sources.connection import (
    in_cluster_connection,
    kubeconfig_connection,
    kubelet_connection,
)
from memstate.node.sources.kubelet import KubeletSource

NetworkSource = KubeletSource | ApiServerSource


def node_name_of(settings: Settings) -> str:
    """The node's name: `nodeName`, else the host name (as the kubelet defaults it)."""
    return settings.node_name or socket.gethostname().lower()


def network_sources(settings: Settings) -> list[NetworkSource]:
    """The kubelet and API-server sources named in `podSources`, connected per the settings.

    Credential problems are `ConfigError`s (exit 78) raised here, at start.
    """
    sources: list[NetworkSource] = []
    if "kubelet" in settings.pod_sources:
        kubelet = settings.kubelet

        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        connection = kubelet_connection(
            kubelet.url,
            token_file=path(kubelet.token_file),
            ca_file=path(kubelet.ca_file),
            cert_file=path(kubelet.cert_file),
            key_file=path(kubelet.key_file),
            insecure=kubelet.insecure_skip_tls_verify,
        )
        sources.append(KubeletSource(connection, interval=kubelet.poll_seconds))
    if "apiserver" in settings.pod_sources:
        api = settings.api_server
        if api.kubeconfig:
            connection = kubeconfig_connection(Path(api.kubeconfig), context_name=api.context or "")
        else:
            connection = in_cluster_connection()
        sources.append(
            ApiServerSource(
                connection,
                node_name_of(settings),
                watch_timeout_seconds=api.watch_timeout_seconds,
                read_timeout=api.read_timeout_seconds,
            )
        )
    return sources
