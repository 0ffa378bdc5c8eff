"""Top-kernels view: the kernels with most time in one run, a dropdown picks the run by its short label (the run
id is in the hover).

One bar trace whose data the dropdown swaps (``restyle``), rather than one trace per run, so the page stays
light with 100 runs. Bars are coloured by op class with the shared palette; legend-only traces name the colours.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.analysis import top_kernels_table
from mmchar.schema import OP_CLASSES

from .palette import MENU_POSITION, op_class_color, style
from .view import View

MAX_NAME = 70
HOVER = ("%{customdata[0]}<br>%{customdata[1]}: %{x:.3f} ms, %{customdata[2]} calls, "
         "%{customdata[3]:.1%} of run kernel time")


def _hover(run_id: str) -> str:
    return f"{HOVER}<br>{run_id}<extra></extra>"


def _label(rank: int, kernel: str) -> str:
    """A unique, readable y label: rank plus the kernel name cut short (template names run to kilobytes)."""
    name = kernel if len(kernel) <= MAX_NAME else kernel[: MAX_NAME - 1] + "…"
    return f"{rank}. {name}"


def top_kernels_figure(top: pd.DataFrame) -> go.Figure:
    """Horizontal bars of the top kernels of one run at a time.

    Args:
        top: ``analysis.tables.top_kernels_table`` output.

    Returns:
        A figure with one data trace (restyled by a run dropdown) plus legend-only op-class traces.
    """
    per_run = {}
    labels = dict(zip(top["run_id"], top["label"]))
    for run_id, part in top.sort_values(["run_id", "rank"]).groupby("run_id", sort=False):
        per_run[run_id] = {
            "x": list(part["time_us"] / 1e3),
            "y": [_label(int(r), str(k)) for r, k in zip(part["rank"], part["kernel"])],
            "marker.color": [op_class_color(str(c)) for c in part["op_class"]],
            "customdata": [[str(k), str(c), int(n), float(s)] for k, c, n, s in
                           zip(part["kernel"], part["op_class"], part["calls"], part["share"])],
            "hovertemplate": _hover(run_id),
        }
    order = [r for r in dict.fromkeys(top["run_id"]) if r in per_run]
    fig = go.Figure()
    first = per_run[order[0]] if order else {"x": [], "y": [], "marker.color": [], "customdata": [],
                                             "hovertemplate": HOVER + "<extra></extra>"}
    fig.add_trace(go.Bar(
        orientation="h", x=first["x"], y=first["y"], marker_color=first["marker.color"],
        customdata=first["customdata"], showlegend=False, hovertemplate=first["hovertemplate"]))
    classes = set(top["op_class"].astype(str))
    for op_class in [c for c in OP_CLASSES if c in classes]:
        fig.add_trace(go.Bar(x=[None], y=[None], orientation="h", name=op_class,
                             marker_color=op_class_color(op_class), hoverinfo="skip"))
    buttons = [{"label": labels[run_id], "method": "update",
                "args": [{k: [v] for k, v in per_run[run_id].items()}, {"title.text": f"Top kernels: {labels[run_id]}"},
                         [0]]}
               for run_id in order]
    return style(fig, f"Top kernels: {labels[order[0]]}" if order else "Top kernels", barmode="overlay",
                 height=max(450, 28 * max((len(v["y"]) for v in per_run.values()), default=0) + 150),
                 xaxis={"title": "kernel time (ms, profiled steps)"},
                 yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
                 updatemenus=[{"type": "dropdown", "buttons": buttons, **MENU_POSITION, "active": 0}]
                 if buttons else [])


VIEW = View("top_kernels", "Top kernels",
            "Kernels with the most total time in the chosen run.",
            table=top_kernels_table, figure=top_kernels_figure)
