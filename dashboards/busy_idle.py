"""Busy-vs-idle view: GPU busy and idle time per stage per run, from the light profile.

Idle time (launch overhead, host sync, Python) is reported beside the op-class shares, never inside them
(conventions.md, "Shares"); this view is where it shows. Two stacked traces on a run × stage axis.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import style

BUSY_COLOR, IDLE_COLOR = "#4c78a8", "#d3d3d3"


def busy_idle_figure(stages: pd.DataFrame) -> go.Figure:
    """Stacked busy and idle ms per run × stage.

    Args:
        stages: ``analysis.tables.stage_table`` output; rows without busy data are skipped.

    Returns:
        A figure with two bar traces (busy, idle) on a two-level (run, stage) x axis.
    """
    st = stages.dropna(subset=["busy_ms"])
    x = [list(st["run_id"]), list(st["stage"])]
    frac = st["busy_frac"].fillna(st["busy_ms"] / (st["busy_ms"] + st["idle_ms"]))
    fig = go.Figure()
    for name, col, color in (("busy", "busy_ms", BUSY_COLOR), ("idle", "idle_ms", IDLE_COLOR)):
        fig.add_trace(go.Bar(
            x=x, y=st[col], name=name, marker_color=color, customdata=list(zip(frac, st["kernels"])),
            hovertemplate=f"%{{x}}<br>{name}: %{{y:.2f}} ms (busy %{{customdata[0]:.0%}}, "
                          "%{customdata[1]} kernels)<extra></extra>"))
    return style(fig, "GPU busy vs idle per stage (light profile)", barmode="stack", yaxis={"title": "ms"})
