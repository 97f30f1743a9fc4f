"""Issue 14, item 6 (`audit plot`): rejections and restarts are marked, identical allocatable
lines stay visible, 40 pod labels do not overlap, events sharing a timestamp do not collapse it.

Method: `plot_data` on real logs (the bundled scenarios, a recorded log whose events all share one
timestamp), then the matplotlib figure `draw` builds, read through its artists (lines by `gid`,
text extents from the Agg renderer), never through pixels.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.text import Text

from memstate.core.events import PodAdmissionRequested, PodRemovalRequested
from memstate.history.audit import PlotData, PodSpan, Window, plot_data
from memstate.history.audit_plot import _moment, draw, render_png
from memstate.history.replay import open_source
from tests import factories
from tests.replay.recording import BASE_TS_NS, record_log, start_inputs

ROOT = Path(__file__).resolve().parents[2]
NIGHT = ROOT / "replay" / "audit-night-shift.jsonl"
WEEK = ROOT / "replay" / "week-of-churn.jsonl"


def _lines(figure: object, gid: str) -> list[Line2D]:
    return [a for a in figure.findobj(Line2D) if a.get_gid() == gid]  # type: ignore[attr-defined]


def test_audit_plot_marks_rejections_and_restarts(tmp_path: Path) -> None:
    data = plot_data(open_source(NIGHT), Window())
    # docs/audit.md: etl rejected at 03:10, the restart at 03:15.
    assert [(m.kind, m.label) for m in data.markers] == [
        ("rejection", "batch/etl: UnexpectedAdmissionError"),
        ("restart", "restart"),
    ]
    figure = draw(data)
    for marker in data.markers:
        drawn = _lines(figure, marker.kind)
        assert len(drawn) == 2  # both panels
        assert {line.get_xdata()[0] for line in drawn} == {_moment(marker.ts_ns)}  # type: ignore[index]
    legend = figure.axes[0].get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert "1 rejection" in texts and "1 restart" in texts
    render_png(data, tmp_path / "night.png")
    assert (tmp_path / "night.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_plot_week_example_has_rejections_and_restarts() -> None:
    data = plot_data(open_source(WEEK), Window())
    kinds = [m.kind for m in data.markers]
    assert kinds.count("restart") >= 3
    assert kinds.count("rejection") >= 5
    assert data.times_ns[-1] - data.times_ns[0] >= 6 * 86_400 * 10**9
    figure = draw(data)
    assert len(_lines(figure, "restart")) == 2 * kinds.count("restart")
    assert len(_lines(figure, "rejection")) == 2 * kinds.count("rejection")


def test_audit_plot_keeps_identical_allocatable_lines_visible() -> None:
    data = plot_data(open_source(NIGHT), Window())
    assert data.allocatable[0] == data.allocatable[1]  # the case that used to hide one line
    figure = draw(data)
    (first,) = _lines(figure, "allocatable-0")
    (second,) = _lines(figure, "allocatable-1")
    assert list(first.get_ydata()) == list(second.get_ydata())  # type: ignore[arg-type]
    assert first.get_color() != second.get_color()
    # Same dash pattern, different phase: each line shows in the other's gaps.
    offset_0, dashes_0 = first._unscaled_dash_pattern  # type: ignore[attr-defined]
    offset_1, dashes_1 = second._unscaled_dash_pattern  # type: ignore[attr-defined]
    assert dashes_0 == dashes_1 and offset_0 != offset_1
    assert abs(offset_1 - offset_0) >= dashes_0[0]


def test_audit_plot_places_forty_labels_without_overlap() -> None:
    hour = 3600 * 10**9
    spans = [
        PodSpan(
            weight=1,
            uid=f"uid-{i}",
            label=f"team-{i % 5}/a-rather-long-pod-name-{i:02d}",
            numa_nodes=(i % 2,),
            size_bytes=(1 + i % 4) << 30,
            start_ns=BASE_TS_NS + (i % 7) * hour,
            end_ns=BASE_TS_NS + (i % 7 + 3) * hour,
        )
        for i in range(40)
    ]
    data = PlotData(
        resource="memory",
        node_ids=(0, 1),
        allocatable={0: 14 << 30, 1: 14 << 30},
        times_ns=[BASE_TS_NS, BASE_TS_NS + 10 * hour],
        reserved=[(0, 0), (1 << 30, 2 << 30)],
        spans=spans,
    )
    figure = draw(data)
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    figure.canvas.draw()
    labels = [t for t in figure.findobj(Text) if t.get_gid() == "span-label"]
    assert len(labels) == 40
    boxes = [t.get_window_extent(renderer) for t in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def test_audit_plot_handles_events_sharing_a_timestamp(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    inputs = start_inputs()
    inputs += [PodAdmissionRequested(pod=factories.pod(f"p{i}", "1Gi")) for i in range(4)]
    inputs += [PodRemovalRequested(uid="p1")]
    record_log(state_dir, inputs, step_ns=0)
    data = plot_data(open_source(state_dir), Window())
    assert data.times_ns == sorted(set(data.times_ns))  # strictly increasing
    assert len(data.times_ns) == 1
    # The one point is what holds after every event of that instant: p0, p2, p3 pinned.
    assert sum(data.reserved[0]) == 3 << 30
    figure = draw(data)
    low, high = figure.axes[0].get_xlim()
    assert high - low > 0
    render_png(data, tmp_path / "same.png")


def test_audit_plot_week_example_is_what_its_script_writes(tmp_path: Path) -> None:
    """The bundled example is generated, never edited: the script reproduces it byte for byte."""
    script = ROOT / "scripts" / "make_week_example.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    for name in ("week-of-churn.jsonl", "week-of-churn.expected.json"):
        assert (tmp_path / name).read_bytes() == (ROOT / "replay" / name).read_bytes(), name


def _png_texts(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (a reader of its own: the format's chunk layout)."""
    import struct

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    texts: dict[str, str] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        offset += 12 + length
    return texts


def test_audit_plot_png_of_the_week_shows_its_rejections_and_restarts(tmp_path: Path) -> None:
    """Issue 14, "Done when": the PNG of the bundled week, as the command writes it and as
    docs/audit.md shows it (scripts/make_week_plot.py), carries the markers it draws; they are
    the week's rejections (counted by the example's independent model) and its restarts."""
    import json

    from memstate.history.audit_plot import PLOT_DATA_KEY

    expected = json.loads((ROOT / "replay" / "week-of-churn.expected.json").read_text())
    rejections = sum(1 for d in expected["decisions"] if d["kind"] == "pod_rejected")
    restarts = [
        json.loads(line)["ts"].replace("Z", ".000Z")
        for line in WEEK.read_text().splitlines()
        if '"daemon_restarted"' in line
    ]
    assert rejections >= 5 and len(restarts) == 3
    written = tmp_path / "week.png"
    result = subprocess.run(
        [sys.executable, "-m", "memstate", "audit", "plot", "-f", str(written), "--log", str(WEEK)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(_png_texts(written)[PLOT_DATA_KEY])
    kinds = [marker["kind"] for marker in summary["markers"]]
    assert kinds.count("rejection") == rejections
    assert [m["ts"] for m in summary["markers"] if m["kind"] == "restart"] == restarts
    assert summary["markers_dropped"] == 0
    pictured = ROOT / "docs" / "audit-plot-week.png"
    assert pictured.name in (ROOT / "docs" / "audit.md").read_text()
    assert json.loads(_png_texts(pictured)[PLOT_DATA_KEY]) == summary
