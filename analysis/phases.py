"""The prefill/decode analogy: the step stage's gemm and attention per phase, so a diffusion step, an
autoregressive model's prefill and its decode steps can be set side by side by arithmetic intensity."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.store import Run

from .tables import with_kernels


def _phase(stage: str, step: int, phased: bool, kernel_phase: str) -> str:
    if kernel_phase:  # a training trace's backward pass (`mmchar analyze`)
        return kernel_phase
    if stage == "generator" and phased:
        return "prefill" if step == 0 else "decode"
    return "step" if stage in STEP_STAGES else "once"


def phase_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The prefill/decode analogy: per run × phase × op class (gemm and attention) of the step stage, FLOPs, bytes,
    arithmetic intensity and achieved TFLOP/s. A diffusion denoiser's phase is ``step``; an autoregressive
    generator's step 0 is ``prefill`` and its other steps ``decode``; a masked generator's are ``step``; the work
    of a training trace's backward pass is ``backward`` (the kernels' ``phase``).

    Returns:
        Columns ``run_id, workload, backend, paradigm_stage, phase, op_class, time_us, flops, bytes, intensity,
        tflops``.
    """
    cols = ["run_id", "workload", "backend", "paradigm_stage", "phase", "op_class", "time_us", "flops", "bytes",
            "intensity", "tflops"]
    parts = []
    for run, k in with_kernels(runs):
        k = k[k["stage"].astype(str).isin(STEP_STAGES) & k["op_class"].astype(str).isin(["gemm", "attention"])]
        if k.empty:
            continue
        phased = "generator_decode" in (run.meta.get("timings") or {})
        k = k.assign(phase=[_phase(str(s), int(t), phased, str(b))
                            for s, t, b in zip(k["stage"], k["step"], k["phase"])])
        g = k.groupby(["stage", "phase", "op_class"], observed=True).agg(
            time_us=("dur_us", "sum"), flops=("flops", "sum"), bytes=("bytes", "sum")).reset_index()
        g = g.rename(columns={"stage": "paradigm_stage"})
        g["run_id"], g["workload"], g["backend"] = run.run_id, run.workload, run.backend
        g["intensity"] = g["flops"] / g["bytes"].where(g["bytes"] > 0)
        g["tflops"] = g["flops"] / (g["time_us"] * 1e-6) / 1e12
        parts.append(g[cols])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
