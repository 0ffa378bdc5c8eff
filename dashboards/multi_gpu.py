"""Multi-GPU view: a video DiT's denoiser step on one GPU and split over several (sequence parallelism), the
step's communication stacked on the rest, with speedup, efficiency, payload and overlap in the hover.

Where the bars shrink slower than 1/GPUs the view shows why: the communication part (what the all-to-alls or the
ring's sends cost a step) against what compute saved.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import FALLBACK_COLOR, noise_notes, noisy_bar_marker, noisy_flags, noisy_title, op_class_color, style
from .view import View


def multi_gpu_figure(sp: pd.DataFrame) -> go.Figure:
    """Stacked step ms (communication, the rest) per workload × (GPUs, scheme).

    Args:
        sp: ``analysis.communication.sequence_parallel_table`` output; optional ``noisy`` and ``noise`` columns
            (the noise guard's verdict, joined by the report) hatch flagged runs' bars.

    Returns:
        A figure with two bar traces on a two-level (workload, GPUs · scheme) x axis.
    """
    # one bar per configuration × GPUs × scheme: the fastest run where several measured it (the speedup's baseline)
    sp = sp.sort_values("step_ms").drop_duplicates(["workload", "backend", "device", "series", "gpus", "scheme"])
    sp = sp.sort_values(["workload", "device", "series", "gpus", "scheme"])
    one_series = sp.groupby("workload")["series"].nunique().le(1)
    outer = [w if one_series[w] else f"{w} ({s})" for w, s in zip(sp["workload"], sp["series"])]
    for col in ("backend", "device"):  # named where the runs differ in it
        if sp[col].nunique() > 1:
            outer = [f"{o} · {v}" for o, v in zip(outer, sp[col])]
    comm = sp["comm_ms_per_step"].fillna(0.0).clip(upper=sp["step_ms"])
    x = [outer, [f"{g} GPU{'s' if g > 1 else ''} · {s}" for g, s in zip(sp["gpus"], sp["scheme"])]]
    hover = list(zip(sp["speedup"], sp["efficiency"], sp["payload_mb_per_step"], sp["overlap_share"], sp["run_id"],
                     noise_notes(sp)))
    flags = noisy_flags(sp)
    fig = go.Figure()
    for name, y, color in (("communication", comm, op_class_color("communication")),
                           ("compute and the rest", sp["step_ms"] - comm, FALLBACK_COLOR)):
        fig.add_trace(go.Bar(
            x=x, y=y, name=name, marker={"color": color, **noisy_bar_marker(flags)}, customdata=hover,
            hovertemplate=f"%{{x}}<br>{name}: %{{y:.1f}} ms per step<br>speedup %{{customdata[0]:.2f}}×, "
                          "efficiency %{customdata[1]:.0%}<br>payload %{customdata[2]:.0f} MB per step, "
                          "hidden %{customdata[3]:.0%}<br>%{customdata[4]}%{customdata[5]}<extra></extra>"))
    return style(fig, noisy_title("Denoiser step over GPUs (sequence parallel; timed pass, communication from the "
                                  "profile)", flags), barmode="stack", yaxis={"title": "ms per step"})


VIEW = View("multi_gpu", "Multi-GPU",
            "Denoiser step latency on one GPU and with its sequence split over several "
            "(Ulysses or ring attention), the step's communication stacked on the rest.",
            table="sequence_parallel", figure=multi_gpu_figure, marked=True)
