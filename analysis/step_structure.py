"""How a generation's step stage is built: which model ran each step (Wan 2.2 A14B's two experts, switched at a
timestep boundary) and how classifier-free guidance reached it (one batch of 2, two calls a step, or none). Both
decide what a "step" costs before any kernel does: two calls a step doubles the launches of a batch-of-2 step at
the same FLOPs, and an expert split keeps two full models resident for the compute of one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.shares import share_of
from mmchar.store import Run

from .tables import _ids, run_labels, with_kernels

COLUMNS = ["run_id", "label", "workload", "backend", "device", "guidance_scale", "guidance_mode", "calls_per_step",
           "denoiser_batch", "component", "steps", "profiled_steps", "kernel_ms_per_step", "kernel_ms_per_call",
           "attention_share", "gemm_share"]
OUTSIDE = "(outside modules)"  # step-stage kernels no module range encloses (guidance arithmetic, casts)
REPLAY = "(CUDA graph replay)"  # a --cuda-graphs run's replayed kernels: no module range opens during a replay


def _timed_steps(meta: dict[str, Any], components: list[str]) -> dict[str, int | None]:
    """Steps each model ran in the timed generation: the run's record where several did, else all of them; None
    for the unnamed rows (their kernels run in every step, between the models' calls)."""
    record = meta.get("step_components") or {}
    named = [c for c in components if c not in (OUTSIDE, REPLAY)]
    if record.get("counts"):
        return {c: (int(record["counts"].get(c, 0)) if c in named else None) for c in components}
    steps = ((meta.get("config") or {}).get("params") or {}).get("steps")
    return {c: (int(steps) if steps is not None and len(named) == 1 and c in named else None) for c in components}


def _per_call(kernels: pd.DataFrame, profiled: int) -> str | None:
    """Kernel ms per profiled step of each call of the step (" / "-joined in call order); None for one call."""
    called = kernels[kernels["call"] >= 0]  # every table has the column (`with_kernels`): -1 where not recorded
    if called["call"].nunique() < 2 or not profiled:
        return None
    ms = called.groupby("call")["dur_us"].sum() / 1000.0 / profiled
    return " / ".join(f"{v:.1f}" for v in ms)


def step_structure_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run × step-stage component (the module tree's root: ``transformer``, ``transformer_2``, ``unet``).

    ``steps`` counts the component's steps in the timed generation (None for the unnamed rows); ``kernel_ms_per_step``
    is its kernel time in the full profile over the profiled steps it ran (``profiled_steps``; a model that ran no
    profiled step has a row with 0 and no time), with its attention and gemm shares. ``kernel_ms_per_call``: where a
    step made several calls of the model (guidance as two calls), the same time per call in call order ("4373.1 /
    4373.2": conditional, then unconditional in diffusers' pipelines), so a branch that costs more (a longer
    negative prompt) shows; blank for one call a step and for runs that did not record calls. The guidance columns
    come from the run's ``guidance`` record (seen in the warm-up: the calls a step made and the leading batch of
    each), blank for runs made before it was recorded.
    """
    labels = run_labels(runs)
    rows = []
    for run, k in with_kernels(runs):
        k = k[k["stage"].astype(str).isin(STEP_STAGES) & (k["step"] >= 0)]
        if k.empty:
            continue
        outside = REPLAY if (run.meta.get("options") or {}).get("cuda_graphs") else OUTSIDE
        root = k["module_path"].astype(str).str.split(".").str[0].replace("", outside)
        guidance = run.meta.get("guidance") or {}
        ids = _ids(run, labels[run.run_id])
        # every model that ran steps has a row, profiled or not (Wan 2.2's second expert when only the first
        # expert's steps were profiled: 0 profiled steps, no kernel time)
        ran = list(((run.meta.get("step_components") or {}).get("counts") or {}))
        components = list(dict.fromkeys([*root, *ran]))
        timed = _timed_steps(run.meta, components)
        for component in components:
            mine = k[root == component]
            total = float(mine["dur_us"].sum())
            profiled = int(mine["step"].nunique())
            by_class = mine.groupby(mine["op_class"].astype(str))["dur_us"].sum()
            rows.append({
                **{c: ids[c] for c in ("run_id", "label", "workload", "backend", "device")},
                "guidance_scale": guidance.get("scale"), "guidance_mode": guidance.get("mode"),
                "calls_per_step": guidance.get("denoiser_calls_per_step"),
                "denoiser_batch": guidance.get("denoiser_batch"),
                "component": component, "steps": timed.get(component), "profiled_steps": profiled,
                "kernel_ms_per_step": total / 1000.0 / profiled if profiled else None,
                "kernel_ms_per_call": _per_call(mine, profiled),
                "attention_share": float(share_of(by_class.get("attention", 0.0), total)) if total else None,
                "gemm_share": float(share_of(by_class.get("gemm", 0.0), total)) if total else None,
            })
    return pd.DataFrame(rows, columns=COLUMNS)
