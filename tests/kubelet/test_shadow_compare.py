"""Shadow mode's pure comparison (memstate.core.shadow): a disagreement is recorded when it starts,
changes or ends, never again while it stays the same, and each family only ends its own."""

from __future__ import annotations

from memstate.core.events import Envelope, ShadowDisagreement
from memstate.core.shadow import (
    CHECKPOINT_SUBJECTS,
    Values,
    changes,
    fold,
    open_disagreements,
)

CGROUP = frozenset({"memory.min", "cpuset.mems"})


def test_start_repeat_change_and_end() -> None:
    recorded: dict[tuple[str, str], Values] = {}
    first = {("p", "memory.min"): Values("100", "0", "kubepods/podp")}
    started = changes(recorded, first, CGROUP)
    assert [(n.subject, n.memstate, n.kubelet, n.resolved) for n in started] == [
        ("memory.min", "100", "0", False)
    ]
    fold(recorded, started)
    assert changes(recorded, first, CGROUP) == []  # the same again: nothing
    changed = {("p", "memory.min"): Values("100", "50", "kubepods/podp")}
    (note,) = changes(recorded, changed, CGROUP)
    assert (note.kubelet, note.resolved) == ("50", False)
    fold(recorded, [note])
    (ended,) = changes(recorded, {}, CGROUP)
    assert ended.resolved and ended.kubelet == "50"
    fold(recorded, [ended])
    assert recorded == {}


def test_a_family_only_ends_its_own_disagreements() -> None:
    recorded = {
        ("p", "numa_nodes"): Values("0", "1"),
        ("p", "memory.min"): Values("100", "0"),
    }
    # A cgroup round that finds everything equal ends the cgroup row, not the checkpoint's.
    (note,) = changes(recorded, {}, CGROUP)
    assert (note.subject, note.resolved) == ("memory.min", True)
    (note,) = changes(recorded, {}, CHECKPOINT_SUBJECTS)
    assert (note.subject, note.resolved) == ("numa_nodes", True)


def envelope(seq: int, ts: int, event: ShadowDisagreement) -> Envelope:
    return Envelope(seq=seq, ts_ns=ts, schema_v=2, event=event)


def test_the_report_keeps_the_start_of_a_stretch_and_drops_what_ended() -> None:
    rows = open_disagreements(
        [
            envelope(
                1, 10, ShadowDisagreement(uid="p", subject="numa_nodes", memstate="0", kubelet="1")
            ),
            envelope(
                2,
                20,
                ShadowDisagreement(uid="p", subject="numa_nodes", memstate="0", kubelet="0,1"),
            ),
            envelope(
                3, 30, ShadowDisagreement(uid="q", subject="memory.min", memstate="1", kubelet="0")
            ),
            envelope(
                4,
                40,
                ShadowDisagreement(
                    uid="q", subject="memory.min", memstate="1", kubelet="0", resolved=True
                ),
            ),
        ]
    )
    assert [(r.uid, r.subject, r.kubelet, r.since_ns, r.seq) for r in rows] == [
        ("p", "numa_nodes", "0,1", 10, 2)
    ]
