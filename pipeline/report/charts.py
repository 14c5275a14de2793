"""Training curves as inline SVG, drawn by matplotlib.

Inline SVG keeps the page one self-contained file that opens offline with no plotting
library in the browser. Text stays text (``svg.fonttype: none``: smaller and
searchable), and a fixed hash salt and no date make the same curves give the same bytes.
"""

from __future__ import annotations

import html
import io
import re

from pipeline.report.collect import Series

PALETTE = ("#3a3aa0", "#d1495b", "#2e933c", "#edae49", "#00798c", "#7a4988", "#6e6e73")
SVG_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "etude-report",
    "font.size": 8.0,
    "font.sans-serif": ["DejaVu Sans"],  # one name in each text's style, not eleven
}
SIZE_IN = (4.6, 2.2)  # width, height in inches (at 72 pt per inch: 331 x 158 pt)
MARGINS = {"left": 0.15, "right": 0.98, "bottom": 0.2, "top": 0.88}  # room for 8-pt ticks


def curve_chart(title: str, series: list[Series], chart_id: str) -> str:
    """A line chart of one metric's curves, one line per series (``train/loss``, ...).

    Args:
        title: the chart's heading (the metric's name).
        series: the curves, each drawn in the next palette colour and named in the legend.
        chart_id: unique on the page: every id inside the SVG is prefixed with it, so
            that several charts on one page never share a clip path or a marker.

    Returns:
        An ``<svg class="chart">`` element (HTML, inserted unescaped); each curve is a
        ``<g id="<chart_id>-curve-i">``.
    """
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(SVG_STYLE):
        fig = Figure(figsize=SIZE_IN)
        fig.subplots_adjust(**MARGINS)  # fixed: a layout engine would draw every chart twice
        ax = fig.add_subplot()
        for i, s in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            ax.plot(s.steps, s.values, color=color, lw=1.2, label=s.name, gid=f"curve-{i}")
        ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
        ax.set_xlabel("step")
        ax.legend(fontsize=7, frameon=False)
        buffer = io.StringIO()
        fig.savefig(
            buffer,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and doctype
    svg = re.sub(r'(id="|url\(#|href="#)', rf"\g<1>{chart_id}-", svg)
    label = html.escape(title, quote=True)
    return svg.replace("<svg ", f'<svg class="chart" role="img" aria-label="{label}" ', 1)
