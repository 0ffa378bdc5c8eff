"""Op-class breakdown view: share of kernel time (op self time on a CPU run) per op class, one stacked bar per run
(named by its short label; the run id is in the hover), a button per stage.

Traces are one per stage × op class (not per run), so a page with 100 runs stays a few dozen traces; the
buttons toggle which stage's traces are visible, the denoiser by default since it dominates generation.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.schema import OP_CLASSES, STAGES, STEP_STAGES

from .palette import MENU_POSITION, op_class_color, style
from .view import View

DEFAULT_STAGES = STEP_STAGES  # the denoiser (or a token model's generator) by default: it dominates generation


def op_class_figure(breakdown: pd.DataFrame) -> go.Figure:
    """Stacked op-class shares per run, one stage shown at a time.

    Args:
        breakdown: ``analysis.tables.breakdown_table`` output (failed runs' placeholder rows are ignored).

    Returns:
        A figure with one bar trace per stage × op class and a button per stage.
    """
    bd = breakdown[(breakdown["status"] == "ok") & (breakdown["stage"].astype(str) != "")]
    agg = bd.groupby(["stage", "op_class", "label", "run_id"], sort=False).agg(
        share=("share", "sum"), time_us=("time_us", "sum")).reset_index()
    runs = list(dict.fromkeys(bd["label"]))
    present = set(agg["stage"])
    stages = [s for s in STAGES if s in present] + sorted(present - set(STAGES))
    classes = [c for c in OP_CLASSES if c in set(agg["op_class"])] + sorted(set(agg["op_class"]) - set(OP_CLASSES))
    default = next((s for s in DEFAULT_STAGES if s in stages), stages[0] if stages else None)
    fig = go.Figure()
    owner: list[str] = []
    for stage in stages:
        for op_class in classes:
            part = agg[(agg["stage"] == stage) & (agg["op_class"] == op_class)]
            if part.empty:
                continue
            part = part.set_index("label").reindex([r for r in runs if r in set(part["label"])])
            fig.add_trace(go.Bar(
                x=list(part.index), y=part["share"], name=op_class, legendgroup=op_class,
                marker_color=op_class_color(op_class), customdata=list(zip(part["time_us"] / 1e3, part["run_id"])),
                # ms: the whole profiled pass (every profiled step of a step stage), not one step
                hovertemplate=f"%{{x}}<br>{stage} / {op_class}: %{{y:.1%}} (%{{customdata[0]:.2f}} ms in the "
                              "profiled pass)"
                              "<br>%{customdata[1]}<extra></extra>",
                visible=stage == default))
            owner.append(stage)
    buttons = [{"label": s, "method": "update",
                "args": [{"visible": [o == s for o in owner]}, {"title.text": f"Op-class share of kernel time: {s}"}]}
               for s in stages]
    style(fig, f"Op-class share of kernel time: {default}", barmode="stack",
          yaxis={"title": "share of stage kernel time", "tickformat": ".0%", "range": [0, 1.001]},
          xaxis={"title": "run", "categoryorder": "array", "categoryarray": runs},
          updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, **MENU_POSITION,
                        "active": stages.index(default)}] if stages else [])
    return fig


# failed runs' placeholder rows have no share: a page of failed runs has no op-class view
VIEW = View("op_classes", "Op-class breakdown",
            "Share of each stage's kernel time per op class (GPU kernels; CPU op self "
            "time on CPU runs; idle time excluded).",
            table="breakdown", figure=op_class_figure, require=("share",))
