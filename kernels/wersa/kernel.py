"""WERSA in Triton: the two fused passes of docs/kernels/wersa.md, "Implementation", and the gain generator's
depthwise conv over tokens (`gain_conv`; its MLP stays cuBLAS work).

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

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mmchar.kernels.tuning import autotune, bucket, interpreting
from mmchar.kernels.wersa.reference import WersaParams, haar_filter


def _mixing_rows_direct(gains: torch.Tensor, n: int, levels: int) -> torch.Tensor:
    """[B, n_pad, P] fp32 by filtering the P unit vectors: the definition (used once per level count to build the
    basis below, and by the tests)."""
    p = 1 << levels
    n_pad = -(-n // p) * p
    # channel s of the basis is 1 on the s-th token of every block: filtering it (the filter is linear and
    # block-local) gives, at token t, the weight of its block's s-th token
    eye = torch.eye(p, device=gains.device, dtype=torch.float32).repeat(n_pad // p, 1)[:n]  # [n, P]
    basis = eye[None, None].expand(gains.shape[0], 1, n, p)
    rows = haar_filter(basis, gains.float(), levels)
    return F.pad(rows, (0, 0, 0, n_pad - rows.shape[2]))[:, 0].contiguous()


_TERMS: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _terms(levels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The filter of one block is Σ over its P Haar coefficients of (that coefficient's gain) × (a fixed P×P
    matrix): level j's i-th detail takes the gain of token i·2^(j+1) at level j, the approximation the gain of
    token 0 at level L. Returns (token offset [P], level [P], matrices [P, P·P]), built once per level count."""
    key = (levels, str(device))
    if key not in _TERMS:
        # built outside inference mode and autograd: a cache first filled under inference mode (a profiled
        # pipeline) holds inference tensors, which a later call with autograd on (learnable gains) cannot save
        # for backward ("Inference tensors do not track version counter" on the GPU)
        with torch.inference_mode(False), torch.no_grad():
            _TERMS[key] = _build_terms(levels, device)
    return _TERMS[key]


def _build_terms(levels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = 1 << levels
    terms = [(i << (j + 1), j) for j in range(levels) for i in range(p >> (j + 1))] + [(0, levels)]
    mats = []
    for tok, lvl in terms:
        onehot = torch.zeros(1, p, levels + 1)
        onehot[0, tok, lvl] = 1.0
        mats.append(_mixing_rows_direct(onehot, p, levels)[0].reshape(-1))
    return (torch.tensor([t for t, _ in terms], device=device), torch.tensor([lv for _, lv in terms],
            device=device), torch.stack(mats).to(device))


def mixing_rows(gains: torch.Tensor, n: int, levels: int, every: int = 1) -> torch.Tensor:
    """[B, n_pad, P] fp32: row t holds the weights of the P tokens of t's block in t's filtered value. One gather
    of the P gains of every block and one product with the fixed term matrices (a handful of kernels, where
    filtering the unit vectors takes dozens of small launches).

    ``every = 2``: ``gains`` holds the even tokens' only (`WersaParams.gains`). Every term starts on an even
    token; the one index that can be odd is n - 1, where the clamp meets a term lying wholly in the padding, whose
    coefficient is zero and whose gain is therefore never seen by a real token."""
    p = 1 << levels
    nb = -(-n // p)
    b, _, width = gains.shape
    flat = _gather_index(levels, n, every, width, gains.device)
    g = gains.reshape(b, -1).index_select(1, flat).float().view(b, nb, p)  # [B, nb, P]: one gather, one cast
    return (g @ _terms(levels, gains.device)[2]).view(b, nb * p, p)


_GATHER: dict[tuple, torch.Tensor] = {}


def _gather_index(levels: int, n: int, every: int, width: int, device: torch.device) -> torch.Tensor:
    """[nb·P] flat positions in a [n_g, width] gains tensor of the P gains each block's filter reads (the term's
    start token // every, the term's level), depending on the shape alone: built once per (L, n, every) instead of
    five small launches per call. Built outside inference mode, so a later call with autograd may use it."""
    key = (levels, n, every, width, device)
    flat = _GATHER.get(key)
    if flat is None:
        if len(_GATHER) >= 256:  # a run sees a handful of sequence lengths; never grow without bound
            _GATHER.clear()
        p = 1 << levels
        tok, lvl, _ = _terms(levels, device)
        with torch.inference_mode(False):
            idx = (torch.arange(-(-n // p), device=device)[:, None] * p + tok[None, :]).clamp(max=n - 1) // every
            flat = _GATHER[key] = (idx * width + lvl[None, :]).reshape(-1)
    return flat


@triton.jit
def _gain_conv_kernel(X, W, BIAS, Y, N, N_OUT, C, SIZE,
                      stride_xb, stride_xn, stride_xc, stride_wc, stride_wk, stride_yb, stride_yn, stride_yc,
                      TAPS: tl.constexpr, PAD: tl.constexpr, EVERY: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Depthwise conv over tokens, x [B, n, C] read in place: output token o is Σ_j w[c, j] · x[o·EVERY − PAD + j, c]
    (+ bias[c]), taps outside [0, n) reading zeros. One program per (BLOCK_T output tokens, BLOCK_C channels, batch).
    The taps' tiles overlap: each tap after the first EVERY re-reads rows the previous ones brought into L1, so x
    leaves HBM about once (Triton has no register shift to hold a window in place of the cache)."""
    pid_t = tl.program_id(0)  # output tokens on axis 0 (no 65 535 limit there)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_o = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    o_ok = offs_o < N_OUT
    x_base = X + b * stride_xb + offs_c[None, :] * stride_xc
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for j in tl.static_range(TAPS):
        rows = offs_o * EVERY + (j - PAD)
        ok = o_ok & (rows >= 0) & (rows < N)
        xj = tl.load(x_base + rows[:, None] * stride_xn, mask=ok[:, None] & c_ok[None, :], other=0.0)
        wj = tl.load(W + offs_c * stride_wc + j * stride_wk, mask=c_ok, other=0.0)
        acc += xj.to(tl.float32) * wj.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + b * stride_yb + offs_o[:, None] * stride_yn + offs_c[None, :] * stride_yc,
             acc.to(Y.dtype.element_ty), mask=o_ok[:, None] & c_ok[None, :])


# (BLOCK_T, BLOCK_C, warps): output tokens × channels per program, the preferred first (ties and untuned runs pick
# it); channel blocks pruned to C's width. A memory-bound pass: 16-byte loads along the channels, tiles of 2k-8k
# elements (32-64 fp32 accumulators a thread).
_CONV_CONFIGS = [(32, 128, 4), (64, 128, 8), (64, 64, 4), (16, 256, 4), (128, 64, 8)]


def _prune_conv(configs: list, named_args: dict, **kwargs) -> list:
    width = max(32, triton.next_power_of_2(named_args["C"]))
    return [c for c in configs if c.kwargs["BLOCK_C"] <= width] or configs[-1:]


_conv_tuned = autotune(_gain_conv_kernel, [triton.Config({"BLOCK_T": t, "BLOCK_C": c}, num_warps=w, num_stages=1)
                                           for t, c, w in _CONV_CONFIGS], ["C", "EVERY", "PAD", "SIZE"], _prune_conv)


def gain_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, every: int = 1,
              pad: int = 16) -> torch.Tensor:
    """The gain generator's depthwise conv over tokens (docs/kernels/wersa.md, step 1) in one Triton pass.

    Args:
        x: [B, n, C], any strides (read in place, no transpose or padding copy).
        weight: [C, 1, K] (nn.Conv1d's depthwise layout), bias: [C] or None; any float dtype (read as fp32).
        every: output token stride (the conv's stride).
        pad: zeros on the left; K − 1 − pad on the right (16 for the "same" conv, 32 = K − 1 for the causal one).

    Returns [B, ceil(n / every), C] in x's dtype, accumulated in fp32: token o is the conv centred (or, causal,
    ending) at token o·every."""
    b, n, c = x.shape
    taps = weight.shape[-1]
    if weight.shape[0] != c or not 0 <= pad < taps:
        raise ValueError(f"gain_conv: weight {tuple(weight.shape)} and pad {pad} do not fit x {tuple(x.shape)}")
    n_out = (n - 1) // every + 1  # (n + pad + (K - 1 - pad) - K) // every + 1
    y = torch.empty((b, n_out, c), dtype=x.dtype, device=x.device)
    if b == 0 or n == 0 or c == 0:
        return y
    args = (x, weight, weight if bias is None else bias, y, n, n_out, c, bucket(b * n_out * c), *x.stride(),
            weight.stride(0), weight.stride(-1), *y.stride())
    const = {"TAPS": taps, "PAD": pad, "EVERY": every, "HAS_BIAS": bias is not None}
    if interpreting():
        _gain_conv_kernel[(triton.cdiv(n_out, 16), triton.cdiv(c, 16), b)](*args, **const, BLOCK_T=16, BLOCK_C=16)
    else:
        _conv_tuned[lambda meta: (triton.cdiv(n_out, meta["BLOCK_T"]), triton.cdiv(c, meta["BLOCK_C"]), b)](
            *args, **const)
    return y


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _inv_tau(LAM):
    """1/τ with τ = softplus(λ) + 0.1 (torch's softplus: λ itself above 20), from the layer's λ in memory: read on
    the device, so the host never waits for it (a float() of λ per call would drain the GPU's queue each time)."""
    lam = tl.load(LAM).to(tl.float32)
    return 1.0 / (tl.where(lam > 20.0, lam, tl.log(1.0 + tl.exp(tl.minimum(lam, 20.0)))) + 0.1)


@triton.jit
def _filtered_tile(X, W, base_x, stride_xn, stride_xd, b, start, N, offs_d, D: tl.constexpr,
                   P: tl.constexpr, BLOCK_N: tl.constexpr, NPAD, PREC: tl.constexpr):
    """GELU then the block filter of one aligned tile of tokens: [BLOCK_N, BD] fp32."""
    offs_n = start + tl.arange(0, BLOCK_N)
    x = tl.load(X + base_x + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0).to(tl.float32)
    x = _gelu(x)
    cols = tl.arange(0, BLOCK_N)
    same_block = (offs_n[:, None] // P) == ((start + cols)[None, :] // P)
    w = tl.load(W + b * NPAD * P + offs_n[:, None] * P + (cols[None, :] % P),
                mask=same_block & (offs_n[:, None] < NPAD), other=0.0)
    dt = X.dtype.element_ty
    return tl.dot(w.to(dt), x.to(dt), input_precision=PREC)


@triton.jit
def _wersa_state_kernel(K, V, WK, OMEGA, U, Z, N, NPAD, LAM, inv_sqrt_m, tokens_per_program, NB,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        stride_vb, stride_vh, stride_vn, stride_vd,
                        H, M, D: tl.constexpr, BD: tl.constexpr, P: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    pid_bh = tl.program_id(0)  # batch·head on axis 0 (no 65 535 limit there)
    dt = K.dtype.element_ty
    inv_tau = _inv_tau(LAM)
    pid_f = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    omega = tl.load(OMEGA + offs_d[:, None] * M + offs_f[None, :], mask=(offs_d[:, None] < D) & (offs_f[None, :] < M),
                    other=0.0).to(dt)
    u = tl.zeros([BLOCK_F, BD], dtype=tl.float32)
    z = tl.zeros([BLOCK_F], dtype=tl.float32)
    base_k = b * stride_kb + h * stride_kh
    first = pid_n * tokens_per_program  # a runtime bound: one compiled kernel serves every sequence length
    for start in range(first, first + tokens_per_program, BLOCK_N):
        kf = _filtered_tile(K, WK, base_k, stride_kn, stride_kd, b, start, N, offs_d, D, P, BLOCK_N, NPAD, PREC)
        phi = tl.maximum(tl.dot((kf * inv_tau).to(dt), omega, input_precision=PREC), 0.0) * inv_sqrt_m
        offs_n = start + tl.arange(0, BLOCK_N)
        phi = tl.where((offs_n < N)[:, None], phi, 0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0)
        u += tl.dot(tl.trans(phi.to(dt)), v, input_precision=PREC)
        z += tl.sum(phi, 0)
    tl.atomic_add(U + pid_bh * M * BD + offs_f[:, None] * BD + offs_d[None, :], u, mask=offs_f[:, None] < M)
    tl.atomic_add(Z + pid_bh * M + offs_f, z, mask=offs_f < M)


@triton.jit
def _wersa_out_kernel(Q, WQ, OMEGA, U, Z, LN_W, LN_B, O, N, NPAD, LAM, inv_sqrt_m, eps, ln_eps, state_scale, NB,
                      stride_qb, stride_qh, stride_qn, stride_qd,
                      stride_ob, stride_oh, stride_on, stride_od,
                      H, M, D: tl.constexpr, BD: tl.constexpr, P: tl.constexpr, PREC: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    dt = Q.dtype.element_ty
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BD)
    start = pid_n * BLOCK_N
    qf = _filtered_tile(Q, WQ, b * stride_qb + h * stride_qh, stride_qn, stride_qd, b, start, N, offs_d, D, P,
                        BLOCK_N, NPAD, PREC)
    qs = (qf * _inv_tau(LAM)).to(dt)
    num = tl.zeros([BLOCK_N, BD], dtype=tl.float32)
    den = tl.zeros([BLOCK_N], dtype=tl.float32)
    for f0 in range(0, M, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        omega = tl.load(OMEGA + offs_d[:, None] * M + offs_f[None, :],
                        mask=(offs_d[:, None] < D) & (offs_f[None, :] < M), other=0.0).to(dt)
        phi = tl.maximum(tl.dot(qs, omega, input_precision=PREC), 0.0) * inv_sqrt_m
        u = tl.load(U + pid_bh * M * BD + offs_f[:, None] * BD + offs_d[None, :], mask=offs_f[:, None] < M, other=0.0)
        z = tl.load(Z + pid_bh * M + offs_f, mask=offs_f < M, other=0.0)
        # the state scaled by 1/keys for the product (fp16 range), scaled back in fp32
        num += tl.dot(phi.to(dt), (u * state_scale).to(dt), input_precision=PREC) / state_scale
        den += tl.sum(phi * z[None, :], 1)
    out = num / (den + eps)[:, None]
    d_ok = offs_d < D
    mean = tl.sum(tl.where(d_ok[None, :], out, 0.0), 1) / D
    cen = tl.where(d_ok[None, :], out - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(cen * cen, 1) / D + ln_eps)
    w = tl.load(LN_W + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    bias = tl.load(LN_B + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    y = cen * rstd[:, None] * w[None, :] + bias[None, :]
    offs_n = start + tl.arange(0, BLOCK_N)
    tl.store(O + b * stride_ob + h * stride_oh + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od,
             y.to(O.dtype.element_ty), mask=(offs_n[:, None] < N) & d_ok[None, :])


# (BLOCK_N, BLOCK_F, warps, stages), pruned to the block size and head dim, autotuned on the GPU (keyed by head
# dim, m and a bucket of batch·heads·tokens; cached); the interpreter runs fixed 16-wide tiles.
_STATE_CONFIGS = [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 2), (128, 64, 8, 2), (64, 32, 4, 3), (32, 64, 4, 3)]
_OUT_CONFIGS = [(64, 64, 4, 3), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 32, 4, 3)]


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    a = {**named_args, **kwargs}
    keep = [c for c in configs if c.kwargs["BLOCK_N"] >= a["P"]
            and (a["BD"] < 256 or (c.kwargs["BLOCK_N"] <= 64 and c.kwargs["BLOCK_F"] <= 64 and c.num_stages <= 2))]
    return keep or [triton.Config({"BLOCK_N": max(64, a["P"]), "BLOCK_F": 32}, num_warps=8, num_stages=1)]


def _tuned(fn, configs: list, reset: list[str] | None = None):
    return autotune(fn, [triton.Config({"BLOCK_N": n, "BLOCK_F": f}, num_warps=w, num_stages=st)
                         for n, f, w, st in configs], ["D", "M", "P", "NB"], _prune, reset)  # reset: atomics


_state_tuned = _tuned(_wersa_state_kernel, _STATE_CONFIGS, reset=["U", "Z"])
_out_tuned = _tuned(_wersa_out_kernel, _OUT_CONFIGS)


# Head dims up to 128 (tiles of 16..128 columns). Wider heads (d = 160, SD 1.5's deepest level, pads to 256) and,
# on CUDA, 32-wide tiles (d = 32, SANA) hit illegal memory accesses on the GPU that the interpreter does not
# reproduce (benchmarks/results/attention/kernel-notes.md): refused until the cause is found; the backend runs
# those layers in plain PyTorch and notes it per layer.
MAX_HEAD_DIM = 128
MIN_CUDA_HEAD_DIM = 33


def fused_unsupported(d: int, cuda: bool) -> str | None:
    """Why the fused passes do not take head dim ``d`` (on CUDA when ``cuda``), or None."""
    if d > MAX_HEAD_DIM:
        return (f"head dim {d} > {MAX_HEAD_DIM} (the fused passes' 256-wide tiles hit an illegal memory access on "
                "the H100 with Triton 3.6)")
    if cuda and d < MIN_CUDA_HEAD_DIM:
        return f"head dim {d} < {MIN_CUDA_HEAD_DIM} on CUDA (32-wide tiles hit an illegal memory access on the H100)"
    return None


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
    why = fused_unsupported(d, q.is_cuda)
    if why is not None:
        raise ValueError(f"wersa: {why}; wersa_eager computes the same maths")
    x_k = x_q if x_k is None else x_k
    every = params.gain_stride
    g_q = params.gains(x_q, every, fused=True)
    g_k = g_q if x_k is x_q else params.gains(x_k, every, fused=True)
    m = params.features
    if params.causal:  # L = 0: per-token gains, prefix sums; features materialised for the causal chunk kernel
        from mmchar.kernels.linear_attn.kernel import linear_attn

        tau = F.softplus(params.lam.float()) + 0.1  # a device scalar (the fused passes load λ themselves)
        qf = F.gelu(q) * g_q[:, None, :, 0:1].to(q.dtype)
        kf = F.gelu(k) * g_k[:, None, :, 0:1].to(k.dtype)
        fq = torch.relu(torch.matmul(qf / tau, params.omega_q.to(q.dtype))) / math.sqrt(m)
        fk = torch.relu(torch.matmul(kf / tau, params.omega_k.to(k.dtype))) / math.sqrt(m)
        return params.norm(linear_attn(fq, fk, v, causal=True, feature="relu", eps=eps))
    p = 1 << params.levels
    wq = mixing_rows(g_q, n, params.levels, every)
    wk = wq if g_k is g_q and nk == n else mixing_rows(g_k, nk, params.levels, every)
    bd = max(16, triton.next_power_of_2(d))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # products in the input dtype; fp32 stays exact
    # the state pass adds into U and z with atomics: both start at zero, one allocation and one fill for the two
    state = torch.zeros(b * h * m * (bd + 1), dtype=torch.float32, device=q.device)
    u = state[:b * h * m * bd].view(b * h, m, bd)  # both contiguous, z 64-byte aligned (bd is a multiple of 16)
    z = state[b * h * m * bd:].view(b * h, m)
    # token slices: a multiple of every BLOCK_N, enough programs to fill the GPU
    unit = max(128, p)  # a multiple of every BLOCK_N, and of the Haar block (P > 128 takes BLOCK_N = P)
    per_program = max(unit, triton.cdiv(triton.cdiv(nk, max(1, 256 // (b * h))), unit) * unit)
    # Ω and the LayerNorm's affine are read in the parameters' own dtype (Ω is cast to the input dtype in the
    # kernels, the LayerNorm's to fp32: the values fp32 copies gave), so no per-call copies and no cache to
    # invalidate; .contiguous() is free on the parameters as built
    omega_k, omega_q = params.omega_k.contiguous(), params.omega_q.contiguous()
    state_args = (k, v, wk, omega_k, u, z, nk, wk.shape[1], params.lam, 1.0 / math.sqrt(m), per_program,
                  bucket(b * h * nk), *k.stride(), *v.stride(), h, m)
    o = torch.empty_like(q)
    out_args = (q, wq, omega_q, u, z, params.norm.weight.contiguous(), params.norm.bias.contiguous(),
                o, n, wq.shape[1], params.lam, 1.0 / math.sqrt(m), eps, params.norm.eps, 1.0 / max(nk, 1),
                bucket(b * h * n),
                *q.stride(), *o.stride(), h, m)
    const = {"D": d, "BD": bd, "P": p, "PREC": prec}
    if interpreting():
        tiles = {"BLOCK_N": max(16, p), "BLOCK_F": 16}
        _wersa_state_kernel[(b * h, triton.cdiv(m, 16), triton.cdiv(nk, per_program))](*state_args, **const, **tiles)
        _wersa_out_kernel[(b * h, triton.cdiv(n, tiles["BLOCK_N"]))](*out_args, **const, **tiles)
    else:
        _state_tuned[lambda meta: (b * h, triton.cdiv(m, meta["BLOCK_F"]), triton.cdiv(nk, per_program))](
            *state_args, **const)
        _out_tuned[lambda meta: (b * h, triton.cdiv(n, meta["BLOCK_N"]))](*out_args, **const)
    return o
