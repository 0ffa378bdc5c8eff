"""Decoder view: how much of a generation the VAE (or VQ) decode is, and what inside it takes the time.

Per run (named by its short label; the run id is in the hover), on the left the decoder's share of end-to-end time
(timed pass: median decoder latency over median e2e, idle included), on the right its kernel time (full profile; a
CPU run's op self time) as one stacked horizontal bar split by sub-class: 3D and 2D convolutions, causal padding,
up-sampling, norms (`mmchar.sub_classes`); kernels no sub-class rule names stay as their op class. A button shows
the split as shares of the decoder's kernel time, so a small image VAE and a large video VAE read side by side.

Traces are one per segment (sub-class or op class), not per run, so a page of 100 runs stays a few dozen traces.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .palette import (FALLBACK_COLOR, MENU_POSITION, noise_notes, noisy_bar_marker, noisy_flags, noisy_title,
                      op_class_color, style)
from .view import View

NO_RUNS = "no run profiled a decoder (no decoder-stage kernels)"
SHARE_COLOR = "#6c6c6c"
# one colour per sub-class (schema.SUB_CLASSES), in the hue of the op class it usually splits: convolutions blue,
# norms teal, the data movers warm; an op class's own colour is left to its kernels no sub-class names
SUB_CLASS_COLORS: dict[str, str] = {
    "conv3d": "#1f4e79", "conv2d": "#6b9bd1", "conv1d": "#b6d2ee",
    "pad": "#c9a227", "upsample": "#ff9da6",
    "group_norm": "#2e7d77", "layer_norm": "#9ad4cf", "rms_norm": "#5fa8a2", "norm": "#c3e6e2",
    "rope": "#9c4a6e", "modulation": "#8c6d31",
}


def _segments(dec: pd.DataFrame) -> pd.Series:
    """Each row's segment name: its sub-class, or, where no rule named one, its op class; a name two op classes
    share (or a sub-class named like an op class) says which op class it is."""
    sub = dec["sub_class"].fillna("").astype(str)
    op = dec["op_class"].fillna("").astype(str)
    name = sub.where(sub != "", op)
    keys = pd.DataFrame({"name": name, "sub": sub, "op": op}).drop_duplicates()
    clash = set(keys["name"][keys["name"].duplicated(keep=False)])
    return pd.Series([(f"{o} (no sub-class)" if s == "" else f"{s} ({o})") if n in clash else n
                      for n, s, o in zip(name, sub, op)], index=dec.index)


def _color(sub_class: str, op_class: str) -> str:
    return SUB_CLASS_COLORS.get(sub_class, FALLBACK_COLOR) if sub_class else op_class_color(op_class)


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value == value else "not timed"


def decoder_figure(dec: pd.DataFrame) -> go.Figure:
    """The decoder's share of e2e per run (left) and its kernel time stacked by sub-class (right).

    Args:
        dec: ``analysis.decoder.decoder_table`` output; optional ``noisy`` and ``noise`` columns (the noise guard's
            verdict, joined by the report) hatch flagged runs' share of e2e (a timed-pass number).

    Returns:
        A two-panel figure on one run axis: a bar trace of the decoder's share of e2e, then one horizontal bar
        trace per segment (sub-class, or op class where no sub-class is named), stacked, with buttons for ms and
        share of the decoder's kernel time; without rows, an empty figure that says no run profiled a decoder.
    """
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.24, 0.76], horizontal_spacing=0.03,
                        subplot_titles=("share of end-to-end (timed pass)", "decoder kernel time (full profile)"))
    if dec.empty:
        fig.add_annotation(text=NO_RUNS, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return style(fig, "Decoder: " + NO_RUNS)
    runs = list(dict.fromkeys(dec["label"]))
    per_run = dec.drop_duplicates("label").set_index("label").reindex(runs)
    flags = noisy_flags(per_run)
    share = per_run["decoder_share"].astype(float)
    fig.add_trace(go.Bar(
        y=runs, x=share, orientation="h", name="decoder share of e2e", marker={"color": SHARE_COLOR,
                                                                               **noisy_bar_marker(flags)},
        text=[f"{s:.0%}" if s == s else "not timed" for s in share], textposition="auto",
        customdata=list(zip(per_run["run_id"], map(_ms, per_run["decoder_ms"].astype(float)),
                            map(_ms, per_run["e2e_ms"].astype(float)), noise_notes(per_run))),
        hovertemplate="%{y}<br>decoder %{customdata[1]} of %{customdata[2]} end-to-end (timed pass medians)"
                      "<br>%{customdata[0]}%{customdata[3]}<extra></extra>"), row=1, col=1)
    rows = dec.assign(segment=_segments(dec), time_ms=dec["time_us"].astype(float) / 1e3)
    order = rows.groupby("segment", sort=False)["time_ms"].sum().sort_values(ascending=False, kind="stable")
    totals = rows.groupby("label", sort=False)["time_ms"].sum()  # each run's decoder kernel time
    ms: list[list[float]] = []
    shares: list[list[float]] = []
    for segment in order.index:
        part = rows[rows["segment"] == segment]
        first = part.iloc[0]
        part = part.groupby("label", sort=False).agg(
            time_ms=("time_ms", "sum"), share=("share", "sum"), calls=("calls", "sum"),
            run_id=("run_id", "first")).reindex([r for r in runs if r in set(part["label"])])
        ms.append([float(v) for v in part["time_ms"]])
        shares.append([float(v) for v in part["share"]])
        op = str(first["op_class"])
        # an op class's own segment, or one two op classes share, already names its op class
        named = segment if segment == op or "(" in segment else f"{segment} ({op})"  # see _segments
        fig.add_trace(go.Bar(
            y=list(part.index), x=part["time_ms"], orientation="h", name=segment, legendgroup=segment,
            marker_color=_color(str(first["sub_class"] if pd.notna(first["sub_class"]) else ""), op),
            customdata=list(zip(part["share"], part["calls"].astype(int), part["run_id"],
                                [float(totals[r]) for r in part.index])),
            hovertemplate=f"%{{y}}<br>{named}: %{{customdata[0]:.1%}} of the decoder's "
                          "%{customdata[3]:.2f} ms kernel time<br>%{customdata[1]} kernels<br>%{customdata[2]}"
                          "<extra></extra>"), row=1, col=2)
    split = list(range(1, len(fig.data)))
    cpu = "device_type" in dec and dec["device_type"].astype(str).eq("cpu").any()
    ms_title = "ms of kernel time" + (" (CPU op self time on CPU runs)" if cpu else "")
    buttons = [{"label": "ms", "method": "update",
                "args": [{"x": ms}, {"xaxis2.title.text": ms_title, "xaxis2.tickformat": "",
                                     "xaxis2.autorange": True}, split]},
               {"label": "share of decoder", "method": "update",
                "args": [{"x": shares}, {"xaxis2.title.text": "share of the decoder's kernel time",
                                         "xaxis2.tickformat": ".0%", "xaxis2.autorange": True}, split]}]
    fig.update_xaxes(title_text="decoder / e2e", tickformat=".0%", rangemode="tozero", row=1, col=1)
    fig.update_xaxes(title_text=ms_title, rangemode="tozero", row=1, col=2)
    fig.update_yaxes(categoryorder="array", categoryarray=runs, autorange="reversed", row=1, col=1)
    return style(fig, noisy_title("Decoder: its share of end-to-end time and its kernel time by sub-class", flags),
                 barmode="stack", height=max(450, 160 + 30 * len(runs)),
                 updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, **MENU_POSITION,
                               "active": 0}])


VIEW = View("decoder", "Decoder",
            "How much of a generation the VAE decode is (median decoder latency over median end-to-end, timed "
            "pass; hatched: runs the noise guard flagged) and what inside it takes the time: its kernel time (full "
            "profile) by sub-class (3D / 2D convolutions, causal padding, up-sampling, norms; unnamed kernels by "
            "op class).",
            table="decoder", figure=decoder_figure, marked=True)
