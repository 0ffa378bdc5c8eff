"""Scaling view: latency per denoiser step (or token) against each parameter a sweep varied, log-log, one line
per workload × backend with its fitted exponent in the legend; a dropdown picks the parameter.

The exponent says what the model does with more pixels, frames or batch: ~1 where the step is GEMM/conv bound
and grows with tokens, toward 2 where attention's S² takes over, below 1 while the GPU is launch-bound.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import MENU_POSITION, style


def scaling_figure(points: pd.DataFrame, fits: pd.DataFrame) -> go.Figure:
    """Step latency against each varied parameter, one line per series (what the other parameters held).

    Args:
        points: ``analysis.study.scaling_points`` output.
        fits: ``analysis.study.scaling_table`` output (the exponents shown in the legend).

    Returns:
        A figure with one line per (parameter, workload, backend); the dropdown shows one parameter's lines.
    """
    step = points[points["metric"] != "e2e"]
    if step.empty:  # runs with no step timing: end to end
        step = points
    k = {(r.param, r.workload, r.backend, r.series, r.metric): r.exponent for r in fits.itertuples()}
    fig = go.Figure()
    params = list(dict.fromkeys(step["param"]))
    owner = []
    for (param, workload, backend, series, metric), g in step.groupby(
            ["param", "workload", "backend", "series", "metric"], sort=False):
        exp = k.get((param, workload, backend, series, metric))
        label = f"{workload} · {backend} · {series}" + (f" (k = {exp:.2f})" if exp is not None else "")
        fig.add_trace(go.Scatter(
            x=g["value"], y=g["median_ms"], mode="lines+markers", name=label, visible=param == params[0],
            customdata=g["run_id"],
            hovertemplate=f"{workload} · {backend}<br>{param} %{{x}}: %{{y:.2f}} ms per {metric}<br>"
                          "%{customdata}<extra></extra>"))
        owner.append(param)
    buttons = [{"label": p, "method": "update",
                "args": [{"visible": [o == p for o in owner]},
                         {"xaxis.title.text": p, "title.text": f"Latency per {step['metric'].iloc[0]} against {p}"}]}
               for p in params]
    return style(fig, f"Latency per {step['metric'].iloc[0]} against {params[0]}",
                 xaxis={"title": params[0], "type": "log"}, yaxis={"title": "ms", "type": "log"},
                 updatemenus=[{"type": "dropdown", "buttons": buttons, **MENU_POSITION, "active": 0}])
