"""Audit answers checked against a scenario computed by hand: replay/audit-night-shift.jsonl.

Goal: the operator's questions — "who held NUMA node 1's memory at 03:12, and why was pod etl
rejected?" — are answered correctly in one command each. Method: every expected value below is
derived by hand from the scenario and the Static policy's rules (fill the lowest node with
room, single-numa-node), not read from memstate; the derivation is in the comments.

The machine (from the scenario's header): two nodes, MemTotal 16Gi each with 512 × 2Mi pages
(1Gi) carved out and 1Gi reserved → allocatable memory 16 - 1 - 1 = 14Gi, hugepages-2Mi 1Gi,
per node.

    seq  time      event                                    node 0 memory/pages  node 1 memory/pages
     3   02:10:00  db (8Gi + 512Mi pages) → node 0          8Gi / 512Mi          0 / 0
     4   02:20:00  cache (4Gi) → node 0 (6Gi free)          12Gi / 512Mi         0 / 0
     5   02:30:00  search (10Gi): node 0 has 2Gi → node 1   12Gi                 10Gi
     6   02:40:00  report (3Gi): node 0 2Gi → node 1        12Gi                 13Gi
     7   03:00:00  cache removed                            8Gi                  13Gi
     8   03:05:00  web (app 1536Mi + 256Mi pages,           10Gi / 768Mi         13Gi / 0
                   proxy 512Mi) → node 0 (6Gi free)
     9   03:10:00  etl (6Gi): free 4Gi and 1Gi → rejected   10Gi                 13Gi
    10   03:11:00  train (1Gi + 1Gi pages): node 0 has only 10Gi / 768Mi         14Gi / 1Gi
                   256Mi of pages → node 1 (1Gi + 1Gi free)
    11   03:12:30  search removed                           10Gi                 4Gi / 1Gi
  12-17  03:15     restart; web, db, train restored; report not readmitted (removed at seq 17)
    18   03:20:00  etl (6Gi): node 0 4Gi free, node 1 13Gi → node 1
"""

from __future__ import annotations

from pathlib import Path

from memstate.core.scenario import parse_timestamp
from memstate.history.audit import (
    PodSelector,
    Window,
    export_records,
    numa_holdings,
    pod_history,
    rejection_summary,
    state_at,
    timeline,
)
from memstate.history.replay import LogSource, open_source

SCENARIO = Path(__file__).resolve().parents[2] / "replay" / "audit-night-shift.jsonl"
Gi, Mi = 2**30, 2**20


def source() -> LogSource:
    return open_source(SCENARIO)


def test_who_held_numa_node_1_at_0312() -> None:
    # At 03:12 the last input is train's admission (seq 10, 03:11:00); search is removed only at
    # 03:12:30. Node 1: search 10Gi + report 3Gi + train 1Gi = 14Gi = all of its allocatable
    # memory; train holds all 1Gi of its pages.
    point = state_at(source(), at_ns=parse_timestamp("2026-03-01T03:12:00Z"))
    answer = numa_holdings(point, 1)
    assert (answer["seq"], answer["ts"]) == (10, "2026-03-01T03:11:00.000Z")
    memory = answer["resources"]["memory"]
    assert [(h["uid"], h["size_bytes"]) for h in memory["holders"]] == [
        ("search-1", 10 * Gi),
        ("report-1", 3 * Gi),
        ("train-1", 1 * Gi),
    ]
    assert (memory["held"], memory["reserved"], memory["allocatable"], memory["free"]) == (
        14 * Gi,
        14 * Gi,
        14 * Gi,
        0,
    )
    pages = answer["resources"]["hugepages-2Mi"]
    assert [(h["uid"], h["size_bytes"]) for h in pages["holders"]] == [("train-1", 1 * Gi)]
    assert (pages["allocatable"], pages["free"]) == (1 * Gi, 0)
    assert memory["holders"][0]["containers"] == ["opensearch"]


def test_node_0_at_0312_and_node_1_at_other_points() -> None:
    # Node 0 at 03:12: db 8Gi + web (1536Mi + 512Mi) = 10Gi of memory; pages 512Mi + 256Mi.
    at_0312 = state_at(source(), at_ns=parse_timestamp("2026-03-01T03:12:00Z"))
    node0 = numa_holdings(at_0312, 0)
    assert [(h["uid"], h["size_bytes"]) for h in node0["resources"]["memory"]["holders"]] == [
        ("db-1", 8 * Gi),
        ("web-1", 2 * Gi),
    ]
    assert node0["resources"]["memory"]["free"] == 4 * Gi
    assert [
        (h["uid"], h["size_bytes"]) for h in node0["resources"]["hugepages-2Mi"]["holders"]
    ] == [("db-1", 512 * Mi), ("web-1", 256 * Mi)]
    # After seq 6 (report admitted): node 1 holds search and report, 13Gi.
    after_6 = numa_holdings(state_at(source(), seq=6), 1)
    assert after_6["resources"]["memory"]["held"] == 13 * Gi
    # At the end: train 1Gi + etl 6Gi on node 1.
    end = numa_holdings(state_at(source()), 1)
    assert [(h["uid"], h["size_bytes"]) for h in end["resources"]["memory"]["holders"]] == [
        ("etl-1", 6 * Gi),
        ("train-1", 1 * Gi),
    ]


def test_why_was_etl_rejected() -> None:
    # At 03:10 node 0 had 14 - 10 = 4Gi free and node 1 14 - 13 = 1Gi: no single node could
    # hold 6Gi, and single-numa-node allows no group. At 03:20, after search (03:12:30) and
    # report (03:15:05) were gone, node 1 had 14 - 1 = 13Gi free: admitted there.
    for name in ("batch/etl", "etl", "etl-1"):
        found = pod_history(source(), PodSelector(name), Window())
        assert [(r["seq"], r["kind"]) for r in found.rows] == [
            (9, "pod_admission_requested"),
            (9, "pod_rejected"),
            (18, "pod_admission_requested"),
            (18, "pod_admitted"),
        ], name
    rejected, admitted = found.rows[1], found.rows[3]
    assert rejected["ts"] == "2026-03-01T03:10:00.000Z"
    assert rejected["reason"] == "UnexpectedAdmissionError"
    assert "requested memory 6Gi; free memory: node 0 4Gi, node 1 1Gi" in rejected["message"]
    assert admitted["numa_nodes"] == [1]
    assert admitted["takes"] == [{"numa_node": 1, "resource": "memory", "size_bytes": 6 * Gi}]
    assert admitted["cgroup_files"]["memory.max"] == str(6 * Gi)
    assert admitted["cgroup_files"]["cpuset.mems"] == "1"
    assert found.final == [
        {
            "uid": "etl-1",
            "status": "running",
            "numa_nodes": [1],
            "takes": [{"numa_node": 1, "resource": "memory", "size_bytes": 6 * Gi}],
            "rejection": None,
        }
    ]


def test_a_restart_touches_the_pods_running_then() -> None:
    # web ran at the restart (seq 13) and was restored (seq 14); report ran too, did not come
    # back and was removed when readmission completed (seq 17).
    web = pod_history(source(), PodSelector("shop/web"), Window())
    assert [(r["seq"], r["kind"]) for r in web.rows][2:] == [
        (13, "daemon_restarted"),
        (14, "pod_admission_requested"),
        (14, "pod_admitted"),
    ]
    assert web.rows[-1]["restored"] is True
    report = pod_history(source(), PodSelector("report"), Window())
    assert [(r["seq"], r["kind"], r.get("reason")) for r in report.rows][2:] == [
        (13, "daemon_restarted", None),
        (17, "pod_removed", "not_readmitted"),
    ]
    assert report.final == []  # gone


def test_rejections_and_timeline() -> None:
    groups = rejection_summary(source(), Window())
    assert [(g["reason"], g["count"], g["pods"], g["last_pod"]) for g in groups] == [
        ("UnexpectedAdmissionError", 1, 1, "batch/etl")
    ]
    removals = list(timeline(source(), Window(kinds=frozenset({"pod_removed"}))))
    assert [(r["seq"], r["uid"], r["detail"]) for r in removals] == [
        (7, "cache-1", "removed cache-1 (requested)"),
        (11, "search-1", "removed search-1 (requested)"),
        (17, "report-1", "removed report-1 (not_readmitted)"),
    ]
    restart = list(
        timeline(
            source(),
            Window(
                since_ns=parse_timestamp("2026-03-01T03:15:00Z"),
                until_ns=parse_timestamp("2026-03-01T03:16:00Z"),
            ),
        )
    )
    assert [(r["seq"], r["kind"]) for r in restart] == [
        (12, "daemon_started"),
        (13, "daemon_restarted"),
        (14, "pod_admitted"),
        (15, "pod_admitted"),
        (16, "pod_admitted"),
        (17, "readmission_completed"),
        (17, "pod_removed"),
    ]


def test_export_rows_carry_the_hand_computed_facts() -> None:
    rows = list(export_records(source(), Window()))
    # 18 records plus the 15 decisions this build derives for them (the scenario records
    # none): node_reconfigured, 4 admissions, a removal, web, etl's rejection, train, a
    # removal, 3 restorations, report's removal, etl's admission.
    assert len(rows) == 33
    assert sum(r.derived for r in rows) == 15
    etl = [r for r in rows if r.pod_uid == "etl-1" and r.role == "decision"]
    assert [(r.kind, r.reason, r.numa_nodes, r.memory_bytes) for r in etl] == [
        ("pod_rejected", "UnexpectedAdmissionError", [], 0),
        ("pod_admitted", "", [1], 6 * Gi),
    ]
    assert etl[1].node == "node-a"  # the hostname of the daemon_started at 03:15
    # Issue 14, item 6: never an empty node name; the records before that daemon_started (whose
    # first one names no host) belong to the same node.
    assert {r.node for r in rows} == {"node-a"}
    assert etl[1].request_memory_bytes == etl[1].limit_memory_bytes == 6 * Gi
    assert etl[1].memory_max == str(6 * Gi)
    web = next(r for r in rows if r.pod_uid == "web-1" and r.kind == "pod_admitted")
    assert (web.memory_bytes, web.hugepages_bytes) == (2 * Gi, 256 * Mi)
    assert {r.node for r in export_records(source(), Window(), node="n1")} == {"n1"}
