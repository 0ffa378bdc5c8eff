"""Scaling view: latency per denoiser step (or token) against each parameter a sweep varied, log-log, one line
per workload × backend × series with its fitted exponent in the legend; a dropdown picks the parameter.

The exponent says what the model does with more pixels, frames or batch: ~1 where the step is GEMM/conv bound
and grows with tokens, toward 2 where attention's S² takes over, below 1 while the GPU is launch-bound. A series of
fewer than three distinct values is drawn without one (two points always lie on a line), and a point whose runs
were all flagged by the noise guard is drawn as a cross: neither is a result to read an exponent from.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from mmchar.analysis import scaling_fits, scaling_points

from .palette import MENU_POSITION, NOISY_POINT_NOTE, NOISY_SYMBOL, noise_notes, noisy_flags, noisy_title, style
from .view import View


def _legend(workload: str, backend: str, series: str, exponent: float | None, n_points: int) -> str:
    name = f"{workload} · {backend} · {series}"
    if exponent is not None and not math.isnan(exponent):
        return f"{name} (k = {exponent:.2f})"
    return f"{name} (no exponent from {n_points} points)"


def _runs_note(n_runs: pd.Series, left_out: pd.Series) -> list[str]:
    """Per point, how many runs its median is of, and how many noisy duplicates it left out (hover text)."""
    return [("" if n <= 1 else f"(median of {n} runs)") + (f" ({o} noisy left out)" if o else "")
            for n, o in zip(n_runs.astype(int), left_out.astype(int))]


def scaling_figure(points: pd.DataFrame, fits: pd.DataFrame) -> go.Figure:
    """Step latency against each varied parameter, one line per series (what the other parameters held).

    Args:
        points: ``analysis.scaling.scaling_points`` output (one point per configuration).
        fits: ``analysis.scaling.scaling_table`` output (the exponents shown in the legend; NaN: too few points).

    Returns:
        A figure with one line per (parameter, workload, backend, series); the dropdown shows one parameter's lines.
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
        flags = noisy_flags(g)
        runs_note = _runs_note(g["n_runs"], g["n_left_out"])
        fig.add_trace(go.Scatter(
            x=g["value"], y=g["median_ms"], mode="lines+markers", visible=param == params[0],
            name=_legend(workload, backend, series, k.get((param, workload, backend, series, metric)),
                         g["value"].nunique()),
            marker={"symbol": [NOISY_SYMBOL if f else "circle" for f in flags],
                    "size": [11 if f else 7 for f in flags]},
            customdata=list(zip(g["run_id"], runs_note, noise_notes(g))),
            hovertemplate=f"{workload} · {backend} · {series}<br>{param} %{{x}}: %{{y:.2f}} ms per {metric} "
                          "%{customdata[1]}<br>%{customdata[0]}%{customdata[2]}<extra></extra>"))
        owner.append(param)
    flags = noisy_flags(step)

    def title(param: str) -> str:
        return noisy_title(f"Latency per {step['metric'].iloc[0]} against {param}", flags, NOISY_POINT_NOTE)

    buttons = [{"label": p, "method": "update",
                "args": [{"visible": [o == p for o in owner]}, {"xaxis.title.text": p, "title.text": title(p)}]}
               for p in params]
    return style(fig, title(params[0]),
                 xaxis={"title": params[0], "type": "log"}, yaxis={"title": "ms", "type": "log"},
                 updatemenus=[{"type": "dropdown", "buttons": buttons, **MENU_POSITION, "active": 0}])


def _points_and_fits(points: pd.DataFrame) -> go.Figure:
    """The figure from the points alone: the fits are the study's scaling table over the same points."""
    return scaling_figure(points, scaling_fits(points))


VIEW = View("scaling", "Scaling",
            "Step latency against each parameter a sweep varied (log-log), one point per "
            "configuration (the median of its runs, noisy duplicates left out), with the fitted "
            "exponent of latency ∝ parameter^k per series of three or more points.",
            table=scaling_points, figure=_points_and_fits)
