"""The PNG of `memstate audit plot` (matplotlib, an optional extra: `memstate[plot]`).

Importing this module imports matplotlib; `memstate.cli.commands.audit_cmd` imports it only inside
the plot command and turns the ImportError into a message naming the extra. The drawing uses
matplotlib's object API with the Agg canvas (no pyplot, no global figure state, no display).

Top panel: reserved bytes of one resource per NUMA node over time, a step plot (the value holds
until the next change), each node's allocatable as a dashed line of the same colour. Nodes with
the same allocatable would draw the same line, so each node's dashes take their own slot of a
shared pattern (the lines interleave instead of hiding each other). Bottom panel: one bar per
pinned pod from admission to removal, coloured by its NUMA node (hatched when it spans several),
one row per pod so that no two labels share a line (the figure grows with the rows); a label goes
right of its bar's start, or left of it in the right half of the plot, and is clipped to the
axes. Both panels mark rejections (red dotted lines, `gid` "rejection") and restarts (black lines,
`gid` "restart"). A window whose events all share one timestamp gets a one-minute axis.

The PNG carries what it shows as JSON in a text chunk (`PLOT_DATA_KEY`: the NUMA nodes, the
number of points and spans, every marker with its kind, time and label), so a program (and the
test of the bundled picture) can check a plot without reading pixels.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memstate.history.audit import PlotData
from memstate.present.output import human_bytes

_GIB = float(1 << 30)


def _moment(ts_ns: int) -> float:
    moment = _dt.datetime.fromtimestamp(ts_ns / 1e9, tz=_dt.UTC)
    return float(mdates.date2num(moment))  # type: ignore[no-untyped-call]


_ROW_INCHES = 0.2  # the bottom panel's height per pod row: a 7-point label fits
_MARKER_STYLE = {
    "rejection": {"color": "red", "linestyle": ":", "linewidth": 1.0},
    "restart": {"color": "black", "linestyle": "-", "linewidth": 1.2},
}


PLOT_DATA_KEY = "memstate.plot"


def plot_summary(data: PlotData) -> dict[str, Any]:
    """What the picture shows, as the JSON the PNG carries under `PLOT_DATA_KEY`."""
    from memstate.present.output import format_ts

    return {
        "resource": data.resource,
        "numa_nodes": list(data.node_ids),
        "points": len(data.times_ns),
        "pod_spans": len(data.spans),
        "markers": [
            {"kind": m.kind, "ts": format_ts(m.ts_ns), "label": m.label} for m in data.markers
        ],
        "markers_dropped": data.markers_dropped,
    }


def render_png(data: PlotData, path: Path) -> None:
    """Draw `data` and write it to `path` as a PNG, with `plot_summary` in a text chunk."""
    summary = json.dumps(plot_summary(data), sort_keys=True, ensure_ascii=True)
    draw(data).savefig(path, format="png", metadata={PLOT_DATA_KEY: summary})


def draw(data: PlotData) -> Figure:
    """The plot as a matplotlib `Figure` on an Agg canvas (tests read its artists)."""
    rows = len(data.spans)
    bottom_inches = max(2.0, rows * _ROW_INCHES) if rows else 0.05
    figure = Figure(figsize=(12, 4.5 + bottom_inches), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [4.5, bottom_inches]}
    )
    colours = {
        node: f"C{index % 10}" for index, node in enumerate(data.node_ids)
    }  # matplotlib's default cycle
    times = [_moment(t) for t in data.times_ns]
    slots = max(len(data.node_ids), 1)
    for index, node in enumerate(data.node_ids):
        values = [row[index] / _GIB for row in data.reserved]
        top.step(times, values, where="post", color=colours[node], label=f"NUMA {node} reserved")
        if node in data.allocatable:
            # Dash slot `index` of `slots`: equal lines alternate colours instead of covering.
            top.axhline(
                data.allocatable[node] / _GIB,
                color=colours[node],
                linestyle=(4.0 * index, (4.0, 4.0 * (slots - 1) or 4.0)),
                linewidth=1.0,
                label=f"NUMA {node} allocatable {human_bytes(data.allocatable[node])}",
                gid=f"allocatable-{node}",
            )
    top.set_ylabel(f"{data.resource} (GiB)")
    title = f"Reserved {data.resource} per NUMA node"
    if data.merged:
        title += " (thinned: each step is the maximum over its interval)"
    top.set_title(title)
    _draw_markers(top, bottom, data)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    top.grid(True, alpha=0.3)
    _draw_spans(bottom, data, colours)
    instants = times + [_moment(m.ts_ns) for m in data.markers]
    if instants and max(instants) - min(instants) < 1e-9:
        # Every event at one instant: give the axis a width instead of a singular range.
        pad = 30.0 / 86_400
        top.set_xlim(instants[0] - pad, instants[0] + pad)
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_formatter(formatter)
    bottom.set_xlabel("time (UTC)")
    return figure


def _draw_markers(top: Axes, bottom: Axes, data: PlotData) -> None:
    labelled: set[str] = set()
    for marker in data.markers:
        style = _MARKER_STYLE[marker.kind]
        at = _moment(marker.ts_ns)
        count = sum(1 for m in data.markers if m.kind == marker.kind)
        label = None
        if marker.kind not in labelled:
            labelled.add(marker.kind)
            plural = "s" if count != 1 else ""
            more = f" (+{data.markers_dropped} not drawn)" if data.markers_dropped else ""
            label = f"{count} {marker.kind}{plural}{more}"
        top.axvline(at, label=label, gid=marker.kind, **style)  # type: ignore[arg-type]
        if bottom.get_visible():
            bottom.axvline(at, gid=marker.kind, **style)  # type: ignore[arg-type]


def _draw_spans(axes: Axes, data: PlotData, colours: dict[int, str]) -> None:
    if not data.spans:
        axes.set_visible(False)
        return
    ordered = sorted(data.spans, key=lambda s: (s.numa_nodes, s.start_ns, s.uid))
    first = min(_moment(s.start_ns) for s in ordered)
    last = max(_moment(s.end_ns) for s in ordered)
    middle = (first + last) / 2
    for row, span in enumerate(ordered):
        start, end = _moment(span.start_ns), _moment(span.end_ns)
        colour = colours.get(span.numa_nodes[0], "grey") if span.numa_nodes else "grey"
        axes.broken_barh(
            [(start, max(end - start, 1e-9))],
            (row - 0.4, 0.8),
            facecolors=colour,
            alpha=0.6,
            hatch="//" if len(span.numa_nodes) > 1 else None,
            edgecolor="black",
            linewidth=0.3,
        )
        text = f" {span.label} {human_bytes(span.size_bytes)} NUMA {list(span.numa_nodes)} "
        axes.text(
            start,
            row,
            text,
            va="center",
            ha="right" if start > middle else "left",
            fontsize=7,
            clip_on=True,
            gid="span-label",
        )
    axes.set_yticks([])
    axes.set_ylim(-1, len(ordered))
    axes.set_title(f"Pinned pods ({len(ordered)} heaviest by bytes × time)", fontsize="medium")
    axes.grid(True, axis="x", alpha=0.3)
