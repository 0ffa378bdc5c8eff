"""linear_attn in Triton.

Non-causal (diffusion models: SANA's ReLU linear attention, or any self-attention swapped to ``linear``): two
fused passes. Pass 1 splits the tokens over programs; each reduces φ(K)ᵀV (d × dv) and Σφ(K) (d) for its slice
in fp32 and adds them into one state per (batch, head) with atomics. Pass 2 recomputes φ(Q) per query block
and writes φ(Q)U / (φ(Q)·z + ε). The feature maps are applied on load, so φ(K) and φ(Q) never reach memory.

Causal (autoregressive token models): with many sequences (batch·heads fill the GPU) one pass per sequence keeps
the state in registers; otherwise chunkwise with two levels of tiling (the TFLA idea): large chunks of 256
tokens, so only one state per 256 tokens is materialised, and inside a chunk query and key tiles of 64. The state
pass walks groups of chunks (S += φKᵀ V, writing S at each chunk start); the output pass gives every query tile
its own program: φQ·S_chunk plus Σ over the chunk's key tiles up to the diagonal of (φQ φKᵀ ⊙ mask) V.

Matrix products run in the input dtype with fp32 accumulation; fp32 inputs get exact fp32 products (not TF32).

In the state passes the normaliser's key sums Σφ(K) are a product too: φ(K)ᵀ times a 16-wide column of ones (the
narrowest ``tl.dot``), accumulated in fp32 beside the state, every column the same sum (read back with a max).
Summed over each key tile's rows instead, they were a cross-warp reduction in the pass's serial loop. The scan
keeps its column sum: there the product's [D, 16] accumulator cost more registers than the sum cost time
(figures in docs/kernels/linear_attn.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmchar.kernels.tuning import autotune, bucket, interpreting, sm_count

FEATURES = {"relu": 0, "elu1": 1, "identity": 2}  # identity: features mapped by the caller (SANA-Video's rotated ones)


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    if FEATURE == 0:
        return tl.maximum(x, 0.0)
    return tl.where(x > 0, x + 1.0, tl.exp(x))


@triton.jit
def _phi_tile(x, keep, FEATURE: tl.constexpr):
    """φ of a loaded tile in the tile's own dtype: ReLU is exact there, and the tile then takes half the registers
    of an fp32 copy (the d = 128 passes ran at 12.5 % occupancy with 166 registers: Nsight, 2026-11-25). Masked
    entries load as zeros: ReLU keeps them at zero; ELU+1 (computed in fp32) would make them 1, so ``keep`` masks
    them."""
    if FEATURE == 0:
        return tl.maximum(x, 0.0).to(x.dtype)  # (the literal promotes to fp32)
    if FEATURE == 2:
        return x
    return tl.where(keep, _phi(x.to(tl.float32), FEATURE), 0.0).to(x.dtype)


@triton.jit
def _linear_attn_state_kernel(K, V, UZ, SKV, tokens_per_program, NB,
                              stride_kb, stride_kh, stride_kn, stride_kd,
                              stride_vb, stride_vh, stride_vn, stride_vd,
                              H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, DVP: tl.constexpr,
                              FEATURE: tl.constexpr, PREC: tl.constexpr, BDV: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per (batch·head, token slice, dv block): φ(K)ᵀV and Σφ(K) of the slice, added into the head's state
    (UZ: per batch·head the BD × DVP state U, then the BD sums z). Keys are read row-major, as they lie in memory,
    and enter the product transposed."""
    pid_bh = tl.program_id(0)  # batch·head on axis 0 (no 65 535 limit there)
    pid_n = tl.program_id(1)
    pid_e = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    d_ok = offs_d < D
    u = tl.zeros([BD, BDV], dtype=tl.float32)
    z = tl.zeros([BD, 16], dtype=tl.float32)  # Σφ(k) in every column (module docstring)
    ones = tl.full([BLOCK_N, 16], 1.0, V.dtype.element_ty)
    base_k = K + b * stride_kb + h * stride_kh
    base_v = V + b * stride_vb + h * stride_vh
    start = pid_n * tokens_per_program  # a runtime bound: one compiled kernel serves every sequence length
    for s in range(start, start + tokens_per_program, BLOCK_N):
        offs_n = s + tl.arange(0, BLOCK_N)
        n_ok = offs_n < SKV
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = _phi_tile(tl.load(base_k + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_ok,
                              other=0.0), kv_ok, FEATURE)
        v = tl.load(base_v + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_vd,
                    mask=n_ok[:, None] & (offs_e[None, :] < DV), other=0.0)
        kt = tl.trans(k.to(V.dtype.element_ty))
        u += tl.dot(kt, v, input_precision=PREC)
        z += tl.dot(kt, ones, input_precision=PREC)
    state = UZ + pid_bh * (BD * DVP + BD)
    tl.atomic_add(state + offs_d[:, None] * DVP + offs_e[None, :], u)
    # the first dv block adds Σφ(k)
    tl.atomic_add(state + BD * DVP + offs_d, tl.max(z, 1), mask=offs_d + pid_e * BD < BD)


@triton.jit
def _linear_attn_out_kernel(Q, UZ, O, SQ, rows_per_program, eps, state_scale, NB,
                            stride_qb, stride_qh, stride_qm, stride_qd,
                            stride_ob, stride_oh, stride_om, stride_od,
                            H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, DVP: tl.constexpr,
                            FEATURE: tl.constexpr, PREC: tl.constexpr, BDV: tl.constexpr, BLOCK_M: tl.constexpr,
                            NORMALIZE: tl.constexpr = True):
    """Per (batch·head, slice of queries, dv block): the state is read once and serves every query tile of the
    slice (one tile per program read the fp32 state from L2 up to four times per byte of queries at d = 128)."""
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_e = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    d_ok = offs_d < D
    e_ok = offs_e < DV
    dt = Q.dtype.element_ty
    state = UZ + pid_bh * (BD * DVP + BD)
    # the state enters the product scaled by 1/tokens (an fp16 copy of a sum over 64k tokens would overflow) and
    # the product is scaled back in fp32
    u = (tl.load(state + offs_d[:, None] * DVP + offs_e[None, :]) * state_scale).to(dt)
    z = tl.load(state + BD * DVP + offs_d)
    base_q = Q + b * stride_qb + h * stride_qh
    base_o = O + b * stride_ob + h * stride_oh
    start = pid_m * rows_per_program
    for m0 in range(start, start + rows_per_program, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < SQ
        q_ok = m_ok[:, None] & d_ok[None, :]
        q = _phi_tile(tl.load(base_q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok,
                              other=0.0), q_ok, FEATURE)
        out = tl.dot(q.to(dt), u, input_precision=PREC) / state_scale
        if NORMALIZE:
            out = out / (tl.sum(q.to(tl.float32) * z[None, :], 1) + eps)[:, None]
        tl.store(base_o + offs_m[:, None] * stride_om + offs_e[None, :] * stride_od,
                 out.to(O.dtype.element_ty), mask=m_ok[:, None] & e_ok[None, :])


@triton.jit
def _causal_scan_kernel(Q, K, V, O, N, eps, state_scale,
                        stride_qb, stride_qh, stride_qm, stride_qd,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        stride_vb, stride_vh, stride_vn, stride_vd,
                        stride_ob, stride_oh, stride_om, stride_od,
                        H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                        FEATURE: tl.constexpr, CHUNK: tl.constexpr, PREC: tl.constexpr,
                        NORMALIZE: tl.constexpr = True):
    """One pass per (batch·head, dv block) with the running state in registers: the fastest form when
    batch·heads alone fill the GPU (no state reaches memory)."""
    pid_bh = tl.program_id(0)
    pid_e = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    offs_c = tl.arange(0, CHUNK)
    d_ok = offs_d < D
    e_ok = offs_e < DV
    dt = Q.dtype.element_ty
    state = tl.zeros([BD, BDV], dtype=tl.float32)
    zsum = tl.zeros([BD], dtype=tl.float32)
    tri = offs_c[:, None] >= offs_c[None, :]
    for s in range(0, N, CHUNK):
        offs_n = s + offs_c
        n_ok = offs_n < N
        qk_ok = n_ok[:, None] & d_ok[None, :]
        # φ in the tiles' dtype, keys row-major as they lie in memory (see _phi_tile): fp32 copies of q and φ(k)ᵀ
        # kept live for the normaliser made the normalised scan 2.3-2.8x slower than the plain one at d = 128
        qd = _phi_tile(tl.load(Q + b * stride_qb + h * stride_qh + offs_n[:, None] * stride_qm
                               + offs_d[None, :] * stride_qd, mask=qk_ok, other=0.0), qk_ok, FEATURE).to(dt)
        kd = _phi_tile(tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn
                               + offs_d[None, :] * stride_kd, mask=qk_ok, other=0.0), qk_ok, FEATURE).to(dt)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_vd,
                    mask=n_ok[:, None] & e_ok[None, :], other=0.0)
        a = tl.where(tri, tl.dot(qd, tl.trans(kd), input_precision=PREC), 0.0)
        num = tl.dot(a.to(dt), v, input_precision=PREC)
        num += tl.dot(qd, (state * state_scale).to(dt), input_precision=PREC) / state_scale  # fp16-safe state
        if NORMALIZE:
            num = num / (tl.sum(a, 1) + tl.sum(qd.to(tl.float32) * zsum[None, :], 1) + eps)[:, None]
            zsum += tl.sum(kd.to(tl.float32), 0)
        tl.store(O + b * stride_ob + h * stride_oh + offs_n[:, None] * stride_om + offs_e[None, :] * stride_od,
                 num.to(O.dtype.element_ty), mask=n_ok[:, None] & e_ok[None, :])
        state += tl.dot(tl.trans(kd), v, input_precision=PREC)


@triton.jit
def _causal_state_kernel(K, V, HS, HZ, G, N, NC, chunks_per_group, state_scale, NB,
                         stride_kb, stride_kh, stride_kn, stride_kd,
                         stride_vb, stride_vh, stride_vn, stride_vd,
                         H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, DVP: tl.constexpr,
                         FEATURE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                         BDV: tl.constexpr, NORMALIZE: tl.constexpr = True):
    """Per (batch·head, dv block, group of chunks): the state at the start of each chunk, relative to the
    group's start (written to HS / HZ), and the group's total (G: per batch·head and group, the BD × DVP state
    then the BD sums). HS is kept in the inputs' dtype, scaled by 1/tokens: the output pass multiplies it in that
    dtype anyway, and each chunk's state is read by every query tile of the chunk (fp32 states were a quarter of
    the chunked path's HBM traffic at d = 128). Unnormalised, the key sums are neither kept nor written."""
    pid_bh = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_g = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    d_ok = offs_d < D
    e_ok = offs_e < DV
    dt = K.dtype.element_ty
    state = tl.zeros([BD, BDV], dtype=tl.float32)
    zsum = tl.zeros([BD, 16], dtype=tl.float32)  # Σφ(k) in every column (module docstring)
    ones = tl.full([BLOCK_N, 16], 1.0, dt)
    c0 = pid_g * chunks_per_group
    c1 = tl.minimum(c0 + chunks_per_group, NC)
    z_mine = offs_d + pid_e * BD < BD  # only the first dv block writes the normaliser state
    for c in range(c0, c1):
        tl.store(HS + ((pid_bh * NC + c) * BD + offs_d[:, None]) * DVP + offs_e[None, :],
                 (state * state_scale).to(HS.dtype.element_ty))
        if NORMALIZE:
            tl.store(HZ + (pid_bh * NC + c) * BD + offs_d, tl.max(zsum, 1), mask=z_mine)
        for s in range(c * CHUNK, c * CHUNK + CHUNK, BLOCK_N):
            offs_n = s + tl.arange(0, BLOCK_N)
            n_ok = offs_n < N
            kv_ok = n_ok[:, None] & d_ok[None, :]
            k = _phi_tile(tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn
                                  + offs_d[None, :] * stride_kd, mask=kv_ok, other=0.0), kv_ok, FEATURE)
            v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_vd,
                        mask=n_ok[:, None] & e_ok[None, :], other=0.0)
            kt = tl.trans(k.to(dt))
            state += tl.dot(kt, v, input_precision=PREC)
            if NORMALIZE:
                zsum += tl.dot(kt, ones, input_precision=PREC)
    total = G + (pid_bh * tl.num_programs(2) + pid_g) * (BD * DVP + BD)
    tl.store(total + offs_d[:, None] * DVP + offs_e[None, :], state)
    if NORMALIZE:
        tl.store(total + BD * DVP + offs_d, tl.max(zsum, 1), mask=z_mine)


@triton.jit
def _group_prefix_kernel(G, P, NG, W, SPAN, state_scale, BLOCK: tl.constexpr, SW: tl.constexpr):
    """Per batch·head, over the first SPAN of each group's W totals: the sums of the groups before it (an exclusive
    prefix over a few groups; one launch where cat + cumsum took six). The state's SW entries go to P, scaled as HS
    is and in its dtype, which the output pass multiplies as it is; the key sums after them stay in G, in fp32."""
    pid_bh = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < SPAN
    is_state = offs < SW
    is_sum = ok & (offs >= SW)
    run = tl.zeros([BLOCK], dtype=tl.float32)
    for g in range(0, NG):
        ptr = G + (pid_bh * NG + g) * W + offs
        x = tl.load(ptr, mask=ok, other=0.0)
        tl.store(P + (pid_bh * NG + g) * SW + offs, (run * state_scale).to(P.dtype.element_ty), mask=is_state)
        tl.store(ptr, run, mask=is_sum)
        run += x


@triton.jit
def _causal_out_kernel(Q, K, V, O, HS, HZ, G, P, N, NC, chunks_per_group, eps, state_scale, NB,
                       stride_qb, stride_qh, stride_qm, stride_qd,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_vb, stride_vh, stride_vn, stride_vd,
                       stride_ob, stride_oh, stride_om, stride_od,
                       H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, DVP: tl.constexpr,
                       FEATURE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, GROUPS: tl.constexpr,
                       PREC: tl.constexpr, BDV: tl.constexpr, NORMALIZE: tl.constexpr = True):
    """Per (batch·head, query tile, dv block): φq·(state at the chunk's start) plus the causal part inside the
    chunk, walked in key tiles of the query tile's size (the second level of tiling).

    One grid axis, dv blocks fastest, then query tiles, then batch·heads (fla's order): a tile's value blocks run
    side by side and share its queries and keys in L2, and a chunk's tiles its keys and state. Batch·heads
    fastest had the value blocks re-read them from HBM once the inputs outgrew L2; the change took 1-2 % off the
    output pass (H100, d = 128, B1 H16 16k-64k: round2-h100-2026-12-07d in benchmarks/results/attention)."""
    pid = tl.program_id(0)
    pid_e = pid % (DVP // BDV)
    pid_m = (pid // (DVP // BDV)) % tl.cdiv(N, BLOCK)
    pid_bh = pid // (DVP // BDV) // tl.cdiv(N, BLOCK)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BLOCK
    c = m0 // CHUNK
    offs_m = m0 + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    offs_t = tl.arange(0, BLOCK)
    d_ok = offs_d < D
    e_ok = offs_e < DV
    m_ok = offs_m < N
    dt = Q.dtype.element_ty
    q_ok = m_ok[:, None] & d_ok[None, :]
    q = _phi_tile(tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                          + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0), q_ok, FEATURE)
    st = tl.load(HS + ((pid_bh * NC + c) * BD + offs_d[:, None]) * DVP + offs_e[None, :])  # scaled by 1/tokens
    qd = q.to(dt)
    num = tl.dot(qd, st.to(dt), input_precision=PREC)
    if GROUPS:  # plus the groups before this one: a second product, no fp32 state to add and convert per program
        gi = pid_bh * tl.cdiv(NC, chunks_per_group) + c // chunks_per_group
        num = tl.dot(qd, tl.load(P + (gi * BD + offs_d[:, None]) * DVP + offs_e[None, :]), num, input_precision=PREC)
    num = num / state_scale  # see the non-causal pass
    if NORMALIZE:
        zs = tl.load(HZ + (pid_bh * NC + c) * BD + offs_d)
        if GROUPS:
            zs += tl.load(G + gi * (BD * DVP + BD) + BD * DVP + offs_d)
        den = tl.sum(q.to(tl.float32) * zs[None, :], 1)
    base_k = K + b * stride_kb + h * stride_kh
    base_v = V + b * stride_vb + h * stride_vh
    for s in range(c * CHUNK, m0 + BLOCK, BLOCK):  # key tiles of the chunk up to and including the diagonal one
        offs_n = s + offs_t
        n_ok = offs_n < N
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = _phi_tile(tl.load(base_k + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_ok,
                              other=0.0), kv_ok, FEATURE)
        a = tl.dot(qd, tl.trans(k.to(dt)), input_precision=PREC)
        a = tl.where(offs_m[:, None] >= offs_n[None, :], a, 0.0)
        v = tl.load(base_v + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_vd,
                    mask=n_ok[:, None] & e_ok[None, :], other=0.0)
        num += tl.dot(a.to(dt), v, input_precision=PREC)
        if NORMALIZE:
            den += tl.sum(a, 1)
    if NORMALIZE:
        num = num / (den + eps)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_e[None, :] * stride_od,
             num.to(O.dtype.element_ty), mask=m_ok[:, None] & e_ok[None, :])


# Autotuning (GPU only; the interpreter runs the first config of each list): a few configs per kernel, pruned to
# the problem's head dims, keyed by head dims and a power-of-two bucket of batch·heads·tokens, cached per machine.
# Non-causal: every config's value block is the widest the registers hold (prune: BDV = min(DVP, 128), 64 for
# 256-wide features), so keys are read once; left to the tuner are the tile height, warps and stages, a short list
# whose members run within a few percent of each other (a pick that differs between machines costs little).
_WIDTHS = (16, 32, 64, 128)  # value blocks: one per padded value width (SANA's d = 32 included)
_TILES = ((64, 4, 3), (128, 4, 3), (64, 8, 3), (128, 8, 2), (64, 8, 2))  # rows, warps, stages; the last fits d = 256
_STATE_CONFIGS = [(n, e, w, s) for e in _WIDTHS for n, w, s in _TILES]
_OUT_CONFIGS = [(m, e, w, s) for e in _WIDTHS for m, w, s in _TILES]
# single-stage entries for 256-wide features (causal WERSA, m = 256) on the chunked path, whose tiles must fit
# the shared memory at that width too
_CAUSAL_STATE_CONFIGS = [(64, 4, 3), (32, 4, 3), (64, 8, 3), (128, 8, 2), (64, 4, 2), (32, 4, 2), (64, 4, 1),
                         (32, 4, 1)]
_CAUSAL_OUT_CONFIGS = [(64, 4, 2), (32, 4, 2), (64, 8, 2), (128, 8, 2), (64, 4, 3), (128, 8, 1), (32, 4, 3),
                       (64, 8, 1), (128, 4, 2), (128, 4, 3)]  # 128: q·kᵀ once for the whole value width at d = 128


# the chunked causal path's two levels: one state per CAUSAL_CHUNK tokens, query and key tiles of CAUSAL_BLOCK
# (module constants so that benchmarks/probe_linear.py can sweep them)
CAUSAL_CHUNK, CAUSAL_BLOCK = 256, 64


def _fits(named_args: dict, config: triton.Config) -> bool:
    """Register budget: a d = 256 state or query tile leaves room for 64-wide value blocks and 64-row tiles only."""
    kw = config.kwargs
    if kw["BDV"] > named_args["DVP"]:
        return False
    return named_args["BD"] < 256 or (kw["BDV"] <= 64 and config.num_stages <= 2
                                      and kw.get("BLOCK_M", 64) <= 64 and kw.get("BLOCK_N", 64) <= 64)


def _widest_value_block(bd: int, dvp: int) -> int:
    """The non-causal passes' value block: the whole padded value width up to 128 (64 at 256-wide features)."""
    return min(dvp, 128 if bd < 256 else 64)


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    named_args = {**named_args, **kwargs}
    keep = [c for c in configs if _fits(named_args, c)]
    if keep and ("BLOCK_N" in keep[0].kwargs or "BLOCK_M" in keep[0].kwargs):  # the non-causal passes
        widest = _widest_value_block(named_args["BD"], named_args["DVP"])
        keep = [c for c in keep if c.kwargs["BDV"] == widest] or keep
    if keep:
        return keep
    small = {k: (min(64, named_args["DVP"]) if k == "BDV" else 64) for k in configs[0].kwargs}
    return [triton.Config(small, num_warps=8, num_stages=1)]


def _tuned(fn, configs: list, reset: list[str] | None = None, key: tuple[str, ...] = ()):
    return autotune(fn, configs, ["D", "DV", "NB", *key], _prune, reset)  # reset: the atomic state pass


def _cfg(meta: dict, warps: int, stages: int) -> triton.Config:
    return triton.Config(meta, num_warps=warps, num_stages=stages)


_state_tuned = _tuned(_linear_attn_state_kernel, [_cfg({"BLOCK_N": n, "BDV": e}, w, s)
                                                  for n, e, w, s in _STATE_CONFIGS], reset=["UZ"])
_out_tuned = _tuned(_linear_attn_out_kernel, [_cfg({"BLOCK_M": m, "BDV": e}, w, s) for m, e, w, s in _OUT_CONFIGS])
_causal_state_tuned = _tuned(_causal_state_kernel, [_cfg({"BDV": e}, w, s) for e, w, s in _CAUSAL_STATE_CONFIGS],
                             key=("CHUNK", "BLOCK_N", "NORMALIZE"))
_causal_out_tuned = _tuned(_causal_out_kernel, [_cfg({"BDV": e}, w, s) for e, w, s in _CAUSAL_OUT_CONFIGS],
                           key=("CHUNK", "BLOCK", "NORMALIZE"))


def _launch(raw, tuned, grid, *args, **kwargs) -> None:
    """The autotuned kernel on a GPU; under the interpreter the raw kernel with fixed small tiles."""
    if interpreting():
        meta = {"BDV": 16}
        if "BLOCK_N" in tuned.fn.arg_names and "BLOCK_N" not in kwargs:
            meta["BLOCK_N"] = 16
        if "BLOCK_M" in tuned.fn.arg_names:
            meta["BLOCK_M"] = 16
        raw[grid(meta)](*args, **kwargs, **meta)
    else:
        tuned[grid](*args, **kwargs)


def causal_form(heads: int, d: int, dv: int, itemsize: int, normalize: bool = True) -> str:
    """The causal path `linear_attn` takes by default: ``scan`` (one pass, the state in registers) or ``chunked``.

    The scan once its programs (batch·heads × 64-wide value blocks) are about one per SM: its serial steps over S
    then beat the two-level path's state traffic and launches (B·H = 128: 1.10 against 2.45 ms at d = 128, 16k, on
    an H200). At 64 programs the chunked path won once its unnormalised state pass stopped summing keys
    (d = 128, B·H = 32, 16k / 64k: 0.48 / 1.84 against the scan's 0.60 / 2.36 ms on an H100:
    benchmarks/results/attention/round2-h100-2026-12-07, probe_linear_kernels.txt; the H200 not re-measured since
    the fix: before it, the scan won there at 64 programs). Normalised at d = 128 in 16-bit it is always chunked:
    there the scan's normaliser costs it 2.3-2.9× its unnormalised time, and the chunked path won at every B·H
    measured (16-128, S = 4k-64k: round2-h200-2026-12-06 and round2-h100-2026-12-06, probe_linear_causal.txt)."""
    if normalize and d == 128 and itemsize == 2:
        return "chunked"
    return "scan" if heads * triton.cdiv(dv, 64) >= 128 else "chunked"


def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, feature: str = "relu",
                eps: float = 1e-6, chunks_per_group: int | None = None,
                causal_path: str | None = None, normalize: bool = True) -> torch.Tensor:
    """Linear attention forward.

    Args:
        q: [B, H, Sq, D]; k: [B, H, Skv, D]; v: [B, H, Skv, Dv] (fp16, bf16 or fp32; any strides).
        causal: prefix sums over tokens (needs Sq == Skv).
        feature: ``relu``, ``elu1`` or ``identity`` (features the caller mapped; numerator only, normalize=False).
        eps: added to the normaliser.
        normalize: divide by φ(q)·z + ε (the default, SANA's maths); False gives φ(q)ᵀU alone, what
            fla's ``chunk_linear_attn(normalize=False)`` computes (the like-for-like comparison with its fast path).
        chunks_per_group: causal only; how many chunks one program of the state pass walks (default: enough
            groups to fill the GPU). Exposed for tests.
        causal_path: ``scan`` (one pass per batch·head, state in registers) or ``chunked`` (two levels of
            tiling); default: `causal_form`. Exposed for tests.

    Returns:
        [B, H, Sq, Dv] in q's dtype.
    """
    if feature not in FEATURES:
        raise ValueError(f"unknown feature map {feature!r}; valid: {', '.join(FEATURES)}")
    if feature == "identity" and normalize:
        raise ValueError("linear_attn: feature 'identity' (features the caller mapped) computes the numerator only: "
                         "pass normalize=False")
    b, h, sq, d = q.shape
    skv, dv = k.shape[2], v.shape[-1]
    if k.shape != (b, h, skv, d) or v.shape[:3] != (b, h, skv):
        raise ValueError(f"linear_attn: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if d > 256 or dv > 256:
        raise ValueError(f"linear_attn: head dims {d}/{dv} > 256")
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    o = torch.empty((b, h, sq, dv), dtype=q.dtype, device=q.device)
    f = FEATURES[feature]
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 in, fp32 maths (no silent TF32)
    if causal:
        if sq != skv:
            raise ValueError("causal linear attention needs as many queries as keys")
        scan = causal_form(b * h, d, dv, q.element_size(), normalize) == "scan"
        if causal_path == "scan" or (causal_path is None and scan and chunks_per_group is None):
            grid = (b * h, triton.cdiv(dv, min(bdv, 64)))
            # 256-wide bf16 features (causal WERSA, m = 256): 64-token chunks over 3 stages need more shared
            # memory than Hopper gives one program (kernel-notes.md in benchmarks/results/attention), so half
            # the chunk, one stage, the state spread over 8 warps
            wide = bd * q.element_size() >= 512  # fp32 tiles at d = 128 weigh what bf16 ones do at 256
            _causal_scan_kernel[grid](q, k, v, o, sq, eps, 1.0 / max(sq, 1), *q.stride(), *k.stride(), *v.stride(),
                                      *o.stride(), h, D=d, DV=dv, BD=bd, BDV=min(bdv, 64), FEATURE=f,
                                      CHUNK=16 if interpreting() else 32 if wide else 64, PREC=prec,
                                      NORMALIZE=normalize, num_warps=8 if wide else 4, num_stages=1 if wide else 3)
            return o
        return _causal(q, k, v, o, f, eps, bd, bdv, prec, chunks_per_group, normalize)
    uz = torch.zeros((b * h, bd * bdv + bd), dtype=torch.float32, device=q.device)  # per head: U, then z
    # enough token slices to fill the GPU, few enough that the atomics stay cheap: each slice adds a bd × bdv fp32
    # state, so at most ~1/8 of the bytes read go to atomics (a multiple of every BLOCK_N)
    slices = max(1, min(1024 // (b * h), skv * (d + dv) // (16 * bd * bdv)))
    per_program = max(128, triton.cdiv(triton.cdiv(skv, slices), 128) * 128)
    _launch(_linear_attn_state_kernel, _state_tuned,
            lambda meta: (b * h, triton.cdiv(skv, per_program), bdv // meta["BDV"]),
            k, v, uz, skv, per_program, bucket(b * h * skv), *k.stride(), *v.stride(), h, D=d, DV=dv, BD=bd, DVP=bdv,
            FEATURE=f, PREC=prec)
    # about four programs per SM, each reading the state once for its slice of queries (a multiple of every
    # BLOCK_M; the interpreter's tiles are 16 rows)
    grain = 16 if interpreting() else 256
    value_blocks = bdv // _widest_value_block(bd, bdv)
    sms = 16 if interpreting() else sm_count(q.device)
    m_slices = max(1, min(triton.cdiv(sq, grain), triton.cdiv(4 * sms, b * h * value_blocks)))
    rows = max(grain, triton.cdiv(triton.cdiv(sq, m_slices), grain) * grain)  # no queries: one empty grid
    _launch(_linear_attn_out_kernel, _out_tuned,
            lambda meta: (b * h, triton.cdiv(sq, rows), bdv // meta["BDV"]),
            q, uz, o, sq, rows, eps, 1.0 / max(skv, 1), bucket(b * h * sq), *q.stride(), *o.stride(), h, D=d, DV=dv,
            BD=bd, DVP=bdv, FEATURE=f, PREC=prec, NORMALIZE=normalize)
    return o


def _causal(q, k, v, o, f, eps, bd, bdv, prec, chunks_per_group, normalize=True):
    """Chunks of CHUNK tokens: pass 1 walks each group of chunks and writes the state at every chunk start
    (relative to its group) and the group's total; the exclusive prefix over groups is one small kernel (its state
    part in the inputs' dtype: pass 2 multiplies it as a second product); pass 2 runs every query tile in
    parallel. Groups exist only to fill the GPU when batch·heads are few."""
    b, h, n, d = q.shape
    dv = v.shape[-1]
    interp = interpreting()
    chunk, block = (32, 16) if interp else (CAUSAL_CHUNK, CAUSAL_BLOCK)
    nc = triton.cdiv(n, chunk)
    if chunks_per_group is None:  # about two programs per SM in the state pass (dv in blocks of 64)
        groups = max(1, min(nc, triton.cdiv(264, b * h * triton.cdiv(bdv, 64))))
        chunks_per_group = triton.cdiv(nc, groups)
    ng = triton.cdiv(nc, chunks_per_group)
    dev = q.device
    hs = torch.empty((b * h, nc, bd, bdv), dtype=q.dtype, device=dev)
    hz = torch.empty((b * h, nc, bd), dtype=torch.float32, device=dev)
    width = bd * bdv + bd  # a group's total: the state, then the sums
    g = torch.empty((b * h, ng, width), dtype=torch.float32, device=dev)
    before = torch.empty((b * h, ng, bd * bdv), dtype=q.dtype, device=dev) if ng > 1 else hs  # the groups' prefix
    nb = bucket(b * h * n)
    _launch(_causal_state_kernel, _causal_state_tuned, lambda meta: (b * h, bdv // meta["BDV"], ng),
            k, v, hs, hz, g, n, nc, chunks_per_group, 1.0 / max(n, 1), nb, *k.stride(), *v.stride(), h, D=d, DV=dv, BD=bd,
            DVP=bdv, FEATURE=f, CHUNK=chunk, BLOCK_N=block, PREC=prec, NORMALIZE=normalize)
    if ng > 1:  # unnormalised, the sums after each group's state are not written: the prefix leaves them out
        span = width if normalize else bd * bdv
        _group_prefix_kernel[(b * h, triton.cdiv(span, 1024))](g, before, ng, width, span, 1.0 / max(n, 1),
                                                               BLOCK=1024, SW=bd * bdv)
    tiles = triton.cdiv(n, block)  # one grid axis: (batch·head, query tile, dv block), the last fastest
    _launch(_causal_out_kernel, _causal_out_tuned, lambda meta: (b * h * tiles * (bdv // meta["BDV"]),),
            q, k, v, o, hs, hz, g, before, n, nc, chunks_per_group, eps, 1.0 / max(n, 1), nb, *q.stride(), *k.stride(),
            *v.stride(), *o.stride(), h, D=d, DV=dv, BD=bd, DVP=bdv, FEATURE=f, CHUNK=chunk, BLOCK=block, GROUPS=ng > 1,
            PREC=prec, NORMALIZE=normalize)
    return o
