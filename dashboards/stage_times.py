"""Stage-times view: median latency per stage per run from the timed (uninstrumented) pass.

One grouped-bar trace per timing key, whiskers from min to max over the repeats; a log-scale button because
``e2e`` dwarfs ``denoiser_step`` and ``host``. Runs are named by their short labels (the run id is in the hover),
and the bars of a run whose timed pass the noise guard flagged are hatched: its latencies are not results.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import MENU_POSITION, noise_notes, noisy_bar_marker, noisy_flags, noisy_title, style
from .view import View


def stage_times_figure(stages: pd.DataFrame) -> go.Figure:
    """Median ms per timing key per run, grouped by run.

    Args:
        stages: ``analysis.tables.stage_table`` output; optional ``noisy`` and ``noise`` columns (the noise
            guard's verdict, joined by the report) mark flagged runs.

    Returns:
        A figure with one bar trace per timing key.
    """
    st = stages.dropna(subset=["median_ms"])
    runs = list(dict.fromkeys(st["label"]))
    fig = go.Figure()
    for key, part in st.groupby("stage", sort=False):
        flags = noisy_flags(part)
        fig.add_trace(go.Bar(
            x=part["label"], y=part["median_ms"], name=str(key), marker=noisy_bar_marker(flags),
            customdata=list(zip(part["run_id"], noise_notes(part))),
            error_y={"type": "data", "symmetric": False, "array": part["max_ms"] - part["median_ms"],
                     "arrayminus": part["median_ms"] - part["min_ms"]},
            hovertemplate=f"%{{x}}<br>{key}: %{{y:.2f}} ms (median)<br>%{{customdata[0]}}%{{customdata[1]}}"
                          "<extra></extra>"))
    scale = [{"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
             {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]}]
    return style(fig, noisy_title("Stage latency (median of timed repeats, whiskers min–max)", noisy_flags(st)),
                 barmode="group", yaxis={"title": "ms"},
                 xaxis={"title": "run", "categoryorder": "array", "categoryarray": runs},
                 updatemenus=[{"type": "buttons", "direction": "right", "buttons": scale, **MENU_POSITION}])


VIEW = View("stage_times", "Stage times",
            "Median latency per stage over the timed, uninstrumented repeats; hatched bars: "
            "runs whose timed pass the noise guard flagged (see the overview).",
            table="stages", figure=stage_times_figure, marked=True, require=("median_ms",))
