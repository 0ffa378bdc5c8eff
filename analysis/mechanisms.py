"""Attention mechanisms side by side: softmax kernels, linear attention (linear, fla, WERSA), the gated
recurrences (mLSTM, RWKV-7) and local linear regression (LLA), each run's step latency, the share of the step its
attention (mixer) kernels take and the speedup over cuDNN in the same `mmchar compare` group; and, from
`mmchar bench-attn` tables, the sequence length from which each backend beats cuDNN.

A backend's kind is the registry's ``mechanism`` class attribute as the run recorded it (meta.json
``backend_mechanism``): the read side never imports the registry (it needs torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmchar.errors import MmcharError
from mmchar.schema import DEFAULT_LINEAR_BACKEND
from mmchar.store import Run

from .steps import step_class_shares
from .tables import _ids, comparison_table, is_noisy, runtime_modes, work_fields

# mmchar.backends.MECHANISMS (the registry's values; test_mechanisms checks the two agree) and OTHER: a run that
# recorded no mechanism but changed the maths
SOFTMAX, LINEAR, RECURRENCE, LOCAL_LINEAR, OTHER = "softmax", "linear attention", "recurrence", "local linear", "other"
KINDS = (SOFTMAX, LINEAR, RECURRENCE, LOCAL_LINEAR, OTHER)
REFERENCE = "cudnn"  # what every mechanism is measured against, where its group has a run of it

MECHANISM_COLUMNS = ("group", "run_id", "label", "workload", "preset", "device", "dtype", "height", "width", "frames",
                     "steps", "batch", "backend", "kind", "stage", "step_ms", "attention_share", "reference_backend",
                     "reference_run_id", "step_speedup")
BENCH_COLUMNS = ("device", "name", "b", "h", "sq", "skv", "d", "causal", "backend", "ms")
CROSSOVER_COLUMNS = ("device", "backend", "d", "causal", "crossover_s")


def run_kind(meta: dict[str, Any]) -> str:
    """The mechanism of the backend a run ran: the registry's ``mechanism`` as meta.json recorded it. Runs from
    before the field read as softmax, or ``other`` when ``backend_changes_math`` says the backend changed the
    maths (``runs.csv``'s ``changes_math``); that flag is also set for a softmax backend that replaced a model's
    own linear attention (SANA; ``math_changed_layers`` names those layers): that run's backend is still
    softmax."""
    recorded = meta.get("backend_mechanism")
    if recorded:
        return str(recorded)
    changes = bool(meta.get("backend_changes_math", False)) and not meta.get("math_changed_layers")
    return OTHER if changes else SOFTMAX


def _trusted(run: Run) -> bool:
    """A run whose step latency and shares the table may use: ok, not flagged by the noise guard, the eager
    model under no runtime mode on one device (as the findings' share questions: `sdpa+cuda-graphs` is a host
    saving, not an attention mechanism), its own linear layers (a projection backend's runs are the projections
    table's: `cudnn+fp8` is not an attention mechanism)."""
    work = work_fields(run)
    return (run.status == "ok" and is_noisy(run.meta) is not True and not runtime_modes(run.meta)
            and work["gpus"] == 1
            and (run.meta.get("linear_backend") or DEFAULT_LINEAR_BACKEND) == DEFAULT_LINEAR_BACKEND)


def step_attention_share(run: Run) -> tuple[str | None, float]:
    """(the stage holding the run's steps, attention's share of its kernel time): the denoiser's, or a token
    model's generator's; (None, NaN) without breakdown rows."""
    stage, shares = step_class_shares(run)
    if stage is None:
        return None, np.nan
    share = shares.get("attention", 0.0)
    return stage, share if share == share else 0.0  # a stage whose kernels took no time: no attention either


def mechanisms_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Each backend of each comparison group (`comparison_table`'s groups: one workload, preset, shape and device
    under several backends) with its step latency, attention's share of the step and its speedup over the group's
    cuDNN run (the group's baseline where it has none).

    Args:
        runs: loaded runs, any mix; only ok, one-device, eager runs of the model's own linear layers (dense) the
            noise guard did not flag take part.

    Returns:
        Columns ``group, run_id, label, workload, preset, device, dtype, height, width, frames, steps, batch,
        backend, kind, stage, step_ms, attention_share, reference_backend, reference_run_id, step_speedup``:
        ``step_ms`` = the median step of the timed pass (a denoiser step, a token model's generator step),
        ``attention_share`` = attention kernels' share of the step stage's kernel time (the full profile),
        ``kind`` = :func:`run_kind`, ``step_speedup`` = reference step / this step (> 1 is faster; NaN without a
        reference run). One row per run, each group together, its reference first.
    """
    columns = list(MECHANISM_COLUMNS)
    kept = [r for r in runs if _trusted(r)]
    by_id = {r.run_id: r for r in kept}
    cmp = comparison_table(kept)
    rows = []
    for group, part in cmp.groupby("group", sort=False, dropna=False):
        ref = part[part["backend"] == REFERENCE]
        if ref.empty:
            ref = part[part["is_baseline"]]
        ref_id = ref["run_id"].iloc[0] if len(ref) else None
        ref_ms = float(ref["denoiser_step_ms"].iloc[0]) if len(ref) else np.nan
        order = sorted(range(len(part)), key=lambda i: part["run_id"].iloc[i] != ref_id)  # stable: reference first
        for i in order:
            c = part.iloc[i]
            run = by_id[c["run_id"]]
            ids = _ids(run)
            stage, share = step_attention_share(run)
            ms = float(c["denoiser_step_ms"])
            rows.append({
                "group": group, "run_id": run.run_id, "label": c["label"], **{k: ids[k] for k in (
                    "workload", "preset", "device", "dtype", "height", "width", "frames", "steps", "batch")},
                "backend": c["backend"], "kind": run_kind(run.meta), "stage": stage, "step_ms": ms,
                "attention_share": share, "reference_backend": by_id[ref_id].backend if ref_id else None,
                "reference_run_id": ref_id, "step_speedup": ref_ms / ms if ms > 0 else np.nan})
    out = pd.DataFrame(rows, columns=columns)
    for col in ("step_ms", "attention_share", "step_speedup"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


# --- bench-attn: from which sequence length a backend beats cuDNN --------------------------------------------

def load_bench(paths: Iterable[str | PathLike[str]]) -> pd.DataFrame:
    """The rows of `mmchar bench-attn` tables, each path an ``attention.json`` or a folder holding one.

    Returns:
        Columns ``device, name, b, h, sq, skv, d, causal, backend, ms`` (``device``: the table's device name;
        ``ms`` NaN where the backend was not timed), the files' rows in order.

    Raises:
        MmcharError: a path that is neither, or a file that is not a bench-attn table.
    """
    frames = []
    for p in map(Path, paths):
        f = p / "attention.json" if p.is_dir() else p
        if not f.is_file():
            raise MmcharError(f"{p}: no bench-attn table (an attention.json, or a folder holding one: "
                              "`mmchar bench-attn -o DIR` writes it)")
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise MmcharError(f"{f}: not readable as JSON ({e})") from None
        rows = data.get("rows") if isinstance(data, dict) else None
        need = {"name", "sq", "d", "causal", "backend", "ms"}
        if not isinstance(rows, list) or any(not isinstance(r, dict) or not need <= set(r) for r in rows):
            raise MmcharError(f"{f}: not a bench-attn table (rows with {', '.join(sorted(need))})")
        df = pd.DataFrame(rows).reindex(columns=list(BENCH_COLUMNS))
        df["device"] = str((data.get("device") or {}).get("name") or "")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(BENCH_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    out["name"], out["backend"] = out["name"].astype(str), out["backend"].astype(str)
    out["causal"] = [c is True or str(c).lower() == "true" for c in out["causal"]]
    for col in ("b", "h", "sq", "skv", "d"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    out["ms"] = pd.to_numeric(out["ms"], errors="coerce").astype(float)
    return out


def crossovers(df: pd.DataFrame, backend: str, baseline: str = REFERENCE,
               margin: float = 0.0) -> dict[tuple[int, bool], int | None]:
    """Per (head dim, causal) of the sweep (rows named ``sweep ...``): the smallest S from which ``backend`` beats
    ``baseline`` at every longer S measured (None: never); a head dim where either was not timed is left out.
    ``margin``: a win is faster by more than this fraction (timing noise is no win)."""
    out: dict[tuple[int, bool], int | None] = {}
    sweep = df[df["name"].str.startswith("sweep")]
    for (causal, d), part in sweep.groupby(["causal", "d"]):
        t = part.pivot_table(index="sq", columns="backend", values="ms").sort_index()
        if backend not in t or baseline not in t:
            continue
        t = t[[backend, baseline]].dropna()
        wins = (t[backend] * (1 + margin) < t[baseline]).to_numpy()
        first = None
        for i in range(len(wins) - 1, -1, -1):  # the start of the final run of wins
            if not wins[i]:
                break
            first = int(t.index[i])
        out[(int(d), bool(causal))] = first
    return out


def crossover(df: pd.DataFrame, backend: str, baseline: str = REFERENCE) -> dict[str, int | None]:
    """:func:`crossovers` keyed as bench-attn's table prints them (``d=64``, ``d=128 causal``)."""
    return {f"d={d}{' causal' if causal else ''}": s for (d, causal), s in crossovers(df, backend, baseline).items()}


def crossover_table(bench: pd.DataFrame) -> pd.DataFrame:
    """From :func:`load_bench` rows: per device, backend (every one but cuDNN, its ``(eager)`` / ``(kernel)`` /
    ``(peer)`` rows included) and sweep head dim, the sequence length from which it beats cuDNN.

    Returns:
        Columns ``device, backend, d, causal, crossover_s`` (``crossover_s``: :func:`crossovers`, empty where it
        never does); only head dims where both were timed.
    """
    rows = []
    for device, part in bench.groupby("device", sort=False):
        for backend in part["backend"].unique():
            if backend == REFERENCE:
                continue
            for (d, causal), s in crossovers(part, backend).items():
                rows.append({"device": device, "backend": backend, "d": d, "causal": causal, "crossover_s": s})
    out = pd.DataFrame(rows, columns=list(CROSSOVER_COLUMNS))
    out["crossover_s"] = out["crossover_s"].astype("Int64")
    return out
