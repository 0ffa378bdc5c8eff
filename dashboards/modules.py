"""Module-hierarchy view: where one step's kernel time goes, as a sunburst of the model's modules (the UNet's
down / mid / up blocks, their resnets and attentions ... to six levels), each sector coloured by the op class
with most time under it (the shared palette); a dropdown picks the run by its short label (the run id is in the
hover).

One sunburst trace whose data the dropdown swaps, so 100 runs cost one trace.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.schema import OP_CLASSES

from .palette import MENU_POSITION, op_class_color, style
from .view import View

HOVER = "%{id}<br>%{value:.2f} ms, %{customdata[0]:.1%} of the stage; most time: %{customdata[1]}"


def modules_figure(tree: pd.DataFrame) -> go.Figure:
    """Kernel time by module, inclusive, as a sunburst.

    Args:
        tree: ``analysis.modules.module_tree`` output.

    Returns:
        A figure with one sunburst trace restyled by a run dropdown.
    """
    per_run = {}
    labels = dict(zip(tree["run_id"], tree["run_label"]))
    for run_id, g in tree.groupby("run_id", sort=False):
        per_run[run_id] = {"ids": list(g["id"]), "parents": list(g["parent"]), "labels": list(g["label"]),
                           "values": list(g["time_us"] / 1e3),
                           "customdata": [[float(sh), str(c)] for sh, c in zip(g["share"], g["top_class"])],
                           "marker.colors": [op_class_color(str(c)) for c in g["top_class"]],
                           "hovertemplate": f"{HOVER}<br>{run_id}<extra></extra>", "stage": str(g["stage"].iloc[0])}
    order = list(per_run)
    first = per_run[order[0]]
    fig = go.Figure(go.Sunburst(
        ids=first["ids"], parents=first["parents"], labels=first["labels"], values=first["values"],
        customdata=first["customdata"], marker={"colors": first["marker.colors"]}, branchvalues="total", maxdepth=4,
        insidetextorientation="radial", hovertemplate=first["hovertemplate"]))
    classes = set(tree["top_class"].astype(str))
    for op_class in [c for c in OP_CLASSES if c in classes]:  # legend of the sector colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=op_class, hoverinfo="skip",
                                 marker={"color": op_class_color(op_class), "size": 10, "symbol": "square"}))

    def title(run_id: str) -> str:
        return f"Kernel time by module, {per_run[run_id]['stage']} (profiled steps): {labels[run_id]}"

    buttons = [{"label": labels[r], "method": "update",
                "args": [{k: [per_run[r][k]] for k in ("ids", "parents", "labels", "values", "customdata",
                                                      "marker.colors", "hovertemplate")},
                         {"title.text": title(r)}, [0]]} for r in order]
    return style(fig, title(order[0]), height=640, xaxis={"visible": False}, yaxis={"visible": False},
                 updatemenus=[{"type": "dropdown", "buttons": buttons, **MENU_POSITION, "active": 0}])


VIEW = View("modules", "Modules",
            "One step's kernel time rolled up the model's module hierarchy (click a ring to zoom); "
            "pick the run.",
            table="modules", figure=modules_figure)
