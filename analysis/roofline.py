"""Roofline: where each op class of a run sits against the device's roofs. Rates come from kernel times and the
FLOPs / bytes recorded per kernel (docs/conventions.md formulas, so custom kernels count); roofs from each run's
meta.json (`mmchar calibrate`), so the analysis needs nothing but run stores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.store import Run

from .tables import _ids, run_labels, with_kernels

_DTYPE_ROOF = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def _roofs(run: Run) -> tuple[float, float]:
    """(matmul TFLOP/s of the run's dtype, copy GB/s), NaN where the device was never calibrated."""
    roofs = run.meta.get("roofs") or {}
    dtype = (run.meta.get("config") or {}).get("dtype") or "bf16"
    peak = (roofs.get("matmul_tflops") or {}).get(_DTYPE_ROOF.get(dtype, dtype), np.nan)
    return float(peak if peak is not None else np.nan), float(roofs.get("copy_gbps") or np.nan)


def roofline_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run × stage × op class: FLOPs and bytes of the kernels that have them, achieved rates, arithmetic
    intensity, the attainable rate under the run's roofs (min(peak, intensity × bandwidth)) and the share of it
    achieved.

    Returns:
        Columns ``run_id, label, workload, backend, device, stage, op_class, time_us, flops, bytes, tflops, gbps,
        intensity, roof_tflops, roof_gbps, attainable_tflops, pct_of_attainable`` (``label``: the run's short name,
        :func:`~mmchar.analysis.tables.run_labels`); op classes with no FLOPs and no bytes recorded are left out.
    """
    cols = ["run_id", "label", "workload", "backend", "device", "stage", "op_class", "time_us", "flops", "bytes",
            "tflops", "gbps", "intensity", "roof_tflops", "roof_gbps", "attainable_tflops", "pct_of_attainable"]
    labels = run_labels(runs)
    parts = []
    for run, k in with_kernels(runs):
        # an op's cost sits on its first kernel (attribution costs each op once); its other kernels (a conv's
        # transform, a split-K reduction, every kernel of an attention scope) share the time, so the time is
        # every kernel of a costed aten op, and every attention kernel (scopes are costed whole). Matched by op
        # name, not op instance: an instance whose shapes had no cost still adds its time (a lower rate, never
        # one above the roof)
        costed = k["flops"].notna() | k["bytes"].notna()
        ops = set(k.loc[costed, "aten_op"]) - {""}
        k = k[costed | (k["op_class"] == "attention") | k["aten_op"].isin(ops)]
        if not costed.any():
            continue
        g = k.groupby(["stage", "op_class"], observed=True).agg(
            time_us=("dur_us", "sum"), flops=("flops", "sum"), bytes=("bytes", "sum")).reset_index()
        g = g[(g["flops"] > 0) | (g["bytes"] > 0)]  # attention kernels of a run whose scopes carry no cost
        peak, bw = _roofs(run)
        ids = _ids(run, labels[run.run_id])
        for col in ("run_id", "label", "workload", "backend", "device"):
            g[col] = ids[col]
        sec = g["time_us"] * 1e-6
        g["tflops"] = g["flops"] / sec / 1e12
        g["gbps"] = g["bytes"] / sec / 1e9
        g["intensity"] = g["flops"] / g["bytes"].where(g["bytes"] > 0)
        g["roof_tflops"], g["roof_gbps"] = peak, bw
        g["attainable_tflops"] = np.minimum(peak, g["intensity"] * bw / 1e3)
        g["pct_of_attainable"] = g["tflops"] / g["attainable_tflops"] * 100
        parts.append(g[cols])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
