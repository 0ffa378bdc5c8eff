"""Busy-vs-idle view: busy and idle time per stage per run, from the light profile.

Idle time (launch overhead, host sync, Python) is reported beside the op-class shares, never inside them
(docs/conventions.md, "Shares"); this view is where it shows. "Busy" is GPU kernel time only on a CUDA run: a CPU run
has no device to keep busy, its busy time is the self time of its CPU ops, and the view names it so (a separate
trace and colour). Bars on a run × stage axis: one busy trace per device kind present, then idle on top.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import style
from .view import View

BUSY_COLOR, CPU_BUSY_COLOR, IDLE_COLOR = "#4c78a8", "#9ecae9", "#d3d3d3"
# (name, whether its rows are CUDA runs, colour)
BUSY_KINDS = (("GPU busy", True, BUSY_COLOR), ("CPU ops busy", False, CPU_BUSY_COLOR))


def _on_gpu(st: pd.DataFrame) -> pd.Series:
    """Per row, whether its run ran on CUDA (``device_type``, joined by the report; without it: a GPU, as before
    CPU runs were told apart)."""
    if "device_type" not in st:
        return pd.Series(True, index=st.index)
    return st["device_type"].astype(str).eq("cuda")


def _title(on_gpu: pd.Series) -> str:
    if on_gpu.all():
        return "GPU busy vs idle per stage (light profile)"
    if not on_gpu.any():
        return "CPU ops busy vs idle per stage (light profile: CPU op self time)"
    return "Busy vs idle per stage (light profile: GPU kernels on CUDA runs, CPU op self time on CPU runs)"


def busy_idle_figure(stages: pd.DataFrame) -> go.Figure:
    """Stacked busy and idle ms per run × stage.

    Args:
        stages: ``analysis.tables.stage_table`` output; rows without busy data are skipped; an optional
            ``device_type`` column (``cuda`` or ``cpu``) tells GPU busy time from CPU op time.

    Returns:
        A figure with a busy bar trace per device kind present ("GPU busy", "CPU ops busy") and an idle trace, on
        a two-level (run label, stage) x axis.
    """
    st = stages.dropna(subset=["busy_ms"])
    on_gpu = _on_gpu(st)
    x = [list(st["label"]), list(st["stage"])]
    frac = st["busy_frac"].fillna(st["busy_ms"] / (st["busy_ms"] + st["idle_ms"]))
    units = ["kernels" if g else "ops" for g in on_gpu]
    custom = list(zip(frac, st["kernels"], units, st["run_id"]))
    hover = "(busy %{customdata[0]:.0%}, %{customdata[1]} %{customdata[2]})<br>%{customdata[3]}<extra></extra>"
    fig = go.Figure()
    for name, gpu, color in BUSY_KINDS:
        mine = on_gpu == gpu
        if mine.any():  # every row on each trace (None where not its kind): categories keep the runs' order
            fig.add_trace(go.Bar(x=x, y=st["busy_ms"].where(mine, None), name=name, marker_color=color,
                                 customdata=custom, hovertemplate=f"%{{x}}<br>{name}: %{{y:.2f}} ms " + hover))
    fig.add_trace(go.Bar(x=x, y=st["idle_ms"], name="idle", marker_color=IDLE_COLOR, customdata=custom,
                         hovertemplate="%{x}<br>idle: %{y:.2f} ms " + hover))
    return style(fig, _title(on_gpu), barmode="stack", yaxis={"title": "ms"})


VIEW = View("busy_idle", "Busy vs idle",
            "Busy and idle time per stage: busy is GPU kernel time on CUDA runs and CPU op "
            "self time on CPU runs; idle is launch/host overhead.",
            table="stages", figure=busy_idle_figure, marked=True, require=("busy_ms",))
