"""rwkv7 in Triton: RWKV-7's generalized delta rule, forward, causal, chunked (the maths and convention:
reference.py; the design: docs/kernels/rwkv7.md).

Two passes, the split fla-core's ``chunk_dplr_delta_rule`` makes, in two launches where its forward takes six
(cumsum, intra, WY inverse, WY products, state, output):

1. Intra-chunk pass, one program per (batch·head, chunk), all chunks in parallel: the four token-pair matrices
   of the chunk (A_qk, A_qb, A_ak, A_ab), the UT transform T = (I − A_ab)⁻¹ by forward substitution on chip, and
   from them everything the state pass needs that does not depend on the state: W = TÃ, U = T A_ak V, the
   output's state-free part O_intra = A_qk V + A_qb U, its state coefficient Q' = Q̃ + A_qb W, the decayed keys
   K̃, B̃ and the chunk's total decay. Written to HBM once.
2. State pass, one program per (batch·head, value block) walking the chunks in order with its D × BV slice of
   the state in registers (the value columns of the state evolve independently: the transition acts on the key
   side): per chunk N = W h + U, O = Q' h + O_intra (stored), h ← e^{Γ_C} ⊙ h + K̃ᵀV + B̃ᵀN. No state reaches HBM.

The token-pair decays are exact for any log decay w < 0 (fla's default 16-token path is; its 64-token path
needs a bound on w): inside each 16-token block the pairwise e^{Γ_i − Γ_j} column by column; across blocks the
decay is split at the end of the earlier block, so both factors of every product are ≤ 1.

Products run with fp32 operands and fp32 accumulation: TF32 for 16-bit inputs, 3xTF32 (fp32-accurate) for fp32.
The state is fp32 throughout; the pass-1 results are bf16 for bf16 inputs (but for the output's state-free
part), else fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmchar.kernels.tuning import autotune, bucket, interpreting

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CHUNKS = (16, 32, 64)
MAX_HEAD_DIM = 256
_BLOCK = 16  # the sub-block whose token pairs get exact decays (and the smallest tl.dot side)


@triton.jit
def _rows(base, rows, offs_d, s_t, s_d, T, D: tl.constexpr):
    """[rows, BD] of one head's [T, D] slice in fp32; rows past T and columns past D read as 0 (a padded token:
    w = 0, so decay 1, and a = b = k = v = 0: the identity transition)."""
    m = (rows[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(base + rows[:, None] * s_t + offs_d[None, :] * s_d, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _rwkv7_intra_kernel(R, W, K, V, A, Bv, QP, WY, U, OI, KG, BG, G, T, NT, scale,
                        s_rb, s_rh, s_rt, s_rd, s_wb, s_wh, s_wt, s_wd, s_kb, s_kh, s_kt, s_kd,
                        s_vb, s_vh, s_vt, s_vd, s_ab, s_ah, s_at, s_ad, s_bb, s_bh, s_bt, s_bd,
                        H, D: tl.constexpr, BD: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
                        PREC: tl.constexpr):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    bi = pid_bh // H
    hi = pid_bh % H
    NS: tl.constexpr = C // BC
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, BD)
    rows = pid_c * C + offs_c
    pos = offs_c % BC  # place inside the 16-token block
    blk = offs_c // BC  # which block of the chunk
    pr = R + bi * s_rb + hi * s_rh
    pw = W + bi * s_wb + hi * s_wh
    pk = K + bi * s_kb + hi * s_kh
    pv = V + bi * s_vb + hi * s_vh
    pa = A + bi * s_ab + hi * s_ah
    pb = Bv + bi * s_bb + hi * s_bh

    # Cumulative log decays from each block's start, inclusive (lw) and exclusive (lwe), summed token by token
    # in the order the diagonal loop below repeats, so that lw_i − lw_j there is the exact difference of equal
    # sums (≤ 0) and never a cancellation of two large ones.
    p = tl.zeros([C, BD], dtype=tl.float32)
    lw = tl.zeros([C, BD], dtype=tl.float32)
    lwe = tl.zeros([C, BD], dtype=tl.float32)
    for jj in range(BC):
        wj = _rows(pw, pid_c * C + blk * BC + jj, offs_d, s_wt, s_wd, T, D)
        lwe = tl.where(pos[:, None] == jj, p, lwe)
        p += wj
        lw = tl.where(pos[:, None] == jj, p, lw)

    # Token-pair matrices (reference.py, _chunk_step): A_qk, A_qb over j ≤ i with e^{Γ_i − Γ_j}; A_ak, A_ab over
    # j < i with e^{Γ_{i−1} − Γ_j}. Diagonal 16-blocks exactly: column jj of every block at once, its keys
    # gathered from global memory (L1/L2), the decay of each pair taken from the running sums. (The order of
    # this kernel keeps few [C, D] tiles live at once: k, b and the chunk-level Γ come after this loop.)
    q = _rows(pr, rows, offs_d, s_rt, s_rd, T, D) * scale
    a = _rows(pa, rows, offs_d, s_at, s_ad, T, D)
    offs_j = tl.arange(0, BC)
    dqk = tl.zeros([C, BC], dtype=tl.float32)  # the diagonal blocks, compact: [i, j − 16·block(i)]
    dqb = tl.zeros([C, BC], dtype=tl.float32)
    dak = tl.zeros([C, BC], dtype=tl.float32)
    dab = tl.zeros([C, BC], dtype=tl.float32)
    p = tl.zeros([C, BD], dtype=tl.float32)
    for jj in range(BC):
        rj = pid_c * C + blk * BC + jj  # each row's column jj in its own block
        kj = _rows(pk, rj, offs_d, s_kt, s_kd, T, D)
        bj = _rows(pb, rj, offs_d, s_bt, s_bd, T, D)
        p += _rows(pw, rj, offs_d, s_wt, s_wd, T, D)  # lw at that column
        inc = (pos >= jj)[:, None]
        stc = (pos > jj)[:, None]
        qe = tl.where(inc, q * tl.exp(tl.where(inc, lw - p, 0.0)), 0.0)
        ae = tl.where(stc, a * tl.exp(tl.where(stc, lwe - p, 0.0)), 0.0)
        sel = offs_j[None, :] == jj
        dqk = tl.where(sel, tl.sum(qe * kj, 1)[:, None], dqk)
        dqb = tl.where(sel, tl.sum(qe * bj, 1)[:, None], dqb)
        dak = tl.where(sel, tl.sum(ae * kj, 1)[:, None], dak)
        dab = tl.where(sel, tl.sum(ae * bj, 1)[:, None], dab)
    # to [C, C]: a product with the 0/1 matrix spreading column jj to columns ≡ jj (mod 16), exact in ieee
    # fp32, then the block mask
    spread = tl.where(offs_c[None, :] % BC == offs_j[:, None], 1.0, 0.0)
    same = blk[:, None] == blk[None, :]
    aqk = tl.where(same, tl.dot(dqk, spread, input_precision="ieee"), 0.0)
    aqb = tl.where(same, tl.dot(dqb, spread, input_precision="ieee"), 0.0)
    aak = tl.where(same, tl.dot(dak, spread, input_precision="ieee"), 0.0)
    aab = tl.where(same, tl.dot(dab, spread, input_precision="ieee"), 0.0)

    # every row of p holds its block's total again (the same sums as above); Γ from the chunk's start (gam,
    # inclusive; game, exclusive) = the earlier blocks' totals + lw
    start = tl.zeros([C, BD], dtype=tl.float32)
    for J in tl.static_range(NS - 1):
        tot = tl.sum(tl.where(offs_c[:, None] == J * BC, p, 0.0), 0)
        start = tl.where(blk[:, None] > J, start + tot[None, :], start)
    gam = start + lw
    game = start + lwe
    k = _rows(pk, rows, offs_d, s_kt, s_kd, T, D)
    b = _rows(pb, rows, offs_d, s_bt, s_bd, T, D)

    # Blocks I > J: split the decay at the end of block J, e^{Γ_i − Γ^e_J} · e^{Γ^e_J − Γ_j}, both ≤ 1; one
    # product per J over every later row (rows outside blocks > J and columns outside J are zeroed). Γ^e_J is
    # gam's value on J's last row.
    for J in tl.static_range(NS - 1):
        end = tl.sum(tl.where(offs_c[:, None] == J * BC + BC - 1, gam, 0.0), 0)
        col = (blk == J)[:, None]
        row = (blk > J)[:, None]
        ec = tl.exp(tl.where(col, end[None, :] - gam, 0.0))
        kct = tl.trans(tl.where(col, k * ec, 0.0))
        bct = tl.trans(tl.where(col, b * ec, 0.0))
        qr = tl.where(row, q * tl.exp(tl.where(row, gam - end[None, :], 0.0)), 0.0)
        ar = tl.where(row, a * tl.exp(tl.where(row, game - end[None, :], 0.0)), 0.0)
        aqk += tl.dot(qr, kct, input_precision=PREC)
        aqb += tl.dot(qr, bct, input_precision=PREC)
        aak += tl.dot(ar, kct, input_precision=PREC)
        aab += tl.dot(ar, bct, input_precision=PREC)

    # what needs no T goes out first (fewer tiles live through the substitution below)
    out = (pid_bh * NT + pid_c) * C * BD + offs_c[:, None] * BD + offs_d[None, :]
    g_last = tl.sum(tl.where(offs_c[:, None] == C - 1, gam, 0.0), 0)  # padded tokens decay by 1: the last real
    dec = tl.exp(g_last[None, :] - gam)
    tl.store(KG + out, (k * dec).to(KG.dtype.element_ty))
    tl.store(BG + out, (b * dec).to(BG.dtype.element_ty))
    tl.store(G + (pid_bh * NT + pid_c) * BD + offs_d, tl.exp(g_last))
    a_g = a * tl.exp(game)  # Ã
    q_g = q * tl.exp(gam)  # Q̃

    # UT transform: X = (I − A_ab)⁻¹ − I by forward substitution, row i = A_ab[i] + Σ_m A_ab[i, m] X[m] (rows
    # m < i are final); stable where the Neumann product (I + L)(I + L²)… cancels huge powers of L.
    x = aab
    for i in range(1, C):
        is_i = offs_c[:, None] == i
        ri = tl.sum(tl.where(is_i, x, 0.0), 0)
        ri += tl.sum(ri[:, None] * x, 0)
        x = tl.where(is_i, ri[None, :], x)
    tri = x + tl.where(offs_c[:, None] == offs_c[None, :], 1.0, 0.0)

    wy = tl.dot(tri, a_g, input_precision=PREC)  # W = T Ã
    tl.store(WY + out, wy.to(WY.dtype.element_ty))
    tl.store(QP + out, (q_g + tl.dot(aqb, wy, input_precision=PREC)).to(QP.dtype.element_ty))  # Q̃ + A_qb W
    v = _rows(pv, rows, offs_d, s_vt, s_vd, T, D)
    u = tl.dot(tl.dot(tri, aak, input_precision=PREC), v, input_precision=PREC)  # U = T A_ak V
    tl.store(U + out, u.to(U.dtype.element_ty))
    oi = tl.dot(aqk, v, input_precision=PREC) + tl.dot(aqb, u, input_precision=PREC)  # A_qk V + A_qb U
    tl.store(OI + out, oi.to(OI.dtype.element_ty))


@triton.jit
def _rwkv7_state_kernel(V, QP, WY, U, OI, KG, BG, G, O, T, NT,
                        s_vb, s_vh, s_vt, s_vd, s_ob, s_oh, s_ot, s_od,
                        H, D: tl.constexpr, BD: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr, NB,
                        BV: tl.constexpr):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    bi = pid_bh // H
    hi = pid_bh % H
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, BD)
    offs_e = pid_e * BV + tl.arange(0, BV)
    pv = V + bi * s_vb + hi * s_vh
    po = O + bi * s_ob + hi * s_oh
    h = tl.zeros([BD, BV], dtype=tl.float32)  # keys × this program's value columns
    for c in range(NT):
        base = (pid_bh * NT + c) * C * BD + offs_c[:, None] * BD
        # nothing below but the two products with h waits on the previous chunk
        wy = tl.load(WY + base + offs_d[None, :]).to(tl.float32)
        qp = tl.load(QP + base + offs_d[None, :]).to(tl.float32)
        kg = tl.load(KG + base + offs_d[None, :]).to(tl.float32)
        bg = tl.load(BG + base + offs_d[None, :]).to(tl.float32)
        u = tl.load(U + base + offs_e[None, :]).to(tl.float32)
        oi = tl.load(OI + base + offs_e[None, :]).to(tl.float32)
        rows = c * C + offs_c
        v = _rows(pv, rows, offs_e, s_vt, s_vd, T, D)
        g = tl.load(G + (pid_bh * NT + c) * BD + offs_d)
        kv = tl.dot(tl.trans(kg), v, input_precision=PREC)
        n = tl.dot(wy, h, input_precision=PREC) + u  # ν of every token: what its removal term reads
        o = tl.dot(qp, h, input_precision=PREC) + oi
        tl.store(po + rows[:, None] * s_ot + offs_e[None, :] * s_od, o.to(O.dtype.element_ty),
                 mask=(rows[:, None] < T) & (offs_e[None, :] < D))
        h = g[:, None] * h + kv + tl.dot(tl.trans(bg), n, input_precision=PREC)


# Autotuning (GPU only; the interpreter runs fixed configs): the intra pass over warps and stages, keyed by the
# head dim and chunk; the state pass also over its value block, keyed by a power-of-two bucket of batch·heads
# (how many programs fill the GPU). Untuned defaults otherwise: docs/kernels/rwkv7.md, "Limits".
_INTRA_CONFIGS = [(4, 1), (8, 1), (4, 2), (8, 2)]
_STATE_CONFIGS = [(16, 4, 2), (32, 4, 2), (64, 4, 2), (16, 2, 2), (32, 8, 2), (64, 8, 2), (16, 4, 3), (32, 4, 3)]


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """Value blocks no wider than the padded head dim, and at most 32 wide at d = 256 (the D × BV state slice
    and the [C, D] tiles share the registers)."""
    bd = {**named_args, **kwargs}["BD"]
    keep = [c for c in configs if c.kwargs.get("BV", 16) <= (bd if bd < 256 else 32)]
    return keep or [triton.Config({"BV": 16}, num_warps=4, num_stages=1)]


_intra_tuned = autotune(_rwkv7_intra_kernel, [triton.Config({}, num_warps=w, num_stages=s) for w, s in _INTRA_CONFIGS],
                        ["BD", "C"], lambda configs, named_args, **kw: configs)
_state_tuned = autotune(_rwkv7_state_kernel, [triton.Config({"BV": e}, num_warps=w, num_stages=s)
                                              for e, w, s in _STATE_CONFIGS], ["BD", "C", "NB"], _prune)


def default_chunk(d: int) -> int:
    """The largest chunk whose intra pass fits the registers without spilling (checked by compiling for sm_90:
    docs/kernels/rwkv7.md, "Limits"): 64 tokens up to d = 32, 32 at d = 64, 16 beyond (fla's default)."""
    bd = max(16, triton.next_power_of_2(d))
    return 64 if bd <= 32 else 32 if bd <= 64 else 16


def rwkv7(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
          scale: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """RWKV-7's generalized delta rule forward, causal (fla-core 0.6.0's ``chunk_rwkv7`` convention; reference.py):

        h_t = diag(exp(w_t)) h_{t-1} + b_t (a_tᵀ h_{t-1}) + k_t v_tᵀ,   o_t = h_tᵀ (scale · r_t)

    (h = Sᵀ: S_t = S_{t-1}(diag(exp(w_t)) + a_tᵀb_t) + v_tᵀk_t, o_t = S_t r_t · scale), from a zero state.

    Args:
        r, w, k, v, a, b: [B, H, T, D] each (any strides; fp16, bf16 or fp32, each loaded as it is and computed
            in fp32). w is the log decay (w < 0; exact for any such w). RWKV-7: a = −κ̂, b = κ̂ ⊙ a_lr.
        scale: multiplies r.
        chunk_size: 16, 32 or 64 tokens per chunk (default ``default_chunk(D)``).

    Returns:
        o [B, H, T, D] in r's dtype.
    """
    ts = (r, w, k, v, a, b)
    if r.dim() != 4 or len({tuple(t.shape) for t in ts}) != 1:
        raise ValueError("rwkv7: r, w, k, v, a, b must all be [B, H, T, D]; got "
                         + ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip("rwkvab", ts)))
    if any(t.dtype not in DTYPES for t in ts):
        raise ValueError(f"rwkv7: dtypes {[str(t.dtype) for t in ts]}; valid: float16, bfloat16, float32")
    bsz, heads, n, d = r.shape
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"rwkv7: head dim {d} not supported; valid: 1 to {MAX_HEAD_DIM} (tuned for 64 and 128)")
    c = default_chunk(d) if chunk_size is None else chunk_size
    if c not in CHUNKS:
        raise ValueError(f"rwkv7: chunk_size {chunk_size}; valid: {', '.join(map(str, CHUNKS))}")
    o = torch.empty((bsz, heads, n, d), dtype=r.dtype, device=r.device)
    if o.numel() == 0:
        return o
    bd = max(16, triton.next_power_of_2(d))
    nt = triton.cdiv(n, c)
    bh = bsz * heads
    # pass-1 results: bf16 for bf16 inputs (what fla stores), except the output's state-free part, which would
    # otherwise be rounded twice on its way out; fp32 for fp16 and fp32 inputs (T's entries are not bounded
    # by fp16's range)
    inter = torch.bfloat16 if r.dtype == torch.bfloat16 else torch.float32
    qp, wy, u, kg, bg = (torch.empty((bh, nt * c, bd), dtype=inter, device=r.device) for _ in range(5))
    oi = torch.empty((bh, nt * c, bd), dtype=torch.float32, device=r.device)
    g = torch.empty((bh, nt, bd), dtype=torch.float32, device=r.device)
    # fp32 in, fp32-accurate maths (no silent TF32): 3xTF32, since Triton's ieee FMA products leave the state
    # pass in local memory (docs/kernels/rwkv7.md, "Limits")
    prec = "tf32x3" if r.dtype == torch.float32 else "tf32"
    strides = [s for t in ts for s in t.stride()]
    intra_args = (r, w, k, v, a, b, qp, wy, u, oi, kg, bg, g, n, nt, float(scale), *strides, heads)
    intra_meta = dict(D=d, BD=bd, C=c, BC=_BLOCK, PREC=prec)
    state_args = (v, qp, wy, u, oi, kg, bg, g, o, n, nt, *v.stride(), *o.stride(), heads)
    state_meta = dict(D=d, BD=bd, C=c, PREC=prec, NB=bucket(bh))
    if interpreting():
        _rwkv7_intra_kernel[(bh, nt)](*intra_args, **intra_meta)
        _rwkv7_state_kernel[(bh, bd // 16)](*state_args, **state_meta, BV=16)
    else:
        _intra_tuned[(bh, nt)](*intra_args, **intra_meta)
        _state_tuned[lambda meta: (bh, bd // meta["BV"])](*state_args, **state_meta)
    return o
