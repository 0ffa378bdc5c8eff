"""triton_flash: softmax attention forward, one program per (query block, batch·head), query blocks fastest.

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

from mmchar.kernels.tuning import autotune, bucket, ensure_descriptor_scratch, interpreting, tma_allowed

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


@triton.jit
def _block_scores(q, k_src, start_n, offs_m, offs_d, stride_kn, stride_kd, SKV, HEAD_DIM: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                  TMA: tl.constexpr):
    """q·kᵀ of one key block (unscaled). MASKED blocks (the last partial block, the causal diagonal) check key
    bounds and causality; every other block runs without a single compare. With TMA, ``k_src`` is a tensor
    descriptor (the copy engine zero-fills rows past the keys and the pad columns); without, the head's base
    pointer."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASKED:
        kv_mask = offs_n < SKV
    else:
        kv_mask = offs_n >= 0  # all true: folded away
    if TMA:
        qk = tl.dot(q, tl.trans(k_src.load([start_n, 0])))
    else:
        if BLOCK_D != HEAD_DIM:  # padded head dim: the pad columns load as zeros
            kt_mask = kv_mask[None, :] & (offs_d[:, None] < HEAD_DIM)
        else:
            kt_mask = kv_mask[None, :]
        kt = tl.load(k_src + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=kt_mask, other=0.0)
        qk = tl.dot(q, kt)
    if MASKED:
        keep = kv_mask[None, :]
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= offs_n[None, :])
        qk = tl.where(keep, qk, float("-inf"))
    return qk


@triton.jit
def _softmax_update(acc, l_i, m_i, qk, v_src, start_n, offs_d, stride_vn, stride_vd, qk_scale, SKV,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                    TMA: tl.constexpr):
    """Fold one block's scores into the running max, sum and accumulator, and add its values' share."""
    # the scale (log2(e) folded in) is applied after the max, in the same multiply-add as the max's subtraction
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = v_src.load([start_n, 0])
    else:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            v_mask = offs_n[:, None] < SKV
        else:
            v_mask = offs_n[:, None] >= 0
        if BLOCK_D != HEAD_DIM:
            v_mask = v_mask & (offs_d[None, :] < HEAD_DIM)
        v = tl.load(v_src + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=v_mask, other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _online_softmax_block(acc, l_i, m_i, q, k_src, v_src, start_n, offs_m, offs_d, stride_kn, stride_kd,
                          stride_vn, stride_vd, qk_scale, SKV, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, TMA: tl.constexpr):
    """One key/value block of the online softmax: its scores, then the update."""
    qk = _block_scores(q, k_src, start_n, offs_m, offs_d, stride_kn, stride_kd, SKV, HEAD_DIM, BLOCK_D, BLOCK_N,
                       MASKED, CAUSAL, TMA)
    return _softmax_update(acc, l_i, m_i, qk, v_src, start_n, offs_d, stride_vn, stride_vd, qk_scale, SKV,
                           HEAD_DIM, BLOCK_D, BLOCK_N, MASKED, TMA)


@triton.jit
def _triton_flash_fwd_kernel(
    Q, K, V, O, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, SQ, SKV,
    SQ_BUCKET, SKV_BUCKET, TMA_OK,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr = False,
    AHEAD: tl.constexpr = False,
):
    # one flat grid, query blocks fastest: the programs resident at once then work on the same head, so its
    # keys and values come from L2 instead of DRAM (with heads fastest each resident program streams another
    # head's K/V; benchmarks/results/attention/kernel-notes.md has the measurement). A flat axis also takes
    # temporal attention's B·H·W·... > 65 535 heads. Causal: the longest rows (last query blocks) start first,
    # the short ones fill in.
    n_m = tl.cdiv(SQ, BLOCK_M)
    pid = tl.program_id(0)
    pid_bh = pid // n_m
    pid_m = pid % n_m
    if CAUSAL:
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
    if TMA:  # one 2-D descriptor per head: bounds are the head's own rows and head dim, so no mask anywhere
        q_desc = tl.make_tensor_descriptor(q_base, shape=[SQ, HEAD_DIM], strides=[stride_qm, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        k_src = tl.make_tensor_descriptor(k_base, shape=[SKV, HEAD_DIM], strides=[stride_kn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_base, shape=[SKV, HEAD_DIM], strides=[stride_vn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        q = q_desc.load([pid_m * BLOCK_M, 0])
    else:
        k_src = k_base
        v_src = v_base
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=(offs_m[:, None] < SQ) & d_ok[None, :], other=0.0)

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
    if AHEAD:
        # the unmasked loop with its scores one block ahead (FA3's overlap of softmax and GEMM, as Triton can
        # write it): block j+1's q·kᵀ is issued before block j's softmax, and its result is only read in the
        # next iteration, so the pipeliner may leave that MMA in flight while the exponentials run. Costs a
        # second score tile of registers. Offered to benchmarks/tune_flash.py; not autotuned until it wins.
        if full > 0:
            qk = _block_scores(q, k_src, 0, offs_m, offs_d, stride_kn, stride_kd, SKV, HEAD_DIM, BLOCK_D,
                               BLOCK_N, False, CAUSAL, TMA)
            for start_n in tl.range(BLOCK_N, full, BLOCK_N):
                qk_next = _block_scores(q, k_src, start_n, offs_m, offs_d, stride_kn, stride_kd, SKV, HEAD_DIM,
                                        BLOCK_D, BLOCK_N, False, CAUSAL, TMA)
                acc, l_i, m_i = _softmax_update(acc, l_i, m_i, qk, v_src, start_n - BLOCK_N, offs_d, stride_vn,
                                                stride_vd, qk_scale, SKV, HEAD_DIM, BLOCK_D, BLOCK_N, False, TMA)
                qk = qk_next
            acc, l_i, m_i = _softmax_update(acc, l_i, m_i, qk, v_src, full - BLOCK_N, offs_d, stride_vn,
                                            stride_vd, qk_scale, SKV, HEAD_DIM, BLOCK_D, BLOCK_N, False, TMA)
    else:
        # WS: Triton's warp specialisation of the unmasked loop (a producer warp issues the descriptor loads while
        # the others compute), offered to benchmarks/tune_flash.py as a candidate; not autotuned until it wins
        for start_n in tl.range(0, full, BLOCK_N, warp_specialize=WS):
            acc, l_i, m_i = _online_softmax_block(acc, l_i, m_i, q, k_src, v_src, start_n, offs_m, offs_d,
                                                  stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, SKV,
                                                  HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, TMA)
    for start_n in range(full, hi, BLOCK_N):  # the partial last block and the causal diagonal blocks
        acc, l_i, m_i = _online_softmax_block(acc, l_i, m_i, q, k_src, v_src, start_n, offs_m, offs_d,
                                              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, SKV,
                                              HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, TMA)
    acc = acc / l_i[:, None]
    if TMA:
        o_desc = tl.make_tensor_descriptor(o_base, shape=[SQ, HEAD_DIM], strides=[stride_om, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        o_desc.store([pid_m * BLOCK_M, 0], acc.to(O.dtype.element_ty))
    else:
        tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, acc.to(O.dtype.element_ty),
                 mask=(offs_m[:, None] < SQ) & d_ok[None, :])


# (BLOCK_M, BLOCK_N, warps, stages): a short list known to suit Hopper for d = 32..256, plus 16-row blocks
# for temporal attention's few-frame sequences; pruned per problem below so tuning takes seconds per key.
_CONFIGS = [(16, 16, 4, 2), (16, 32, 4, 2), (16, 64, 4, 3),
            (64, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3),
            (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 4, 4), (64, 32, 4, 2)]
# the same kernel with key/value blocks brought in by the Hopper copy engine (TMA): fewer registers spent on
# addresses and masks, asynchronous copies the pipeliner can run ahead. The first two entries are the ones
# benchmarks/tune_flash.py found best at d = 64 and d = 128 (benchmarks/results/attention/kernel-notes.md);
# pointers stay better for short sequences (descriptors are built per program), so both lists are candidates
# and the autotuner chooses per shape.
_TMA_CONFIGS = [(128, 128, 4, 3), (128, 64, 4, 2), (128, 64, 4, 3), (128, 128, 4, 2), (64, 64, 4, 3),
                (128, 64, 8, 3), (128, 128, 8, 2),
                (64, 64, 4, 2), (64, 32, 4, 2), (16, 32, 4, 2)]  # what d = 129..256 and 16-row blocks can hold


def _configs() -> list[triton.Config]:
    return ([triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TMA": False}, num_warps=w, num_stages=s)
             for bm, bn, w, s in _CONFIGS]
            + [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "TMA": True}, num_warps=w, num_stages=s)
               for bm, bn, w, s in _TMA_CONFIGS])


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep the configs that fit the problem: tiny sequences (temporal attention: 16-25 frames) get 16-row
    blocks; big head dims drop the largest tiles (registers, shared memory); each key-block no longer than the
    keys; TMA only where the inputs allow descriptors."""
    d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    sq = named_args["SQ_BUCKET"]
    skv = named_args["SKV_BUCKET"]
    keep = []
    for c in configs:
        bm, bn, tma = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["TMA"]
        if tma and not named_args["TMA_OK"]:
            continue
        if (sq <= 32) != (bm == 16):
            continue
        if bn > max(32, skv):
            continue
        if d >= 256 and (bm > 64 or bn > 64 or c.num_stages > 2):
            continue
        if d >= 128 and bm == 128 and bn == 128 and c.num_stages > 2:
            continue
        keep.append(c)
    # nothing fits (a forced load path at an odd size): the smallest tile, never the largest
    return keep or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))]


# HEAD_DIM, not only its padded BLOCK_D, keys the tuning: d = 40 and 64 share a tile width but not the best
# config (the pad columns are masked loads on the pointer path)
_KEY = ["SQ_BUCKET", "SKV_BUCKET", "HEAD_DIM", "BLOCK_D", "CAUSAL", "TMA_OK"]
_triton_flash_fwd_tuned = autotune(_triton_flash_fwd_kernel, _configs(), _KEY, _prune)


def triton_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 scale: float | None = None, tma: bool | None = None,
                 config: dict | None = None) -> torch.Tensor:
    """Softmax attention forward.

    Args:
        q: [B, H, Sq, D] queries (fp16, bf16; fp32 too); any strides.
        k: [B, H, Skv, D] keys; Skv may differ from Sq (cross attention).
        v: [B, H, Skv, D] values (same head dim as q).
        causal: mask keys after each query (top-left aligned).
        scale: softmax scale, default 1/sqrt(D).
        tma: None lets the autotuner choose between pointer and descriptor loads where descriptors are
            allowed; True/False forces one (tests; under the interpreter True runs the descriptor path).
        config: launch this one config, no autotuning: ``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``
            and the loop's forms ``WS``, ``AHEAD`` (default off); its load path is ``tma``'s (pointers when
            None). For benchmarks/tune_flash.py, which times candidates the autotuned list does not hold, and
            for the tests of those forms.

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
    if config is not None:
        unknown = set(config) - _FIXED_KEYS
        if unknown or not {"BLOCK_M", "BLOCK_N"} <= set(config) or (config.get("WS") and config.get("AHEAD")):
            raise ValueError(f"triton_flash: config needs BLOCK_M and BLOCK_N, takes {sorted(_FIXED_KEYS)} and "
                             f"one of WS and AHEAD (two forms of the same loop); got {sorted(config)}")
    scale = d ** -0.5 if scale is None else scale
    o = torch.empty((b, h, sq, d), dtype=q.dtype, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))
    if interpreting():
        use_tma = bool(tma)
        if use_tma:
            triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8))
    else:
        use_tma = (tma_allowed(q, k, v, o) and config is None) if tma is None else tma
        if tma and not tma_allowed(q, k, v, o):
            raise ValueError("triton_flash: tma=True needs a Hopper GPU, a contiguous head dim and 16-byte "
                             "aligned rows")
        if use_tma:
            ensure_descriptor_scratch()
    args = (q, k, v, o, scale * 1.4426950408889634,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), h, sq, skv, bucket(sq), bucket(skv), int(use_tma))
    if config is not None or interpreting():
        fixed = {"BLOCK_M": 16, "BLOCK_N": 16} if config is None else dict(config)
        grid = (b * h * triton.cdiv(sq, fixed["BLOCK_M"]),)
        _triton_flash_fwd_kernel[grid](*args, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal, TMA=use_tma, **fixed)
    else:
        tuned = _triton_flash_fwd_tuned if tma is None else _FORCED[use_tma]  # forced: that path's configs only
        grid = lambda meta: (b * h * triton.cdiv(sq, meta["BLOCK_M"]),)  # noqa: E731
        tuned[grid](*args, HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=causal)
    return o


_FIXED_KEYS = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "WS", "AHEAD"}
_FORCED = {flag: autotune(_triton_flash_fwd_kernel, [c for c in _configs() if c.kwargs["TMA"] == flag], _KEY,
                          _prune)
           for flag in (False, True)}
