"""Building kubelet Memory Manager checkpoints in the documented format (kubelet-node.md §8.2),
for the import and shadow tests: compact JSON, keys in the kubelet's order, the v1 checksum."""

from __future__ import annotations

import json
from typing import Any

from memstate.core.kubelet_checkpoint import checksum_v1

Gi = 2**30


def checkpoint_document(
    entries: dict[str, dict[str, list[tuple[list[int], str, int]]]],
    *,
    nodes: int = 2,
    node_memory: int = 5 * Gi,
    reserved: int = Gi,
    policy: str = "Static",
) -> dict[str, Any]:
    """A v1 document: `entries` uid -> container -> [(numaAffinity, type, size)]."""
    held = dict.fromkeys(range(nodes), 0)
    assignments = dict.fromkeys(range(nodes), 0)
    for containers in entries.values():
        for blocks in containers.values():
            for affinity, kind, size in blocks:
                if kind == "memory" and affinity and affinity[0] in held:
                    held[affinity[0]] += size
                for n in affinity:
                    if n in assignments:
                        assignments[n] += 1
    machine = {
        str(n): {
            "numberOfAssignments": assignments[n],
            "memoryMap": {
                "memory": {
                    "total": node_memory,
                    "systemReserved": reserved,
                    "allocatable": node_memory - reserved,
                    # A checkpoint that holds more than a node has still has valid tables.
                    "reserved": min(held[n], node_memory - reserved),
                    "free": max(0, node_memory - reserved - held[n]),
                }
            },
            "cells": [n],
        }
        for n in range(nodes)
    }
    document: dict[str, Any] = {"policyName": policy, "machineState": machine}
    if entries:
        document["entries"] = {
            uid: {
                name: [{"numaAffinity": a, "type": t, "size": s} for a, t, s in blocks]
                for name, blocks in containers.items()
            }
            for uid, containers in entries.items()
        }
    return document


def checkpoint_bytes(document: dict[str, Any], *, checksum: int | None = None) -> bytes:
    """The file's bytes: the document with its checksum (computed unless given) last."""
    with_sum = {**document, "checksum": checksum_v1(document) if checksum is None else checksum}
    return json.dumps(with_sum, separators=(",", ":")).encode()
