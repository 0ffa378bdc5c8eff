"""Routed mixture-of-experts layers, part by part: what the routing costs beside the experts, and how evenly the
routed experts' time is spread (HiDream-I1's four routed experts, top-2, and a shared expert per layer).

Each kernel under a MoE layer (``meta["moe_layers"]``, `mmchar.routing`) carries its part from its module path:
``routing`` (op class ``routing``: the gate, token dispatch and combine), ``expert <i>`` (under the experts container
``experts.<i>``: the i-th routed expert of every layer, summed over layers), ``shared`` (a shared expert: under a child
that holds one expert, ``shared_experts``), ``experts`` (a fused container's own compute, no per-expert module).
Random weights route tokens as an untrained gate does, so the balance across experts is the structure's, not the
trained model's: read ``load_vs_mean`` as what routing costs when the load is near-uniform.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.shares import shares_within
from mmchar.store import Run

from .tables import _ids, run_labels, with_kernels

COLUMNS = ["run_id", "label", "workload", "backend", "device", "moe_layers", "part", "time_us", "ms_per_step",
           "share", "calls", "load_vs_mean"]
_INDEX = re.compile(r"^\d+$")


def _part(rest: str, op_class: str, containers: set[str]) -> str:
    """The part of a MoE layer a kernel belongs to, from its module path below the layer (``""`` for the layer's
    own forward) and its op class."""
    if op_class == "routing":
        return "routing"
    child, _, below = rest.partition(".")
    if child in containers:
        index = below.partition(".")[0]
        return f"expert {index}" if _INDEX.match(index) else "experts"
    return "shared"


def experts_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run with MoE layers, the step stage's kernel time under them by part (routing, each routed expert summed
    over layers, the shared expert), per profiled step and as a share of the layers' time.

    Returns:
        Columns ``run_id, label, workload, backend, device, moe_layers, part, time_us, ms_per_step, share, calls,
        load_vs_mean``; ``load_vs_mean`` is a routed expert's time over the mean of the routed experts' (1.0 for a
        perfectly even load), empty for the other parts. Rows: routing first, then the experts in index order, then
        the shared expert. Runs without MoE layers have no rows.
    """
    labels = run_labels(runs)
    parts = []
    for run, k in with_kernels(runs):
        moe = run.meta.get("moe_layers") or {}
        paths = list(moe.get("paths") or ())
        if not paths:
            continue
        k = k[k["stage"].astype(str).isin(STEP_STAGES)]
        module = k["module_path"].astype(str)
        layer = pd.Series("", index=k.index)
        for p in sorted(paths, key=len, reverse=True):  # innermost layer first where layers nest
            hit = (layer == "") & ((module == p) | module.str.startswith(p + "."))
            layer[hit] = p
        k, layer, module = k[layer != ""], layer[layer != ""], module[layer != ""]
        if k.empty:
            continue
        rest = [m[len(p) + 1:] if m != p else "" for m, p in zip(module, layer)]
        # the experts container: the child the run recorded as holding experts whose modules are indexed
        containers = {r.partition(".")[0] for r in rest if _INDEX.match(r.partition(".")[2].partition(".")[0])}
        containers &= set(moe.get("experts") or ())
        part = [_part(r, c, containers) for r, c in zip(rest, k["op_class"].astype(str))]
        frame = pd.DataFrame({"part": part, "time_us": k["dur_us"].astype(float).to_numpy()})
        split = frame.groupby("part", sort=False).agg(time_us=("time_us", "sum"), calls=("time_us", "size"))
        split = split.reset_index()
        order = {p: (0 if p == "routing" else 1 if p.startswith("expert ") else 2,
                     int(p.split()[1]) if p.startswith("expert ") and _INDEX.match(p.split()[1]) else 0, p)
                 for p in split["part"]}
        split = split.sort_values("part", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
        steps = int(k.loc[k["step"] >= 0, "step"].nunique()) or 1
        split["ms_per_step"] = split["time_us"] / 1e3 / steps
        split["share"] = shares_within(split)
        routed = split["part"].str.match(r"^expert \d+$")
        mean = split.loc[routed, "time_us"].mean() if routed.any() else np.nan
        split["load_vs_mean"] = np.where(routed, split["time_us"] / mean, np.nan)
        split["moe_layers"] = len(paths)
        for c, v in _ids(run, labels[run.run_id]).items():
            if c in COLUMNS:
                split[c] = v
        parts.append(split[COLUMNS])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
