"""Overview view: HTML cards summing up the runs on the page, and every failed run with its error.

Plain HTML rather than a figure: counts and messages read better as text. A failed run (OOM is a result, not a
crash) is listed here because it has no bars anywhere else.
"""

from __future__ import annotations

from html import escape

import pandas as pd


def _card(label: str, value: str, detail: str = "") -> str:
    return (f'<div class="card"><div class="card-label">{escape(label)}</div>'
            f'<div class="card-value">{escape(value)}</div><div class="card-detail">{escape(detail)}</div></div>')


def _names(col: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in col.dropna() if str(v)}))


def overview_html(runs: pd.DataFrame) -> str:
    """Summary cards and the failed-run list.

    Args:
        runs: ``analysis.tables.run_table`` output.

    Returns:
        An HTML fragment (escaped; safe to paste into the page).
    """
    statuses = runs["status"].value_counts()
    status_text = ", ".join(f"{n} {s}" for s, n in statuses.items())
    cards = "".join((
        _card("runs", str(len(runs)), status_text),
        _card("workloads", str(runs["workload"].nunique()), _names(runs["workload"])),
        _card("backends", str(runs["backend"].nunique()), _names(runs["backend"])),
        _card("device", _names(runs["device"]) or "—"),
    ))
    failed = runs[runs["status"] != "ok"]
    if failed.empty:
        failures = '<p class="ok">No failed runs.</p>'
    else:
        rows = "".join(f"<tr><td>{escape(str(r.run_id))}</td><td class=\"status-{escape(str(r.status))}\">"
                       f"{escape(str(r.status))}</td><td>{escape(str(r.error or ''))}</td></tr>"
                       for r in failed.itertuples())
        failures = (f'<h3>Failed runs ({len(failed)})</h3><table class="failed"><thead><tr><th>run</th>'
                    f"<th>status</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>")
    all_rows = "".join(
        "<tr>" + "".join(f"<td>{escape('' if pd.isna(v) else str(v))}</td>" for v in
                         (r.run_id, r.workload, r.preset, r.backend, r.status, r.height, r.width, r.frames,
                          r.steps, r.batch)) + "</tr>"
        for r in runs.itertuples())
    listing = ("<details><summary>All runs</summary><table><thead><tr>"
               + "".join(f"<th>{h}</th>" for h in ("run", "workload", "preset", "backend", "status", "height",
                                                  "width", "frames", "steps", "batch"))
               + f"</tr></thead><tbody>{all_rows}</tbody></table></details>")
    changed = sorted({str(b) for b in runs.loc[runs["changes_math"].astype(bool), "backend"]}) \
        if "changes_math" in runs else []
    notice = (f'<p class="notice">{escape(", ".join(changed))}: replace self-attention with other mathematics '
              "(cross attention keeps softmax). Their runs are a speed study on real shapes, not a quality claim."
              "</p>") if changed else ""
    return f'<div class="cards">{cards}</div>{notice}{failures}{listing}'
