"""Step-timeline view: one denoising step (or a token model's first generator call) kernel by kernel, one lane
per op class, bars at their start and length; gaps between bars are where the GPU waited for the host. A
dropdown picks the run by its short label, the run id in the hover (the first dozen runs with a profiled step: a
step holds thousands of kernels).

One bar trace per op class whose data the dropdown swaps, so the trace count stays fixed.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.analysis import step_timeline
from mmchar.schema import OP_CLASSES

from .palette import MENU_POSITION, op_class_color, style
from .view import View

HOVER = "%{customdata[0]}<br>%{customdata[1]} (%{customdata[2]})<br>start %{base:.3f} ms, %{x:.3f} ms"


def _hover(op_class: str, run_id: str) -> str:
    return f"{HOVER}<br>{run_id}<extra>{op_class}</extra>"


def timeline_figure(timeline: pd.DataFrame) -> go.Figure:
    """Kernels of one step along time, a lane per op class.

    Args:
        timeline: ``analysis.timeline.step_timeline`` output.

    Returns:
        A figure with one horizontal bar trace per op class, restyled by a run dropdown.
    """
    present = set(timeline["op_class"])
    classes = [c for c in OP_CLASSES if c in present] + sorted(present - set(OP_CLASSES))
    runs = list(dict.fromkeys(timeline["run_id"]))
    labels = dict(zip(timeline["run_id"], timeline["label"]))
    per_run: dict[str, dict[str, dict[str, list]]] = {}
    for run_id, g in timeline.groupby("run_id", sort=False):
        per_run[run_id] = {}
        for c in classes:
            part = g[g["op_class"] == c]
            per_run[run_id][c] = {
                "x": list(part["dur_ms"]), "base": list(part["start_ms"]), "y": [c] * len(part),
                "customdata": [[k[:90], m or "-", s or "-"] for k, m, s in
                               zip(part["kernel"], part["module_path"], part["attn_site"])]}
    first = per_run[runs[0]]
    fig = go.Figure()
    for c in classes:
        fig.add_trace(go.Bar(
            orientation="h", x=first[c]["x"], base=first[c]["base"], y=first[c]["y"], name=c,
            marker={"color": op_class_color(c), "line": {"width": 0}}, customdata=first[c]["customdata"],
            hovertemplate=_hover(c, runs[0])))

    def title(run_id: str) -> str:
        g = timeline[timeline["run_id"] == run_id]
        return f"One {g['stage'].iloc[0]} step, kernel by kernel (step {g['step'].iloc[0]}): {labels[run_id]}"

    buttons = [{"label": labels[r], "method": "update",
                "args": [{**{f: [per_run[r][c][f] for c in classes] for f in ("x", "base", "y", "customdata")},
                          "hovertemplate": [_hover(c, r) for c in classes]},
                         {"title.text": title(r)}, list(range(len(classes)))]} for r in runs]
    return style(fig, title(runs[0]), barmode="overlay", bargap=0.3,
                 xaxis={"title": "ms from the step's first kernel"},
                 yaxis={"categoryorder": "array", "categoryarray": classes[::-1]},
                 updatemenus=[{"type": "dropdown", "buttons": buttons, **MENU_POSITION, "active": 0}])


VIEW = View("timeline", "Step timeline",
            "One denoising step kernel by kernel, a lane per op class, from the full "
            "profile: kernel lengths are true, the host gaps between them are widened by the "
            "profiler (the timed pass's step latency is in Stage times); first 12 runs.",
            table=step_timeline, figure=timeline_figure)
