"""Backend-comparison view: speedup of each backend over its group's baseline, and whether outputs agree.

One trace per speedup kind (end to end, denoiser step, attention per step) on a group × run axis, the run named by
its short label (two measurements of one backend in a group are two bars, not one); bars of runs whose output does
not agree with the baseline are labelled, since a fast wrong answer is not a speedup, and bars of runs the noise
guard flagged are hatched, since a disturbed latency is not one either.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import noise_notes, noisy_bar_marker, noisy_flags, noisy_title, style
from .view import View

SPEEDUPS = (("e2e_speedup", "end to end", "#4c78a8"), ("step_speedup", "denoiser step", "#f58518"),
            ("attention_speedup", "attention / step", "#e45756"))


def comparison_figure(comparison: pd.DataFrame) -> go.Figure:
    """Grouped speedup bars per run within each comparison group.

    Args:
        comparison: ``analysis.tables.comparison_table`` output; optional ``noisy`` and ``noise`` columns (the
            noise guard's verdict, joined by the report) mark flagged runs.

    Returns:
        A figure with one bar trace per speedup kind and a dashed line at 1 (the baseline).
    """
    cmp = comparison
    x = [list(cmp["group"].astype(str)), list(cmp["label"].astype(str))]
    verdict = ["baseline" if b else "not checked" if pd.isna(a) else "agrees" if a else "DIFFERS"
               for b, a in zip(cmp["is_baseline"], cmp["agrees"])]
    detail = [f"{t:.1%} of tokens equal" if t == t else f"max |diff| {d:.3g}, cosine {c:.5f}" if c == c else "-"
              for d, c, t in zip(cmp["max_abs_diff"], cmp["cosine"], cmp["token_match"])]
    flags = noisy_flags(cmp)
    custom = list(zip(cmp["run_id"], verdict, detail, noise_notes(cmp)))
    fig = go.Figure()
    for col, name, color in SPEEDUPS:
        fig.add_trace(go.Bar(
            x=x, y=cmp[col], name=name, marker={"color": color, **noisy_bar_marker(flags)}, customdata=custom,
            text=["✗ differs" if v == "DIFFERS" else "" for v in verdict], textposition="outside",
            hovertemplate=f"%{{customdata[0]}}<br>{name}: %{{y:.2f}}×<br>%{{customdata[1]}} "
                          "(%{customdata[2]})%{customdata[3]}<extra></extra>"))
    fig.add_hline(y=1, line_dash="dash", line_color="#555")
    return style(fig, noisy_title("Speedup over the group's baseline backend (> 1 is faster)", flags),
                 barmode="group", yaxis={"title": "speedup (×)"})


VIEW = View("comparison", "Backend comparison",
            "Speedup of each backend over its group's baseline, with output agreement; "
            "hatched bars: runs the noise guard flagged.",
            table="comparison", figure=comparison_figure, marked=True)
