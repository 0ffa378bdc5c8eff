"""The dashboard builder: one self-contained offline HTML page over many runs.

Tables come from ``analysis.tables`` (computed once here), each view turns one table into one figure, and the
page embeds plotly.js exactly once in a single ``<script>`` followed by one small ``Plotly.newPlot`` per figure.
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
from mmchar.analysis import study, tables
from mmchar.store import Run

from .attention_sites import attention_sites_figure
from .busy_idle import busy_idle_figure
from .comparison import comparison_figure
from .modules import modules_figure
from .multi_gpu import multi_gpu_figure
from .op_classes import op_class_figure
from .overview import overview_html
from .palette import PLOTLY_CONFIG
from .roofline import roofline_figure
from .scaling import scaling_figure
from .sequence import sequence_figure
from .stage_times import stage_times_figure
from .timeline import timeline_figure
from .top_kernels import top_kernels_figure

# (key, section heading, one-line explanation shown under the heading)
SECTIONS = (
    ("op_classes", "Op-class breakdown", "Share of each stage's kernel time per op class (GPU kernels; CPU op self "
                                         "time on CPU runs; idle time excluded)."),
    ("stage_times", "Stage times", "Median latency per stage over the timed, uninstrumented repeats; hatched bars: "
                                   "runs whose timed pass the noise guard flagged (see the overview)."),
    ("attention_sites", "Attention sites", "Attention kernel time split by attention site."),
    ("top_kernels", "Top kernels", "Kernels with the most total time in the chosen run."),
    ("busy_idle", "Busy vs idle", "Busy and idle time per stage: busy is GPU kernel time on CUDA runs and CPU op "
                                  "self time on CPU runs; idle is launch/host overhead."),
    ("comparison", "Backend comparison", "Speedup of each backend over its group's baseline, with output agreement; "
                                         "hatched bars: runs the noise guard flagged."),
    ("modules", "Modules", "One step's kernel time rolled up the model's module hierarchy (click a ring to zoom); "
                           "pick the run."),
    ("sequence", "Sequence lengths", "Query and key length of every attention call of one step, in call order "
                                     "(a UNet's levels, text tokens of cross attention); pick the run."),
    ("scaling", "Scaling", "Step latency against each parameter a sweep varied (log-log), one point per "
                           "configuration (the median of its runs, noisy duplicates left out), with the fitted "
                           "exponent of latency ∝ parameter^k per series of three or more points."),
    ("timeline", "Step timeline", "One denoising step kernel by kernel, a lane per op class, from the full "
                                  "profile: kernel lengths are true, the host gaps between them are widened by the "
                                  "profiler (the timed pass's step latency is in Stage times); first 12 runs."),
    ("multi_gpu", "Multi-GPU", "Denoiser step latency on one GPU and with its sequence split over several "
                               "(Ulysses or ring attention), the step's communication stacked on the rest."),
    ("roofline", "Roofline", "Achieved TFLOP/s per op class against arithmetic intensity, under each run's "
                             "calibrated roofs (FLOPs and bytes from the recorded shapes)."),
)

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
    rt = tables.run_table(runs)
    return pd.DataFrame({"run_id": rt["run_id"], "label": rt["label"], "noisy": rt["noisy"], "noise": rt["noise"],
                         "device_type": [str((r.meta.get("device") or {}).get("type") or "") for r in runs]})


def _marked(table: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the run's marks joined on ``run_id`` (the table's own columns of those names replaced)."""
    return table.drop(columns=[c for c in marks if c != "run_id" and c in table]).merge(
        marks, on="run_id", how="left")


def build_figures(runs: Sequence[Run]) -> dict[str, go.Figure]:
    """Every view's figure for ``runs``; views with no data (no comparison runs, no kernels ...) are left out.

    Args:
        runs: loaded runs, any status; a run loaded twice is drawn once.

    Returns:
        Figures keyed by section key (``SECTIONS`` order).
    """
    runs = _distinct(runs)
    marks = _marks(runs)
    breakdown = tables.breakdown_table(runs)
    breakdown = breakdown[breakdown["status"] == "ok"].dropna(subset=["share"])
    stages = _marked(tables.stage_table(runs), marks)
    inputs = {
        "op_classes": (breakdown, op_class_figure),
        "stage_times": (stages.dropna(subset=["median_ms"]), stage_times_figure),
        "attention_sites": (tables.attention_site_table(runs), attention_sites_figure),
        "top_kernels": (tables.top_kernels_table(runs), top_kernels_figure),
        "busy_idle": (stages.dropna(subset=["busy_ms"]), busy_idle_figure),
        "comparison": (_marked(tables.comparison_table(runs), marks), comparison_figure),
        "modules": (study.module_tree(runs), modules_figure),
        "sequence": (study.sequence_table(runs), sequence_figure),
        "scaling": (study.scaling_points(runs), lambda pts: scaling_figure(pts, study.scaling_fits(pts))),
        "timeline": (study.step_timeline(runs), timeline_figure),
        "multi_gpu": (_marked(study.sequence_parallel_table(runs), marks), multi_gpu_figure),
        "roofline": (study.roofline_table(runs).dropna(subset=["intensity", "tflops"]), roofline_figure),
    }
    return {key: view(table) for key, (table, view) in inputs.items() if not table.empty}


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
        f'<section id="overview"><h2>Overview</h2>{overview_html(tables.run_table(runs))}</section>',
    ]
    for key, heading, note in SECTIONS:
        if key in figures:
            parts.append(f'<section id="{key}"><h2>{escape(heading)}</h2><p class="note">{escape(note)}</p>'
                         f'<div class="figure">{_figure_div(key, figures[key])}</div></section>')
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
