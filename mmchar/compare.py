"""compare: one workload under several attention backends, timed, and its outputs checked against the first."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mmchar.runner import Measurement, ProfileOptions, discard, measure_backends, store_outcome
from mmchar.schema import COMPARISONS_DIR
from mmchar.store import Run
from mmchar.target import Target

COSINE_MIN = 0.99  # final latents whose cosine similarity to the baseline's is lower are flagged as diverged


@dataclass
class Comparison:
    group: str
    runs: list[Run]
    table: pd.DataFrame
    table_path: Path


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float | bool]:
    """How two runs' outputs agree: max-abs difference and cosine similarity of final latents, or, for token
    ids, ``token_match``; every key always present (NaN where it does not apply).

    A token model's decoder input is token ids: a distance between ids means nothing, so those get
    ``token_match``, the fraction of positions holding the same token (agrees only at 1). Sampled tokens are
    chaotic: one flipped token changes every later one, so a low match says the backends' rounding differs,
    not by how much."""
    nan = float("nan")
    if reference.shape != other.shape:
        return {"max_abs_diff": nan, "cosine": nan, "token_match": nan, "agrees": False}
    if not reference.is_floating_point():
        match = float((reference.flatten() == other.flatten()).double().mean())
        return {"max_abs_diff": nan, "cosine": nan, "token_match": match, "agrees": match == 1.0}
    a, b = reference.double().flatten(), other.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else float(torch.equal(a, b))
    return {"max_abs_diff": float((a - b).abs().max()), "cosine": cos, "token_match": nan,
            "agrees": bool(cos >= COSINE_MIN)}


def compare(target: Target, backends: list[str], base: ProfileOptions, store: str | os.PathLike[str],
            config_hash_for: Any) -> Comparison:
    """Run ``target`` under each backend (the first is the baseline), timed passes interleaved; failures are stored.

    Args:
        target: the built pipeline (built once: every backend sees the same weights).
        backends: registry names, baseline first.
        base: measurement options (its backend is replaced by each of ``backends``).
        store: the run store.
        config_hash_for: ``options -> config hash``.
    """
    # the second and process in the name: two compares started in one second keep their tables apart
    group = (f"compare-{target.config.get('workload', target.name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
             f"-{os.getpid() % 100000:05d}")
    options = [dataclasses.replace(base, backend=b) for b in backends]
    outcomes = measure_backends(target, options)
    ref = outcomes[0].latents if isinstance(outcomes[0], Measurement) else None
    runs: list[Run] = []

    def finish(meta: dict[str, Any], latents: torch.Tensor | None) -> None:
        entry: dict[str, Any] = {"group": group, "backends": backends, "baseline_backend": backends[0],
                                 "baseline_run_id": runs[0].run_id if runs else meta["run_id"],
                                 "cosine_min": COSINE_MIN}
        if ref is not None and latents is not None:
            entry.update(agreement(ref, latents))
        meta["compare"] = entry

    try:
        for opt, outcome in zip(options, outcomes):
            runs.append(store_outcome(target, opt, outcome, store, config_hash_for(opt), finish=finish))
    finally:
        for outcome in outcomes:  # traces of runs that could not be stored
            discard(outcome)

    from mmchar.analysis import comparison_table  # analysis reads runs; compare has just written them

    table = comparison_table(runs)
    path = Path(store) / COMPARISONS_DIR / f"{group}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return Comparison(group=group, runs=runs, table=table, table_path=path)
