"""compare: one workload under several attention and/or projection backends, timed, and its outputs checked against
the first."""

from __future__ import annotations

import functools
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


def variant_name(options: ProfileOptions) -> str:
    """What a compare row is called: the attention backend, ``+`` the projection backend where that is not the
    model's own (the tables' `backend_label` reads the same from a stored run)."""
    from mmchar.analysis.tables import backend_label

    return backend_label({"backend": options.backend, "linear_backend": options.linear_backend})


def repeated(names: list[str]) -> list[str]:
    """The names given more than once (a compare runs each variant once: the CLI and `compare` refuse them)."""
    return sorted({n for n in names if names.count(n) > 1})


def compare(target: Target, variants: list[ProfileOptions], store: str | os.PathLike[str],
            config_hash_for: Any) -> Comparison:
    """Run ``target`` under each variant's backends (the first is the baseline), timed passes interleaved;
    failures are stored.

    Args:
        target: the built pipeline (built once: every variant sees the same weights).
        variants: how each run is measured: its attention backend and projection backend, baseline first.
        store: the run store.
        config_hash_for: ``options -> config hash``.
    """
    # the second and process in the name: two compares started in one second keep their tables apart
    group = (f"compare-{target.config.get('workload', target.name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
             f"-{os.getpid() % 100000:05d}")
    names = [variant_name(o) for o in variants]
    if twice := repeated(names):
        from mmchar.errors import InvalidParameterError

        raise InvalidParameterError(f"compare: variant {', '.join(twice)} given more than once (variants: "
                                    f"{', '.join(names)})")
    outcomes = measure_backends(target, variants)
    ref = outcomes[0].latents if isinstance(outcomes[0], Measurement) else None
    runs: list[Run] = []

    def finish(name: str, meta: dict[str, Any], latents: torch.Tensor | None) -> None:
        entry: dict[str, Any] = {"group": group, "backends": names, "baseline_backend": names[0],
                                 "baseline_run_id": runs[0].run_id if runs else meta["run_id"],
                                 "cosine_min": COSINE_MIN, "variant": name}
        if ref is not None and latents is not None:
            entry.update(agreement(ref, latents))
        meta["compare"] = entry

    try:
        for name, opt, outcome in zip(names, variants, outcomes):
            runs.append(store_outcome(target, opt, outcome, store, config_hash_for(opt),
                                      finish=functools.partial(finish, name)))
    finally:
        for outcome in outcomes:  # traces of runs that could not be stored
            discard(outcome)

    from mmchar.analysis import comparison_table  # analysis reads runs; compare has just written them

    table = comparison_table(runs)
    path = Path(store) / COMPARISONS_DIR / f"{group}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return Comparison(group=group, runs=runs, table=table, table_path=path)
