"""`mmchar bench-linear`: every projection backend (`mmchar.projections`) on the linear layers of real workloads
and on a token sweep, in one run, against a plain ``F.linear`` (cuBLAS on CUDA: the ``cublas`` row) measured in the
same run at the same shape.

Shapes come from the workloads, in one place: each benched workload's generating model (the components
`mmchar.target.is_step_component` names) is built on the meta device from its full preset (no memory, no
weights), its ``nn.Linear`` layers grouped by role (`mmchar.linear_swap.linear_role`), in and out features and
token count; the token counts come from the same ``"bench"`` attention calls `mmchar bench-attn` times
(`token_counts` says how). Rows report ms, TFLOP/s of the dense layer's 2·tokens·in·out (the dense equivalent,
so every backend is on one scale), GB/s of the backend's own minimum bytes (`ProjectionBackend.cost`), the share
of the calibrated roofs, the speedup over ``cublas`` and the output's cosine against an fp32 reference; a
backend whose output disagrees (cosine below `AGREEMENT`) is not timed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mmchar import environment
from mmchar.analysis.mechanisms import crossovers  # one definition of a crossover (bench-attn's with no margin)
from mmchar.bench_common import (BenchmarkCrashed, ContextLost, _failed, _markdown, _timed_row, previous_rows,
                                 write_text_atomic)
from mmchar.flops import linear_cost

# a backend beats cuBLAS where it is faster by more than this: `dense` (F.linear through the swap) "beat" it at
# 1024 tokens on the CPU by 0.1-0.9 %, which is timing noise
CROSSOVER_MARGIN = 0.03
BASELINE = "cublas"  # F.linear on the layer: cuBLAS on CUDA, the CPU's GEMM on the CPU
AGREEMENT = 0.99  # a backend's output cosine against its fp32 reference below this is not timed
SWEEP_TOKENS = tuple(1024 << i for i in range(7))  # 1k ... 64k
SWEEP_WIDTHS = (1536, 3072)
CHECK_ROWS = 128  # rows of the output compared against the fp32 reference
_CACHE_VERSION = 2  # bump when `token_counts` changes: the cached shapes are derived by it


@dataclass(frozen=True)
class LinearShape:
    """One linear layer shape: ``tokens`` rows × ``d_in`` -> ``d_out``, and how many layers of the workload's
    generating model have it (``layers``; 1 for the sweep)."""

    name: str
    workload: str
    role: str  # attn-proj, ffn or other (`linear_role`)
    tokens: int
    d_in: int
    d_out: int
    layers: int = 1

    @property
    def flops(self) -> float:
        """2·tokens·in·out: the dense layer's, the scale every backend's TFLOP/s is reported on."""
        return 2.0 * self.tokens * self.d_in * self.d_out


# ---------------------------------------------------------------------------------------------------- shapes


@dataclass
class _Layer:
    """What decides a linear layer's token count: its role and features, the width of the attention of the
    block it sits in, whether it projects a cross attention's context, and its UNet level."""

    role: str
    d_in: int
    d_out: int
    width: int | None = None
    cross_kv: bool = False
    level: int | None = None
    routed: float = 1.0  # a routed expert's layer: the share of its block's tokens it sees (top-k / experts)


def _attention_width(module: nn.Module) -> int | None:
    width = getattr(module, "inner_dim", None)
    if isinstance(width, int):
        return width
    for name in ("to_q", "q_proj", "q"):
        proj = getattr(module, name, None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
    return None


def _unet_level(parts: list[str], model: nn.Module) -> int:
    """The resolution level of a UNet layer (0: the input's): ``down_blocks.i`` is level i, ``up_blocks.j`` level
    n − 1 − j, the mid block the lowest resolution; layers outside the blocks sit at the input's."""
    n = len(model.down_blocks)
    if len(parts) > 1 and parts[1].isdigit():
        if parts[0] == "down_blocks":
            return int(parts[1])
        if parts[0] == "up_blocks":
            return len(model.up_blocks) - 1 - int(parts[1])
    return n - 1 if parts[0] == "mid_block" else 0


def model_layers(model: nn.Module) -> list[_Layer]:
    """Every ``nn.Linear`` of ``model`` with what `token_counts` needs: the attention width of its nearest enclosing
    module that holds attention (the attention itself, or its transformer block: an FFN sees the block's tokens),
    and, in a UNet (a model with ``down_blocks`` and ``up_blocks``), its resolution level."""
    from mmchar.linear_swap import is_attention_module, linear_role

    modules = dict(model.named_modules())
    attn = {p: m for p, m in modules.items() if p and is_attention_module(m)}
    unet = hasattr(model, "down_blocks") and hasattr(model, "up_blocks")
    routed = _routed_shares(model)
    out = []
    for path, layer in modules.items():
        if not isinstance(layer, nn.Linear):
            continue
        parts = path.split(".")
        entry = _Layer(linear_role(path, modules), layer.in_features, layer.out_features,
                       level=_unet_level(parts, model) if unet else None,
                       routed=math.prod(f for prefix, f in routed.items() if path.startswith(prefix)))
        for i in range(len(parts) - 1, 0, -1):  # the model's root holds every attention: not a block
            anc = ".".join(parts[:i])
            inside = {_attention_width(m) for p, m in attn.items() if p == anc or p.startswith(anc + ".")}
            if inside:
                entry.width = inside.pop() if len(inside) == 1 else None
                break
        parent = modules.get(".".join(parts[:-1]))
        if parent is not None and parent in attn.values() and getattr(parent, "is_cross_attention", False):
            entry.cross_kv = any(getattr(parent, n, None) is layer for n in ("to_k", "to_v", "add_k_proj", "add_v_proj"))
        out.append(entry)
    return out


_TOP_K = ("num_activated_experts", "top_k", "num_experts_per_tok")


def _routed_shares(model: nn.Module) -> dict[str, float]:
    """Per routed experts' container (``"<moe path>.experts."``), the share of its layer's tokens each expert sees:
    top-k over the number of experts, the expectation of an even load (what a random gate gives; `mmchar.routing`
    finds the layers; nested layers multiply). A layer whose top-k is not an attribute of the MoE module or its gate
    counts every token; a fused container (no module per expert, no ``nn.Linear``) has no share."""
    from mmchar.routing import moe_scopes

    modules = dict(model.named_modules())
    shares = {}
    for scope in moe_scopes(model, "", ""):
        moe = modules[scope.path]
        holders = [moe, *(getattr(moe, g) for g in scope.gates)]
        k = next((int(v) for h in holders for a in _TOP_K if isinstance(v := getattr(h, a, None), numbers.Integral)
                  and not isinstance(v, bool) and v > 0), None)
        for name, kind in scope.containers.items():
            n = len(getattr(moe, name)) if kind == "list" else 0
            if k is not None and n > k:
                shares[f"{scope.path}.{name}." if scope.path else f"{name}."] = k / n
    return shares


def _level_tokens(layers: list[_Layer], selfs: list[dict[str, Any]]) -> dict[int, int]:
    """Rows per UNet level: each self-attention shape anchors the lowest level whose attention has its width
    (h·d) at b·sq; other levels are ×4 per level from the nearest anchor (each level halves height and width)."""
    widths: dict[int, int] = {}
    for entry in layers:
        if entry.width is not None and entry.level is not None:
            widths.setdefault(entry.width, entry.level)
            widths[entry.width] = min(widths[entry.width], entry.level)
    anchors = {widths[s["h"] * s["d"]]: s["b"] * s["sq"] for s in selfs if s["h"] * s["d"] in widths}
    if not anchors:
        return {}
    levels = {e.level for e in layers if e.level is not None}
    out = {}
    for level in levels:
        near = min(anchors, key=lambda a: (abs(a - level), a))
        tokens = anchors[near] * 4 ** (near - level) if level <= near else anchors[near] // 4 ** (level - near)
        if tokens >= 1:
            out[level] = int(tokens)
    return out


def token_counts(layers: list[_Layer], bench: list[dict[str, Any]]) -> tuple[list[tuple[_Layer, int]], dict[str, int]]:
    """(layer, rows it sees) for every layer whose token count the workload's attention calls decide, and the
    layers left out, counted by reason.

    - Self / joint attention calls (sq = skv) give b·sq rows at width h·d; cross calls give b·skv context rows.
    - A cross attention's k and v projections see the context: b·skv of a cross call of that width (or of any
      cross call); without one the context length is unknown and they are left out.
    - A UNet layer sees its level's rows (`_level_tokens`).
    - Any other layer sees b·sq of the calls whose h·d is its block's attention width (several different counts:
      one row per count, each with every such layer: they cannot be told apart), else the largest self-attention
      b·sq (layers outside any attention block). In joint models (MMDiT, Flux) a stream's own layers are counted
      at the joint count (image and text rows together): an upper bound.
    - A routed expert's layer (HiDream-I1's MoE FFNs) sees top-k / experts of its block's rows: the even load of
      a random gate (each expert is one shape row of its own, counted once per expert and layer).
    - Role ``other`` (timestep, caption and patch embedders, adaLN modulation, output projections) is left out:
      embedders and modulation see one row per sample, patch and output projections every token, and the
      attention calls cannot tell which; together they are a small share of the step's FLOPs.
    """
    selfs = [s for s in bench if s["sq"] == s["skv"]]
    crosses = [s for s in bench if s["sq"] != s["skv"]]
    unet = any(e.level is not None for e in layers)
    levels = _level_tokens(layers, selfs) if unet else {}
    largest = max((s["b"] * s["sq"] for s in selfs), default=None)
    out: list[tuple[_Layer, int]] = []
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for e in layers:
        if e.role == "other":
            drop("role other (embedders, modulation, patch and output projections)")
            continue
        if e.cross_kv:
            pool = [s for s in crosses if s["h"] * s["d"] == e.width] or crosses
            counts = {s["b"] * s["skv"] for s in pool}
            if not counts:
                drop("cross-attention k/v (no cross call in the bench: context length unknown)")
        elif unet:
            counts = {levels[e.level]} if e.level in levels else set()
            if not counts:
                drop("UNet level without an attention call to scale from")
        else:
            counts = {s["b"] * s["sq"] for s in bench if e.width is not None and s["h"] * s["d"] == e.width}
            if not counts and largest is not None:
                counts = {largest}
            if not counts:
                drop("no self-attention call in the bench")
        out += [(e, t) for t in sorted({max(round(c * e.routed), 1) for c in counts}) if t >= 1]
    return out, dropped


def _group(workload: str, counted: list[tuple[_Layer, int]]) -> list[LinearShape]:
    groups: dict[tuple[str, int, int, int], int] = {}
    for e, tokens in counted:
        key = (e.role, e.d_in, e.d_out, tokens)
        groups[key] = groups.get(key, 0) + 1
    return [LinearShape(f"{workload} {role} {d_in}x{d_out} T{tokens}", workload, role, tokens, d_in, d_out, n)
            for (role, d_in, d_out, tokens), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]


def _build_on_meta(spec: str, config: dict[str, Any]) -> nn.Module:
    from mmchar.workloads.build import _construct, model_class, parameters_on_meta

    with parameters_on_meta():
        return _construct(model_class(spec), config)


@dataclass
class WorkloadLinears:
    """A benched workload's linear shapes, and what was left out (reason -> layers), or why it was skipped."""

    shapes: list[LinearShape] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None


def _workload_linears(name: str, bench: dict[str, Any]) -> WorkloadLinears:
    """Built on the meta device and cached per configuration (as `Workload.parameter_count`): building the biggest
    models' module trees takes seconds."""
    from mmchar.environment import cache_dir
    from mmchar.target import is_step_component
    from mmchar.workloads import get_workload

    w = get_workload(name)
    models = w.preset_config("full").get("models", {})
    comps = [c for c in w.components if is_step_component(c)]
    # experts of one architecture take turns, one per step (Wan 2.2 A14B's high- and low-noise transformers): a
    # step's linear work is one expert's, counted once
    alike: dict[str, str] = {}
    for c in comps:
        alike.setdefault(json.dumps([w.components[c], models.get(c)], sort_keys=True, default=str), c)
    comps = list(alike.values())
    missing = [c for c in comps if c not in models]
    if not comps or missing:
        return WorkloadLinears(skipped=f"its generating model ({', '.join(missing or comps) or 'none'}) is not built "
                                       "from a configuration in the full preset")
    specs = {c: [w.components[c], models[c]] for c in comps}
    blob = json.dumps([_CACHE_VERSION, specs, bench["shapes"]], sort_keys=True, default=str).encode()
    key = f"{name}/full/" + hashlib.sha256(blob).hexdigest()[:12]
    path = cache_dir() / "linear_shapes.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        layers = [e for c in comps for e in model_layers(_build_on_meta(*specs[c]))]
        counted, dropped = token_counts(layers, bench["shapes"])
        cache[key] = {"shapes": [asdict(s) for s in _group(name, counted)], "dropped": dropped}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(cache, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only home: built again next time
    return WorkloadLinears([LinearShape(**s) for s in cache[key]["shapes"]], cache[key]["dropped"])


def workload_linear_plan(names: list[str] | None = None) -> dict[str, WorkloadLinears]:
    """Per benched workload (`mmchar.bench_attn.benched_workloads`, in its order; ``names``: only these), its
    linear shapes and what was left out."""
    from mmchar.bench_attn import benched_workloads

    return {name: _workload_linears(name, bench) for name, bench in benched_workloads()
            if names is None or name in names}


def workload_linear_shapes(names: list[str] | None = None) -> list[LinearShape]:
    """The linear layer shapes of every benched workload's generating model (`workload_linear_plan`)."""
    return [s for plan in workload_linear_plan(names).values() for s in plan.shapes]


def sweep_linear_shapes() -> list[LinearShape]:
    """tokens = 1k ... 64k at model width d = 1536 and 3072: an attention projection (d -> d) and both FFN layers
    (d -> 4d, 4d -> d): where a backend starts to beat cuBLAS."""
    out = []
    for d in SWEEP_WIDTHS:
        for label, role, d_in, d_out in (("attn-proj", "attn-proj", d, d), ("ffn up", "ffn", d, 4 * d),
                                         ("ffn down", "ffn", 4 * d, d)):
            out += [LinearShape(f"sweep {label} d{d} T{t // 1024}k", "sweep", role, t, d_in, d_out)
                    for t in SWEEP_TOKENS]
    return out


# ---------------------------------------------------------------------------------------------------- timing


def _inputs(shape: LinearShape, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, nn.Linear]:
    """x [tokens, in] and a random nn.Linear(in, out) with bias, seeded, in ``dtype`` on ``device``."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape.tokens, shape.d_in, device=device, dtype=dtype, generator=g)
    layer = nn.Linear(shape.d_in, shape.d_out, bias=True, device=device, dtype=dtype).requires_grad_(False)
    bound = shape.d_in ** -0.5  # nn.Linear's own init range, drawn from the seeded generator
    layer.weight.uniform_(-bound, bound, generator=g)
    layer.bias.uniform_(-bound, bound, generator=g)
    return x, layer


def _dense_reference(backend: Any, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return x.float() @ layer.weight.float().T + layer.bias.float()


def _memoryformer_reference(backend: Any, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """MemoryFormer changes the maths: its own fp32 specification on the backend's tables."""
    from mmchar.kernels.memory_layer.reference import memory_layer_ref

    return memory_layer_ref(x.float(), backend.tables, layer.bias, tau=backend.chunk,
                            temperature=backend.temperature, normalize=backend.block_second).float()


_REFERENCES = {"memoryformer": _memoryformer_reference}  # a backend that changes the maths: its own reference
_REFERENCE_ELEMENTS = 1 << 26  # the memory layer's reference materialises rows × K × out fp32 elements


def _check_rows(name: str, shape: LinearShape) -> int:
    if name in _REFERENCES:
        return max(1, min(CHECK_ROWS, shape.tokens, _REFERENCE_ELEMENTS // max(1, shape.d_in // 8 * shape.d_out)))
    return min(CHECK_ROWS, shape.tokens)


def _cosine(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float(F.cosine_similarity(got.float().flatten(), ref.float().flatten(), dim=0))


def _row(shape: LinearShape, backend: str) -> dict[str, Any]:
    return {**asdict(shape), "backend": backend, "status": "", "ms": None, "gpu_ms": None, "tflops": None,
            "gbps": None, "cosine": None, "state_bytes": None, "note": ""}


def _measure(name: str, shape: LinearShape, x: torch.Tensor, layer: nn.Linear, device: torch.device) -> dict[str, Any]:
    """One row: the ``cublas`` baseline (F.linear) or a projection backend built on ``layer`` with the shape's
    role, asked `unsupported` first, prepared (its tables, its quantised weight) and checked outside the timed
    call. Errors become the row's status; one that broke the CUDA context raises `ContextLost`."""
    from mmchar.projections import get_projection_backend

    row = _row(shape, name)
    backend: Any = None
    call: Any = None
    try:
        if name == BASELINE:
            def baseline(inp: torch.Tensor) -> torch.Tensor:
                return F.linear(inp, layer.weight, layer.bias)
            call = baseline
            nbytes = linear_cost(shape.tokens, shape.d_in, shape.d_out, x.element_size())[1]
            reference = _dense_reference
        else:
            cls = get_projection_backend(name)
            why = cls.unavailable_reason(device)
            if why is not None:
                row.update(status="skipped", note=why)
                return row
            backend = cls(layer, f"bench.{shape.name}", 0, role=shape.role)
            why = backend.unsupported(x)
            if why is not None:
                row.update(status="unsupported", note=why)
                return row
            backend.prepare(x)
            call = backend
            nbytes = backend.cost(x)[1]
            row["state_bytes"] = int(backend.state_bytes)
            reference = _REFERENCES.get(name, _dense_reference)
        rows = _check_rows(name, shape)
        row["cosine"] = _cosine(call(x)[:rows], reference(backend, x[:rows], layer))
        if not row["cosine"] >= AGREEMENT:
            row.update(status="refused", note=f"output disagrees with the reference (cosine < {AGREEMENT})")
            return row
        _timed_row(row, lambda: call(x), shape.flops, nbytes, device)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - out of memory drawing tables, a kernel out of resources: the row says
        backend = call = None
        lost = _failed(row, e, device)
        row.update(ms=None, gpu_ms=None, tflops=None, gbps=None)
        row["status"] = "crashed" if lost else "OOM" if isinstance(e, torch.OutOfMemoryError) else "failed"
        if lost:
            raise ContextLost([row]) from None
    finally:
        backend = call = None  # memoryformer's tables: gone before the next backend draws its own
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def run(shapes: list[LinearShape], backends: list[str], device: torch.device,
        dtype: torch.dtype) -> list[dict[str, Any]]:
    """One row per shape × (``cublas`` + each of ``backends``): ms, dense-equivalent TFLOP/s, GB/s of the
    backend's own bytes, cosine against its fp32 reference, or its status (skipped, unsupported, refused, OOM,
    failed) and why."""
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        try:
            with torch.no_grad():
                x, layer = _inputs(shape, device, dtype)
        except Exception as e:  # noqa: BLE001 - the inputs themselves did not fit: every row of the shape says so
            for name in [BASELINE, *backends]:
                row = _row(shape, name)
                lost = _failed(row, e, device)
                row["status"] = "OOM" if isinstance(e, torch.OutOfMemoryError) else "failed"
                rows.append(row)
                if lost:
                    raise ContextLost(rows) from None
            continue
        try:
            with torch.no_grad():
                for name in [BASELINE, *[b for b in backends if b != BASELINE]]:
                    try:
                        rows.append(_measure(name, shape, x, layer, device))
                    except ContextLost as lost:
                        raise ContextLost([*rows, *lost.rows]) from None
        finally:
            del x, layer
            gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------------- tables


def _sweep_kind(role: str, d_in: int, d_out: int) -> str:
    return role if role != "ffn" else ("ffn up" if d_in < d_out else "ffn down")


def linear_crossovers(df: pd.DataFrame, backend: str, baseline: str = BASELINE) -> dict[str, int | None]:
    """Per sweep layer kind and model width (``attn-proj d=1536``, ``ffn up d=3072`` ...): the smallest token count
    from which ``backend`` beats ``baseline`` at every larger count measured (None: never), by
    `mmchar.analysis.mechanisms.crossovers` (the sweep's token count as its S, the model width as its d); a win is
    by more than `CROSSOVER_MARGIN`."""
    sweep = df[df["workload"] == "sweep"]
    if sweep.empty:
        return {}
    kinds = [_sweep_kind(r, i, o) for r, i, o in zip(sweep["role"], sweep["d_in"], sweep["d_out"])]
    frame = pd.DataFrame({"name": sweep["name"].to_numpy(), "sq": sweep["tokens"].to_numpy(),
                          "d": [min(i, o) for i, o in zip(sweep["d_in"], sweep["d_out"])], "causal": False,
                          "backend": sweep["backend"].to_numpy(), "ms": pd.to_numeric(sweep["ms"]).to_numpy(),
                          "kind": kinds})
    out: dict[str, int | None] = {}
    for kind in dict.fromkeys(kinds):
        for (d, _), tokens in crossovers(frame[frame["kind"] == kind], backend, baseline, CROSSOVER_MARGIN).items():
            out[f"{kind} d={d}"] = tokens
    return out


def _roof_key(backend: str, dtype: torch.dtype) -> str:
    """The matmul roof a backend's TFLOP/s is held to: FP8's own for ``fp8``, else the run's dtype."""
    return "fp8" if backend == "fp8" else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def _write_tables(rows: list[dict[str, Any]], device: torch.device, dtype: torch.dtype, out: Path,
                  roofs: dict[str, Any] | None, notes: dict[str, str] | None = None) -> str:
    df = pd.DataFrame(rows)
    for col, prefix in (("ms", "vs_"), ("gpu_ms", "gpu_vs_")):
        ref = df[df["backend"] == BASELINE].set_index("name")[col]
        df[f"{prefix}{BASELINE}"] = [ref.get(n) / ms if ms and ref.get(n) else None for n, ms in zip(df["name"], df[col])]
    if roofs:
        matmul = roofs.get("matmul_tflops", {})
        df["pct_of_matmul_roof"] = [t / matmul[k] * 100 if t and matmul.get(k) else None
                                    for t, k in zip(df["tflops"], (_roof_key(b, dtype) for b in df["backend"]))]
        df["pct_of_copy_roof"] = [g / roofs["copy_gbps"] * 100 if g else None for g in df["gbps"]]
    dev = environment.device_info(device)
    stamp = datetime.now(timezone.utc)
    v = environment.versions()
    name = str(dtype).removeprefix("torch.")
    head = (f"# Projection backends on {dev['name']} ({stamp:%Y-%m-%d}), {name} forward\n\n"
            f"torch {v['torch']}, triton {v['triton']}. Each row: x [tokens, in] through a random nn.Linear(in, out) "
            f"with bias in {name}; `{BASELINE}` is F.linear on it (cuBLAS on CUDA), measured in this run at the same "
            f"shape. ms = median (triton.testing.do_bench on CUDA: L2 flushed, one call at a time), gpu_ms = median "
            f"GPU time with the launches queued ahead; TFLOP/s of the dense layer's 2·tokens·in·out (the dense "
            f"equivalent, for every backend), GB/s of the backend's own minimum bytes (ProjectionBackend.cost; "
            f"memoryformer: input, output and whole tables once); vs_{BASELINE} = its ms / this row's (> 1: faster); "
            f"cosine against the fp32 reference on the first rows (memoryformer: its own fp32 specification on the "
            f"same tables), below {AGREEMENT} not timed; state_bytes = the backend's per-layer state (tables, "
            f"quantised weight); layers = how many layers of the workload's generating model have the shape. "
            f"Roofs (mmchar calibrate; fp8 rows against the FP8 roof): "
            f"{roofs and {k: round(t, 3) for k, t in roofs.get('matmul_tflops', {}).items()}} TFLOP/s matmul, {roofs and round(roofs['copy_gbps'])} GB/s copy.\n\n")
    for workload, note in (notes or {}).items():
        head += f"- {workload}: {note}\n"
    if notes:
        head += "\n"
    cross = {b: linear_crossovers(df, b) for b in df["backend"].unique() if b != BASELINE}
    if any(cross.values()):
        head += (f"Tokens from which a backend beats {BASELINE} by more than {CROSSOVER_MARGIN:.0%} (sweep, per layer "
                 "kind and model width): ") + "; ".join(
            f"{b}: {c}" for b, c in cross.items() if c) + "\n\n"
    cols = [c for c in ["name", "layers", "tokens", "d_in", "d_out", "backend", "status", "ms", "tflops", "gbps",
                        f"vs_{BASELINE}", "gpu_ms", f"gpu_vs_{BASELINE}", "pct_of_matmul_roof", "pct_of_copy_roof",
                        "cosine", "state_bytes", "note"] if c in df.columns]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "linear.md", head + _markdown(df[cols]) + "\n")
    write_text_atomic(out / "linear.json", json.dumps(
        {"device": dev, "versions": v, "roofs": roofs, "dtype": name, "date": stamp.isoformat(), "notes": notes or {},
         "crossover": cross, "rows": df.to_dict("records")}, indent=1, default=str))
    return head + df[cols].to_string(index=False)


_KEEP = set(asdict(LinearShape("", "", "", 0, 0, 0))) | {"backend", "status", "ms", "gpu_ms", "tflops", "gbps",
                                                         "cosine", "state_bytes", "note"}


def _plan_notes(plan: dict[str, WorkloadLinears]) -> dict[str, str]:
    notes = {}
    for name, p in plan.items():
        if p.skipped:
            notes[name] = f"skipped: {p.skipped}"
        elif p.dropped:
            notes[name] = "left out: " + ", ".join(f"{n} layers: {why}" for why, n in p.dropped.items())
    return notes


def benchmark(device: torch.device, only: str | None, backends: list[str] | None, max_tokens: int, out: Path,
              progress: Any = None, match: str | None = None, resume: bool = False) -> str:
    """Run the benchmark shape by shape, rewriting ``out/linear.{md,json}`` after each (an interrupted run keeps
    what it measured), and return the printed table. ``resume``: keep the rows already in ``out/linear.json``
    (same device) and measure only the shapes that lack one of the backends (with ``cublas`` again beside them:
    a speedup is always of one run)."""
    from mmchar.calibrate import calibrate

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    plan = {} if only == "sweep" else workload_linear_plan()
    shapes = [s for p in plan.values() for s in p.shapes] + ([] if only == "workloads" else sweep_linear_shapes())
    shapes = [s for s in shapes if s.tokens <= max_tokens and (match is None or match in s.name)]
    if not shapes:
        raise ValueError(f"no linear shape of {only or 'workloads and sweep'} matches {match!r} up to {max_tokens} "
                         "tokens")
    from mmchar.projections import projection_backend_names

    # default: every registered backend; one that cannot run on the device is a skipped row saying why
    backends = [b for b in (backends or projection_backend_names()) if b != BASELINE]
    roofs = calibrate(device)
    picked = {s.workload for s in shapes}
    notes = {w: n for w, n in _plan_notes(plan).items() if w in picked or (match is None and plan[w].skipped)}
    if (roofs.get("noise") or {}).get("noisy"):  # calibrate did not cache them: the "% of roof" columns say less
        notes["roofs"] = "measured under load, so not cached: " + "; ".join(roofs["noise"]["reasons"])
    rows: list[dict[str, Any]] = previous_rows(Path(out) / "linear.json", device, _KEEP) if resume else []
    # measured and crashed rows are kept (a crash would break the context again); the rest are tried again
    done = {(r["name"], r["backend"]) for r in rows
            if (r.get("ms") is not None and r["ms"] == r["ms"]) or r.get("status") == "crashed"}
    for i, shape in enumerate(shapes):
        todo = [b for b in backends if (shape.name, b) not in done]
        if not todo and (shape.name, BASELINE) in done:
            continue
        rows = [r for r in rows if r["name"] != shape.name or r["backend"] not in (BASELINE, *todo)]
        try:
            new = run([shape], todo, device, dtype)
        except ContextLost as lost:
            rows += lost.rows
            _write_tables(rows, device, dtype, Path(out), roofs, notes)
            raise BenchmarkCrashed(f"{lost.rows[-1]['backend']} broke the CUDA context at {shape.name} "
                                   f"({lost.rows[-1]['note'].removeprefix('crashed: ')}); its row is recorded in "
                                   f"{Path(out) / 'linear.json'}: re-run with --resume to measure the rest") from None
        rows += new
        _write_tables(rows, device, dtype, Path(out), roofs, notes)
        if progress is not None:
            progress(f"[{i + 1}/{len(shapes)}] {shape.name}: " + ", ".join(
                f"{r['backend']} {r['ms']:.3g} ms" if r["ms"] else f"{r['backend']} {r['status']}" for r in new))
    return _write_tables(rows, device, dtype, Path(out), roofs, notes) if rows else ""
