"""Which stage holds a run's steps: the denoiser's, or a token model's generator's (the module tree and the step
timeline both show one step), and each op class's share of that stage (the mechanisms and projections tables)."""

from __future__ import annotations

import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.shares import time_shares
from mmchar.store import Run


def step_stage(kernels: pd.DataFrame) -> str | None:
    """The stage holding a run's steps: the denoiser, or a token model's generator; None for neither."""
    stages = set(kernels["stage"].astype(str))
    return next((s for s in STEP_STAGES if s in stages), None)


def step_class_shares(run: Run) -> tuple[str | None, dict[str, float]]:
    """(the stage holding the run's steps, each op class's share of its kernel time in the breakdown:
    ``mmchar.shares.time_shares``); (None, {}) without breakdown rows of a step stage. A class that did not run
    is absent (its share is 0); a share is NaN where the stage's kernels took no time."""
    bd = run.breakdown
    if bd is None or bd.empty:
        return None, {}
    stage = step_stage(bd)
    if stage is None:
        return None, {}
    shares = time_shares(bd[bd["stage"].astype(str) == stage], ["op_class"])
    return stage, {str(c): float(s) for c, s in zip(shares["op_class"].astype(str), shares["share"])}
