"""The step timeline: one step's kernels in launch order, where the host gaps between them show."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mmchar.store import Run

from .steps import step_stage
from .tables import run_labels


def step_timeline(runs: Sequence[Run], max_runs: int = 12) -> pd.DataFrame:
    """Every kernel (every op with self time, on CPU runs) of one denoiser step (or a token model's first generator
    call), in launch order with its start relative to the step's first kernel: the step's timeline.

    Args:
        runs: loaded runs; the first ``max_runs`` that have a profiled step contribute (a page stays light).

    Returns:
        Columns ``run_id, label, stage, step, start_ms, dur_ms, op_class, attn_site, kernel, module_path``.
    """
    cols = ["run_id", "label", "stage", "step", "start_ms", "dur_ms", "op_class", "attn_site", "kernel",
            "module_path"]
    labels = run_labels(runs)
    parts = []
    for run in runs:
        if len(parts) >= max_runs:
            break
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        stage = step_stage(k)
        if stage is None:
            continue
        k = k[(k["stage"].astype(str) == stage) & (k["step"] >= 0)]
        if k.empty:
            continue
        k = k[k["step"] == k["step"].min()].sort_values("ts_us")
        t0 = float(k["ts_us"].iloc[0])
        parts.append(pd.DataFrame({
            "run_id": run.run_id, "label": labels[run.run_id], "stage": stage,
            "step": k["step"].astype(int).to_numpy(),
            "start_ms": (k["ts_us"].to_numpy(float) - t0) / 1e3, "dur_ms": k["dur_us"].to_numpy(float) / 1e3,
            "op_class": k["op_class"].astype(str).to_numpy(), "attn_site": k["attn_site"].astype(str).to_numpy(),
            "kernel": k["kernel"].astype(str).to_numpy(), "module_path": k["module_path"].astype(str).to_numpy()}))
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
