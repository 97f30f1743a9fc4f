"""The PNG of `memstate audit plot` (matplotlib, an optional extra: `memstate[plot]`).

Importing this module imports matplotlib; `memstate.cli.commands.audit_cmd` imports it only inside
the plot command and turns the ImportError into a message naming the extra. The drawing uses
matplotlib's object API with the Agg canvas (no pyplot, no global figure state, no display).

Top panel: reserved bytes of one resource per NUMA node over time, a step plot (the value holds
until the next change), each node's allocatable as a dashed line of the same colour. Bottom
panel: one bar per pinned pod from admission to removal, coloured by its NUMA node (hatched when
it spans several), labelled with the pod and its size — the heaviest spans only (bytes × time),
so a long log stays readable.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

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


def render_png(data: PlotData, path: Path) -> None:
    """Draw `data` and write it to `path` as a PNG."""
    figure = Figure(figsize=(12, 7.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2] if data.spans else [1, 0.01]}
    )
    colours = {
        node: f"C{index % 10}" for index, node in enumerate(data.node_ids)
    }  # matplotlib's default cycle
    times = [_moment(t) for t in data.times_ns]
    for index, node in enumerate(data.node_ids):
        values = [row[index] / _GIB for row in data.reserved]
        top.step(times, values, where="post", color=colours[node], label=f"NUMA {node} reserved")
        if node in data.allocatable:
            top.axhline(
                data.allocatable[node] / _GIB,
                color=colours[node],
                linestyle="--",
                linewidth=0.8,
                label=f"NUMA {node} allocatable",
            )
    top.set_ylabel(f"{data.resource} (GiB)")
    title = f"Reserved {data.resource} per NUMA node"
    if data.merged:
        title += " (thinned: each step is the maximum over its interval)"
    top.set_title(title)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    top.grid(True, alpha=0.3)
    _draw_spans(bottom, data, colours)
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_formatter(formatter)
    bottom.set_xlabel("time (UTC)")
    figure.savefig(path, format="png")


def _draw_spans(axes: Axes, data: PlotData, colours: dict[int, str]) -> None:
    if not data.spans:
        axes.set_visible(False)
        return
    ordered = sorted(data.spans, key=lambda s: (s.numa_nodes, s.start_ns, s.uid))
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
        axes.text(
            start,
            row,
            f" {span.label} {human_bytes(span.size_bytes)} NUMA {list(span.numa_nodes)}",
            va="center",
            fontsize=7,
        )
    axes.set_yticks([])
    axes.set_ylim(-1, len(ordered))
    axes.set_title(f"Pinned pods ({len(ordered)} heaviest by bytes × time)", fontsize="medium")
    axes.grid(True, axis="x", alpha=0.3)
