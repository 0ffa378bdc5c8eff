"""Attention-mechanisms view: per workload (one comparison group), each backend's step latency as a bar, grouped,
and under it the share of that step its attention (mixer) kernels take; the hover adds the kind (softmax,
linear attention, recurrence, local linear), the speedup over the group's cuDNN run and the run id.

The two panels say whether a faster step comes from the mechanism: a mixer that shrinks the attention share and
the step with it, or a step the rest of the model (gemm, norms) holds up whatever attention costs.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .palette import style
from .view import View

NO_RUNS = "no runs compare backends (mmchar compare WORKLOAD --backends cudnn,mlstm,...)"
_SHAPE = ("preset", "device", "dtype", "height", "width", "frames", "steps", "batch")
_SHORT = {"height": "h", "width": "w", "frames": "f", "steps": "steps", "batch": "b"}


def _field(key: str, value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{_SHORT[key]}={value}" if key in _SHORT else str(value)


def _group_names(mech: pd.DataFrame) -> dict[str, str]:
    """Each group by its workload and, where one workload has several groups, the fields they differ in
    (``wan2.1-1.3b f=81``); the group id itself where nothing else tells them apart."""
    names = {}
    for workload, part in mech.groupby("workload", sort=False, dropna=False):
        first = part.drop_duplicates("group")
        varied = [k for k in _SHAPE if k in first and first[k].astype(str).nunique() > 1]
        for _, row in first.iterrows():
            names[row["group"]] = " ".join([str(workload), *(_field(k, row[k]) for k in varied)])
    counts = pd.Series(list(names.values())).value_counts()
    return {g: n if counts[n] == 1 else f"{n} ({g})" for g, n in names.items()}


def mechanisms_figure(mech: pd.DataFrame) -> go.Figure:
    """Step latency (top) and attention's share of the step (bottom) per workload, one bar per backend.

    Args:
        mech: ``analysis.mechanisms.mechanisms_table`` output.

    Returns:
        A two-row figure with one bar trace per backend in each row (one legend entry each), or, without rows,
        an empty figure that says no runs compare backends.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    if mech.empty:
        fig.add_annotation(text=NO_RUNS, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return style(fig, "Attention mechanisms: " + NO_RUNS)
    names = _group_names(mech)
    colors = qualitative.Plotly
    backends = list(dict.fromkeys(mech["backend"].astype(str)))
    for i, backend in enumerate(backends):
        part = mech[mech["backend"].astype(str) == backend]
        name = f"{backend} ({', '.join(sorted(set(part['kind'].astype(str))))})"
        x = [names[g] for g in part["group"]]
        ref = [f"{s:.2f}× over {r}" if s == s else "no reference run"
               for s, r in zip(part["step_speedup"], part["reference_backend"])]
        custom = list(zip(part["run_id"], part["kind"].astype(str), ref, part["attention_share"], part["step_ms"]))
        hover = ("%{x}<br>" + backend + " (%{customdata[1]})<br>step %{customdata[4]:.2f} ms, %{customdata[2]}"
                 "<br>attention %{customdata[3]:.1%} of the step's kernel time<br>%{customdata[0]}<extra></extra>")
        color = colors[i % len(colors)]
        for row, y in ((1, part["step_ms"]), (2, part["attention_share"])):
            fig.add_trace(go.Bar(x=x, y=y, name=name, legendgroup=backend, showlegend=row == 1,
                                 marker_color=color, customdata=custom, hovertemplate=hover), row=row, col=1)
    fig.update_yaxes(title_text="step (ms, timed pass)", row=1, col=1)
    fig.update_yaxes(title_text="attention share", tickformat=".0%", rangemode="tozero", row=2, col=1)
    return style(fig, "Step latency per attention mechanism, and attention's share of the step", barmode="group")


VIEW = View("mechanisms", "Attention mechanisms",
            "Per workload, each backend's step latency (timed pass) and its attention (mixer) kernels' share of "
            "the step (full profile): softmax kernels, linear attention, recurrences and local linear regression side by side.",
            table="mechanisms", figure=mechanisms_figure)
