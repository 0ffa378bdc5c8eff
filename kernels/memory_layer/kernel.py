"""MemoryFormer's Memory Layer in Triton: hash, gather and weighted sum in one kernel.

Each program takes a block of tokens × a tile of output columns and walks the K chunks: it loads the block's
τ-wide chunk (τ elements per token, from the row it already touches), hashes it in registers (sign bits → bucket,
weight Π σ(2|z|/t) as exp(−Σ softplus(−2|z|/t))), gathers the bucket rows' column tile from the chunk's table (in
HBM, through L2) and accumulates weight × row in fp32. Nothing but the output reaches memory: the eager form writes
and re-reads a [tokens, d_out] buffer per chunk. With ``normalize`` (the Memory Block's second layer) a first pass
over each token's row computes its LayerNorm mean and 1/σ in fp32; the hash then reads (x − mean)·rstd.

Tokens are the grid's fast axis and column tiles its slow one, so the programs resident at once share one column
tile: its slice of all K tables (K·2^τ·BLOCK_N elements, 12 MB at K = 192, τ = 8, 128 bf16 columns) stays in L2
while every token block gathers from it, and each table byte comes from HBM about once.

What limits it: the gathers. Each token reads K rows of d_out, tokens·K·d_out elements in all (tokens / 2^τ times
the tables), from L2 (L1 where tokens of one block share a bucket): at 16k tokens, K = 192, d_out = 6144 that is
38 GB of L2 traffic against under 1 GB of unique bytes (`memory_layer_cost`), so the copy roof on unique bytes is
not the roof this kernel can reach. The input chunk is re-read once per column tile (d_out / BLOCK_N times):
τ / BLOCK_N of the gather traffic, 6 % at τ = 8 and 128 columns.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmchar.kernels.memory_layer.reference import TEMPERATURE, NORM_EPS, TAU, _check
from mmchar.kernels.tuning import autotune, bucket, interpreting


@triton.jit
def _memory_layer_kernel(X, T, BIAS, Y, N, D_IN, K, stride_xm, stride_ym, two_over_t, eps, NT,
                         D_OUT: tl.constexpr, TAU: tl.constexpr, TAUP: tl.constexpr, NORM: tl.constexpr,
                         HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Per (token block, column tile): y = Σ_k p_k · T_k[h_k] (+ bias). ``NT`` (the bucketed token count) is only
    an autotune key."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < N
    n_ok = offs_n < D_OUT
    rows_x = X + offs_m.to(tl.int64)[:, None] * stride_xm
    if NORM:  # LayerNorm statistics of each token's row, two passes in fp32 (mean, then Σ(x − mean)²)
        offs_d = tl.arange(0, BLOCK_D)
        s = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, D_IN, BLOCK_D):
            ok = m_ok[:, None] & (d0 + offs_d < D_IN)[None, :]
            s += tl.sum(tl.load(rows_x + (d0 + offs_d)[None, :], mask=ok, other=0.0).to(tl.float32), 1)
        mean = s / D_IN
        v = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, D_IN, BLOCK_D):
            ok = m_ok[:, None] & (d0 + offs_d < D_IN)[None, :]
            c = tl.load(rows_x + (d0 + offs_d)[None, :], mask=ok, other=0.0).to(tl.float32) - mean[:, None]
            v += tl.sum(tl.where(ok, c * c, 0.0), 1)
        rstd = 1.0 / tl.sqrt(v / D_IN + eps)
    offs_t = tl.arange(0, TAUP)
    t_ok = offs_t < TAU
    pow2 = tl.where(t_ok, tl.full([TAUP], 1, tl.int32) << offs_t, 0)  # bit i of the bucket: dimension i of the chunk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    x_ok = m_ok[:, None] & t_ok[None, :]
    g_ok = m_ok[:, None] & n_ok[None, :]
    for k in range(K):
        z = tl.load(rows_x + (k * TAU + offs_t)[None, :], mask=x_ok, other=0.0).to(tl.float32)
        if NORM:
            z = (z - mean[:, None]) * rstd[:, None]
        idx = tl.sum(tl.where(z >= 0.0, pow2[None, :], 0), 1)  # padded dims carry a zero power of two
        a = tl.abs(z) * two_over_t
        sp = tl.where(t_ok[None, :], tl.log(1.0 + tl.exp(-a)), 0.0)  # softplus(−a), a ≥ 0: no overflow
        w = tl.exp(-tl.sum(sp, 1))  # Π σ(2|z_i|/t) ∈ [2^−τ, 1)
        row = (k * (1 << TAU) + idx).to(tl.int64) * D_OUT
        vals = tl.load(T + row[:, None] + offs_n[None, :], mask=g_ok, other=0.0).to(tl.float32)
        acc += w[:, None] * vals
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=g_ok)


# Autotuning (GPU only; the interpreter runs one fixed small config): a short list, since the GPU tests tune at
# each shape. Token blocks of 64-128 rows (wider blocks share more buckets in L1, at more registers) × column
# tiles of 64-256 (16-byte and wider row segments per gathered row; wider tiles re-read the input chunk less).
_CONFIGS = [(64, 128, 4, 2), (128, 128, 8, 2), (128, 64, 4, 2), (64, 256, 8, 2), (32, 128, 4, 3)]


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """Column tiles no wider than the padded output (a 64-column layer gains nothing from 256-wide tiles)."""
    widest = max(16, triton.next_power_of_2(kwargs.get("D_OUT", named_args.get("D_OUT", 16))))
    keep = [c for c in configs if c.kwargs["BLOCK_N"] <= widest]
    return keep or [triton.Config({"BLOCK_M": 64, "BLOCK_N": widest}, num_warps=4, num_stages=2)]


_tuned = autotune(_memory_layer_kernel,
                  [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in _CONFIGS],
                  ["D_IN", "D_OUT", "TAU", "NORM", "NT"], _prune)


def memory_layer(x: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None = None, *, tau: int = TAU,
                 temperature: float = TEMPERATURE, normalize: bool = False, eps: float = NORM_EPS) -> torch.Tensor:
    """One Memory Layer forward (the maths of `memory_layer_ref`), fused.

    Args:
        x: [..., K·τ] (fp16, bf16 or fp32; the last dim contiguous or it is copied).
        tables: [K, 2^τ, d_out], contiguous (any float dtype; rows are read and converted to fp32).
        bias: [d_out] or None.
        tau: bits per chunk; temperature: t of the bucket weight; normalize: LayerNorm (no affine) first.

    Returns:
        [..., d_out] in x's dtype.
    """
    k, d_out = _check(x, tables, tau)
    if not tables.is_contiguous():
        raise ValueError("memory_layer: tables must be contiguous")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n, d_in = x2.shape
    y = torch.empty((n, d_out), dtype=x.dtype, device=x.device)
    if n == 0:
        return y.reshape(*lead, d_out)
    args = (x2, tables, bias if bias is not None else y, y, n, d_in, k, x2.stride(0), y.stride(0),
            2.0 / temperature, eps, bucket(n))
    consts = {"D_OUT": d_out, "TAU": tau, "TAUP": max(2, triton.next_power_of_2(tau)), "NORM": normalize,
              "HAS_BIAS": bias is not None, "BLOCK_D": min(256, max(16, triton.next_power_of_2(d_in)))}
    if interpreting():
        meta = {"BLOCK_M": 16, "BLOCK_N": 16}
        grid = (triton.cdiv(n, 16), triton.cdiv(d_out, 16))
        _memory_layer_kernel[grid](*args, **consts, **meta)
    else:
        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(d_out, meta["BLOCK_N"]))
        _tuned[grid](*args, **consts)
    return y.reshape(*lead, d_out)
