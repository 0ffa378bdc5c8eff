"""WERSA in Triton: two fused passes per wersa.md's "Cost" section (the gain generator stays cuBLAS/cuDNN work).

The Haar filter of steps 3-5 is linear in the tokens of each aligned block of P = 2^L tokens, with weights set
by the block's gains; `mixing_rows` turns the gains into one row of P weights per token (the filter applied to
the P unit vectors), and the kernels apply it inside a tile as a block-diagonal [BLOCK_N, BLOCK_N] product.

Pass 1 (state), one program per (feature chunk, token slice, batch·head): GELU(k) -> block filter -> features
relu((k_f/τ) Ω_k)/√m for its chunk of m -> U[m_chunk, d] += φᵀ v and z[m_chunk] += Σφ, added into the state
with atomics. Pass 2 (output), one program per (query tile, batch·head): GELU(q) -> filter -> per feature chunk
φ_q U and φ_q·z -> o = num / (den + ε) -> LayerNorm over d in the epilogue. φ never reaches memory.
Causal mode (L = 0, per-token gains) uses materialised features and linear_attn's causal chunk kernel.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mmchar.kernels.wersa.reference import WersaParams, haar_filter


def mixing_rows(gains: torch.Tensor, n: int, levels: int) -> torch.Tensor:
    """[B, n_pad, P] fp32: row t holds the weights of the P tokens of t's block in t's filtered value."""
    p = 1 << levels
    n_pad = -(-n // p) * p
    # channel s of the basis is 1 on the s-th token of every block: filtering it (the filter is linear and
    # block-local) gives, at token t, the weight of its block's s-th token
    eye = torch.eye(p, device=gains.device, dtype=torch.float32).repeat(n_pad // p, 1)[:n]  # [n, P]
    basis = eye[None, None].expand(gains.shape[0], 1, n, p)
    rows = haar_filter(basis, gains.float(), levels)
    return F.pad(rows, (0, 0, 0, n_pad - rows.shape[2]))[:, 0].contiguous()


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _filtered_tile(X, W, base_x, stride_xn, stride_xd, b, start, N, offs_d, D: tl.constexpr,
                   P: tl.constexpr, BLOCK_N: tl.constexpr, NPAD):
    """GELU then the block filter of one aligned tile of tokens: [BLOCK_N, BD] fp32."""
    offs_n = start + tl.arange(0, BLOCK_N)
    x = tl.load(X + base_x + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    x = _gelu(x)
    cols = tl.arange(0, BLOCK_N)
    same_block = (offs_n[:, None] // P) == ((start + cols)[None, :] // P)
    w = tl.load(W + b * NPAD * P + offs_n[:, None] * P + (cols[None, :] % P),
                mask=same_block & (offs_n[:, None] < NPAD), other=0.0)
    return tl.dot(w, x)


@triton.jit
def _wersa_state_kernel(K, V, WK, OMEGA, U, Z, N, NPAD, inv_tau, inv_sqrt_m, tokens_per_program,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        stride_vb, stride_vh, stride_vn, stride_vd,
                        H, M, D: tl.constexpr, BD: tl.constexpr, P: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    pid_bh = tl.program_id(0)  # batch·head on axis 0 (no 65 535 limit there)
    pid_f = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    omega = tl.load(OMEGA + offs_d[:, None] * M + offs_f[None, :], mask=(offs_d[:, None] < D) & (offs_f[None, :] < M),
                    other=0.0)
    u = tl.zeros([BLOCK_F, BD], dtype=tl.float32)
    z = tl.zeros([BLOCK_F], dtype=tl.float32)
    base_k = b * stride_kb + h * stride_kh
    first = pid_n * tokens_per_program  # a runtime bound: one compiled kernel serves every sequence length
    for start in range(first, first + tokens_per_program, BLOCK_N):
        kf = _filtered_tile(K, WK, base_k, stride_kn, stride_kd, b, start, N, offs_d, D, P, BLOCK_N, NPAD)
        phi = tl.maximum(tl.dot(kf * inv_tau, omega), 0.0) * inv_sqrt_m
        offs_n = start + tl.arange(0, BLOCK_N)
        phi = tl.where((offs_n < N)[:, None], phi, 0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0).to(tl.float32)
        u += tl.dot(tl.trans(phi), v)
        z += tl.sum(phi, 0)
    tl.atomic_add(U + pid_bh * M * BD + offs_f[:, None] * BD + offs_d[None, :], u, mask=offs_f[:, None] < M)
    tl.atomic_add(Z + pid_bh * M + offs_f, z, mask=offs_f < M)


@triton.jit
def _wersa_out_kernel(Q, WQ, OMEGA, U, Z, LN_W, LN_B, O, N, NPAD, inv_tau, inv_sqrt_m, eps, ln_eps,
                      stride_qb, stride_qh, stride_qn, stride_qd,
                      stride_ob, stride_oh, stride_on, stride_od,
                      H, M, D: tl.constexpr, BD: tl.constexpr, P: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    start = pid_n * BLOCK_N
    qf = _filtered_tile(Q, WQ, b * stride_qb + h * stride_qh, stride_qn, stride_qd, b, start, N, offs_d, D, P,
                        BLOCK_N, NPAD)
    num = tl.zeros([BLOCK_N, BD], dtype=tl.float32)
    den = tl.zeros([BLOCK_N], dtype=tl.float32)
    for f0 in range(0, M, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        omega = tl.load(OMEGA + offs_d[:, None] * M + offs_f[None, :],
                        mask=(offs_d[:, None] < D) & (offs_f[None, :] < M), other=0.0)
        phi = tl.maximum(tl.dot(qf * inv_tau, omega), 0.0) * inv_sqrt_m
        u = tl.load(U + pid_bh * M * BD + offs_f[:, None] * BD + offs_d[None, :], mask=offs_f[:, None] < M, other=0.0)
        z = tl.load(Z + pid_bh * M + offs_f, mask=offs_f < M, other=0.0)
        num += tl.dot(phi, u)
        den += tl.sum(phi * z[None, :], 1)
    out = num / (den + eps)[:, None]
    d_ok = offs_d < D
    mean = tl.sum(tl.where(d_ok[None, :], out, 0.0), 1) / D
    cen = tl.where(d_ok[None, :], out - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(cen * cen, 1) / D + ln_eps)
    w = tl.load(LN_W + offs_d, mask=d_ok, other=0.0)
    bias = tl.load(LN_B + offs_d, mask=d_ok, other=0.0)
    y = cen * rstd[:, None] * w[None, :] + bias[None, :]
    offs_n = start + tl.arange(0, BLOCK_N)
    tl.store(O + b * stride_ob + h * stride_oh + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od,
             y.to(O.dtype.element_ty), mask=(offs_n[:, None] < N) & d_ok[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def wersa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: WersaParams, *, x_q: torch.Tensor,
          x_k: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """WERSA forward (same contract as `wersa_ref`), the filter, features, state and output fused in Triton.

    Args:
        q, k, v: [B, H, n, d] (v's head dim = d: the LayerNorm is over it).
        params: the layer's WersaParams.
        x_q, x_k: filter sources [B, n, C] of q's and k's tokens (x_k defaults to x_q).
        eps: normaliser ε.
    """
    b, h, n, d = q.shape
    nk = k.shape[2]
    if v.shape[-1] != d:
        raise ValueError("wersa: v's head dim must equal q's")
    x_k = x_q if x_k is None else x_k
    g_q = params.gains(x_q)
    g_k = g_q if x_k is x_q else params.gains(x_k)
    tau = float(F.softplus(params.lam.float()) + 0.1)
    m = params.features
    if params.causal:  # L = 0: per-token gains, prefix sums; features materialised for the causal chunk kernel
        from mmchar.kernels.linear_attn.kernel import linear_attn

        qf = F.gelu(q) * g_q[:, None, :, 0:1].to(q.dtype)
        kf = F.gelu(k) * g_k[:, None, :, 0:1].to(k.dtype)
        fq = torch.relu(torch.matmul(qf / tau, params.omega_q.to(q.dtype))) / math.sqrt(m)
        fk = torch.relu(torch.matmul(kf / tau, params.omega_k.to(k.dtype))) / math.sqrt(m)
        return params.norm(linear_attn(fq, fk, v, causal=True, feature="relu", eps=eps))
    p = 1 << params.levels
    wq = mixing_rows(g_q, n, params.levels)
    wk = wq if g_k is g_q and nk == n else mixing_rows(g_k, nk, params.levels)
    bd = max(16, triton.next_power_of_2(d))
    block_n = 16 if _interpreting() else 64
    block_n = max(block_n, p)
    block_f = 16 if _interpreting() else 64
    u = torch.zeros((b * h, m, bd), dtype=torch.float32, device=q.device)
    z = torch.zeros((b * h, m), dtype=torch.float32, device=q.device)
    omega_k = params.omega_k.float().contiguous()
    omega_q = params.omega_q.float().contiguous()
    per_program = max(block_n, triton.cdiv(triton.cdiv(nk, max(1, 256 // (b * h))), block_n) * block_n)
    grid1 = (b * h, triton.cdiv(m, block_f), triton.cdiv(nk, per_program))
    _wersa_state_kernel[grid1](k, v, wk, omega_k, u, z, nk, wk.shape[1], 1.0 / tau, 1.0 / math.sqrt(m), per_program,
                               *k.stride(), *v.stride(), h, m, D=d, BD=bd, P=p, BLOCK_N=block_n, BLOCK_F=block_f)
    o = torch.empty_like(q)
    grid2 = (b * h, triton.cdiv(n, block_n))
    _wersa_out_kernel[grid2](q, wq, omega_q, u, z, params.norm.weight.float().contiguous(),
                             params.norm.bias.float().contiguous(), o, n, wq.shape[1], 1.0 / tau, 1.0 / math.sqrt(m),
                             eps, params.norm.eps, *q.stride(), *o.stride(), h, m, D=d, BD=bd, P=p, BLOCK_N=block_n,
                             BLOCK_F=block_f)
    return o
