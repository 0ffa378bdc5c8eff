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
    g["share"] = shares_within(g, within, time=time, empty=empty)
    return g


def shares_within(groups: pd.DataFrame, within: Sequence[str] = (), *, time: str = "time_us",
                  empty: float = np.nan, sort: bool = False) -> np.ndarray:
    """Each row's ``time`` / the sum over its ``within`` group, for rows that are groups already (a breakdown's
    stage × class × site rows, which carry calls and FLOPs beside their time: :func:`time_shares` would drop
    them).

    Args:
        sort: number the ``within`` groups in sorted key order rather than first seen. pandas picks how it sums
            a group by that numbering (a plain sum where the numbers run in row order, a compensated one
            otherwise), which can move a share's last digit: a caller whose published numbers were made with
            sorted groups (the dashboard's attention sites) passes True, so they come out bit for bit as before.

    Returns:
        One share per row of ``groups``, in its order.
    """
    within = list(within)
    total = (groups.groupby(within, sort=sort, observed=True, dropna=False)[time].transform("sum") if within
             else pd.Series(groups[time].sum(), index=groups.index))
    return share_of(groups[time], total, empty)


def share_of(time: pd.Series | np.ndarray | float, total: pd.Series | np.ndarray | float,
             empty: float = np.nan) -> np.ndarray:
    """``time / total``, ``empty`` where the total has no time: the one ratio every share is, for a whole that is
    not the sum of the rows shown (a run's top kernels against all its kernels, a module against its stage).

    Returns:
        An array shaped like the broadcast of ``time`` and ``total``.
    """
    total = np.asarray(total, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, np.asarray(time, dtype=float) / np.where(total > 0, total, np.nan), empty)


def share_line(shares: pd.DataFrame, key: str, floor: float = 0.0) -> str:
    """``"gemm 41.2%, attention 30.1%, ..."``: a summary line of :func:`time_shares` output, largest first, groups
    below ``floor`` left out."""
    s = shares.groupby(key, sort=False, observed=True)["share"].sum().sort_values(ascending=False, kind="stable")
    return ", ".join(f"{k} {v:.1%}" for k, v in s.items() if v >= floor)
