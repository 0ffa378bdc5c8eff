"""Stage-times view: median latency per stage per run from the timed (uninstrumented) pass.

One grouped-bar trace per timing key, whiskers from min to max over the repeats; a log-scale button because
``e2e`` dwarfs ``denoiser_step`` and ``scheduler``.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .palette import MENU_POSITION, style


def stage_times_figure(stages: pd.DataFrame) -> go.Figure:
    """Median ms per timing key per run, grouped by run.

    Args:
        stages: ``analysis.tables.stage_table`` output.

    Returns:
        A figure with one bar trace per timing key.
    """
    st = stages.dropna(subset=["median_ms"])
    runs = list(dict.fromkeys(st["run_id"]))
    fig = go.Figure()
    for key, part in st.groupby("stage", sort=False):
        fig.add_trace(go.Bar(
            x=part["run_id"], y=part["median_ms"], name=str(key),
            error_y={"type": "data", "symmetric": False, "array": part["max_ms"] - part["median_ms"],
                     "arrayminus": part["median_ms"] - part["min_ms"]},
            hovertemplate=f"%{{x}}<br>{key}: %{{y:.2f}} ms (median)<extra></extra>"))
    scale = [{"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
             {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]}]
    return style(fig, "Stage latency (median of timed repeats, whiskers min–max)", barmode="group",
                 yaxis={"title": "ms"}, xaxis={"title": "run", "categoryorder": "array", "categoryarray": runs},
                 updatemenus=[{"type": "buttons", "direction": "right", "buttons": scale, **MENU_POSITION}])
