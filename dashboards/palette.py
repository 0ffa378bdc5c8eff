"""Shared look of every dashboard figure: one colour per op class and attention site, one plotly config.

One dict keyed by ``schema.OP_CLASSES`` keeps "attention" the same colour in every figure of a page, so a
reader can compare figures at a glance. The config keeps plotly from fetching anything (no MathJax, no logo
link, no cloud export), so the page works offline.
"""

from __future__ import annotations

from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from mmchar.schema import ATTN_SITES, OP_CLASSES

OP_CLASS_COLORS: dict[str, str] = dict(zip(OP_CLASSES, (
    "#4c78a8",  # conv
    "#f58518",  # gemm
    "#e45756",  # attention
    "#72b7b2",  # norm
    "#54a24b",  # elementwise
    "#eeca3b",  # memory
    "#b279a2",  # communication
    "#d67195",  # routing
    "#9d9da0",  # other
)))
ATTN_SITE_COLORS: dict[str, str] = dict(zip(ATTN_SITES, (
    "#e45756", "#4c78a8", "#b279a2", "#f58518", "#54a24b", "#72b7b2")))
FALLBACK_COLOR = "#bab0ac"

# A run whose timed pass the noise guard flagged is marked wherever its latency is drawn (hatched, faded bars;
# crossed markers), so a reader never takes a disturbed measurement for a result.
NOISY_PATTERN, NOISY_OPACITY, NOISY_SYMBOL = "/", 0.55, "x"
NOISY_BAR_NOTE = "hatched: timed pass flagged noisy"
NOISY_POINT_NOTE = "✕: timed pass flagged noisy"

# No MathJax, no "edit in chart studio" link, no plotly logo link: nothing in the page reaches the network.
PLOTLY_CONFIG: dict[str, Any] = {"displaylogo": False, "showSendToCloud": False, "responsive": True,
                                 "typesetMath": False}
TEMPLATE = "plotly_white"
# Buttons and dropdowns sit above the plot's top-right corner, clear of the title on the left.
MENU_POSITION: dict[str, Any] = {"x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom", "pad": {"b": 4}}


def op_class_color(op_class: str) -> str:
    return OP_CLASS_COLORS.get(op_class, FALLBACK_COLOR)


def attn_site_color(site: str) -> str:
    return ATTN_SITE_COLORS.get(site, FALLBACK_COLOR)


def style(fig: go.Figure, title: str, **layout: Any) -> go.Figure:
    """Apply the common layout (template, title, legend, margins) to a view's figure."""
    fig.update_layout(template=TEMPLATE, title=title, legend={"traceorder": "normal"},
                      margin={"l": 60, "r": 20, "t": 80, "b": 60}, **layout)
    return fig


def noisy_flags(table: pd.DataFrame) -> list[bool]:
    """Per row, whether the noise guard flagged its run (``noisy`` column; absent or unknown: not flagged, as for
    runs recorded before the guard)."""
    if "noisy" not in table:
        return [False] * len(table)
    return [not pd.isna(v) and bool(v) for v in table["noisy"]]


def noise_notes(table: pd.DataFrame) -> list[str]:
    """Per row the hover line saying why its latency is not to be trusted (``noise`` column), "" where its run was
    not flagged; starts with ``<br>`` so a hovertemplate can append it whatever the row."""
    reasons = table["noise"] if "noise" in table else [""] * len(table)
    return [f"<br>noisy: {escape(r if isinstance(r, str) and r else 'flagged by the noise guard')}" if flag else ""
            for flag, r in zip(noisy_flags(table), reasons)]


def noisy_bar_marker(flags: list[bool]) -> dict[str, Any]:
    """Bar marker settings that hatch and fade the bars of flagged runs (merge into a trace's ``marker``)."""
    return {"pattern": {"shape": [NOISY_PATTERN if f else "" for f in flags], "fillmode": "overlay",
                        "fgcolor": "#222"},
            "opacity": [NOISY_OPACITY if f else 1.0 for f in flags]}


def noisy_title(title: str, flags: list[bool], note: str = NOISY_BAR_NOTE) -> str:
    """The title, with what the noisy marking means when any run on the figure carries it."""
    return f"{title} ({note})" if any(flags) else title
