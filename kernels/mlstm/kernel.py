"""mlstm in Triton: mLSTMsig forward by Tiled Flash Linear Attention (TFLA), two kernels.

Maths (reference.py; Beck et al., arXiv 2503.14376): h_t = Σ_{s≤t} D_ts (q_t·k_s/√d) v_s, optionally divided by
max(|Σ_s D_ts q_t·k_s/√d|, 1), with log D_ts = Σ_{s<r≤t} log σ(f̃_r) + log σ(ĩ_s). TFLA splits the sequence twice:

1. ``_mlstm_state_kernel`` (TFLA's recurrent kernel, the paper's "inter-chunk" part): one program per
   (batch·head, Dqk block, Dv block) walks the sequence with its block of the state C (and n) in registers and
   writes the state at the start of every chunk of ``chunk_size`` = L tokens, L large (256 by default), so only
   T/L states reach HBM. It advances in sub-tiles of BLOCK_S tokens: C ← exp(G) C + Σ_s exp(a_s + log i_s) k_s v_sᵀ,
   with G the sub-tile's log-forget sum and a_s the sum over the sub-tile's tokens after s (the peer's
   ``vecA``/``scaG`` step, taken at sub-tile rather than chunk granularity: the same states, and no cumulative sum
   longer than a sub-tile). No gate sums are stored: the output pass derives its decays from the gate tiles it
   reads anyway (the peer precomputes chunk-long cumulative sums, vecB, in PyTorch).
2. ``_mlstm_out_kernel`` (TFLA's parallel kernel, "intra-chunk"): one program per (batch·head, query tile, Dv
   block), all in parallel. FlashAttention-style, it streams the chunk's key tiles from the diagonal one back to
   the chunk's start, accumulating (q kᵀ/√d ⊙ D) v and the row sums in fp32, then adds the start state's share,
   exp(Σ_{c0≤r≤j} log f_r) q_jᵀ C_c (the second level of tiling is over the chunk's queries and keys).

The decays are built only from sums of log-gates ≤ 0, each over at most one tile plus a running sum carried
from tile to tile (walking keys backwards, the running sum is exactly the decay between the key tile's end and
the query tile's start). The only differences of prefix sums are inside one tile (≤ 128 tokens), so nothing of
size Σ over a chunk cancels (the peer takes differences of chunk-long prefix sums, vecB_q − vecB_k).

Products run in the input dtype with fp32 accumulation; fp32 inputs get exact fp32 products (not TF32). The state
enters q·C as bf16 for bf16 inputs (as the peer) and as fp32 otherwise (a state summed over many tokens can pass
fp16's range; ``reference.state_dtype``), TF32 for fp16 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmchar.kernels.mlstm.reference import state_dtype
from mmchar.kernels.tuning import autotune, bucket, interpreting

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
DEFAULT_CHUNK = 256  # tokens per materialised state on a GPU (untuned; the interpreter uses 32)


@triton.jit
def _logsigmoid(x):
    """log σ(x) = min(x, 0) − log(1 + e^{−|x|}): finite for every x (log(sigmoid(x)) is −inf below about −88)."""
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _round_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), kept in fp32: what a cast to bf16 gives on a GPU."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mma(a, b, DT: tl.constexpr, PREC: tl.constexpr, EMU_BF16: tl.constexpr):
    """a @ b with operands in DT and fp32 accumulation. EMU_BF16 (Triton's interpreter on bf16 inputs only): the
    interpreter multiplies bf16 tiles as their uint16 bit patterns and casts to bf16 by truncation, so there the
    operands are rounded to bf16 values by hand and multiplied in fp32 (the values a tensor core multiplies)."""
    if EMU_BF16:
        return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision="ieee")
    return tl.dot(a.to(DT), b.to(DT), input_precision=PREC)


@triton.jit
def _to_out(x, DT: tl.constexpr, EMU_BF16: tl.constexpr):
    if EMU_BF16:
        return _round_bf16(x).to(DT)  # exact: already a bf16 value
    return x.to(DT)


@triton.jit
def _mlstm_state_kernel(K, V, I, F, CS, NS, T, NC, NB,
                        stride_kb, stride_kh, stride_kt, stride_kd,
                        stride_vb, stride_vh, stride_vt, stride_vd,
                        stride_ib, stride_ih, stride_it, stride_fb, stride_fh, stride_ft,
                        H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, DVP: tl.constexpr,
                        CHUNK: tl.constexpr, NORMALIZE: tl.constexpr, PREC: tl.constexpr, EMU_BF16: tl.constexpr,
                        BLOCK_S: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr):
    """Per (batch·head, Dqk block, Dv block): the state (C, n) at the start of every chunk, into CS / NS."""
    pid_bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: tensors past 2^31 elements
    pid_d = tl.program_id(1)
    pid_e = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = pid_d * BDK + tl.arange(0, BDK)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    d_ok = offs_d < D
    e_ok = offs_e < DV
    dt = K.dtype.element_ty
    c_state = tl.zeros([BDK, BDV], dtype=tl.float32)
    n_state = tl.zeros([BDK], dtype=tl.float32)
    n_mine = offs_d + pid_e * BD < BD  # only the first Dv block writes the normaliser state
    base_k = K + b * stride_kb + h * stride_kh
    base_v = V + b * stride_vb + h * stride_vh
    base_i = I + b * stride_ib + h * stride_ih
    base_f = F + b * stride_fb + h * stride_fh
    for c in range(0, NC):
        tl.store(CS + ((pid_bh * NC + c) * BD + offs_d[:, None]) * DVP + offs_e[None, :], c_state)
        if NORMALIZE:
            tl.store(NS + (pid_bh * NC + c) * BD + offs_d, n_state, mask=n_mine)
        if c + 1 < NC:  # the state after the last chunk is never read: its chunk is skipped (so no token
            # here is past T: (NC − 1)·CHUNK < T)
            for s in range(c * CHUNK, c * CHUNK + CHUNK, BLOCK_S):
                offs_t = s + tl.arange(0, BLOCK_S)
                lf = _logsigmoid(tl.load(base_f + offs_t * stride_ft).to(tl.float32))
                li = _logsigmoid(tl.load(base_i + offs_t * stride_it).to(tl.float32))
                total = tl.sum(lf, 0)
                w = tl.exp(total - tl.cumsum(lf, 0) + li)  # each token's weight at the sub-tile's end
                kt = tl.load(base_k + offs_t[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                             mask=d_ok[:, None], other=0.0).to(tl.float32)
                kbar = kt * w[None, :]
                v = tl.load(base_v + offs_t[:, None] * stride_vt + offs_e[None, :] * stride_vd,
                            mask=e_ok[None, :], other=0.0)
                g = tl.exp(total)
                c_state = c_state * g + _mma(kbar, v, dt, PREC, EMU_BF16)
                if NORMALIZE:
                    n_state = n_state * g + tl.sum(kbar, 1)


@triton.jit
def _mlstm_out_kernel(Q, K, V, I, F, CS, NS, O, T, NC, scale, NB,
                      stride_qb, stride_qh, stride_qt, stride_qd,
                      stride_kb, stride_kh, stride_kt, stride_kd,
                      stride_vb, stride_vh, stride_vt, stride_vd,
                      stride_ib, stride_ih, stride_it, stride_fb, stride_fh, stride_ft,
                      stride_ob, stride_oh, stride_ot, stride_od,
                      H, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, DVP: tl.constexpr,
                      CHUNK: tl.constexpr, NORMALIZE: tl.constexpr, PREC: tl.constexpr, EMU_BF16: tl.constexpr,
                      STATE_F32: tl.constexpr, STATE_PREC: tl.constexpr, BLOCK: tl.constexpr, BDV: tl.constexpr,
                      BDKS: tl.constexpr):
    """Per (batch·head, query tile, Dv block): the intra-chunk part over key tiles from the diagonal back to the
    chunk's start, then the chunk's start state weighted by each query's decay from that start."""
    pid_bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: tensors past 2^31 elements
    pid_m = tl.program_id(1)
    pid_e = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    q0 = pid_m * BLOCK
    c = q0 // CHUNK
    offs_m = q0 + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BDV + tl.arange(0, BDV)
    m_ok = offs_m < T
    d_ok = offs_d < D
    e_ok = offs_e < DV
    dt = Q.dtype.element_ty
    base_k = K + b * stride_kb + h * stride_kh
    base_v = V + b * stride_vb + h * stride_vh
    base_i = I + b * stride_ib + h * stride_ih
    base_f = F + b * stride_fb + h * stride_fh
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    # g_j = Σ_{q0≤r≤j} log f_r (tokens past T: f = 1, never read by a stored row)
    lf_q = tl.where(m_ok, _logsigmoid(tl.load(base_f + offs_m * stride_ft, mask=m_ok, other=0.0).to(tl.float32)), 0.0)
    g_q = tl.cumsum(lf_q, 0)

    # the diagonal tile: log D_js = g_j − g_s + log i_s for s ≤ j (a difference within one tile)
    li_q = _logsigmoid(tl.load(base_i + offs_m * stride_it, mask=m_ok, other=0.0).to(tl.float32))
    kt = tl.load(base_k + offs_m[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                 mask=m_ok[None, :] & d_ok[:, None], other=0.0)
    causal = (offs_m[:, None] >= offs_m[None, :]) & m_ok[None, :]
    log_d = tl.where(causal, g_q[:, None] - g_q[None, :] + li_q[None, :], float("-inf"))
    s = _mma(q, kt, dt, PREC, EMU_BF16) * scale * tl.exp(log_d)
    v = tl.load(base_v + offs_m[:, None] * stride_vt + offs_e[None, :] * stride_vd,
                mask=m_ok[:, None] & e_ok[None, :], other=0.0)
    acc = _mma(s, v, dt, PREC, EMU_BF16)
    nsum = tl.sum(s, 1)

    # earlier key tiles of the chunk, walked backwards: log D_js = g_j + mid + a_s + log i_s, with a_s the
    # log-forget sum over the key tile after s and mid the sum over the tiles between (all terms ≤ 0)
    mid = tl.zeros([1], dtype=tl.float32)
    c0 = c * CHUNK
    for i in range(0, (q0 - c0) // BLOCK):
        offs_n = q0 - (i + 1) * BLOCK + tl.arange(0, BLOCK)  # all < q0 < T: no token mask
        lf = _logsigmoid(tl.load(base_f + offs_n * stride_ft).to(tl.float32))
        li = _logsigmoid(tl.load(base_i + offs_n * stride_it).to(tl.float32))
        total = tl.sum(lf, 0)
        a = total - tl.cumsum(lf, 0) + li
        kt = tl.load(base_k + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                     mask=d_ok[:, None], other=0.0)
        s = _mma(q, kt, dt, PREC, EMU_BF16) * scale * tl.exp((g_q[:, None] + mid[:, None]) + a[None, :])
        v = tl.load(base_v + offs_n[:, None] * stride_vt + offs_e[None, :] * stride_vd,
                    mask=e_ok[None, :], other=0.0)
        acc += _mma(s, v, dt, PREC, EMU_BF16)
        nsum += tl.sum(s, 1)
        mid += total

    # the chunk's start state, decayed to each query: exp(Σ_{c0≤r≤j} log f_r) = exp(g_j + mid); taken in Dqk
    # blocks of BDKS rows (q reloaded per block, from L2) so no more than BDKS × BDV of the fp32 state is live
    decay = tl.exp(g_q + mid) * scale
    st_base = CS + (pid_bh * NC + c) * BD * DVP
    for k0 in range(0, BD, BDKS):
        offs_k = k0 + tl.arange(0, BDKS)
        qk = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_k[None, :] * stride_qd,
                     mask=m_ok[:, None] & (offs_k[None, :] < D), other=0.0)
        qs = qk.to(tl.float32) * decay[:, None]
        cst = tl.load(st_base + offs_k[:, None] * DVP + offs_e[None, :])
        if STATE_F32:
            acc += tl.dot(qs, cst, input_precision=STATE_PREC)
        else:
            acc += _mma(qs, cst, dt, PREC, EMU_BF16)
        if NORMALIZE:
            nsum += tl.sum(qs * tl.load(NS + (pid_bh * NC + c) * BD + offs_k)[None, :], 1)
    if NORMALIZE:
        acc = acc / tl.maximum(tl.abs(nsum), 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_e[None, :] * stride_od,
             _to_out(acc, O.dtype.element_ty, EMU_BF16), mask=m_ok[:, None] & e_ok[None, :])


# Autotuning (GPU only; the interpreter runs fixed 16-wide tiles): a few configs per kernel, pruned to the head
# dims and the chunk, keyed by head dims, chunk and a power-of-two bucket of batch·heads·tokens, cached per machine.
# None is measured yet (written without a GPU): the lists follow linear_attn's and the peer's tile sizes (64-token
# tiles, 64-128-wide state blocks).
_STATE_CONFIGS = [(64, 64, 64, 4, 2), (64, 128, 64, 8, 2), (64, 64, 128, 8, 2), (128, 64, 64, 4, 2),
                  (64, 128, 128, 8, 1), (32, 64, 64, 4, 3), (64, 32, 64, 4, 2)]  # BLOCK_S, BDK, BDV, warps, stages
_OUT_CONFIGS = [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 256, 8, 1), (128, 128, 8, 2),
                (32, 64, 4, 2), (64, 64, 4, 3), (32, 128, 4, 2)]  # BLOCK, BDV, warps, stages


def _state_rows(bdv: int) -> int:
    """Dqk rows of the state per step of the out kernel's state product: 8192 fp32 values (32 KB) at most."""
    return max(16, 8192 // bdv)


def _fits(named_args: dict, config: triton.Config) -> bool:
    """Tiles no longer than the chunk, blocks no wider than the padded dims, and a register budget: with 256-wide
    queries (the whole Dqk sits in each tile) only 64-row tiles and 64-wide value blocks."""
    kw, chunk, bd, dvp = config.kwargs, named_args["CHUNK"], named_args["BD"], named_args["DVP"]
    if kw["BDV"] > dvp or kw.get("BDK", 0) > bd or kw.get("BLOCK", 0) > chunk or kw.get("BLOCK_S", 0) > chunk:
        return False
    if "BLOCK" in kw and bd >= 256:
        return kw["BDV"] <= 64 and kw["BLOCK"] <= 64 and config.num_stages <= 2
    return True


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """The configs that fit (``_fits``), their state-product rows (BDKS) clamped to the padded Dqk; a small
    single-stage config when none fits (a 16- or 32-token chunk)."""
    named_args = {**named_args, **kwargs}
    chunk, bd, dvp = named_args["CHUNK"], named_args["BD"], named_args["DVP"]
    keep = [c for c in configs if _fits(named_args, c)]
    if not keep:
        small = {"BDV": min(64, dvp)}
        if "BLOCK" in configs[0].kwargs:
            small.update(BLOCK=min(64, chunk), BDKS=min(bd, _state_rows(small["BDV"])))
        else:
            small.update(BLOCK_S=min(64, chunk), BDK=min(64, bd))
        return [triton.Config(small, num_warps=4, num_stages=1)]
    out = []
    for c in keep:
        if c.kwargs.get("BDKS", 0) > bd:
            c = triton.Config({**c.kwargs, "BDKS": bd}, num_warps=c.num_warps, num_stages=c.num_stages)
        out.append(c)
    return out


def _cfg(meta: dict, warps: int, stages: int) -> triton.Config:
    return triton.Config(meta, num_warps=warps, num_stages=stages)


_KEY = ["D", "DV", "CHUNK", "NB"]
_state_tuned = autotune(_mlstm_state_kernel, [_cfg({"BLOCK_S": n, "BDK": dk, "BDV": e}, w, s)
                                              for n, dk, e, w, s in _STATE_CONFIGS], _KEY, _prune)
_out_tuned = autotune(_mlstm_out_kernel, [_cfg({"BLOCK": m, "BDV": e, "BDKS": _state_rows(e)}, w, s)
                                            for m, e, w, s in _OUT_CONFIGS], _KEY, _prune)
# under the interpreter: 16-wide everything, so test sizes run several Dqk and Dv blocks and several tiles per chunk
_INTERPRET_META = {"BLOCK_S": 16, "BDK": 16, "BDV": 16, "BLOCK": 16, "BDKS": 16}


def _launch(raw, tuned, grid, *args, **kwargs) -> None:
    """The autotuned kernel on a GPU; under the interpreter the raw kernel with fixed 16-wide tiles."""
    if interpreting():
        meta = {k: v for k, v in _INTERPRET_META.items() if k in tuned.fn.arg_names}
        raw[grid(meta)](*args, **kwargs, **meta)
    else:
        tuned[grid](*args, **kwargs)


def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor, *,
          normalize: bool = False, chunk_size: int | None = None) -> torch.Tensor:
    """mLSTMsig forward, causal (token 0 first), by TFLA's two kernels.

    Args:
        q, k: [B, H, T, Dqk]; v: [B, H, T, Dv] (one dtype: fp16, bf16 or fp32; any strides). q is scaled by
            1/√Dqk here. Dqk and Dv up to 256 (padded in registers to the next power of two, at least 16).
        i_pre, f_pre: [B, H, T] input and forget gate pre-activations (any float dtype, read as fp32); the gates
            are σ(i_pre), σ(f_pre).
        normalize: divide by max(|n_tᵀ q_t|, 1) (TFLA's normaliser); off is TFLA's "n-False" setting.
        chunk_size: L, tokens per materialised state (a power of two ≥ 16): T/L states of Dqk × Dv fp32 reach
            HBM. Default 256 on a GPU, 32 under the interpreter.

    Returns:
        [B, H, T, Dv] in q's dtype.
    """
    from mmchar.kernels.mlstm.reference import _check

    _check(q, k, v, i_pre, f_pre)
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"mlstm: q, k, v must share one dtype of float16, bfloat16, float32; got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if not (i_pre.is_floating_point() and f_pre.is_floating_point()):
        raise ValueError(f"mlstm: gate pre-activations must be floating point; got {i_pre.dtype}, {f_pre.dtype}")
    b, h, t, d = q.shape
    dv = v.shape[-1]
    if not (1 <= d <= MAX_HEAD_DIM and 1 <= dv <= MAX_HEAD_DIM):
        raise ValueError(f"mlstm: head dims Dqk={d}, Dv={dv}; valid: 1 to {MAX_HEAD_DIM} each (powers of two run "
                         "unpadded: 16, 32, 64, 128, 256; others are padded to the next)")
    if chunk_size is None:
        chunk_size = 32 if interpreting() else DEFAULT_CHUNK
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"mlstm: chunk_size {chunk_size} must be a power of two ≥ 16 (16, 32, ..., 256, ...)")
    o = torch.empty((b, h, t, dv), dtype=q.dtype, device=q.device)
    if o.numel() == 0:
        return o
    bd, dvp = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    nc = triton.cdiv(t, chunk_size)
    cs = torch.empty((b * h, nc, bd, dvp), dtype=torch.float32, device=q.device)
    ns = torch.empty((b * h, nc, bd), dtype=torch.float32, device=q.device)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 in, fp32 maths (no silent TF32)
    state_f32 = state_dtype(q.dtype) == torch.float32
    nb = bucket(b * h * t)
    gates = (*i_pre.stride(), *f_pre.stride())
    emu = interpreting() and q.dtype == torch.bfloat16  # see _mma
    common = dict(H=h, D=d, DV=dv, BD=bd, DVP=dvp, CHUNK=chunk_size, NORMALIZE=bool(normalize), PREC=prec,
                  EMU_BF16=emu)
    _launch(_mlstm_state_kernel, _state_tuned, lambda meta: (b * h, bd // meta["BDK"], dvp // meta["BDV"]),
            k, v, i_pre, f_pre, cs, ns, t, nc, nb, *k.stride(), *v.stride(), *gates, **common)
    _launch(_mlstm_out_kernel, _out_tuned, lambda meta: (b * h, triton.cdiv(t, meta["BLOCK"]), dvp // meta["BDV"]),
            q, k, v, i_pre, f_pre, cs, ns, o, t, nc, d ** -0.5, nb, *q.stride(), *k.stride(), *v.stride(), *gates,
            *o.stride(), **common, STATE_F32=state_f32, STATE_PREC=prec)
    return o
