"""UIDs for static pod manifests that carry no `metadata.uid`.

The kubelet gives such a pod a UID it computes itself: a 128-bit hash over a dump of its decoded
Go object, followed by `host:<nodeName>` and `file:<path>`, written as 32 lowercase hex digits. That
dump depends on Go's internal types and cannot be reproduced outside Go, so memstate derives its own
UID the same way in spirit, and it can never equal the kubelet's:

    uid = hex(BLAKE2b-128( canonical JSON of the manifest document (keys sorted, no spaces)
                           + "\\nhost:" + nodeName + "\\nfile:" + the manifest's path ))

Consequences, as with the kubelet: any change of the manifest's content (not of its formatting or
comments), a move to another path or another node name gives a new UID, i.e. a new pod. Where the
kubelet `/pods` source (or the API server, through the mirror pod) reports the same static pod, the
kubelet's UID wins (memstate.node.sources.tracker).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder(order="sorted")


def derive_static_uid(document: Any, *, node_name: str, path: str) -> str:
    """The derived UID of a static pod manifest (see the module docstring)."""
    content = _ENCODER.encode(document)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(content)
    digest.update(f"\nhost:{node_name}\nfile:{path}".encode())
    return digest.hexdigest()


def static_pod_key(namespace: str, name: str, node_name: str) -> str:
    """`<namespace>/<name>-<node>`: how the kubelet lists a static pod named `name`."""
    return f"{namespace}/{name}-{node_name.lower()}"
