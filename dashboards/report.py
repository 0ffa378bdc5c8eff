"""The dashboard builder: one self-contained offline HTML page over many runs.

Each view (``registry.VIEWS``, in page order) names the analysis table it draws; each table is computed once here,
each view turns its table into one figure, and the page embeds plotly.js exactly once in a single ``<script>``
followed by one small ``Plotly.newPlot`` per figure.
No CDN, fonts or MathJax: the file opens from a laptop with no network, years later.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

import mmchar
from mmchar.analysis import TABLES, run_table
from mmchar.store import Run

from .overview import overview_html
from .palette import PLOTLY_CONFIG
from .registry import VIEWS
from .view import View

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;padding:0 24px;color:#222}
header{border-bottom:1px solid #ddd;padding:16px 0}header h1{margin:0 0 4px}header .meta{color:#666;font-size:.9em}
section{margin:28px 0}section p.note{color:#555;margin:4px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:160px}
.card-label{color:#666;font-size:.8em;text-transform:uppercase}.card-value{font-size:1.6em;font-weight:600}
.card-detail{color:#444;font-size:.85em;max-width:420px}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.status-oom,.status-error{color:#b00020;font-weight:600}.noisy{color:#a35200;font-weight:600}
.figure{min-height:450px}
"""


def _distinct(runs: Sequence[Run]) -> list[Run]:
    """Each run once: one run loaded twice (a store named twice, a copied store) would otherwise draw two bars on
    one label and stack its shares to 200%."""
    first: dict[str, Run] = {}
    for r in runs:
        first.setdefault(r.run_id, r)
    return list(first.values())


def _marks(runs: Sequence[Run]) -> pd.DataFrame:
    """What views mark on a run that the analysis tables behind them do not all carry: its device type (GPU busy
    time or CPU op time), the noise guard's verdict with its reasons, and its label over every run of the page (a
    table of a subset, the comparison's, would name runs by fewer fields than the other views)."""
    rt = run_table(runs)
    return pd.DataFrame({"run_id": rt["run_id"], "label": rt["label"], "noisy": rt["noisy"], "noise": rt["noise"],
                         "device_type": [str((r.meta.get("device") or {}).get("type") or "") for r in runs]})


def _marked(table: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the run's marks joined on ``run_id`` (the table's own columns of those names replaced)."""
    return table.drop(columns=[c for c in marks if c != "run_id" and c in table]).merge(
        marks, on="run_id", how="left")


def _table(view: View, runs: Sequence[Run]) -> pd.DataFrame:
    """The view's table: the study's own by name, so the page and the CSVs never disagree."""
    return TABLES[view.table](runs) if isinstance(view.table, str) else view.table(runs)


def build_figures(runs: Sequence[Run]) -> dict[str, go.Figure]:
    """Every view's figure for ``runs``; views with no data (no comparison runs, no kernels ...) are left out.

    Args:
        runs: loaded runs, any status; a run loaded twice is drawn once.

    Returns:
        Figures keyed by view key (``VIEWS`` order).
    """
    runs = _distinct(runs)
    marks = _marks(runs)
    computed: dict[object, pd.DataFrame] = {}  # each table once, however many views draw it
    figures = {}
    for view in VIEWS:
        if view.table not in computed:
            computed[view.table] = _table(view, runs)
        table = computed[view.table]
        if view.marked:
            table = _marked(table, marks)
        if view.require:
            table = table.dropna(subset=list(view.require))
        if not table.empty:
            figures[view.key] = view.figure(table)
    return figures


def _figure_div(key: str, fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False, config=PLOTLY_CONFIG,
                       div_id=f"fig-{key}", default_height="520px")


def render_dashboard(runs: Sequence[Run], title: str = "mmchar dashboard") -> str:
    """The whole page as one HTML string (see :func:`write_dashboard`)."""
    runs = _distinct(runs)
    figures = build_figures(runs)
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f'<header><h1>{escape(title)}</h1><div class="meta">generated {escape(created)} · '
        f"mmchar {escape(mmchar.__version__)} · {len(runs)} runs</div></header>",
        f'<section id="overview"><h2>Overview</h2>{overview_html(run_table(runs))}</section>',
    ]
    for view in VIEWS:
        if view.key in figures:
            parts.append(f'<section id="{view.key}"><h2>{escape(view.title)}</h2>'
                         f'<p class="note">{escape(view.note)}</p>'
                         f'<div class="figure">{_figure_div(view.key, figures[view.key])}</div></section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_dashboard(runs: Sequence[Run], out_path: str | os.PathLike[str], title: str = "mmchar dashboard") -> Path:
    """Write one self-contained, offline HTML dashboard over ``runs``.

    Args:
        runs: loaded runs (``mmchar.store.load_runs``), any status; failed runs are listed in the overview.
        out_path: the HTML file to write; parent folders are created.
        title: page title and header.

    Returns:
        The path written.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_dashboard(runs, title), encoding="utf-8")
    return out
