"""triton_flash: softmax attention forward, one program per (query block, batch·head).

Each program keeps a block of queries in registers and streams key/value blocks through an online softmax
(running max and sum in fp32, exp2 with log2(e) folded into the scale), so the score matrix never reaches
memory. Head dims that are not powers of two (40, 72, 80, 96, 160) are padded to the next power of two in
registers and masked on load and store; query and key lengths may differ (cross attention); ``causal`` is
top-left aligned like F.scaled_dot_product_attention. Under TRITON_INTERPRET=1 (CPU tests) one fixed config
runs; on a GPU an autotuned, pruned config list keyed by (sequence buckets, head dim, causal) does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmchar.kernels.tuning import autotune, bucket, interpreting

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


@triton.jit
def _online_softmax_block(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_d, stride_kn, stride_kd,
                          stride_vn, stride_vd, qk_scale, SKV, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """One key/value block of the online softmax. MASKED blocks (the last partial block, the causal diagonal)
    check key bounds and causality; every other block runs without a single compare."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASKED:
        kv_mask = offs_n < SKV
    else:
        kv_mask = offs_n >= 0  # all true: folded away
    if BLOCK_D != HEAD_DIM:  # padded head dim: the pad columns load as zeros
        kt_mask = kv_mask[None, :] & (offs_d[:, None] < HEAD_DIM)
        v_mask = kv_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    else:
        kt_mask = kv_mask[None, :]
        v_mask = kv_mask[:, None]
    kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=kt_mask, other=0.0)
    qk = tl.dot(q, kt)
    if MASKED:
        keep = kv_mask[None, :]
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= offs_n[None, :])
        qk = tl.where(keep, qk, float("-inf"))
    # the scale (log2(e) folded in) is applied after the max, in the same multiply-add as the max's subtraction
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=v_mask, other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _triton_flash_fwd_kernel(
    Q, K, V, O, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, SQ, SKV,
    SQ_BUCKET, SKV_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # batch·head on axis 0: temporal attention has B·H·W·... > 65 535 programs
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < SQ) & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # keys [0, full) need no mask: whole blocks, all in bounds, all at or before this query block's first row
    hi = SKV
    if CAUSAL:
        hi = tl.minimum(SKV, (pid_m + 1) * BLOCK_M)
        full = tl.minimum(SKV, pid_m * BLOCK_M) // BLOCK_N * BLOCK_N
    else:
        full = SKV // BLOCK_N * BLOCK_N
    for start_n in range(0, full, BLOCK_N):
        acc, l_i, m_i = _online_softmax_block(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_d,
                                              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, SKV,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL)
    for start_n in range(full, hi, BLOCK_N):  # the partial last block and the causal diagonal blocks
        acc, l_i, m_i = _online_softmax_block(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_d,
                                              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, SKV,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL)
    acc = acc / l_i[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < SQ) & d_ok[None, :])


# (BLOCK_M, BLOCK_N, warps, stages): a short list known to suit Hopper for d = 32..256, plus 16-row blocks
# for temporal attention's few-frame sequences; pruned per problem below so tuning takes seconds per key.
_CONFIGS = [(16, 16, 4, 2), (16, 32, 4, 2), (16, 64, 4, 3),
            (64, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3),
            (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 4, 4), (64, 32, 4, 2)]


def _configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in _CONFIGS]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep the configs that fit the problem: tiny sequences (temporal attention: 16-25 frames) get 16-row
    blocks; big head dims drop the largest tiles (registers); each key-block no longer than the keys."""
    d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    sq = named_args["SQ_BUCKET"]
    skv = named_args["SKV_BUCKET"]
    keep = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if (sq <= 32) != (bm == 16):
            continue
        if bn > max(32, skv):
            continue
        if d >= 256 and (bm > 64 or bn > 64 or c.num_stages > 2):
            continue
        if d >= 128 and bm == 128 and bn == 128 and c.num_stages > 2:
            continue
        keep.append(c)
    return keep or configs[:1]


_triton_flash_fwd_tuned = autotune(_triton_flash_fwd_kernel, _configs(),
                                   ["SQ_BUCKET", "SKV_BUCKET", "BLOCK_D", "CAUSAL"], _prune)


def triton_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 scale: float | None = None) -> torch.Tensor:
    """Softmax attention forward.

    Args:
        q: [B, H, Sq, D] queries (fp16, bf16; fp32 too); any strides.
        k: [B, H, Skv, D] keys; Skv may differ from Sq (cross attention).
        v: [B, H, Skv, D] values (same head dim as q).
        causal: mask keys after each query (top-left aligned).
        scale: softmax scale, default 1/sqrt(D).

    Returns:
        [B, H, Sq, D] in q's dtype, contiguous.

    Raises:
        ValueError: a shape or dtype the kernel cannot take (head dim > 256, mismatched shapes).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("triton_flash takes [B, H, S, D] tensors")
    b, h, sq, d = q.shape
    skv = k.shape[2]
    if k.shape != (b, h, skv, d) or v.shape != (b, h, skv, d):
        raise ValueError(f"triton_flash: k {tuple(k.shape)} and v {tuple(v.shape)} must be [B, H, Skv, {d}] "
                         f"for q {tuple(q.shape)}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"triton_flash: head dim {d} > {MAX_HEAD_DIM}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"triton_flash: dtype {q.dtype} (takes float16, bfloat16, float32, all alike)")
    scale = d ** -0.5 if scale is None else scale
    o = torch.empty((b, h, sq, d), dtype=q.dtype, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))
    args = (q, k, v, o, scale * 1.4426950408889634,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), h, sq, skv, bucket(sq), bucket(skv))
    if interpreting():
        bm = 16
        grid = (b * h, triton.cdiv(sq, bm))
        _triton_flash_fwd_kernel[grid](*args, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=16)
    else:
        grid = lambda meta: (b * h, triton.cdiv(sq, meta["BLOCK_M"]))  # noqa: E731
        _triton_flash_fwd_tuned[grid](*args, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal)
    return o


def attention_flops(b: int, h: int, sq: int, skv: int, d: int, causal: bool) -> float:
    """4·B·H·Sq·Skv·D, half for causal (conventions.md)."""
    return 4.0 * b * h * sq * skv * d * (0.5 if causal else 1.0)
