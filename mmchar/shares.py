"""What a share is, computed in one place (docs/conventions.md, "Shares"): a group's kernel time divided by the
kernel time of the whole it belongs to (a class within its stage, a site within the stage's attention, a kernel
within its run). Idle time is never in the denominator. Torch-free: attribution, analysis, the dashboard and the
CLI's summaries all call it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def time_shares(frame: pd.DataFrame, by: Sequence[str], within: Sequence[str] = (), *, time: str = "time_us",
                empty: float = np.nan) -> pd.DataFrame:
    """``time`` summed per ``by`` group, with ``share`` = that sum / the sum over its ``within`` group.

    Args:
        frame: rows with the ``by`` columns and a ``time`` column (kernel rows, breakdown rows ...).
        by: the groups to report, in first-seen order.
        within: the columns of ``by`` that name the whole each share is of (``()``: the whole frame).
        time: the column that holds the time.
        empty: the share of a group whose whole has no time (attribution writes 0.0, analyses NaN).

    Returns:
        The ``by`` columns, ``time`` (summed) and ``share``.
    """
    by, within = list(by), list(within)
    if not set(within) <= set(by):
        raise ValueError(f"within {within} must be among by {by}")
    g = frame.groupby(by, sort=False, observed=True, dropna=False)[time].sum().reset_index()
    total = (g.groupby(within, sort=False, observed=True, dropna=False)[time].transform("sum") if within
             else pd.Series(g[time].sum(), index=g.index))
    g["share"] = np.where(total > 0, g[time] / total.where(total > 0), empty)
    return g


def share_line(shares: pd.DataFrame, key: str, floor: float = 0.0) -> str:
    """``"gemm 41.2%, attention 30.1%, ..."``: a summary line of :func:`time_shares` output, largest first, groups
    below ``floor`` left out."""
    s = shares.groupby(key, sort=False, observed=True)["share"].sum().sort_values(ascending=False, kind="stable")
    return ", ".join(f"{k} {v:.1%}" for k, v in s.items() if v >= floor)
