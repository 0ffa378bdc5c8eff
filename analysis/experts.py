"""Routed mixture-of-experts layers, part by part: what the routing costs beside the experts, and how evenly the
routed experts' time is spread (HiDream-I1's four routed experts, top-2, and a shared expert per layer).

Each kernel of a step stage under a MoE layer (``meta["moe_layers"]``, `mmchar.routing`) carries its part from its
op class and module path: ``routing`` (op class ``routing``: the gate, token dispatch and combine), ``expert <i>``
(under a container of one module per routed expert, ``experts.<i>``: the i-th routed expert of every layer, summed
over layers), ``experts`` (a fused container's own compute: no module per expert), ``shared`` (under a child holding
one expert that routing does not choose, ``shared_experts``) and ``other`` (anything else under the layer: a child
neither gate nor expert, an expert-parallel collective). An expert that got no token in any layer has no row, so
``load_vs_mean`` is over the experts that ran; nested MoE layers sum their ``expert <i>`` alike. Random weights route tokens as an untrained gate does, so
the balance across experts is the structure's, not the trained model's: read ``load_vs_mean`` as what routing costs
when the load is near-uniform.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.shares import shares_within
from mmchar.store import Run

from .tables import _ids, profiled_steps, run_labels, with_kernels

COLUMNS = ["run_id", "label", "workload", "backend", "device", "moe_layers", "part", "time_us", "ms_per_step",
           "share", "calls", "load_vs_mean"]
_INDEX = re.compile(r"^\d+$")


def _part(rest: str, op_class: str, containers: dict[str, str], experts: set[str]) -> str:
    """The part of a MoE layer a kernel belongs to, from its module path below the layer (``""`` for the layer's
    own forward) and its op class."""
    if op_class == "routing":
        return "routing"
    child, _, below = rest.partition(".")
    kind = containers.get(child)
    if kind == "list" and below:
        return f"expert {below.partition('.')[0]}"
    if kind is not None:
        return "experts"
    return "shared" if child in experts else "other"


def _containers(moe: dict[str, Any], rest: list[str], experts: set[str]) -> dict[str, str]:
    """The routed experts' containers of the step stage's layers (``moe_layers.containers``: stage -> child ->
    ``list`` / ``fused``); a run recorded without them reads an expert child whose modules are indexed as a list."""
    recorded = moe.get("containers")
    if recorded:
        return {c: kind for stage, kinds in recorded.items() if stage in STEP_STAGES for c, kind in kinds.items()}
    return {r.partition(".")[0]: "list" for r in rest
            if r.partition(".")[0] in experts and _INDEX.match(r.partition(".")[2].partition(".")[0])}


def part_order(part: str) -> tuple[int, int, str]:
    """Routing first, the routed experts in index order (then by name), the fused experts, shared, other."""
    if part == "routing":
        return (0, 0, "")
    if part.startswith("expert "):
        name = part[len("expert "):]
        return (1, int(name), "") if _INDEX.match(name) else (1, 1 << 30, name)
    return ({"experts": 2, "shared": 3}.get(part, 4), 0, part)


def experts_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run with MoE layers in a step stage, that stage's kernel time under them by part (routing, each routed
    expert summed over layers, the shared expert), per profiled step and as a share of the layers' time.

    Returns:
        Columns ``run_id, label, workload, backend, device, moe_layers, part, time_us, ms_per_step, share, calls,
        load_vs_mean``; ``load_vs_mean`` is a routed expert's time over the mean of the routed experts' (1.0 for an
        even load), empty for the other parts. Rows in `part_order`. Runs without MoE layers in a step stage have no
        rows.
    """
    labels = run_labels(runs)
    parts = []
    for run, k in with_kernels(runs):
        moe = run.meta.get("moe_layers") or {}
        paths = list(moe.get("paths") or ())
        stages = list(moe.get("stages") or [""] * len(paths))
        paths = [p for p, st in zip(paths, stages) if st in STEP_STAGES or not st]  # runs recorded without stages
        if not paths:
            continue
        k = k[k["stage"].astype(str).isin(STEP_STAGES)]
        module = k["module_path"].astype(str)
        layer = pd.Series("", index=k.index)
        for p in sorted(paths, key=len, reverse=True):  # innermost layer first where layers nest
            hit = (layer == "") & ((module == p) | module.str.startswith(p + "."))
            layer[hit] = p
        inside = layer != ""
        k, layer, module = k[inside], layer[inside], module[inside]
        if k.empty:
            continue
        experts = set(moe.get("experts") or ())
        rest = [m[len(p) + 1:] if m != p else "" for m, p in zip(module, layer)]
        containers = _containers(moe, rest, experts)
        part = [_part(r, c, containers, experts) for r, c in zip(rest, k["op_class"].astype(str))]
        frame = pd.DataFrame({"part": part, "time_us": k["dur_us"].astype(float).to_numpy()})
        split = frame.groupby("part", sort=False).agg(time_us=("time_us", "sum"), calls=("time_us", "size"))
        split = split.reset_index()
        split = split.sort_values("part", key=lambda s: s.map(part_order), kind="stable").reset_index(drop=True)
        split["ms_per_step"] = split["time_us"] / 1e3 / profiled_steps(run)
        split["share"] = shares_within(split)
        routed = split["part"].str.startswith("expert ")
        mean = split.loc[routed, "time_us"].mean() if routed.any() else np.nan
        split["load_vs_mean"] = np.where(routed, split["time_us"] / mean, np.nan)
        split["moe_layers"] = len(paths)
        for c, v in _ids(run, labels[run.run_id]).items():
            if c in COLUMNS:
                split[c] = v
        parts.append(split[COLUMNS])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
