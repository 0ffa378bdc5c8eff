"""Projection-backends view: per workload (one group: a configuration under several projection backends), each
backend's step latency as a stacked bar: the step's GPU-busy time split into gemm, memory and the other kernels by
their shares of the step, and the idle rest (the host's). A variant that ran out of memory has no bar: it is marked
``OOM`` at the foot of its place, with the state it recorded (memoryformer's tables) in the hover.

The split says what limits a backend that removes the linear layers' FLOPs: the gemm time gone and the memory
(table lookup) time that replaced it, or a step the host holds up whatever the kernels cost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .mechanisms import _group_names
from .palette import (FALLBACK_COLOR, MENU_POSITION, noise_notes, noisy_bar_marker, noisy_flags, noisy_title,
                      op_class_color, style)
from .view import View

NO_RUNS = "no runs compare projection backends (mmchar compare WORKLOAD --linear-backend dense,fp8,...)"
IDLE_COLOR = "#e8e8e8"
FAILED_COLOR = "#b00020"


def _x(proj: pd.DataFrame) -> list[list[str]]:
    """The two-level axis: the group's name, then the variant (``cudnn+fp8``; the run's label where one group holds
    the same variant twice)."""
    names = _group_names(proj)
    variant = proj["variant"].astype(str)
    twice = variant.groupby(proj["group"]).transform(lambda v: v.duplicated(keep=False))
    inner = [str(lbl) if dup else v for v, lbl, dup in zip(variant, proj["label"], twice)]
    return [[names[g] for g in proj["group"]], inner]


def _ys(values: np.ndarray) -> list[float | None]:
    """An array as a restyle's y: None where NaN (JSON has no NaN)."""
    return [None if v != v else float(v) for v in values]


def _gb(value: float) -> str:
    return f"{value:.2f} GB" if value == value else "not recorded"


def _state(needed: float, drawn: float) -> str:
    """A failed run's state: what its backend needed over every layer, and what it had drawn when it failed."""
    if needed != needed:
        return _gb(drawn) + " drawn" if drawn == drawn else "not recorded"
    return f"{_gb(needed)} needed" + (f", {_gb(drawn)} drawn" if drawn == drawn else "")


def projections_figure(proj: pd.DataFrame) -> go.Figure:
    """Stacked step latency per projection backend, grouped by workload.

    Args:
        proj: ``analysis.projections.projections_table`` output; optional ``noisy`` and ``noise`` columns (the
            noise guard's verdict, joined by the report) hatch flagged runs.

    Returns:
        Four stacked bar traces (gemm, memory, other kernels, idle) over a group × variant axis, a text trace with
        each non-dense variant's speedup over dense above its bar, and a marker trace for the variants that ran
        out of memory or failed; without rows, an empty figure that says no runs compare projection backends.
    """
    fig = go.Figure()
    if proj.empty:
        fig.add_annotation(text=NO_RUNS, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return style(fig, "Projection backends: " + NO_RUNS)
    x = _x(proj)
    ok = (proj["status"] == "ok").to_numpy()
    step = proj["step_ms"].to_numpy(dtype=float)
    busy = proj["step_busy_ms"].to_numpy(dtype=float)
    busy = np.where(np.isnan(busy), step, busy)  # no light profile: the whole step as kernels
    gemm = busy * proj["gemm_share"].fillna(0.0).to_numpy(dtype=float)
    memory = busy * proj["memory_share"].fillna(0.0).to_numpy(dtype=float)
    segments = (("gemm", gemm, op_class_color("gemm")), ("memory", memory, op_class_color("memory")),
                ("other kernels", busy - gemm - memory, FALLBACK_COLOR),
                ("idle (host)", np.clip(step - busy, 0.0, None), IDLE_COLOR))
    flags = noisy_flags(proj)
    speedup = [f"{s:.2f}× dense" if s == s else "no dense run" for s in proj["step_speedup"]]
    agreement = [f"cosine {c:.4f} vs {b}" if c == c else "agreement not checked"
                 for c, b in zip(proj["cosine"], proj["agreement_baseline"])]
    layers = ["-" if pd.isna(n) else str(n) for n in proj["layers_replaced"]]
    custom = list(zip(proj["run_id"], step, speedup, [_gb(v) for v in proj["state_gb"]], layers, agreement,
                      noise_notes(proj)))
    # the y-axis in ms, or relative to the group's dense step under the same attention backend (workloads of 30 ms
    # and of 1 s steps side by side)
    steps = dict(zip(proj["run_id"], step))
    dense = np.array([steps.get(r, np.nan) if isinstance(r, str) else np.nan for r in proj["reference_run_id"]])
    scales = {"ms": np.ones(len(proj)), "× dense step": 1.0 / dense}
    ys: dict[str, list[list[float | None]]] = {k: [] for k in scales}
    for name, values, color in segments:
        y = np.where(ok, values, np.nan)
        for k, f in scales.items():
            ys[k].append(_ys(y * f))
        fig.add_trace(go.Bar(
            x=x, y=y, name=name, marker={"color": color, **noisy_bar_marker(flags)},
            customdata=[(*c, v) for c, v in zip(custom, y)],
            hovertemplate=f"%{{x}}<br>{name}: %{{customdata[7]:.2f}} ms of a %{{customdata[1]:.2f}} ms step"
                          "<br>%{customdata[2]}; state %{customdata[3]}, %{customdata[4]} layers replaced"
                          "<br>%{customdata[5]}<br>%{customdata[0]}%{customdata[6]}<extra></extra>"))
    above = ok & (proj["linear_backend"] != "dense").to_numpy()
    for k, f in scales.items():
        ys[k].append(_ys((step * f)[above]))
    fig.add_trace(go.Scatter(
        x=[level[above] for level in map(np.asarray, x)], y=step[above], mode="text", name="speedup over dense",
        text=[s for s, a in zip(speedup, above) if a], textposition="top center", showlegend=False,
        hoverinfo="skip"))
    failed = ~ok
    if failed.any():
        status = proj["status"].astype(str).to_numpy()
        text = ["OOM" if s == "oom" else "failed" for s in status[failed]]
        errors = [str(e).splitlines()[0][:160] if isinstance(e, str) and e else s
                  for e, s in zip(proj["error"].to_numpy()[failed], status[failed])]
        for k in scales:
            ys[k].append([0.0] * int(failed.sum()))
        fig.add_trace(go.Scatter(
            x=[level[failed] for level in map(np.asarray, x)], y=[0.0] * int(failed.sum()), mode="markers+text",
            name="out of memory / failed", text=text, textposition="top center",
            marker={"symbol": "x", "size": 12, "color": FAILED_COLOR}, textfont={"color": FAILED_COLOR},
            customdata=list(zip(proj["run_id"].to_numpy()[failed], [_state(n, d) for n, d in zip(proj["state_needed_gb"][failed],
                                                                                proj["state_gb"][failed])],
                                errors)),
            hovertemplate="%{x}<br>%{text}: state %{customdata[1]}<br>%{customdata[2]}<br>%{customdata[0]}"
                          "<extra></extra>"))
    titles = {"ms": "step (ms, timed pass)", "× dense step": "step / the dense run's step"}
    buttons = [{"label": k, "method": "update", "args": [{"y": ys[k]}, {"yaxis.title.text": titles[k]}]}
               for k in scales]
    title = noisy_title("Step latency per projection backend: GPU-busy time split by op-class share, idle above", flags)
    return style(fig, title, barmode="stack", yaxis={"title": titles["ms"], "rangemode": "tozero"},
                 updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, **MENU_POSITION,
                               "active": 0}])


VIEW = View("projections", "Projection backends",
            "Per workload, the step latency (timed pass) under each projection backend of the linear layers: its "
            "GPU-busy time (light profile) split into gemm, memory and other kernels by their shares of the step "
            "(full profile), and the idle rest; variants that ran out of memory are marked OOM, with the state "
            "they recorded in the hover.",
            table="projections", figure=projections_figure, marked=True)
