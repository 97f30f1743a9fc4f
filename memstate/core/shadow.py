"""Shadow mode's comparison of memstate's decisions with the kubelet's. Pure.

Two families of disagreement, each keyed by (pod UID, subject):

- the kubelet Memory Manager's checkpoint against memstate's allocations (`numa_nodes`: the
  NUMA nodes a pod's blocks sit on, "-" for a pod not pinned, "unknown" / "rejected: <reason>"
  for a pod memstate does not hold);
- the live pod cgroup files against memstate's targets (subject = the file name).

`changes` turns the current view of a family into `shadow_disagreement` notes against what was
recorded before: one when a disagreement starts or its values change, one with `resolved` when
it ends — never one per poll. `open_disagreements` folds those notes back from a log, for
`memstate shadow report` and for the daemon's own start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from memstate.core.events import Envelope, ShadowDisagreement
from memstate.core.kubelet_checkpoint import KubeletCheckpoint
from memstate.core.state import State

NUMA_NODES = "numa_nodes"
CHECKPOINT_SUBJECTS = frozenset({NUMA_NODES})

Key = tuple[str, str]  # (pod UID, subject)


class Values(msgspec.Struct, frozen=True):
    """What memstate and the kubelet hold for one (pod, subject), and where it was seen."""

    memstate: str
    kubelet: str
    where: str = ""


def _nodes_text(nodes: Iterable[int]) -> str:
    listed = sorted(set(nodes))
    return ",".join(map(str, listed)) if listed else "-"


def checkpoint_view(state: State, checkpoint: KubeletCheckpoint, where: str) -> dict[Key, Values]:
    """The pods whose NUMA nodes differ between memstate's state and the kubelet checkpoint."""
    kubelet: dict[str, str] = {}
    for pod in (*checkpoint.pods, *checkpoint.pod_entries):
        nodes = {n for c in pod.containers for b in c.blocks for n in b.numa_affinity}
        if nodes:
            kubelet[pod.uid] = _nodes_text(nodes)
    ours: dict[str, str] = {}
    for uid, record in state.pods.items():
        ours[uid] = _nodes_text(record.allocation.numa_nodes) if record.allocation else "-"
    view: dict[Key, Values] = {}
    for uid in sorted(ours.keys() | kubelet.keys()):
        theirs = kubelet.get(uid, "-")
        mine = ours.get(uid)
        if mine is None:
            rejection = state.rejections.get(uid)
            mine = f"rejected: {rejection.reason}" if rejection is not None else "unknown"
        if mine != theirs:
            view[(uid, NUMA_NODES)] = Values(memstate=mine, kubelet=theirs, where=where)
    return view


def changes(
    recorded: Mapping[Key, Values], current: Mapping[Key, Values], subjects: frozenset[str]
) -> list[ShadowDisagreement]:
    """The notes that bring `recorded` to `current`, for the keys whose subject is in
    `subjects` (the family `current` covers), in key order."""
    notes: list[ShadowDisagreement] = []
    keys = {k for k in recorded if k[1] in subjects} | current.keys()
    for key in sorted(keys):
        uid, subject = key
        now, before = current.get(key), recorded.get(key)
        if now == before:
            continue
        if now is None:
            if before is None:
                continue
            notes.append(
                ShadowDisagreement(
                    uid=uid,
                    subject=subject,
                    memstate=before.memstate,
                    kubelet=before.kubelet,
                    where=before.where,
                    resolved=True,
                )
            )
        else:
            notes.append(
                ShadowDisagreement(
                    uid=uid,
                    subject=subject,
                    memstate=now.memstate,
                    kubelet=now.kubelet,
                    where=now.where,
                )
            )
    return notes


def fold(recorded: dict[Key, Values], notes: Iterable[ShadowDisagreement]) -> None:
    """Apply recorded notes to `recorded` (in place)."""
    for note in notes:
        key = (note.uid, note.subject)
        if note.resolved:
            recorded.pop(key, None)
        else:
            recorded[key] = Values(memstate=note.memstate, kubelet=note.kubelet, where=note.where)


class OpenDisagreement(msgspec.Struct, frozen=True):
    """One row of `memstate shadow report`."""

    uid: str
    subject: str
    memstate: str
    kubelet: str
    where: str
    since_ns: int  # the start of the current stretch: a change of values keeps it
    seq: int  # the record with the latest values


def open_disagreements(envelopes: Iterable[Envelope]) -> list[OpenDisagreement]:
    """The disagreements still open after `envelopes`, by pod UID then subject."""
    current: dict[Key, OpenDisagreement] = {}
    for envelope in envelopes:
        event = envelope.event
        if not isinstance(event, ShadowDisagreement):
            continue
        key = (event.uid, event.subject)
        if event.resolved:
            current.pop(key, None)
            continue
        earlier = current.get(key)
        current[key] = OpenDisagreement(
            uid=event.uid,
            subject=event.subject,
            memstate=event.memstate,
            kubelet=event.kubelet,
            where=event.where,
            since_ns=envelope.ts_ns if earlier is None else earlier.since_ns,
            seq=envelope.seq,
        )
    return [current[key] for key in sorted(current)]
