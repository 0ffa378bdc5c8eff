"""lla: Local Linear Attention forward in Triton, FlashLLA-style (docs/kernels/lla.md; maths and sources in
kernels/lla/reference.py).

One program per (batch·head, query block), query blocks fastest (as triton_flash: the programs resident at once
share a head's keys in L2). The program keeps its queries and their per-query moments on chip and streams the
key/value tiles of its head several times; nothing of size S × S or S × D × D reaches memory:

1. softmax pass (online softmax, FlashAttention): the running max and sum, and Σ p·k, Σ p·v rescaled as the max
   grows, give k̄, v̄ and the log-sum-exp, after which every later pass forms the *normalised* weights
   p = exp2(s − lse) of a tile directly, with no rescaling;
2. ``cg_iters`` conjugate-gradient iterations on (Σ_i + λI) x = q_i − k̄_i (FlashLLA's matrix-free solve: the
   authors' ``flashlla/ops/cg.py`` applies their query-centred system the same way), each one pass over the keys
   computing Σ_i d = Σ_j p_ij t_ij k_j − k̄_i Σ_j p_ij t_ij with t_ij = k_j·d_i − k̄_i·d_i: three tile products
   (the score, d·kᵀ, (p ⊙ t)·k); the CG scalars and vectors (x, residual, direction) stay in fp32 registers;
3. the output pass: b_i = v̄_i + C_i x = v̄_i + Σ_j p_ij t_ij v_j − v̄_i Σ_j p_ij t_ij with t from x.

Products run in the input dtype with fp32 accumulation (fp32 inputs: exact fp32, not TF32). The direction d is
scaled to a max-norm of 1 per query before it is cast (d shrinks with the residual; fp16 would lose it to
underflow) and the scale is put back after the product. Head dims 1..128 are padded in registers to the next
power of two (≥ 16); the pad columns load as zeros and stay zero through every pass. Causal is top-left aligned
(needs Sq = Skv) and only visits key tiles at or before the query block. Under TRITON_INTERPRET=1 (CPU tests)
one fixed small config runs; on a GPU a short pruned config list is autotuned per (sequence buckets, head dim,
causal, iterations), each tile shape twice: key/value tiles loaded by pointer, and (bf16/fp16 on Hopper, where
``tuning.tma_allowed``) by per-head tensor descriptors, as triton_flash does: the copy engine zero-fills what the
masks would, and the loads cost no address registers in a kernel whose registers are the limit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmchar.kernels.lla.reference import CG_RTOL, DEFAULT_CG_ITERS, DEFAULT_RIDGE_LAMBDA, check_inputs
from mmchar.kernels.tuning import autotune, bucket, ensure_descriptor_scratch, interpreting, tma_allowed

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


@triton.jit
def _scores(q, k, offs_m, offs_n, SKV, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr):
    """q·kᵀ of one tile, -inf where the key is past the end or (causal) after the query; unmasked tiles (whole,
    in bounds, at or before the query block) skip the compares."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC)
    if MASKED:
        keep = (offs_n < SKV)[None, :]
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= offs_n[None, :])
        s = tl.where(keep, s, float("-inf"))
    return s


@triton.jit
def _load_tile(src, start_n, offs_n, offs_d, stride_n, stride_d, SKV, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr):
    """A [BLOCK_N, BLOCK_D] key or value tile; rows past the end and pad columns load as zeros. With TMA ``src``
    is the head's tensor descriptor (the copy engine zero-fills), without it the head's base pointer."""
    if TMA:
        tile = src.load([start_n, 0])
    else:
        ptrs = src + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
        if MASKED:
            if BLOCK_D != HEAD_DIM:
                tile = tl.load(ptrs, mask=(offs_n < SKV)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
            else:
                tile = tl.load(ptrs, mask=(offs_n < SKV)[:, None], other=0.0)
        else:
            if BLOCK_D != HEAD_DIM:
                tile = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
            else:
                tile = tl.load(ptrs)
    return tile


@triton.jit
def _moments_block(acc_k, acc_v, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_d, stride_kn, stride_kd,
                   stride_vn, stride_vd, qk_scale, SKV, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
                   TMA: tl.constexpr):
    """Pass 1, one key/value tile of the online softmax (FlashAttention's recurrence, as triton_flash): Σ p·k and
    Σ p·v accumulate together, both rescaled when the running max grows."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(k_base, start_n, offs_n, offs_d, stride_kn, stride_kd, SKV, HEAD_DIM, BLOCK_D, MASKED, TMA)
    s = _scores(q, k, offs_m, offs_n, SKV, MASKED, CAUSAL, PREC)
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_tile(v_base, start_n, offs_n, offs_d, stride_vn, stride_vd, SKV, HEAD_DIM, BLOCK_D, MASKED, TMA)
    acc_k = tl.dot(p.to(k.dtype), k, acc_k * alpha[:, None], input_precision=PREC)
    acc_v = tl.dot(p.to(v.dtype), v, acc_v * alpha[:, None], input_precision=PREC)
    return acc_k, acc_v, l_i, m_new


@triton.jit
def _centred_block(acc, tsum, q, xh, kx, lse, k_base, w_base, start_n, offs_m, offs_d, stride_kn, stride_kd,
                   stride_wn, stride_wd, qk_scale, SKV, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
                   W_IS_K: tl.constexpr, TMA: tl.constexpr):
    """One key tile of Σ_j p_ij t_ij w_j and Σ_j p_ij t_ij, t_ij = k_j·x̂_i − k̄_i·x̂_i (``kx`` = k̄·x̂), with the
    normalised weights recomputed from the score and the log-sum-exp. w = k (a CG pass: Σ_i x̂) or v (the output
    pass: C_i x̂); for w = k the key tile is used twice and loaded once."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(k_base, start_n, offs_n, offs_d, stride_kn, stride_kd, SKV, HEAD_DIM, BLOCK_D, MASKED, TMA)
    s = _scores(q, k, offs_m, offs_n, SKV, MASKED, CAUSAL, PREC)
    p = tl.math.exp2(s * qk_scale - lse[:, None])  # masked: exp2(-inf) = 0
    t = tl.dot(xh, tl.trans(k), input_precision=PREC) - kx[:, None]
    u = p * t
    tsum += tl.sum(u, 1)
    if W_IS_K:
        w = k
    else:
        w = _load_tile(w_base, start_n, offs_n, offs_d, stride_wn, stride_wd, SKV, HEAD_DIM, BLOCK_D, MASKED,
                       TMA)
    acc = tl.dot(u.to(w.dtype), w, acc, input_precision=PREC)
    return acc, tsum


@triton.jit
def _centred_pass(x, kbar, wbar, q, lse, k_base, w_base, full, hi, offs_m, offs_d, stride_kn, stride_kd,
                  stride_wn, stride_wd, qk_scale, SKV, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
                  W_IS_K: tl.constexpr, TMA: tl.constexpr):
    """Σ_j p_ij (w_j − w̄_i)((k_j − k̄_i)·x_i) for the block's queries by one pass over the keys. x is scaled to
    a max-norm of 1 per query before it is cast to the input dtype and the scale is applied to the result."""
    xn = tl.max(tl.abs(x), 1)
    xn = tl.where(xn > 0, xn, 1.0)
    xh = (x / xn[:, None]).to(q.dtype)
    kx = tl.sum(kbar * xh.to(tl.float32), 1)  # k̄ meets the rounded x̂ that k meets: t stays exactly centred
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    tsum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, full, BLOCK_N):
        acc, tsum = _centred_block(acc, tsum, q, xh, kx, lse, k_base, w_base, start_n, offs_m, offs_d,
                                   stride_kn, stride_kd, stride_wn, stride_wd, qk_scale, SKV, HEAD_DIM, BLOCK_D,
                                   BLOCK_N, False, CAUSAL, PREC, W_IS_K, TMA)
    for start_n in range(full, hi, BLOCK_N):  # the partial last tile and the causal diagonal tiles
        acc, tsum = _centred_block(acc, tsum, q, xh, kx, lse, k_base, w_base, start_n, offs_m, offs_d,
                                   stride_kn, stride_kd, stride_wn, stride_wd, qk_scale, SKV, HEAD_DIM, BLOCK_D,
                                   BLOCK_N, True, CAUSAL, PREC, W_IS_K, TMA)
    return (acc - wbar * tsum[:, None]) * xn[:, None]


@triton.jit
def _lla_fwd_kernel(
    Q, K, V, O, qk_scale, ridge, cg_tol2,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, SQ, SKV, CG_ITERS,
    SQ_BUCKET, SKV_BUCKET, TMA_OK,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
):
    n_m = tl.cdiv(SQ, BLOCK_M)
    pid = tl.program_id(0)
    pid_bh = pid // n_m
    pid_m = pid % n_m
    if CAUSAL:  # the longest rows first, the short ones fill in
        pid_m = n_m - 1 - pid_m
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    if TMA:  # one 2-D descriptor per head for the keys and the values; the queries load once, by pointer
        k_base = tl.make_tensor_descriptor(k_base, shape=[SKV, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        v_base = tl.make_tensor_descriptor(v_base, shape=[SKV, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
    # rows past the end load as zero queries: their weights are uniform and every pass stays finite; never stored
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=(offs_m[:, None] < SQ) & d_ok[None, :], other=0.0)
    # keys [0, full) need no mask: whole tiles, in bounds and (causal) at or before the block's first query
    hi = SKV
    if CAUSAL:
        hi = tl.minimum(SKV, (pid_m + 1) * BLOCK_M)
        full = tl.minimum(SKV, pid_m * BLOCK_M) // BLOCK_N * BLOCK_N
    else:
        full = SKV // BLOCK_N * BLOCK_N

    # 1. softmax pass: k̄, v̄ and the log-sum-exp (base 2, scale folded in)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    kbar = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    vbar = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, full, BLOCK_N):
        kbar, vbar, l_i, m_i = _moments_block(kbar, vbar, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_d,
                                              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, SKV,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, PREC, TMA)
    for start_n in range(full, hi, BLOCK_N):
        kbar, vbar, l_i, m_i = _moments_block(kbar, vbar, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_d,
                                              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, SKV,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, PREC, TMA)
    kbar = kbar / l_i[:, None]
    vbar = vbar / l_i[:, None]
    lse = m_i + tl.math.log2(l_i)

    # 2. conjugate gradients on (Σ + λI) x = q − k̄ from x = 0, the recurrence of reference._cg line by line
    x = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    r = q.to(tl.float32) - kbar
    d = r
    rr = tl.sum(r * r, 1)
    thresh = cg_tol2 * rr
    for _ in range(CG_ITERS):
        ad = _centred_pass(d, kbar, kbar, q, lse, k_base, k_base, full, hi, offs_m, offs_d, stride_kn, stride_kd,
                           stride_kn, stride_kd, qk_scale, SKV, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, PREC,
                           True, TMA) + ridge * d
        dad = tl.sum(d * ad, 1)
        active = (rr > thresh) & (dad > 0)
        alpha = tl.where(active, rr / tl.where(active, dad, 1.0), 0.0)
        x += alpha[:, None] * d
        r -= alpha[:, None] * ad
        rr_new = tl.sum(r * r, 1)
        beta = tl.where(active, rr_new / tl.where(active, rr, 1.0), 0.0)
        d = r + beta[:, None] * d
        rr = rr_new

    # 3. output pass: b = v̄ + C x
    out = vbar + _centred_pass(x, kbar, vbar, q, lse, k_base, v_base, full, hi, offs_m, offs_d, stride_kn,
                               stride_kd, stride_vn, stride_vd, qk_scale, SKV, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
                               CAUSAL, PREC, False, TMA)
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < SQ) & d_ok[None, :])


# (BLOCK_M, BLOCK_N, warps, stages). Register pressure decides: a CG pass holds two fp32 [BLOCK_M, BLOCK_N] tiles
# (the score and t) besides the [BLOCK_M, D] accumulator and operands, and k̄, v̄, x, the residual and the
# direction live across the passes; fp32 inputs spill at every size (exactness, not speed).
_CONFIGS = [(64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2), (32, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 2),
            (32, 32, 8, 2), (32, 32, 4, 2), (16, 64, 8, 2), (16, 32, 4, 2), (16, 64, 4, 2)]
# the candidates per padded head dim (32 and below take all). First chosen as the ones that compile for sm_90
# without spills; the H200 then showed that the largest query block wins although it spills: at d = 64,
# (128, 64, 8) runs 3.0x faster than the best spill-free tile (8.9 against 26.1 ms, B1 H16 S4096, 32 iterations;
# benchmarks/results/attention/mixers-h200-2026-12-05/tune_lla_d64.txt): each key tile then serves twice the
# queries, and the kernel is latency-bound at one 8-warp program per SM either way (Nsight Compute: 12.5 %
# occupancy, tensor pipe 40 % busy). d = 128 takes its 64- and 128-row blocks: on an H100 (B1 H16 S4096, 32
# iterations; mixers-h200-2026-12-05/h100-session3/tune_lla_d128_h100.txt) (128, 64, 8) runs 18.0 ms against
# 28.6 for the best 64-row tile, although it spills (255 registers, 11 M spill requests).
_CANDIDATES = {64: {(64, 64, 8), (64, 32, 8), (32, 64, 8), (32, 32, 8), (32, 32, 4), (16, 64, 8), (16, 32, 4),
                    (16, 64, 4), (128, 64, 8)},
               128: {(32, 32, 8), (16, 64, 8), (16, 32, 4), (64, 64, 8), (64, 32, 8), (128, 64, 8), (128, 32, 8)}}
# descriptor loads stay off 128-row blocks: there the H200 (Triton 3.6) returned a wrong result (relative
# difference 0.51 against the pointer path; every smaller tile agreed to 1e-3)
_TMA_MAX_BLOCK_M = 64


# the same tiles with the key/value tiles brought in by the Hopper copy engine (tensor descriptors, as
# triton_flash's TMA path): no address or mask registers, and copies the pipeliner can issue ahead of use
def _configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TMA": tma}, num_warps=w, num_stages=s)
            for tma in (False, True) for bm, bn, w, s in _CONFIGS]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The head dim's candidate tiles (_CANDIDATES); sequences up to 32 queries take 16-row blocks and longer
    ones do only where nothing larger fits (d = 128 keeps them as candidates); no key tile longer than the keys'
    bucket (or 32)."""
    d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    sq, skv = named_args["SQ_BUCKET"], named_args["SKV_BUCKET"]
    keep = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if c.kwargs["TMA"] and (not named_args["TMA_OK"] or bm > _TMA_MAX_BLOCK_M):
            continue
        if d in _CANDIDATES and (bm, bn, c.num_warps) not in _CANDIDATES[d]:
            continue
        if (sq <= 32 and bm != 16) or (bm == 16 and sq > 32 and d < 128):
            continue
        if bn > max(32, skv):
            continue
        keep.append(c)
    loadable = [c for c in configs if named_args["TMA_OK"] or not c.kwargs["TMA"]] or configs
    return keep or [min(loadable, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))]


_KEY = ["SQ_BUCKET", "SKV_BUCKET", "HEAD_DIM", "BLOCK_D", "CAUSAL", "PREC", "CG_ITERS", "TMA_OK"]
_lla_fwd_tuned = autotune(_lla_fwd_kernel, _configs(), _KEY, _prune)
_FORCED = {tma: autotune(_lla_fwd_kernel, [c for c in _configs() if c.kwargs["TMA"] == tma], _KEY, _prune)
           for tma in (False, True)}


def lla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
        ridge_lambda: float = DEFAULT_RIDGE_LAMBDA, scale: float | None = None,
        cg_iters: int = DEFAULT_CG_ITERS, tma: bool | None = None) -> torch.Tensor:
    """Local Linear Attention forward (FlashLLA-style; the maths of ``reference.lla_cg_ref``).

    Args:
        q: [B, H, Sq, D] queries (fp16, bf16, fp32); any strides.
        k: [B, H, Skv, D] keys; Skv may differ from Sq when not causal.
        v: [B, H, Skv, D] values (LLA needs v's head dim equal to q's).
        causal: mask keys after each query (top-left aligned; needs Sq = Skv).
        ridge_lambda: λ ≥ 0 of the ridge on the local slope, on the normalised weights (paper/authors: 10).
        scale: softmax scale of the kernel weights, default 1/sqrt(D).
        cg_iters: conjugate-gradient iterations, each one more pass over the keys (authors: 32).
        tma: None lets the autotuner choose between pointer and descriptor loads where descriptors are allowed
            (``tuning.tma_allowed``); True/False forces one (tests; under the interpreter True runs the
            descriptor path).

    Returns:
        [B, H, Sq, D] in q's dtype, contiguous.

    Raises:
        ValueError: a shape, dtype or parameter the kernel cannot take (head dim > 128, Dv ≠ D, causal with
            Sq ≠ Skv, mixed dtypes, λ < 0).
    """
    check_inputs(q, k, v, causal, ridge_lambda, cg_iters, who="lla")
    d = q.shape[-1]
    if d > MAX_HEAD_DIM:
        raise ValueError(f"lla: head dim {d} > {MAX_HEAD_DIM} (the per-query moments must fit on chip)")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"lla: dtype {q.dtype} (takes float16, bfloat16, float32, all alike)")
    b, h, sq, _ = q.shape
    skv = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    o = torch.empty((b, h, sq, d), dtype=q.dtype, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 in, fp32 maths (no silent TF32)
    if interpreting():
        use_tma = bool(tma)
        if use_tma:
            triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8))
    else:
        allowed = tma_allowed(q, k, v)
        if tma and not allowed:
            raise ValueError("lla: tma=True needs a Hopper GPU, bf16/fp16, a contiguous head dim and 16-byte "
                             "aligned rows")
        use_tma = allowed if tma is None else tma
        if use_tma:
            ensure_descriptor_scratch()
    args = (q, k, v, o, scale * LOG2E, float(ridge_lambda), CG_RTOL * CG_RTOL, *q.stride(), *k.stride(),
            *v.stride(), *o.stride(), h, sq, skv, int(cg_iters), bucket(sq), bucket(skv), int(use_tma))
    if interpreting():
        bm = 16
        _lla_fwd_kernel[(b * h * triton.cdiv(sq, bm),)](*args, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal,
                                                         PREC=prec, BLOCK_M=bm, BLOCK_N=16, TMA=use_tma)
    else:
        grid = lambda meta: (b * h * triton.cdiv(sq, meta["BLOCK_M"]),)  # noqa: E731
        tuned = _lla_fwd_tuned if tma is None else _FORCED[use_tma]  # forced: that path's configs only
        tuned[grid](*args, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal, PREC=prec)
    return o
