"""Experts view: what a routed mixture-of-experts denoiser's MoE layers spend their step on, part by part.

Per run with MoE layers (HiDream-I1's routed FFNs), one stacked horizontal bar of the step stage's kernel time
under those layers per profiled step: routing (the gate, top-k, token dispatch and combine: op class ``routing``),
each routed expert (summed over layers; ``experts`` for a fused experts module), the shared expert and anything else
under the layers (``other``). A button shows the parts as shares of the layers'
time; the hover gives a routed expert's time against the mean of the routed experts (1.0: an even load). Random
weights route as an untrained gate does, so the balance shown is the structure's, not the trained model's.

Traces are one per part, not per run, so the page stays a few traces however many runs it holds.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.analysis.experts import part_order

from .palette import FALLBACK_COLOR, MENU_POSITION, op_class_color, style
from .view import View

NO_RUNS = "no run has mixture-of-experts layers"
SHARED_COLOR = "#7f7f7f"
EXPERT_COLORS = ("#1f77b4", "#4c93c8", "#79aedb", "#a6c9ee", "#2a5d8f", "#5b86b0", "#8cafd1", "#bdd7f2")


def _color(part: str, index: int) -> str:
    if part == "routing":
        return op_class_color("routing")
    if part.startswith("expert"):  # the routed experts one by one, or a fused container's
        return EXPERT_COLORS[index % len(EXPERT_COLORS)]
    return SHARED_COLOR if part == "shared" else FALLBACK_COLOR


def experts_figure(table: pd.DataFrame) -> go.Figure:
    """One stacked bar per run: ms per profiled step of each MoE part, with a ms / share button.

    Args:
        table: ``analysis.experts.experts_table`` output.

    Returns:
        One horizontal bar trace per part (routing, expert 0 ..., shared); without rows, an empty figure that says
        no run has MoE layers.
    """
    fig = go.Figure()
    if table.empty:
        fig.add_annotation(text=NO_RUNS, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return style(fig, "Experts: " + NO_RUNS)
    runs = list(dict.fromkeys(table["label"]))
    ms, shares = [], []
    experts = 0
    for part in sorted(dict.fromkeys(table["part"]), key=part_order):  # one stacking order for every run
        rows = table[table["part"] == part].set_index("label")
        ms.append([float(v) for v in rows["ms_per_step"]])
        shares.append([float(v) for v in rows["share"]])
        load = ["" if v != v else f"<br>{v:.2f}x the routed experts' mean"
                for v in rows["load_vs_mean"].astype(float)]
        tail = (f"<br>{part}: %{{customdata[5]:.2f}} ms per step, %{{customdata[0]:.1%}} of the MoE layers' time "
                "(%{customdata[4]} layers)%{customdata[3]}<br>%{customdata[1]} kernels<br>%{customdata[2]}"
                "<extra></extra>")
        fig.add_trace(go.Bar(
            y=list(rows.index), x=rows["ms_per_step"], orientation="h", name=part,
            marker_color=_color(part, experts),
            customdata=list(zip(rows["share"], rows["calls"].astype(int), rows["run_id"], load,
                                rows["moe_layers"].astype(int), rows["ms_per_step"])),
            hovertemplate="%{y}" + tail))
        experts += part.startswith("expert")
    buttons = [{"label": "ms per step", "method": "update",
                "args": [{"x": ms}, {"xaxis.title.text": "ms of kernel time per profiled step", "xaxis.tickformat": "",
                                     "xaxis.autorange": True}]},
               {"label": "share", "method": "update",
                "args": [{"x": shares}, {"xaxis.title.text": "share of the MoE layers' kernel time",
                                         "xaxis.tickformat": ".0%", "xaxis.autorange": True}]}]
    fig.update_xaxes(title_text="ms of kernel time per profiled step", rangemode="tozero")
    fig.update_yaxes(categoryorder="array", categoryarray=runs, autorange="reversed")
    return style(fig, "Experts: routing beside each routed expert and the shared expert (step stage, MoE layers)",
                 barmode="stack", height=max(350, 160 + 30 * len(runs)),
                 updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, **MENU_POSITION,
                               "active": 0}])


VIEW = View("experts", "Experts",
            "A routed mixture-of-experts denoiser's MoE layers per profiled step (full profile): routing (gate, "
            "top-k, token dispatch and combine) beside each routed expert and the shared expert; random weights "
            "route as an untrained gate (near-even load).",
            table="experts", figure=experts_figure)
