"""Which stage holds a run's steps: the denoiser's, or a token model's generator's (the module tree and the step
timeline both show one step)."""

from __future__ import annotations

import pandas as pd

from mmchar.schema import STEP_STAGES


def step_stage(kernels: pd.DataFrame) -> str | None:
    """The stage holding a run's steps: the denoiser, or a token model's generator; None for neither."""
    stages = set(kernels["stage"].astype(str))
    return next((s for s in STEP_STAGES if s in stages), None)
