"""Attention-sites view: where attention time goes (spatial, temporal, cross ...) in each run.

The denoiser's attention only, where it has any (docs/conventions.md: a site split is per stage; mixing in the
text encoder's and the VAE's attention would blur it); one stacked trace per site keeps the trace count
fixed however many runs there are.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mmchar.schema import ATTN_SITES, STEP_STAGES
from mmchar.shares import shares_within

from .palette import attn_site_color, style
from .view import View


def attention_sites_figure(sites: pd.DataFrame) -> go.Figure:
    """Attention ms by site per run, stacked.

    Args:
        sites: ``analysis.tables.attention_site_table`` output.

    Returns:
        A figure with one bar trace per attention site.
    """
    if sites["stage"].isin(STEP_STAGES).any():  # the denoiser's (or a token model's generator's) attention
        sites = sites[sites["stage"].isin(STEP_STAGES)]
    agg = sites.groupby(["attn_site", "label", "run_id"], sort=False)["time_us"].sum().reset_index()
    agg["share"] = shares_within(agg, ["run_id"], sort=True)  # a site's share of the run's attention
    runs = list(dict.fromkeys(sites["label"]))
    present = list(dict.fromkeys(agg["attn_site"]))
    fig = go.Figure()
    for site in [s for s in ATTN_SITES if s in present] + [s for s in present if s not in ATTN_SITES]:
        part = agg[agg["attn_site"] == site]
        fig.add_trace(go.Bar(
            x=part["label"], y=part["time_us"] / 1e3, name=site or "(none)", marker_color=attn_site_color(site),
            customdata=list(zip(part["share"], part["run_id"])),
            hovertemplate=f"%{{x}}<br>{site}: %{{y:.2f}} ms (%{{customdata[0]:.1%}} of attention)<br>"
                          "%{customdata[1]}<extra></extra>"))
    return style(fig, "Attention kernel time by site in the denoiser (a token model's generator), profiled steps",
                 barmode="stack",
                 yaxis={"title": "ms"}, xaxis={"title": "run", "categoryorder": "array", "categoryarray": runs})


VIEW = View("attention_sites", "Attention sites",
            "Attention kernel time split by attention site.",
            table="attention_sites", figure=attention_sites_figure)
