"""Attribution: every kernel (every op on a CPU run) of a parsed trace, classified and placed.

Each row gets its stage, step and call within the step, the innermost module, the top-level aten op that launched
it, an op class (`mmchar.taxonomy`, with attention cores decided first), a sub-class naming what it is for within
that class (`mmchar.sub_classes`: conv3d, pad, upsample, rope, modulation ...), its phase (``backward`` for the
work of a backward pass, classed by the forward op it differentiates) and, for attention and for the projections of
attention modules, the attention site. The kernels of a linear layer a projection backend replaced take that
backend's op class and its cost (the projection scope's label), like an attention core's. The kernels of a
mixture-of-experts layer's gate, dispatch and combine are op class ``routing`` (`mmchar.routing`: found from the
model's structure, which the runner passes). Kernels launched outside every stage belong to the ``host`` stage
(latent preparation, guidance arithmetic between model calls; docs/conventions.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmchar.flops import attention_label_cost, op_cost
from mmchar.routing import RoutingScope, routing_mask
from mmchar.schema import BACKWARD_PHASE, BREAKDOWN_COLUMNS, KERNEL_COLUMNS, OUTSIDE_STAGES
from mmchar.scopes import (ProjectionCall, attention_label_site, attention_site, parse_attention_label,
                           parse_comm_label, parse_projection_label)
from mmchar.shares import shares_within
from mmchar.sub_classes import sub_classes
from mmchar.taxonomy import classify, is_attention_op, is_backward
from mmchar.trace import COMPILE_WRAPPERS, Trace, gc_paused

# torch.compile's host-side runtime events (guard checks, graph entry) in a CPU trace: known, so class "other"
# without a "matched no rule" warning
HOST_RUNTIME_EVENTS = tuple(w for w in COMPILE_WRAPPERS if w != "Torch-Compiled Region")


@dataclass
class Attribution:
    kernels: pd.DataFrame
    breakdown: pd.DataFrame
    unmatched: list[dict[str, object]] = field(default_factory=list)  # kernels classed "other"


def _scope_of(label: str) -> tuple[str, str, str]:
    """(site, module path, q/k/v input dims) of an attention-core label, read once per distinct label."""
    site, path = attention_label_site(label)
    call = parse_attention_label(label)
    return site, path, call.input_dims() if call is not None else ""


def attribute(trace: Trace, site_rules: list[tuple[re.Pattern[str], str]] | None = None,
              routing: Sequence[RoutingScope] = ()) -> Attribution:
    """Classify and place every row of ``trace`` (see module docstring); ``routing``: the model's MoE layers."""
    with gc_paused():
        return _attribute(trace, site_rules or [], routing)


def _attribute(trace: Trace, rules: list[tuple[re.Pattern[str], str]],
               routing: Sequence[RoutingScope] = ()) -> Attribution:
    ops = trace.ops
    n = len(trace.name)
    stage = [""] * n
    step = np.full(n, -1, dtype=np.int32)
    step_call = np.full(n, -1, dtype=np.int16)
    module = [""] * n
    op_class = [""] * n
    phase = [""] * n
    site = [""] * n
    aten = [""] * n
    launch = [""] * n
    shapes = [""] * n
    flops = np.full(n, math.nan)
    nbytes = np.full(n, math.nan)
    costed_ops: set[int] = set()
    costed_scopes: set[int] = set()
    costed_comms: set[int] = set()
    costed_projs: set[int] = set()
    proj_cache: dict[str, ProjectionCall | None] = {}
    attn_modules: dict[str, str] = {}
    scope_cache: dict[str, tuple[str, str, str]] = {}

    for r in range(n):
        c = trace.ctx[r]
        stage[r] = c.stage or OUTSIDE_STAGES
        step[r] = c.step
        step_call[r] = c.call
        module[r] = c.module
        top = ops[c.top_op] if c.top_op >= 0 else None
        top_name = top[0] if top else ""
        aten[r] = top_name
        launch[r] = launch_name = ops[c.leaf_op][0] if c.leaf_op >= 0 else ""
        if top_name and is_backward(top_name):
            phase[r] = BACKWARD_PHASE
        if top is not None and top[1]:
            shapes[r] = str(top[1])
        if c.comm:  # a collective mmchar issued (sequence parallelism): its scope carries the payload
            op_class[r] = "communication"
            if c.comm_id not in costed_comms:
                costed_comms.add(c.comm_id)
                flops[r], nbytes[r] = 0.0, parse_comm_label(c.comm)
            continue
        if c.proj:  # a linear layer a projection backend replaced: its class and cost are the backend's
            if c.proj not in proj_cache:
                proj_cache[c.proj] = parse_projection_label(c.proj)
            call = proj_cache[c.proj]
            if call is not None:
                op_class[r] = call.op_class
                if c.proj_id not in costed_projs:
                    costed_projs.add(c.proj_id)
                    flops[r], nbytes[r] = call.flops, call.bytes
                continue
        if c.attn and classify(trace.name[r], top_name) != "communication":  # a ring's sends stay communication
            op_class[r] = "attention"
            s, path, dims = scope_cache.get(c.attn) or scope_cache.setdefault(c.attn, _scope_of(c.attn))
            site[r] = s
            attn_modules[path] = s
            shapes[r] = dims
            if c.attn_id not in costed_scopes:
                costed_scopes.add(c.attn_id)
                flops[r], nbytes[r] = attention_label_cost(c.attn)
            continue
        if top_name and is_attention_op(top_name):
            op_class[r] = "attention"
            dims = top[1] or []
            cross = len(dims) >= 2 and len(dims[0]) >= 2 and len(dims[1]) >= 2 and dims[0][-2] != dims[1][-2]
            site[r] = attention_site(c.module, rules, cross=cross)
            if c.module:
                attn_modules[c.module] = site[r]
        else:
            op_class[r] = classify(trace.name[r], top_name, launch_name)
        if c.top_op >= 0 and c.top_op not in costed_ops:
            costed_ops.add(c.top_op)
            if op_class[r] == "communication" and "TensorList" in (top[3] or ()) and c.leaf_op >= 0:
                # c10d records no dtype for tensor lists (P2P sends): the process group's own op under it does
                top = (*top[:3], ops[c.leaf_op][3])
            flops[r], nbytes[r] = op_cost(*top)

    # the projections of attention modules: gemm kernels (or a projection backend's) under an attention module
    # carry its site
    if attn_modules:
        for r in range(n):
            if site[r] or not module[r] or (op_class[r] != "gemm" and not trace.ctx[r].proj):
                continue
            path = module[r]
            for _ in range(2):  # to_q, to_out.0
                path = path.rpartition(".")[0]
                if not path:
                    break
                s = attn_modules.get(path)
                if s:
                    site[r] = s
                    break

    if routing:  # attention cores, collectives and replaced projections keep the class their scope gave them
        keep = ("attention", "communication")
        for r, is_routing in enumerate(routing_mask(module, op_class, routing)):
            if is_routing and op_class[r] not in keep and not trace.ctx[r].proj:
                op_class[r] = "routing"

    kernels = pd.DataFrame({
        "stage": stage, "step": step, "call": step_call, "module_path": module, "op_class": op_class, "phase": phase,
        "attn_site": site,
        "aten_op": aten, "launch_op": launch, "kernel": trace.name, "ts_us": np.asarray(trace.ts, dtype=float),
        "dur_us": np.asarray(trace.dur, dtype=float), "input_shapes": shapes, "flops": flops, "bytes": nbytes,
    })
    kernels["sub_class"] = sub_classes(kernels)  # from the columns above: one derivation for new and stored runs
    kernels = kernels[list(KERNEL_COLUMNS)].astype(KERNEL_COLUMNS)
    return Attribution(kernels=kernels, breakdown=breakdown(kernels), unmatched=unmatched(kernels))


def breakdown(kernels: pd.DataFrame) -> pd.DataFrame:
    """The tidy table of breakdown.csv: stage × op_class × attn_site (site only on attention rows)."""
    if kernels.empty:
        return pd.DataFrame(columns=list(BREAKDOWN_COLUMNS))
    k = pd.DataFrame({
        "stage": kernels["stage"].astype(str), "op_class": kernels["op_class"].astype(str),
        "attn_site": np.where(kernels["op_class"].astype(str) == "attention", kernels["attn_site"].astype(str), ""),
        "dur_us": kernels["dur_us"], "flops": kernels["flops"], "bytes": kernels["bytes"],
    })
    g = k.groupby(["stage", "op_class", "attn_site"], sort=True, observed=True)
    out = g.agg(time_us=("dur_us", "sum"), calls=("dur_us", "size"),
                flops=("flops", lambda s: s.sum(min_count=1)), bytes=("bytes", lambda s: s.sum(min_count=1))).reset_index()
    out["share"] = shares_within(out, ["stage"], empty=0.0)
    return out[list(BREAKDOWN_COLUMNS)]


def unmatched(kernels: pd.DataFrame, limit: int = 50) -> list[dict[str, object]]:
    """Kernels no rule matched (class ``other``), most time first: name, calls, time."""
    other = kernels[(kernels["op_class"].astype(str) == "other")
                    & ~kernels["kernel"].astype(str).str.startswith(HOST_RUNTIME_EVENTS)]
    if other.empty:
        return []
    g = other.groupby(other["kernel"].astype(str)).agg(calls=("dur_us", "size"), time_us=("dur_us", "sum"))
    g = g.sort_values("time_us", ascending=False).head(limit)
    return [{"kernel": name, "calls": int(row.calls), "time_us": float(row.time_us)} for name, row in g.iterrows()]
