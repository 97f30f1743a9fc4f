"""Audit queries beyond the hand-computed example: names across UIDs, filters, plot, export.

Goal: a name follows every incarnation of a pod (a new UID after a recreation, removals that
carry only the UID); `--since/--until/--kind` filter rows; the plot data stays bounded however
long the log; the export's schema is the documented one on every line; the command line renders
each query, and `audit plot` without matplotlib says how to install it.
Method: small scenarios written for each property, the real CLI entry point in-process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import pytest

from memstate.cli.main import main
from memstate.core.events import (
    SCHEMA_VERSION,
    Envelope,
    Event,
    PodAdmissionRequested,
    PodRemovalRequested,
)
from memstate.core.scenario import write_scenario
from memstate.history.audit import (
    ExportRecord,
    PodSelector,
    Window,
    numa_holdings,
    plot_data,
    pod_history,
    rejection_summary,
    state_at,
    timeline,
)
from memstate.history.replay import open_source
from memstate.store.checkpoint import list_checkpoints
from memstate.store.reader import LogReader
from memstate.store.writer import EventLog
from tests import factories
from tests.replay.recording import BASE_TS_NS, record_log, start_inputs, steady_inputs

ROOT = Path(__file__).resolve().parents[2]
NIGHT = ROOT / "replay" / "audit-night-shift.jsonl"


def _scenario(path: Path, events: list[Event]) -> Path:
    path.write_text(
        write_scenario(
            [
                Envelope(i, BASE_TS_NS + i * 60 * 10**9, SCHEMA_VERSION, e)  # type: ignore[arg-type]
                for i, e in enumerate(events, start=1)
            ]
        )
    )
    return path


def test_a_name_follows_every_uid_the_pod_had(tmp_path: Path) -> None:
    def web(uid: str, memory: str) -> PodAdmissionRequested:
        return PodAdmissionRequested(pod=factories.pod(uid, memory, name="web", namespace="shop"))

    path = _scenario(
        tmp_path / "recreated.jsonl",
        [
            *start_inputs(),
            web("web-1", "1Gi"),
            PodRemovalRequested(uid="web-1"),  # carries only the UID
            web("web-2", "2Gi"),
            PodAdmissionRequested(pod=factories.pod("other", "1Gi", name="web", namespace="dev")),
        ],
    )
    by_key = pod_history(open_source(path), PodSelector("shop/web"), Window())
    assert by_key.selector.uids == ["web-1", "web-2"]
    assert [(r["seq"], r["kind"], r["uid"]) for r in by_key.rows] == [
        (4, "pod_admission_requested", "web-1"),
        (4, "pod_admitted", "web-1"),
        (5, "pod_removal_requested", "web-1"),
        (5, "pod_removed", "web-1"),
        (6, "pod_admission_requested", "web-2"),
        (6, "pod_admitted", "web-2"),
    ]
    assert [f["uid"] for f in by_key.final] == ["web-2"]
    by_name = pod_history(open_source(path), PodSelector("web"), Window())
    assert by_name.selector.uids == ["web-1", "web-2", "other"]  # any namespace
    by_uid = pod_history(open_source(path), PodSelector("web-2"), Window())
    assert {r["uid"] for r in by_uid.rows} == {"web-2"}


def test_window_filters() -> None:
    since = BASE_TS_NS  # the night scenario starts at 02:00, BASE_TS_NS
    everything = pod_history(open_source(NIGHT), PodSelector("etl"), Window(since_ns=since))
    assert len(everything.rows) == 4
    until_0315 = pod_history(
        open_source(NIGHT),
        PodSelector("etl"),
        Window(until_ns=BASE_TS_NS + 75 * 60 * 10**9),  # 03:15
    )
    assert [r["seq"] for r in until_0315.rows] == [9, 9]
    decisions = pod_history(
        open_source(NIGHT), PodSelector("etl"), Window(kinds=frozenset({"pod_admitted"}))
    )
    assert [r["seq"] for r in decisions.rows] == [18]
    per_pod = rejection_summary(open_source(NIGHT), Window(), by_pod=True)
    assert [(g["pod"], g["reason"]) for g in per_pod] == [("batch/etl", "UnexpectedAdmissionError")]
    assert rejection_summary(open_source(NIGHT), Window(), selector=PodSelector("db")) == []


def test_plot_data_stays_bounded(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    record_log(state_dir, steady_inputs(1_500), checkpoint_every=1_000)
    data = plot_data(open_source(state_dir), Window(), max_points=50, max_spans=5)
    assert data.merged
    assert len(data.times_ns) <= 2 * 50 + 1
    assert len(data.spans) == 5
    # The five spans kept are the heaviest: the resident pods, which stay to the end.
    assert {s.label.split("/")[0] for s in data.spans} == {"prod"}
    full = plot_data(open_source(state_dir), Window(), max_points=100_000, max_spans=5)
    assert not full.merged
    # Thinning keeps each interval's maximum: the peak survives.
    assert max(max(r) for r in data.reserved) == max(max(r) for r in full.reserved)


def test_export_lines_follow_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "night.jsonl"
    assert main(["audit", "export", "--log", str(NIGHT), "-f", str(out), "--node", "n1"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 33
    fields = list(ExportRecord.__struct_fields__)
    for line in lines:
        obj = json.loads(line)
        assert list(obj) == fields  # every key, always, in the documented order
        msgspec.convert(obj, ExportRecord)
    assert main(["audit", "export", "--log", str(NIGHT), "--kind", "pod_rejected"]) == 0
    rejected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["seq"], r["pod_uid"]) for r in rejected] == [(9, "etl-1")]


def test_the_commands_render_tables_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    log = ["--log", str(NIGHT)]
    assert main(["audit", "pod", "etl", *log, "-o", "table"]) == 0
    out = capsys.readouterr().out
    assert "UnexpectedAdmissionError: Allocate failed" in out
    assert "etl-1: running, holds node 1 memory 6Gi" in out
    assert main(["audit", "numa", "1", "--at", "2026-03-01T03:12:00Z", *log, "-o", "table"]) == 0
    out = capsys.readouterr().out
    assert "shop/search" in out and "10737418240" in out and "14Gi" in out
    assert main(["audit", "numa", "1", "--seq", "6", *log, "-o", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["uid"] for r in rows] == ["search-1", "report-1"]
    assert main(["audit", "rejections", *log, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["count"] == 1
    assert main(["audit", "timeline", *log, "--pod", "report", "-o", "table"]) == 0
    out = capsys.readouterr().out
    assert "removed report-1 (not_readmitted)" in out
    assert main(["audit", "pod", "report", *log, "-o", "jsonl"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["audit", "numa", "7", *log]) == 2
    assert "NUMA node 7 is not in the node map (nodes: 0, 1)" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "night.png"
    assert main(["audit", "plot", "-f", str(png), "--log", str(NIGHT)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "7 pod span(s)" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "memstate.history.audit_plot", raising=False)
    png = tmp_path / "night.png"
    assert main(["audit", "plot", "-f", str(png), "--log", str(NIGHT)]) == 1
    assert "pip install 'memstate[plot]'" in capsys.readouterr().err
    assert not png.exists()


def test_filters_do_not_assume_time_order(tmp_path: Path) -> None:
    """A clock stepped back between two daemon starts: `--until` still finds the later records
    stamped before it (records are filtered, the walk is never cut short)."""

    def admit(uid: str) -> PodAdmissionRequested:
        return PodAdmissionRequested(pod=factories.pod(uid, "1Gi", namespace="t"))

    envelopes = [
        Envelope(i, ts, SCHEMA_VERSION, e)  # type: ignore[arg-type]
        for i, (ts, e) in enumerate(
            [
                (BASE_TS_NS, start_inputs()[0]),
                (BASE_TS_NS + 1, start_inputs()[1]),
                (BASE_TS_NS + 2, start_inputs()[2]),
                (BASE_TS_NS + 60 * 10**9, admit("late")),  # 02:01
                (BASE_TS_NS + 30 * 10**9, admit("stepped-back")),  # 02:00:30, after a reset
            ],
            start=1,
        )
    ]
    path = tmp_path / "clock.jsonl"
    path.write_text(write_scenario(envelopes))
    rows = list(
        timeline(
            open_source(path),
            Window(until_ns=BASE_TS_NS + 45 * 10**9, kinds=frozenset({"pod_admitted"})),
        )
    )
    assert [r["uid"] for r in rows] == ["stepped-back"]


def test_a_pruned_log_is_audited_from_its_oldest_checkpoint(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    record_log(state_dir, steady_inputs(600), checkpoint_every=100, segment_bytes=8 << 10)
    checkpoints = [seq for seq, _ in list_checkpoints(state_dir)]
    with EventLog.open(state_dir, fsync=False, segment_bytes=8 << 10) as log:
        assert log.prune_segments(through_seq=checkpoints[1])
    first = LogReader(state_dir).first_seq()
    found = pod_history(open_source(state_dir), PodSelector("churn-001"), Window())
    assert found.rows and min(r["seq"] for r in found.rows) >= first
    assert numa_holdings(state_at(open_source(state_dir)), 0)["resources"]["memory"]["held"] > 0


def test_plot_spans_are_clipped_to_the_window() -> None:
    since, until = BASE_TS_NS + 35 * 60 * 10**9, BASE_TS_NS + 70 * 60 * 10**9  # 02:35-03:10
    data = plot_data(open_source(NIGHT), Window(since_ns=since, until_ns=until))
    assert data.spans
    assert all(since <= s.start_ns <= s.end_ns <= until for s in data.spans)
    assert all(since <= t <= until for t in data.times_ns)
    # cache left at 03:00, inside the window; train arrived at 03:11, after it.
    labels = {s.label for s in data.spans}
    assert "shop/cache" in labels and "ml/train" not in labels


def test_relative_times_parse_as_values(capsys: pytest.CaptureFixture[str]) -> None:
    """`--since -1h` (not only `--since=-1h`): relative times are values, not options."""
    log = ["--log", str(NIGHT), "-o", "json"]
    assert main(["audit", "rejections", "--since", "-100000d", *log]) == 0
    assert json.loads(capsys.readouterr().out)[0]["count"] == 1
    assert main(["audit", "rejections", "--until", "-100000d", *log]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["replay", str(NIGHT), "--at", "-100000d", *log[2:]]) == 0
    assert json.loads(capsys.readouterr().out)["state_seq"] == 0


def test_item6_audit_export_never_emits_an_empty_node_name() -> None:
    """Issue 14, item 6: every bundled scenario, most of which name no host, exports with a
    non-empty node name, one per log (so one node never shows up twice in a table of many)."""
    from memstate.history.audit import UNKNOWN_NODE, export_records

    for path in sorted((ROOT / "replay").glob("*.jsonl")):
        lines = [
            json.loads(line) for line in path.read_text().splitlines() if "daemon_started" in line
        ]
        # A scenario line is the event; an export line holds it under "event".
        hosts = [line.get("event", line).get("hostname") for line in lines]
        named = [host for host in hosts if host]
        names = {record.node for record in export_records(open_source(path), Window())}
        assert names == {named[0] if named else UNKNOWN_NODE}, path.name
