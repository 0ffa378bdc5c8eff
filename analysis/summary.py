"""The few lines of shares a command prints after it writes a run (`profile`, `analyze`): computed here so the
terminal and the tables read one definition of a share (`mmchar.shares`); the CLI only prints them. Torch-free."""

from __future__ import annotations

import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.shares import share_line, time_shares

MIN_CLASS_SHARE = 0.001  # a trace's op classes below 0.1 % of its kernel time are left out of its summary line
TOP_OPS = 5  # aten ops named in a trace's summary


def step_rows(breakdown: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The stage a run's summary is about and its breakdown rows: the one whose steps the step views read
    (denoiser, or a token model's generator), or the whole breakdown, named "generation", where there is none."""
    name = next((s for s in STEP_STAGES if s in set(breakdown["stage"])), None)
    if name is None:
        return "generation", breakdown
    return name, breakdown[breakdown["stage"] == name]


def breakdown_lines(breakdown: pd.DataFrame) -> list[str]:
    """``denoiser op-class shares: ...`` and, where it spent time in attention, ``denoiser attention by site:
    ...`` of a run's breakdown (none for an empty one).

    The class shares sum the breakdown's stored shares (each of its stage's kernel time), so they read as the
    run's ``breakdown.csv`` does, largest first; the sites are shares of the stage's attention time, in the
    order of the site names.
    """
    name, rows = step_rows(breakdown)
    if rows.empty:
        return []
    lines = [f"{name} op-class shares: " + share_line(rows, "op_class")]
    attention = rows[rows["op_class"] == "attention"]
    if not attention.empty and attention["time_us"].sum() > 0:
        sites = time_shares(attention, ["attn_site"])
        sites = sites[sites["attn_site"].notna()].sort_values("attn_site", kind="stable")
        lines.append(f"{name} attention by site: " + ", ".join(
            f"{site} {share:.1%}" for site, share in zip(sites["attn_site"], sites["share"])))
    return lines


def kernel_lines(kernels: pd.DataFrame) -> list[str]:
    """``op-class shares: ...`` (classes of at least 0.1 % of the kernel time, largest first) and ``top aten ops:
    ...`` (the five that took longest, in ms) of a trace's kernel rows; none when they hold no time."""
    if not len(kernels) or not float(kernels["dur_us"].sum()) > 0:
        return []
    classes = share_line(time_shares(kernels, ["op_class"], time="dur_us"), "op_class", floor=MIN_CLASS_SHARE)
    top = kernels.groupby("aten_op", observed=True)["dur_us"].sum().sort_values(ascending=False).head(TOP_OPS)
    return ["op-class shares: " + classes,
            "top aten ops: " + ", ".join(f"{op or '(none)'} {t / 1e3:.2f} ms" for op, t in top.items())]
