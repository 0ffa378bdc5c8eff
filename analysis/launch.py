"""Launch-bound stages: a stage whose GPU idles while its kernels are short waits on the host (Python, kernel
launches), and a faster kernel would not make it faster."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.store import Run

from .tables import _ids, run_labels


def launch_table(runs: Sequence[Run], short_us: float = 10.0) -> pd.DataFrame:
    """Per run × stage: wall, busy and idle time of one call (meta's busy table: the light profile against the
    timed pass), kernels per call, median kernel length and the share of kernels shorter than ``short_us`` from the
    full profile: a stage whose GPU idles while its kernels are short is launch-bound.

    Returns:
        Columns ``run_id, label, workload, backend, device, stage, wall_ms, busy_ms, idle_ms, busy_frac,
        kernels_per_call, median_kernel_us, short_kernel_share``.
    """
    cols = ["run_id", "label", "workload", "backend", "device", "stage", "wall_ms", "busy_ms", "idle_ms",
            "busy_frac", "kernels_per_call", "median_kernel_us", "short_kernel_share"]
    labels = run_labels(runs)
    rows = []
    for run in runs:
        if run.status != "ok":
            continue
        ids = _ids(run, labels[run.run_id])
        k = run.kernels if run.kernels is not None else pd.DataFrame(columns=["stage", "dur_us"])
        for key, b in (run.meta.get("busy") or {}).items():
            stage = key.removesuffix("_step") if key.endswith("_step") else key
            stage = "generator" if key == "generator_prefill" else stage
            durs = k.loc[k["stage"].astype(str) == stage, "dur_us"]
            rows.append({**{c: ids[c] for c in ("run_id", "label", "workload", "backend", "device")}, "stage": key,
                         "wall_ms": b.get("wall_ms"), "busy_ms": b.get("busy_ms"), "idle_ms": b.get("idle_ms"),
                         "busy_frac": b.get("busy_frac"), "kernels_per_call": b.get("kernels"),
                         "median_kernel_us": float(durs.median()) if len(durs) else np.nan,
                         "short_kernel_share": float((durs < short_us).mean()) if len(durs) else np.nan})
    return pd.DataFrame(rows, columns=cols)
