"""Advice view: per run (a dropdown), the optimisation opportunities ``mmchar advise`` ranks, as horizontal bars of
the projected saving of the denoiser / generator step, labelled with the option that would buy it.

A projection is arithmetic over what the run recorded, never a measurement, so every bar carries its stated error
(``analysis.advise.VALIDATED_ERROR``): an error bar and the text ``±17 %`` where the model was checked against
committed runs, ``unvalidated`` where it was not; the hover holds the model that projected it and the inputs it read.
Where a row was measured (the ``measured_step_ms`` column that ``mmchar advise --validate`` adds), the measured
saving is drawn beside the projected one, so a reader sees how far the projection was off.
"""

from __future__ import annotations

import re
import textwrap
from html import escape

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .palette import MENU_POSITION, noise_notes, noisy_bar_marker, noisy_flags, style
from .view import View

NO_ADVICE = "no run has a projection to rank (mmchar advise needs an ok run with a timed denoiser or generator step)"
PROJECTED_COLOR = "#4c78a8"
MEASURED_COLOR = "#54a24b"
UNVALIDATED = "unvalidated"
NOT_STATED = "error not stated"  # a projected row whose error column is empty: said so, never shown bare
_ERROR = re.compile(r"^\s*±\s*([0-9.]+)\s*%")
HOVER_WIDTH = 110  # characters per hover line of the model and inputs (plotly does not wrap)


def error_status(error: object) -> tuple[str, float]:
    """(the short error status drawn beside a bar, the relative error as a fraction) from advice's ``error``
    column: ``("±17 %", 0.17)`` for a validated model, ``("unvalidated", nan)`` where no measured run checked it,
    ``("error not stated", nan)`` for an empty cell, so no projection is ever drawn without one."""
    text = error if isinstance(error, str) else ""
    m = _ERROR.match(text)
    if m:
        return f"±{m.group(1)} %", float(m.group(1)) / 100.0
    if text.strip().startswith(UNVALIDATED):
        return UNVALIDATED, float("nan")
    return NOT_STATED, float("nan")


def _wrap(text: object) -> str:
    """Long model / inputs text as escaped hover lines."""
    s = text if isinstance(text, str) and text else "-"
    return "<br>".join(escape(line) for line in textwrap.wrap(s, HOVER_WIDTH)) or "-"


def _ms(v: float) -> str:
    return f"{v:.2f} ms" if v == v else "n/a"


def _measured(rows: pd.DataFrame) -> np.ndarray:
    """Per row its measured step (ms), NaN where it has none (or the table has no ``measured_step_ms`` column, as
    before ``advise --validate``)."""
    if "measured_step_ms" not in rows:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows["measured_step_ms"], errors="coerce").to_numpy(dtype=float)


def _validating(rows: pd.DataFrame) -> list[str]:
    """Per row the hover line naming the run that measured it (``validating_run``, from ``advise --validate``), ""
    without one."""
    if "validating_run" not in rows:
        return [""] * len(rows)
    return [f"<br>measured by {escape(v)}" if isinstance(v, str) and v else "" for v in rows["validating_run"]]


def _empty(advice: pd.DataFrame) -> go.Figure:
    """The empty state: no ranked row. Says so, and per run (its label; its id in the hover) why nothing applies:
    the distinct reasons its not-applicable rows gave."""
    fig = go.Figure()
    fig.add_annotation(text=NO_ADVICE, showarrow=False, xref="paper", yref="paper", x=0.5, y=1.0, yanchor="bottom")
    if len(advice):
        labels, reasons, ids = [], [], []
        for run_id, rows in advice.groupby("run_id", sort=False):
            why = dict.fromkeys(str(m).removeprefix("not applicable: ") for m in rows["model"]
                                if isinstance(m, str) and m.startswith("not applicable"))
            labels.append(str(rows["label"].iloc[0]))
            reasons.append(escape("; ".join(why) or "no projection"))
            ids.append(str(run_id))
        fig.add_trace(go.Scatter(x=[0.0] * len(labels), y=labels, mode="text", text=reasons,
                                 textposition="middle right", customdata=ids, name="not applicable",
                                 showlegend=False, hovertemplate="%{y}: %{text}<br>%{customdata}<extra></extra>"))
    return style(fig, "Advice: " + NO_ADVICE, xaxis={"visible": False, "range": [0, 1]},
                 yaxis={"autorange": "reversed", "automargin": True})


def advice_figure(advice: pd.DataFrame) -> go.Figure:
    """Per run, its ranked opportunities as horizontal bars of projected step saving, each with its stated error.

    Args:
        advice: ``analysis.advise.advice_table`` output; optional ``measured_step_ms`` (a measured run of the
            option: its saving is drawn beside the projection) and ``noisy`` / ``noise`` (joined by the report:
            a flagged run's bars are hatched, as the latency it projects from is not to be trusted).

    Returns:
        Per run with ranked rows, a bar trace of projected savings (error bars of ± the stated error of the
        projected step, text ``12.3 ms · ±17 %`` or ``· unvalidated``) and, where any of its rows was measured, a
        bar trace of measured savings; a dropdown shows one run at a time (rank 1 on top). Rows that do not apply
        (unranked) are not drawn. Without a ranked row, an empty figure that says no run has advice and why.
    """
    ranked = advice[advice["saving_ms"].notna()] if len(advice) else advice
    if ranked.empty:
        return _empty(advice)
    fig = go.Figure()
    run_ids = list(dict.fromkeys(ranked["run_id"]))
    spans: list[tuple[int, int]] = []  # per run, its traces' index range
    layouts: list[dict] = []
    rows_max = 1
    for run_id in run_ids:
        rows = ranked[ranked["run_id"] == run_id].sort_values(["rank", "saving_ms"], ascending=[True, False],
                                                              na_position="last")
        n = len(rows)
        rows_max = max(rows_max, n)
        y = list(range(n))
        saving = rows["saving_ms"].to_numpy(dtype=float)
        projected = rows["projected_step_ms"].to_numpy(dtype=float)
        step = rows["step_ms"].to_numpy(dtype=float)
        status = [error_status(e) for e in rows["error"]]
        err = [frac * p if frac == frac and p == p else None for (_, frac), p in zip(status, projected)]
        flags = noisy_flags(rows)
        notes = noise_notes(rows)
        label = str(rows["label"].iloc[0])
        first = len(fig.data)
        custom = [(str(r.option), _ms(r.step_ms), _ms(r.projected_step_ms),
                   f"{-r.saving_pct:+.1f} %" if r.saving_pct == r.saving_pct else "n/a", _ms(r.saving_ms),
                   _ms(r.e2e_ms), _ms(r.projected_e2e_ms),
                   escape(r.error if isinstance(r.error, str) and r.error else NOT_STATED), _wrap(r.model),
                   _wrap(r.inputs), str(r.run_id), note)
                  for r, note in zip(rows.itertuples(index=False), notes)]
        fig.add_trace(go.Bar(
            # every run's trace in the legend: a hidden run's (visible False) is not listed, the shown one is
            y=y, x=saving, orientation="h", name="projected saving", legendgroup="projected", showlegend=True,
            visible=not spans,
            marker={"color": PROJECTED_COLOR, **noisy_bar_marker(flags)},
            error_x={"type": "data", "array": err, "visible": True, "color": "#333", "thickness": 1.2},
            text=[f"{s:.1f} ms · {st}" for s, (st, _) in zip(saving, status)], textposition="outside",
            cliponaxis=False, customdata=custom,
            hovertemplate="<b>%{customdata[0]}</b> (projected, not measured)<br>step %{customdata[1]} -> "
                          "%{customdata[2]} (%{customdata[3]}, saving %{customdata[4]}); e2e %{customdata[5]} -> "
                          "%{customdata[6]}<br>error: %{customdata[7]}<br>model: %{customdata[8]}<br>inputs: "
                          "%{customdata[9]}<br>%{customdata[10]}%{customdata[11]}<extra></extra>"))
        measured = _measured(rows)
        if np.isfinite(measured).any():
            m_saving = step - measured
            off = [f"projection off by {(p - m) / m * 100:+.1f} %" if m == m and m > 0 and p == p else "not measured"
                   for p, m in zip(projected, measured)]
            fig.add_trace(go.Bar(
                y=y, x=np.where(np.isfinite(measured), m_saving, np.nan), orientation="h", name="measured saving",
                legendgroup="measured", showlegend=True, visible=not spans, marker={"color": MEASURED_COLOR},
                text=[f"measured {s:.1f} ms" if m == m else "" for s, m in zip(m_saving, measured)],
                textposition="outside", cliponaxis=False,
                customdata=[(c[0], _ms(s), _ms(m), c[2], o, c[10], v)
                            for c, s, m, o, v in zip(custom, step, measured, off, _validating(rows))],
                hovertemplate="<b>%{customdata[0]}</b> (measured)<br>step %{customdata[1]} -> %{customdata[2]} "
                              "(projected %{customdata[3]}): %{customdata[4]}<br>%{customdata[5]}%{customdata[6]}"
                              "<extra></extra>"))
        spans.append((first, len(fig.data)))
        noisy = " (timed pass flagged noisy: hatched)" if any(flags) else ""
        layouts.append({
            "title.text": f"{escape(label)}: projected saving of the step ({_ms(step[0])}, "
                          f"{escape(str(rows['step_key'].iloc[0]))}) per option, with its stated error{noisy}",
            "yaxis.tickvals": y, "yaxis.ticktext": [f"{int(r)}. {escape(str(o))}" if r == r else escape(str(o))
                                                    for r, o in zip(rows["rank"].astype(float), rows["option"])],
            "yaxis.range": [n - 0.5, -0.5]})
    buttons = []
    for i, run_id in enumerate(run_ids):
        visible = [spans[i][0] <= t < spans[i][1] for t in range(len(fig.data))]
        label = str(ranked.loc[ranked["run_id"] == run_id, "label"].iloc[0])
        buttons.append({"label": label, "method": "update", "args": [{"visible": visible}, layouts[i]]})
    first = layouts[0]
    menus = ([{"type": "dropdown", "buttons": buttons, "active": 0, **MENU_POSITION}] if len(run_ids) > 1 else [])
    fig = style(fig, first["title.text"], barmode="group", height=max(450, 160 + 36 * rows_max),
                xaxis={"title": "step saving (ms per step, projected from the timed pass; bar: ± the stated error)",
                       "zeroline": True},
                yaxis={"tickmode": "array", "tickvals": first["yaxis.tickvals"],
                       "ticktext": first["yaxis.ticktext"], "range": first["yaxis.range"], "automargin": True},
                updatemenus=menus)
    return fig


VIEW = View("advice", "Advice",
            "Per run (dropdown), the optimisation opportunities mmchar advise ranks: each bar the projected saving of "
            "the denoiser / generator step (ms) under the option named on the left, with the projection's stated "
            "error (error bar and text: ±N % against committed runs, or unvalidated). Projections, not "
            "measurements: the hover holds the model and the inputs it read; where a run was measured under the "
            "option, the measured saving is drawn beside the projected one.",
            table="advice", figure=advice_figure, marked=True)
