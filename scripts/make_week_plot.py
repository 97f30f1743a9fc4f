"""Write docs/audit-plot-week.png: `memstate audit plot` of the bundled week-long example, reduced
to 64 colours to keep the repository small, with the plot's data chunk kept (tests/audit/
test_plot.py reads it to check the picture shows the week's rejections and restarts).

Needs the plot extra (matplotlib, and Pillow, which matplotlib depends on).

Usage: python scripts/make_week_plot.py [output PNG, default: docs/audit-plot-week.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

from memstate.history.audit import Window, plot_data
from memstate.history.audit_plot import PLOT_DATA_KEY, render_png
from memstate.history.replay import open_source

ROOT = Path(__file__).resolve().parents[1]
WEEK = ROOT / "replay" / "week-of-churn.jsonl"
COLOURS = 64


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        full = Path(scratch) / "week.png"
        render_png(plot_data(open_source(WEEK), Window()), full)
        with Image.open(full) as picture:
            chunk = picture.info[PLOT_DATA_KEY]
            reduced = picture.convert("RGB").quantize(COLOURS)
        info = PngImagePlugin.PngInfo()
        info.add_text(PLOT_DATA_KEY, chunk)
        reduced.save(target, optimize=True, pnginfo=info)
    print(f"wrote {target} ({target.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "audit-plot-week.png")
