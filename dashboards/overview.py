"""Overview view: HTML cards summing up the runs on the page, every failed run with its error, and every run whose
timed pass the noise guard flagged, with its reasons.

Plain HTML rather than a figure: counts and messages read better as text. A failed run (OOM is a result, not a
crash) is listed here because it has no bars anywhere else; a noisy run is listed because its bars elsewhere look
like any other run's (they are only hatched), and its latencies are not results.
"""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd

from .palette import noisy_flags

# the all-runs listing: (column of run_table, heading)
LISTING = (("label", "label"), ("run_id", "run"), ("workload", "workload"), ("preset", "preset"),
           ("backend", "backend"), ("device", "device"), ("dtype", "dtype"), ("status", "status"),
           ("noisy", "noisy"), ("height", "height"), ("width", "width"), ("frames", "frames"), ("steps", "steps"),
           ("batch", "batch"))


def _card(label: str, value: str, detail: str = "") -> str:
    return (f'<div class="card"><div class="card-label">{escape(label)}</div>'
            f'<div class="card-value">{escape(value)}</div><div class="card-detail">{escape(detail)}</div></div>')


def _names(col: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in col.dropna() if str(v)}))


def _cell(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "<td></td>"
    if isinstance(value, (bool, np.bool_)):  # the noise guard's verdict
        return '<td class="noisy">yes</td>' if value else "<td>no</td>"
    return f"<td>{escape(str(value))}</td>"


def _table(css: str, headings: tuple[str, ...], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _noise_card(runs: pd.DataFrame, flags: list[bool]) -> str:
    """How many runs the noise guard flagged, of how many it judged (older runs and failed runs carry no verdict)."""
    judged = int(runs["noisy"].notna().sum()) if "noisy" in runs else 0
    detail = (f"of {judged} judged by the noise guard" if judged else "no run carries the noise guard's verdict")
    if judged < len(runs):
        detail += f"; {len(runs) - judged} without a verdict"
    return _card("noisy", str(sum(flags)), detail)


def _noisy_list(runs: pd.DataFrame, flags: list[bool]) -> str:
    noisy = runs[flags]
    if noisy.empty:
        return ""
    rows = [f"<tr>{_cell(r.label)}{_cell(r.run_id)}{_cell(r.noise or 'flagged by the noise guard')}</tr>"
            for r in noisy.itertuples()]
    return (f"<h3>Noisy runs ({len(noisy)}): their latencies are not results</h3>"
            + _table("noisy", ("label", "run", "why the noise guard flagged it"), rows))


def overview_html(runs: pd.DataFrame) -> str:
    """Summary cards, the failed-run list, the noisy-run list and every run.

    Args:
        runs: ``analysis.tables.run_table`` output.

    Returns:
        An HTML fragment (escaped; safe to paste into the page).
    """
    statuses = runs["status"].value_counts()
    status_text = ", ".join(f"{n} {s}" for s, n in statuses.items())
    flags = noisy_flags(runs)
    cards = "".join((
        _card("runs", str(len(runs)), status_text),
        _card("workloads", str(runs["workload"].nunique()), _names(runs["workload"])),
        _card("backends", str(runs["backend"].nunique()), _names(runs["backend"])),
        _card("device", _names(runs["device"]) or "—"),
        _noise_card(runs, flags),
    ))
    failed = runs[runs["status"] != "ok"]
    if failed.empty:
        failures = '<p class="ok">No failed runs.</p>'
    else:
        rows = [f"<tr>{_cell(r.label)}{_cell(r.run_id)}<td class=\"status-{escape(str(r.status))}\">"
                f"{escape(str(r.status))}</td>{_cell(r.error or '')}</tr>" for r in failed.itertuples()]
        failures = f"<h3>Failed runs ({len(failed)})</h3>" + _table("failed", ("label", "run", "status", "error"), rows)
    all_rows = ["<tr>" + "".join(_cell(v) for v in r) + "</tr>"
                for r in runs.reindex(columns=[c for c, _ in LISTING]).itertuples(index=False)]
    listing = ("<details><summary>All runs</summary>"
               + _table("runs", tuple(h for _, h in LISTING), all_rows)
               + "</details>")
    changed = sorted({str(b) for b in runs.loc[runs["changes_math"].astype(bool), "backend"]}) \
        if "changes_math" in runs else []
    notice = (f'<p class="notice">{escape(", ".join(changed))}: replace self-attention with other mathematics '
              "(cross attention keeps softmax). Their runs are a speed study on real shapes, not a quality claim."
              "</p>") if changed else ""
    return f'<div class="cards">{cards}</div>{notice}{failures}{_noisy_list(runs, flags)}{listing}'
