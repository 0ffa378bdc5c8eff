"""FLOPs and minimum bytes from recorded shapes (docs/conventions.md, "FLOPs and bytes").

Computed per top-level aten op from the profiler's ``Input Dims`` / ``Concrete Inputs`` / ``Input type``,
and per attention-core call from its scope label, so custom attention kernels are counted too.
Bytes are the minimum traffic: inputs read once, output written once.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from mmchar.scopes import parse_attention_label
from mmchar.taxonomy import classify

_ELEM = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "BFloat16": 2, "Half": 2,
         "c10::Float8_e4m3fn": 1, "c10::Float8_e5m2": 1, "long int": 8, "int": 4}

Cost = tuple[float, float]  # (flops, bytes); NaN where unknown
_UNKNOWN: Cost = (math.nan, math.nan)


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


def _elem(types: Any) -> int:
    if types:
        for t in types:
            if t in _ELEM:
                return _ELEM[t]
    return 4


def _concrete(concrete: Any, i: int, default: Any) -> Any:
    try:
        v = concrete[i]
    except (IndexError, TypeError):
        return default
    if v in ("", None):
        return default
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v  # strings such as 'same'


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(v) if len(v) == n else tuple(v) * n if len(v) == 1 else tuple([v[0]] * n)
    return (int(v),) * n


def _conv(dims: list[list[int]], concrete: Any, elem: int, idx: dict[str, int], transposed: bool = False) -> Cost:
    x, w = dims[0], dims[1]
    if len(x) < 3 or len(w) < 3:
        return _UNKNOWN
    nsp = len(x) - 2
    n, cin, spatial = x[0], x[1], x[2:]
    k = w[2:]
    stride = _tuple(_concrete(concrete, idx["stride"], 1), nsp)
    padding = _concrete(concrete, idx["padding"], 0)
    dilation = _tuple(_concrete(concrete, idx["dilation"], 1), nsp)
    groups = int(_concrete(concrete, idx["groups"], 1) or 1)
    if "transposed" in idx:
        transposed = bool(_concrete(concrete, idx["transposed"], False))
    if transposed:
        cout = w[1] * groups
        out = [(s - 1) * st + d * (kk - 1) + 1 for s, st, d, kk in zip(spatial, stride, dilation, k)]
        flops = 2.0 * n * cin * _prod(spatial) * (cout // groups) * _prod(k)
    else:
        cout = w[0]
        if padding == "same":
            out = [math.ceil(s / st) for s, st in zip(spatial, stride)]
        else:
            pad = (0,) * nsp if padding == "valid" else _tuple(padding, nsp)
            out = [(s + 2 * p - d * (kk - 1) - 1) // st + 1 for s, p, d, kk, st in zip(spatial, pad, dilation, k, stride)]
        flops = 2.0 * n * cout * _prod(out) * (cin // groups) * _prod(k)
    out_numel = n * cout * _prod(out)
    return flops, float((_prod(x) + _prod(w) + out_numel) * elem)


def _mm(a: list[int], b: list[int], elem: int) -> Cost:
    if len(a) < 1 or len(b) < 1:
        return _UNKNOWN
    if len(b) == 1:  # matrix @ vector
        m, kk, n = _prod(a[:-1]), a[-1], 1
        batch = 1
    else:
        kk, n = b[-2], b[-1]
        m = a[-2] if len(a) >= 2 else 1
        batch = max(_prod(a[:-2]) if len(a) > 2 else 1, _prod(b[:-2]) if len(b) > 2 else 1)
    flops = 2.0 * batch * m * kk * n
    return flops, float((_prod(a) + _prod(b) + batch * m * n) * elem)


def op_cost(name: str, dims: Any, concrete: Any, types: Any) -> Cost:
    """(FLOPs, bytes) of one top-level aten op from its recorded inputs; NaN for ops with no model here."""
    if not dims:
        return _UNKNOWN
    elem = _elem(types)
    try:
        if name == "aten::linear":
            x, w = dims[0], dims[1]
            m, kk, n = _prod(x[:-1]), x[-1], w[0]
            return 2.0 * m * kk * n, float((m * kk + n * kk + m * n) * elem)
        if name in ("aten::matmul", "aten::mm", "aten::bmm"):
            return _mm(dims[0], dims[1], elem)
        if name in ("aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"):
            return _mm(dims[1], dims[2], elem)
        if name in ("aten::conv1d", "aten::conv2d", "aten::conv3d"):
            return _conv(dims, concrete, elem, {"stride": 3, "padding": 4, "dilation": 5, "groups": 6})
        if name in ("aten::convolution", "aten::_convolution"):
            return _conv(dims, concrete, elem, {"stride": 3, "padding": 4, "dilation": 5, "transposed": 6, "groups": 8})
        if name in ("aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d"):
            return _conv(dims, concrete, elem, {"stride": 3, "padding": 4, "dilation": 7, "groups": 6}, transposed=True)
        if name == "aten::scaled_dot_product_attention":
            return attention_cost(dims[0], dims[1], dims[2], bool(_concrete(concrete, 5, False)), elem)
        if name in ("aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_for_cpu"):
            return attention_cost(dims[0], dims[1], dims[2], bool(_concrete(concrete, 4, False)), elem)
        if name in ("aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention"):
            return attention_cost(dims[0], dims[1], dims[2], bool(_concrete(concrete, 6, False)), elem)
        if classify("", name) == "communication":  # a collective: its payload, read once (no FLOPs counted)
            nested = any(isinstance(d, list) and d and isinstance(d[0], list) for d in dims)
            if nested and not any(t in _ELEM for t in (types or ())):
                return _UNKNOWN  # a tensor list (c10d P2P, all_gather) records no dtype: unknown, not a guess
            tensors = [t for d in dims if isinstance(d, list) and d
                       for t in (d if isinstance(d[0], list) else [d])]  # tensor lists flattened
            sizes = [_prod(t) for t in tensors if t]
            return (0.0, float(max(sizes) * elem)) if sizes else _UNKNOWN
    except (IndexError, TypeError, ValueError, ZeroDivisionError):
        return _UNKNOWN
    return _UNKNOWN


def attention_cost(q: list[int], k: list[int], v: list[int], causal: bool, elem: int) -> Cost:
    """Softmax attention: 2·B·H·Sq·Skv·(D + Dv) (= 4·B·H·Sq·Skv·d), half for causal; q, k, v, out moved once."""
    b, h, sq, d = q[0], q[1], q[-2], q[-1]
    skv, dv = k[-2], v[-1]
    flops = 2.0 * b * h * sq * skv * (d + dv) * (0.5 if causal else 1.0)
    return flops, float(_qkvo_elements(b, h, sq, skv, d, dv) * elem)


def _qkvo_elements(b: int, h: int, sq: int, skv: int, d: int, dv: int) -> int:
    """Elements of q, k, v and the output, each moved once: the minimum traffic of every attention kind."""
    return b * h * (sq * d + skv * d + skv * dv + sq * dv)


def attention_label_cost(label: str) -> Cost:
    """Cost of one attention-core call from its scope label (`mmchar.scopes.attention_label`)."""
    c = parse_attention_label(label)
    if c is None:
        return _UNKNOWN
    return attention_cost([c.b, c.h, c.sq, c.d], [c.b, c.h, c.skv, c.d], [c.b, c.h, c.skv, c.dv], c.causal, c.elem)


def linear_cost(tokens: int, n_in: int, n_out: int, elem: int, weight_elem: int | None = None) -> Cost:
    """A dense linear layer on ``tokens`` rows: 2·tokens·in·out FLOPs; input and output once, the weight once (in
    its own element size: a quantised copy moves fewer bytes). A projection backend's default cost."""
    moved = (tokens * (n_in + n_out)) * elem + n_in * n_out * (elem if weight_elem is None else weight_elem)
    return 2.0 * tokens * n_in * n_out, float(moved)


def linear_attention_cost(b: int, h: int, sq: int, skv: int, d: int, dv: int, elem: int) -> Cost:
    """Linear attention: feature maps (q and k), the state reduction φ(K)ᵀV and Σφ(K), the output pass φ(Q)U and
    its normaliser — 2·B·H·(Skv·d·dv + Sq·d·dv) + the map and sum terms; q, k, v, out moved once."""
    flops = b * h * (2.0 * skv * d * dv + skv * d + 2.0 * sq * d * dv + 2.0 * sq * d + (sq + skv) * d)
    return flops, float(_qkvo_elements(b, h, sq, skv, d, dv) * elem)


def wersa_cost(b: int, h: int, sq: int, skv: int, d: int, m: int, c: int, levels: int, elem: int) -> Cost:
    """WERSA (docs/kernels/wersa.md, "Cost"): per token and head the random features (2·d·m each for q and k),
    the state (2·m·d) and output (2·m·d + 2·m) passes, GELU and the Haar filter (~4·(L+1)·d); plus the gain
    generator per token (depthwise conv 2·33·C, MLP 2·C·C/4 + 2·C/4·(L+1)) and the LayerNorm (~8·d)."""
    per_q = 2 * d * m + 2 * m * d + 2 * m + 4 * (levels + 1) * d + 8 * d
    per_k = 2 * d * m + 2 * m * d + 4 * (levels + 1) * d
    gains = 2 * 33 * c + 2 * c * (c // 4) + 2 * (c // 4) * (levels + 1)
    filtered_tokens = sq + (skv if skv != sq else 0)
    flops = b * h * (sq * per_q + skv * per_k) + b * filtered_tokens * gains
    moved = _qkvo_elements(b, h, sq, skv, d, d) + b * filtered_tokens * c  # + the filter source x
    return float(flops), float(moved * elem)


def mlstm_cost(b: int, h: int, t: int, dqk: int, dv: int, c: int, directions: int, elem: int,
               chunk: int = 256) -> Cost:
    """mLSTMsig computed chunkwise (TFLA; docs/kernels/mlstm.md; ``chunk``: the kernel's default L): per head and
    token the intra-chunk causal part (on average chunk/2 keys, 2·dqk + 2·dv each), the state's update and read (k vᵀ and qᵀC: 4·dqk·dv), and the
    gates' projection from the host's C channels (2·C·2 per head); ``directions`` scans (2: bidirectional).
    q, k, v, out and the two gates moved once per scan."""
    per_token = chunk / 2 * (2 * dqk + 2 * dv) + 4 * dqk * dv + 4 * c
    flops = directions * b * h * t * per_token
    moved = directions * (_qkvo_elements(b, h, t, t, dqk, dv) + 2 * b * h * t)
    return float(flops), float(moved * elem)


def rwkv7_cost(b: int, h: int, t: int, d: int, c: int, rank: int, directions: int, elem: int) -> Cost:
    """RWKV-7's state update (docs/kernels/rwkv7.md): per head and token S·diag(w), the rank-one removal
    (S·aᵀ then ·b: 4·d²), the write vᵀk (2·d²) and the read S·r (2·d²), ~9·d²; plus per token the low-rank decay
    and learning-rate projections (2·(2·C·r + 2·r·H·d)) and the key's normalisation; ``directions`` scans.
    r, w, k, v, a, b and out moved once per scan."""
    per_token_head = 9 * d * d + 6 * d
    projections = 2 * (2 * c * rank + 2 * rank * h * d)
    flops = directions * (b * h * t * per_token_head + b * t * projections)
    moved = directions * b * h * t * d * 7
    return float(flops), float(moved * elem)


def lla_cost(b: int, h: int, sq: int, skv: int, d: int, cg_iters: int, causal: bool, elem: int) -> Cost:
    """Local Linear Attention computed matrix-free (FlashLLA; docs/kernels/lla.md): per query and key the softmax
    pass with the first moments (q·k, p·v, p·k: 6·d), each conjugate-gradient iteration one more pass applying the
    key covariance ((k − k̄)·x, then p·(k − k̄)·(…): 4·d), and the final cross-covariance pass (4·d); causal: half
    the pairs. q, k, v, out moved once."""
    pairs = sq * skv / 2 if causal else sq * skv
    flops = b * h * pairs * 2 * d * (5 + 2 * cg_iters)
    return float(flops), float(_qkvo_elements(b, h, sq, skv, d, d) * elem)
