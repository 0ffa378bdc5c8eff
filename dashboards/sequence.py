"""Sequence-length view: the query and key length of every attention layer of one denoiser step (or a token
model's first generator call), in call order, coloured by attention site; a dropdown picks the run by its short
label (the run id is in the hover).

This is where a UNet's levels show (4096 → 1024 → 256 → 64 query tokens at 512 px for SD 1.5) and where cross
attention's 77 text tokens sit beside them. Two traces whose data the dropdown swaps keep the page light.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.schema import ATTN_SITES, STEP_STAGES

from .palette import MENU_POSITION, attn_site_color, style
from .view import View


def _one_step(seq: pd.DataFrame) -> pd.DataFrame:
    """The first profiled step of the step stage when a run has one, else every call of the run."""
    steps = seq[seq["stage"].isin(STEP_STAGES)]
    if steps.empty:
        return seq
    first = steps[steps["step"] == steps["step"].min()]
    return first


def sequence_figure(seq: pd.DataFrame) -> go.Figure:
    """Query length (bars) and key length (markers) per attention call of one step, log scale.

    Args:
        seq: ``analysis.sequence.sequence_table`` output.

    Returns:
        A figure with a bar trace and a marker trace (restyled by a run dropdown) plus legend-only site traces.
    """
    per_run = {}
    run_labels = dict(zip(seq["run_id"], seq["label"]))
    for run_id, part in seq.groupby("run_id", sort=False):
        part = _one_step(part).reset_index(drop=True)
        labels = [f"{i + 1}. {p or '(top)'}" for i, p in enumerate(part["module_path"])]
        custom = [[str(s), int(b), int(h), int(d), float(sb) / 2**20, str(lv)] for s, b, h, d, sb, lv in
                  zip(part["attn_site"], part["batch"], part["heads"], part["head_dim"], part["score_bytes"],
                      part["level"])]
        per_run[run_id] = {"x": labels, "q": list(part["q_len"]), "kv": list(part["kv_len"]),
                           "color": [attn_site_color(str(s)) for s in part["attn_site"]], "custom": custom,
                           "stage": str(part["stage"].iloc[0]) if len(part) else ""}
    order = list(per_run)
    first = per_run[order[0]] if order else {"x": [], "q": [], "kv": [], "color": [], "custom": [], "stage": ""}
    hover = ("%{x}<br>%{customdata[0]}, level %{customdata[5]}: batch %{customdata[1]}, %{customdata[2]} heads "
             "of %{customdata[3]}<br>unfused score matrix %{customdata[4]:.1f} MiB")

    def hovers(run_id: str) -> list[str]:  # the query trace's and the key trace's, naming the run
        return [f"{hover}<br>{what} length %{{y}}<br>{run_id}<extra></extra>" for what in ("query", "key")]

    first_hover = hovers(order[0]) if order else hovers("")
    fig = go.Figure()
    fig.add_trace(go.Bar(x=first["x"], y=first["q"], marker_color=first["color"], customdata=first["custom"],
                         name="query length", showlegend=False, hovertemplate=first_hover[0]))
    fig.add_trace(go.Scatter(x=first["x"], y=first["kv"], mode="markers", name="key length",
                             marker={"symbol": "line-ew-open", "size": 14, "color": "#222"},
                             customdata=first["custom"], hovertemplate=first_hover[1]))
    sites = set(seq["attn_site"].astype(str))
    for site in [s for s in ATTN_SITES if s in sites]:
        fig.add_trace(go.Bar(x=[None], y=[None], name=site, marker_color=attn_site_color(site), hoverinfo="skip"))

    def title(run_id: str) -> str:
        return f"Attention sequence lengths per call, {per_run[run_id]['stage']}: {run_labels[run_id]}"

    buttons = [{"label": run_labels[r], "method": "update",
                "args": [{"x": [per_run[r]["x"], per_run[r]["x"]], "y": [per_run[r]["q"], per_run[r]["kv"]],
                          "marker.color": [per_run[r]["color"], "#222"],
                          "customdata": [per_run[r]["custom"], per_run[r]["custom"]], "hovertemplate": hovers(r)},
                         {"title.text": title(r)}, [0, 1]]} for r in order]
    return style(fig, title(order[0]) if order else "Attention sequence lengths", barmode="overlay",
                 xaxis={"title": "attention call (module, in call order)", "type": "category", "showticklabels": False},
                 yaxis={"title": "tokens", "type": "log"},
                 updatemenus=[{"type": "dropdown", "buttons": buttons, **MENU_POSITION, "active": 0}]
                 if buttons else [])


VIEW = View("sequence", "Sequence lengths",
            "Query and key length of every attention call of one step, in call order "
            "(a UNet's levels, text tokens of cross attention); pick the run.",
            table="sequence", figure=sequence_figure)
