"""Roofline view: every (run, stage, op class) as a point at its arithmetic intensity and achieved rate, under the
roofs each run recorded (``mmchar calibrate``: measured matmul peak and copy bandwidth, not datasheet figures).

FLOPs and bytes come from the recorded shapes (docs/conventions.md formulas), so a custom kernel counts the same as
SDPA. One trace per op class and one roof line per device keep the trace count fixed however many runs there are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .palette import op_class_color, style
from .view import View


def roofline_figure(roofline: pd.DataFrame) -> go.Figure:
    """Achieved TFLOP/s against FLOP/byte, log-log, with each device's roof.

    Args:
        roofline: ``analysis.roofline.roofline_table`` output (rows with an intensity and a rate).

    Returns:
        A figure with one marker trace per op class and one line per recorded (peak, bandwidth) pair.
    """
    pts = roofline.dropna(subset=["intensity", "tflops"])
    pts = pts[(pts["intensity"] > 0) & (pts["tflops"] > 0)]
    fig = go.Figure()
    lo, hi = float(pts["intensity"].min()) / 2, float(pts["intensity"].max()) * 2
    roofs = pts.dropna(subset=["roof_tflops", "roof_gbps"]).drop_duplicates(["device", "roof_tflops", "roof_gbps"])
    for _, r in roofs.iterrows():
        ridge = r["roof_tflops"] * 1e3 / r["roof_gbps"]  # FLOP/byte where bandwidth meets the peak
        x = np.array(sorted({lo, min(max(ridge, lo), hi), hi}))
        fig.add_trace(go.Scatter(
            x=x, y=np.minimum(r["roof_tflops"], x * r["roof_gbps"] / 1e3), mode="lines",
            line={"color": "#555", "dash": "dot"}, name=f"roof: {r['device']}",
            hovertemplate=(f"{r['device']}<br>{r['roof_tflops']:.0f} TFLOP/s, {r['roof_gbps']:.0f} GB/s"
                           "<extra></extra>")))
    for op_class, part in pts.groupby("op_class", observed=True, sort=False):
        text = part["label"].astype(str) + " · " + part["stage"].astype(str)  # the label tells sweep points apart
        fig.add_trace(go.Scatter(
            x=part["intensity"], y=part["tflops"], mode="markers", name=str(op_class),
            marker={"color": op_class_color(str(op_class)), "size": 9, "line": {"width": 0.5, "color": "#333"}},
            text=text, customdata=list(zip(part["time_us"] / 1e3, part["pct_of_attainable"], part["run_id"])),
            hovertemplate=("%{text}<br>" + str(op_class) + ": %{y:.1f} TFLOP/s at %{x:.1f} FLOP/B<br>"
                           "%{customdata[0]:.2f} ms, %{customdata[1]:.0f}% of attainable<br>%{customdata[2]}"
                           "<extra></extra>")))
    return style(fig, "Roofline: achieved rate per op class against the recorded roofs",
                 xaxis={"title": "arithmetic intensity (FLOP / byte)", "type": "log"},
                 yaxis={"title": "TFLOP/s", "type": "log"})


VIEW = View("roofline", "Roofline",
            "Achieved TFLOP/s per op class against arithmetic intensity, under each run's "
            "calibrated roofs (FLOPs and bytes from the recorded shapes).",
            table="roofline", figure=roofline_figure, require=("intensity", "tflops"))
