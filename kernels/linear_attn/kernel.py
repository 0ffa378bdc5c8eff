"""linear_attn in Triton.

Non-causal (diffusion models: SANA's ReLU linear attention, or any self-attention swapped to ``linear``): two
fused passes. Pass 1 splits the tokens over programs; each reduces φ(K)ᵀV (d × dv) and Σφ(K) (d) for its slice
in fp32 and adds them into one state per (batch, head) with atomics. Pass 2 recomputes φ(Q) per query block
and writes φ(Q)U / (φ(Q)·z + ε). The feature maps are applied on load, so φ(K) and φ(Q) never reach memory.

Causal (autoregressive token models): one program per (batch, head, dv block) walks the sequence in chunks,
keeping the running state in registers: intra-chunk (φQ φKᵀ ⊙ mask) V plus φQ S, then S += φKᵀ V. Only
the final outputs are written; no per-chunk state is materialised.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

FEATURES = {"relu": 0, "elu1": 1}


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    if FEATURE == 0:
        return tl.maximum(x, 0.0)
    return tl.where(x > 0, x + 1.0, tl.exp(x))


@triton.jit
def _linear_attn_state_kernel(K, V, U, Z, SKV, tokens_per_program,
                              stride_kb, stride_kh, stride_kn, stride_kd,
                              stride_vb, stride_vh, stride_vn, stride_vd,
                              H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                              FEATURE: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_bh = tl.program_id(0)  # batch·head on axis 0 (no 65 535 limit there)
    pid_n = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_e = tl.arange(0, BDV)
    u = tl.zeros([BD, BDV], dtype=tl.float32)
    z = tl.zeros([BD], dtype=tl.float32)
    start = pid_n * tokens_per_program  # a runtime bound: one compiled kernel serves every sequence length
    for s in range(start, start + tokens_per_program, BLOCK_N):
        offs_n = s + tl.arange(0, BLOCK_N)
        n_ok = offs_n < SKV
        kt = tl.load(K + b * stride_kb + h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=n_ok[None, :] & (offs_d[:, None] < D), other=0.0).to(tl.float32)
        kt = tl.where(n_ok[None, :] & (offs_d[:, None] < D), _phi(kt, FEATURE), 0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_vd,
                    mask=n_ok[:, None] & (offs_e[None, :] < DV), other=0.0).to(tl.float32)
        u += tl.dot(kt, v)
        z += tl.sum(kt, 1)
    base = pid_bh * BD * BDV
    tl.atomic_add(U + base + offs_d[:, None] * BDV + offs_e[None, :], u)
    tl.atomic_add(Z + pid_bh * BD + offs_d, z)


@triton.jit
def _linear_attn_out_kernel(Q, U, Z, O, SQ, eps,
                            stride_qb, stride_qh, stride_qm, stride_qd,
                            stride_ob, stride_oh, stride_om, stride_od,
                            H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                            FEATURE: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BD)
    offs_e = tl.arange(0, BDV)
    m_ok = offs_m < SQ
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    q = tl.where(offs_d[None, :] < D, _phi(q, FEATURE), 0.0)
    u = tl.load(U + pid_bh * BD * BDV + offs_d[:, None] * BDV + offs_e[None, :])
    z = tl.load(Z + pid_bh * BD + offs_d)
    num = tl.dot(q, u)
    den = tl.sum(q * z[None, :], 1) + eps
    out = num / den[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_e[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & (offs_e[None, :] < DV))


@triton.jit
def _linear_attn_causal_kernel(Q, K, V, O, N, eps,
                               stride_qb, stride_qh, stride_qm, stride_qd,
                               stride_kb, stride_kh, stride_kn, stride_kd,
                               stride_vb, stride_vh, stride_vn, stride_vd,
                               stride_ob, stride_oh, stride_om, stride_od,
                               H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                               FEATURE: tl.constexpr, CHUNK: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_e = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    offs_c = tl.arange(0, CHUNK)
    d_ok = offs_d < D
    e_ok = offs_e < DV
    state = tl.zeros([BD, BDV], dtype=tl.float32)
    zsum = tl.zeros([BD], dtype=tl.float32)
    tri = offs_c[:, None] >= offs_c[None, :]
    for s in range(0, N, CHUNK):
        offs_n = s + offs_c
        n_ok = offs_n < N
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_n[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        q = tl.where(d_ok[None, :], _phi(q, FEATURE), 0.0)
        kt = tl.load(K + b * stride_kb + h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0).to(tl.float32)
        kt = tl.where(n_ok[None, :] & d_ok[:, None], _phi(kt, FEATURE), 0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_vd,
                    mask=n_ok[:, None] & e_ok[None, :], other=0.0).to(tl.float32)
        a = tl.where(tri, tl.dot(q, kt), 0.0)
        num = tl.dot(a, v) + tl.dot(q, state)
        den = tl.sum(a, 1) + tl.sum(q * zsum[None, :], 1) + eps
        tl.store(O + b * stride_ob + h * stride_oh + offs_n[:, None] * stride_om + offs_e[None, :] * stride_od,
                 (num / den[:, None]).to(O.dtype.element_ty), mask=n_ok[:, None] & e_ok[None, :])
        state += tl.dot(kt, v)
        zsum += tl.sum(kt, 1)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, feature: str = "relu",
                eps: float = 1e-6) -> torch.Tensor:
    """Linear attention forward.

    Args:
        q: [B, H, Sq, D]; k: [B, H, Skv, D]; v: [B, H, Skv, Dv] (fp16, bf16 or fp32; any strides).
        causal: prefix sums over tokens (needs Sq == Skv).
        feature: ``relu`` or ``elu1``.
        eps: added to the normaliser.

    Returns:
        [B, H, Sq, Dv] in q's dtype.
    """
    if feature not in FEATURES:
        raise ValueError(f"unknown feature map {feature!r}; valid: {', '.join(FEATURES)}")
    b, h, sq, d = q.shape
    skv, dv = k.shape[2], v.shape[-1]
    if k.shape != (b, h, skv, d) or v.shape[:3] != (b, h, skv):
        raise ValueError(f"linear_attn: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if d > 256 or dv > 256:
        raise ValueError(f"linear_attn: head dims {d}/{dv} > 256")
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    o = torch.empty((b, h, sq, dv), dtype=q.dtype, device=q.device)
    f = FEATURES[feature]
    if causal:
        if sq != skv:
            raise ValueError("causal linear attention needs as many queries as keys")
        bdv_c = min(bdv, 64)
        grid = (b * h, triton.cdiv(dv, bdv_c))
        _linear_attn_causal_kernel[grid](q, k, v, o, sq, eps, *q.stride(), *k.stride(), *v.stride(), *o.stride(), h,
                                         D=d, DV=dv, BD=bd, BDV=bdv_c, FEATURE=f,
                                         CHUNK=16 if _interpreting() else 64, num_warps=4)
        return o
    u = torch.zeros((b * h, bd, bdv), dtype=torch.float32, device=q.device)
    z = torch.zeros((b * h, bd), dtype=torch.float32, device=q.device)
    block_n = 16 if _interpreting() else 64
    # enough programs to fill the GPU, few enough that the atomics stay cheap
    per_program = max(block_n, triton.cdiv(triton.cdiv(skv, max(1, 1024 // (b * h))), block_n) * block_n)
    grid1 = (b * h, triton.cdiv(skv, per_program))
    _linear_attn_state_kernel[grid1](k, v, u, z, skv, per_program, *k.stride(), *v.stride(), h, D=d, DV=dv, BD=bd,
                                     BDV=bdv, FEATURE=f, BLOCK_N=block_n)
    block_m = 16 if _interpreting() else 64
    grid2 = (b * h, triton.cdiv(sq, block_m))
    _linear_attn_out_kernel[grid2](q, u, z, o, sq, eps, *q.stride(), *o.stride(), h, D=d, DV=dv, BD=bd, BDV=bdv,
                                   FEATURE=f, BLOCK_M=block_m)
    return o
