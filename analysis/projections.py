"""Projection backends side by side (docs/conventions.md, "Projection backends"): per workload, the step latency
under each backend of the generating model's linear layers (`dense`, the model's own; `fp8`; `memoryformer`'s
hashed tables ...), the share of the step its gemm and memory kernels take, what the backend replaced and holds,
and its speedup over the same configuration's dense run. A run that ran out of memory is a result: it stays, with
its status and whatever it recorded.

A run's projection backend is meta.json ``linear_backend`` (runs from before it: ``dense``); the read side never
imports the registry (it needs torch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmchar.schema import DEFAULT_LINEAR_BACKEND
from mmchar.store import Run

from .steps import step_class_shares
from .tables import _busy_ms, _ids, _median_ms, _step, backend_label, run_labels, work_fields, work_key

DENSE = DEFAULT_LINEAR_BACKEND
GB = 1e9  # state bytes are reported in GB (10^9 bytes), as the results' READMEs write them

PROJECTION_COLUMNS = ("group", "run_id", "label", "workload", "preset", "device", "dtype", "height", "width",
                      "frames", "steps", "batch", "backend", "linear_backend", "linear_scope", "linear_op_class",
                      "variant", "status", "noisy", "error", "stage", "step_ms", "step_busy_ms", "busy_frac",
                      "gemm_share", "memory_share", "attention_share", "layers_replaced", "layers_unsupported",
                      "state_gb", "state_needed_gb", "reference_run_id", "step_speedup", "busy_speedup", "agreement_baseline",
                      "max_abs_diff", "cosine", "agrees")


def linear_backend(meta: dict[str, Any]) -> str:
    """The projection backend a run's linear layers ran under (``dense`` for runs recorded before the key)."""
    return str(meta.get("linear_backend") or DENSE)


def _group_of(run: Run, baselines: dict[str, str]) -> str | tuple:
    """A run's group: its `mmchar compare` group (``comparison_table``'s: a baseline whose own meta names none
    joins the group that names it; ``baselines``: run id -> group), else every run of the same work and resolved
    configuration apart from the attention backend, the projection backend and its scope (separate
    `mmchar profile --linear-backend` runs)."""
    cmp = run.meta.get("compare") or {}
    if cmp.get("group"):
        return str(cmp["group"])
    if run.run_id in baselines:
        return baselines[run.run_id]
    config = json.dumps(run.meta.get("config") or {}, sort_keys=True, default=str)
    return work_key(run, without=("backend", "linear_scope", "config_hash")), config


def _reference(members: list[Run], attention: str) -> Run | None:
    """The dense run a group's runs under ``attention`` are measured against: the compare's baseline where it is
    one, else the newest ok one."""
    dense = [r for r in members if r.meta.get("backend") == attention and linear_backend(r.meta) == DENSE
             and r.status == "ok"]
    if not dense:
        return None
    baselines = {(r.meta.get("compare") or {}).get("baseline_run_id") for r in members}
    return next((r for r in dense if r.run_id in baselines),
                max(dense, key=lambda r: (r.meta.get("created") or "", r.run_id)))


def _busy_frac(meta: dict[str, Any], key: str) -> float:
    """The light profile's busy fraction of a step's wall time as the run recorded it (NaN where it did not)."""
    value = ((meta.get("busy") or {}).get(key) or {}).get("busy_frac")
    return float(value) if value is not None else np.nan


def _layers(meta: dict[str, Any], linear: str) -> tuple[Any, Any, float, float]:
    """(layers the backend ran, layers in scope it refused, its state in GB as built, as planned): 0, 0, 0, 0
    under dense; NA / NaN where the run did not record them (a run that failed before the swap's first call; the
    planned state from runs recorded before it existed). A failed run's built state is what it drew so far."""
    if linear == DENSE:
        return 0, 0, 0.0, 0.0
    per_layer = meta.get("linear_backend_per_layer")
    replaced = sum(1 for b in per_layer.values() if b == linear) if per_layer else pd.NA
    unsupported = len(meta.get("linear_unsupported") or {}) if per_layer else pd.NA
    total, planned = meta.get("linear_state_bytes_total"), meta.get("linear_state_bytes_planned")
    return (replaced, unsupported, float(total) / GB if total is not None else np.nan,
            float(planned) / GB if planned is not None else np.nan)


def projections_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Each run of a projection backend other than ``dense``, and the dense runs it is measured against (the
    group's dense runs under the same attention backend; groups of dense runs only are `mechanisms`' business and
    give no rows), with its step latency, its gemm and memory shares of the step, what its backend replaced and
    holds, and its speedup over the group's dense run under the same attention backend.

    Groups are `mmchar compare` groups (as ``comparison_table`` groups runs), and, for runs outside one, the runs
    of equal work and resolved configuration apart from the attention and projection backends and the linear
    scope (`mmchar profile --linear-backend` runs of one configuration).

    Args:
        runs: loaded runs, any status: a run that ran out of memory (status ``oom``) or failed (``error``) is a
            row with its status, error and NaN measures. Noisy runs stay, marked (``noisy``).

    Returns:
        Columns ``group, run_id, label, workload, preset, device, dtype, height, width, frames, steps, batch,
        backend, linear_backend, linear_scope, linear_op_class, variant, status, noisy, error, stage, step_ms,
        step_busy_ms, busy_frac, gemm_share, memory_share, attention_share, layers_replaced, layers_unsupported,
        state_gb, state_needed_gb, reference_run_id, step_speedup, busy_speedup, agreement_baseline, max_abs_diff, cosine, agrees``:
        ``backend`` = the attention backend, ``variant`` = both as compare names them (``cudnn+fp8``),
        ``linear_scope`` = the layers replaced (empty under dense), ``step_ms`` = the median step of the timed
        pass (comparison's ``denoiser_step_ms``), ``step_busy_ms`` = its GPU-busy time (light profile) and ``busy_frac``
        its fraction of the step's wall time (below 1: the host holds the step up), the shares
        = each class's share of the step stage's kernel time (full profile), ``layers_replaced`` = linear layers
        the backend ran, ``layers_unsupported`` = those in scope it refused (they ran dense), ``state_gb`` = its
        per-layer state beside the model's weights (fp8's quantised weights, memoryformer's tables; 0 under dense;
        NaN where not recorded; a failed run's: what it drew before failing), ``state_needed_gb`` = that state
        over every layer the backend was routed, as planned before any was built (an OOM's size), ``step_speedup`` / ``busy_speedup`` = the dense reference's / this run's (> 1 is
        faster; NaN without a reference or a timed pass), ``max_abs_diff, cosine, agrees`` = the output agreement
        compare recorded against ``agreement_baseline`` (its first variant, normally the dense run). One row per
        run, each group together, each attention backend's dense run first.
    """
    columns = list(PROJECTION_COLUMNS)
    baselines = {str(c["baseline_run_id"]): str(c["group"]) for r in runs
                 if (c := r.meta.get("compare") or {}).get("group") and c.get("baseline_run_id")}
    grouped: dict[str | tuple, list[Run]] = {}
    for r in runs:
        grouped.setdefault(_group_of(r, baselines), []).append(r)
    groups = {}
    for key, members in grouped.items():
        # the attention backends a non-dense variant ran under: a dense run under another is nobody's reference
        varied = {str(r.meta.get("backend")) for r in members if linear_backend(r.meta) != DENSE}
        if varied:
            groups[key] = [r for r in members if str(r.meta.get("backend")) in varied]
    labels = run_labels([r for m in groups.values() for r in m])
    rows = []
    for key, members in groups.items():
        group = key if isinstance(key, str) else f"runs-{members[0].run_id}"
        attention = list(dict.fromkeys(str(r.meta.get("backend")) for r in members))
        refs = {a: _reference(members, a) for a in attention}

        def order(i: int) -> tuple:
            r = members[i]
            names = (r.meta.get("compare") or {}).get("backends") or []
            variant = backend_label(r.meta)
            return (attention.index(str(r.meta.get("backend"))), r is not refs[str(r.meta.get("backend"))],
                    linear_backend(r.meta) != DENSE, names.index(variant) if variant in names else len(names), i)

        for i in sorted(range(len(members)), key=order):
            run = members[i]
            ids = _ids(run)
            linear = linear_backend(run.meta)
            ref = refs[str(run.meta.get("backend"))]
            stage, shares = step_class_shares(run) if run.status == "ok" else (None, {})
            ms, busy = (_median_ms(run.meta, _step(run)), _busy_ms(run.meta, _step(run))) if run.status == "ok" \
                else (np.nan, np.nan)
            ref_ms, ref_busy = (_median_ms(ref.meta, _step(ref)), _busy_ms(ref.meta, _step(ref))) if ref \
                else (np.nan, np.nan)
            replaced, unsupported, state, needed = _layers(run.meta, linear)
            cmp = run.meta.get("compare") or {}

            def share(op_class: str) -> float:
                return shares.get(op_class, 0.0) if stage is not None else np.nan

            rows.append({
                "group": group, "run_id": run.run_id, "label": labels[run.run_id], **{k: ids[k] for k in (
                    "workload", "preset", "device", "dtype", "height", "width", "frames", "steps", "batch")},
                "backend": run.meta.get("backend"), "linear_backend": linear,
                "linear_scope": work_fields(run)["linear_scope"],
                "linear_op_class": run.meta.get("linear_op_class") or ("gemm" if linear == DENSE else None),
                "variant": backend_label(run.meta), "status": run.status, "noisy": ids["noisy"],
                "error": run.meta.get("error"), "stage": stage, "step_ms": ms, "step_busy_ms": busy,
                "busy_frac": _busy_frac(run.meta, _step(run)) if run.status == "ok" else np.nan,
                "gemm_share": share("gemm"), "memory_share": share("memory"), "attention_share": share("attention"),
                "layers_replaced": replaced, "layers_unsupported": unsupported, "state_gb": state,
                "state_needed_gb": needed,
                "reference_run_id": ref.run_id if ref else None,
                "step_speedup": ref_ms / ms if ms > 0 else np.nan,
                "busy_speedup": ref_busy / busy if busy > 0 else np.nan,
                "agreement_baseline": cmp.get("baseline_backend") if "cosine" in cmp or "token_match" in cmp else None,
                "max_abs_diff": cmp.get("max_abs_diff", np.nan), "cosine": cmp.get("cosine", np.nan),
                "agrees": cmp.get("agrees")})
    out = pd.DataFrame(rows, columns=columns)
    for col in ("step_ms", "step_busy_ms", "busy_frac", "gemm_share", "memory_share", "attention_share", "state_gb",
                "state_needed_gb", "step_speedup", "busy_speedup", "max_abs_diff", "cosine"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for col in ("layers_replaced", "layers_unsupported"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    out["agrees"] = out["agrees"].astype("boolean")  # NA where compare did not check (a failed run)
    return out
