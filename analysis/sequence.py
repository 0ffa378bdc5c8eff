"""Sequence lengths: every attention call's shape, where a UNet's levels and cross attention's text tokens show,
and the score matrix an unfused kernel would have to hold."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pandas as pd

from mmchar.store import Run

from .tables import run_labels, with_kernels


_LEVEL = re.compile(r"(down_blocks|up_blocks)\.(\d+)|(mid_block)")


def _level(module_path: str) -> str:
    """A UNet's resolution level from a module path (``down.1``, ``mid``, ``up.2``), ``""`` outside a UNet."""
    m = _LEVEL.search(module_path)
    if not m:
        return ""
    return "mid" if m.group(3) else f"{m.group(1).removesuffix('_blocks')}.{m.group(2)}"


def sequence_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Every attention call of the profiled steps: batch, heads, query and key lengths, head dim, its UNet level,
    and the bytes an unfused score matrix (B·H·Sq·Skv in the run's dtype) would need.

    Returns:
        Columns ``run_id, label, workload, backend, stage, step, module_path, level, attn_site, batch, heads, q_len,
        kv_len, head_dim, score_bytes``; one row per call (its first kernel carries the call's FLOPs).
    """
    cols = ["run_id", "label", "workload", "backend", "stage", "step", "module_path", "level", "attn_site", "batch",
            "heads", "q_len", "kv_len", "head_dim", "score_bytes"]
    labels = run_labels(runs)
    rows = []
    for run, k in with_kernels(runs):
        elem = {"fp32": 4, "fp16": 2, "bf16": 2}.get((run.meta.get("config") or {}).get("dtype"), 2)
        calls = k[(k["op_class"].astype(str) == "attention") & k["flops"].notna()]
        for r in calls.itertuples(index=False):
            try:
                dims = json.loads(str(r.input_shapes))
                (b, h, sq, d), (_, _, skv, _) = dims[0][:4], dims[1][:4]
            except (ValueError, TypeError, IndexError):
                continue
            rows.append({"run_id": run.run_id, "label": labels[run.run_id], "workload": run.workload,
                         "backend": run.backend, "stage": str(r.stage),
                         "step": int(r.step), "module_path": str(r.module_path), "level": _level(str(r.module_path)),
                         "attn_site": str(r.attn_site), "batch": b, "heads": h, "q_len": sq, "kv_len": skv,
                         "head_dim": d, "score_bytes": float(b) * h * sq * skv * elem})
    return pd.DataFrame(rows, columns=cols)
