"""The specification of Local Linear Attention (LLA) in plain PyTorch: the exact form, the matrix-free
conjugate-gradient form the Triton kernel computes, the eager baseline, and the FLOP model (docs/kernels/lla.md).

Sources. Paper: Zuo, Yin, Zeng, Li, Zhu, Wang, "Local Linear Attention: An Optimal Interpolation of Linear and
Softmax Attention For Test-Time Regression" (arXiv 2510.01450, ICLR 2026): LLA is the ridge-regularised local
linear regression of v on k around each query, min_{b,W} ½ Σ_j w_ij ‖v_j − b − W(k_j − q_i)‖² + λ‖W‖²_F, whose
intercept b is the output. The authors' code (github.com/Yifei-Zuo/FlashLLA, commit d104afa; Apache-2.0; read,
not copied) fixes what the paper leaves to the reader: w_ij = exp(scale·q_i·k_j) with scale = 1/√D
(``qk_scale``), the ridge enters as λ·Σ_j w_ij (so λ acts on the *normalised* weights p_ij = softmax_j; the
objective above read literally, ½ on the fit only, would give 2λ: the code's λ is the one taken here), and the
defaults ``ridge_lambda=10.0``, ``cg_max_iters=32`` (``flashlla.lla_attention``).

Form used here. With p_ij = softmax_j(scale·q_i·k_j), k̄_i = Σ_j p_ij k_j, v̄_i = Σ_j p_ij v_j,
Σ_i = Σ_j p_ij (k_j − k̄_i)(k_j − k̄_i)ᵀ and C_i = Σ_j p_ij (v_j − v̄_i)(k_j − k̄_i)ᵀ:

    b_i = v̄_i + C_i (Σ_i + λI)⁻¹ (q_i − k̄_i)

Because the intercept is not penalised, the fitted W does not change when the keys are centred at k̄_i instead of
at q_i, and b = v̄ − W(k̄ − q) (the weighted normal equations' first row). The authors write the same estimator
centred at the query (their ``naive.py``): ρ = (Σ_i^q + λI)⁻¹ μ with Σ_i^q = Σ_j p_ij (k_j − q_i)(k_j − q_i)ᵀ =
Σ_i + μμᵀ, μ = k̄_i − q_i, and b = Σ_j p_ij (1 − ρ·(k_j − q_i)) v_j / (1 − μ·ρ); Sherman–Morrison turns one
into the other exactly (tests/kernels/test_lla.py checks both against a direct (D+1)×(D+1) solve). The centred
system is the better one to iterate on: its matrix lacks the rank-one term μμᵀ (which can dwarf Σ_i when the
query is far from the keys' mean, slowing CG) and there is no 1 − μ·ρ denominator to cancel.

Limits: λ → ∞ gives softmax attention (b → v̄); λ → 0 with Σ_i invertible reproduces any affine map v = A k + c
exactly at the query (b = A q + c).
"""

from __future__ import annotations

import torch

DEFAULT_RIDGE_LAMBDA = 10.0  # flashlla.lla_attention(ridge_lambda=10.0), the authors' README and code
DEFAULT_CG_ITERS = 32  # flashlla.lla_attention(cg_max_iters=32)
# a query's CG stops updating once ‖r‖ ≤ CG_RTOL·‖r₀‖ (fp32 cannot do much better; it also guards 0/0 once a
# solve has converged exactly). The authors stop at rtol 1e-12, i.e. in practice never before cg_max_iters.
CG_RTOL = 1e-6


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, ridge_lambda: float,
                 cg_iters: int = 0, who: str = "lla") -> None:
    """Raise ValueError for what LLA cannot take: not [B, H, S, D], mismatched k/v, a value head dim other than
    the query's (the output lives in value space, the solve in key space: both D here), causal with Sq ≠ Skv,
    no keys, λ < 0, a negative iteration count."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{who} takes [B, H, S, D] tensors")
    b, h, sq, d = q.shape
    skv = k.shape[2]
    if k.shape != (b, h, skv, d) or v.shape != (b, h, skv, d):
        raise ValueError(f"{who}: k {tuple(k.shape)} and v {tuple(v.shape)} must be [B, H, Skv, {d}] for q "
                         f"{tuple(q.shape)} (LLA needs the value head dim equal to the query's)")
    if skv == 0:
        raise ValueError(f"{who}: no keys")
    if causal and sq != skv:
        raise ValueError(f"{who}: causal needs as many queries as keys (Sq {sq}, Skv {skv})")
    if not ridge_lambda >= 0:
        raise ValueError(f"{who}: ridge_lambda must be >= 0, got {ridge_lambda}")
    if cg_iters < 0:
        raise ValueError(f"{who}: cg_iters must be >= 0, got {cg_iters}")


def _causal_fill(s: torch.Tensor, row0: int) -> torch.Tensor:
    """-inf where key j comes after query row0 + i (top-left aligned, as F.scaled_dot_product_attention's
    is_causal)."""
    rows = torch.arange(row0, row0 + s.shape[-2], device=s.device)[:, None]
    return s.masked_fill(torch.arange(s.shape[-1], device=s.device)[None, :] > rows, float("-inf"))


def _probs(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """p_ij = softmax_j(scale·q_i·k_j) in fp32 (fp64 for fp64 inputs), causal masked."""
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(wide), k.to(wide).transpose(-1, -2)) * scale
    return torch.softmax(_causal_fill(s, 0) if causal else s, dim=-1)


def lla_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
            ridge_lambda: float = DEFAULT_RIDGE_LAMBDA, scale: float | None = None) -> torch.Tensor:
    """LLA exactly: materialises Σ_i and C_i per query and solves (Σ_i + λI) x = q_i − k̄_i directly
    (torch.linalg.solve). Computed in fp64 (it is the yardstick of the CG forms), returned in fp32.

    Memory Θ(B·H·Sq·Skv·D): small shapes only. λ = 0 needs every Σ_i invertible (Skv > D keys in general
    position).
    """
    check_inputs(q, k, v, causal, ridge_lambda, who="lla_ref")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd, kd, vd = q.double(), k.double(), v.double()
    p = _probs(qd, kd, scale, causal)
    kbar, vbar = p @ kd, p @ vd  # [B, H, Sq, D]
    kc = kd[:, :, None, :, :] - kbar[:, :, :, None, :]  # [B, H, Sq, Skv, D]: keys centred per query
    vc = vd[:, :, None, :, :] - vbar[:, :, :, None, :]
    sigma = torch.einsum("bhij,bhijd,bhije->bhide", p, kc, kc)
    cross = torch.einsum("bhij,bhijd,bhije->bhide", p, vc, kc)
    eye = torch.eye(q.shape[-1], dtype=torch.float64, device=q.device)
    x = torch.linalg.solve(sigma + ridge_lambda * eye, (qd - kbar).unsqueeze(-1))
    return (vbar + (cross @ x).squeeze(-1)).float()


def _cg(apply, rhs: torch.Tensor, ridge_lambda: float, iters: int) -> torch.Tensor:
    """Conjugate gradients from x = 0 on (Σ + λI) x = rhs, one system per row of rhs [..., D] (fp32 or fp64);
    ``apply(d)`` returns Σ d. A row stops updating once ‖r‖ ≤ CG_RTOL·‖r₀‖ or its curvature dᵀAd is not
    positive; the kernel runs the same recurrence in the same order."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    d = r.clone()
    rr = (r * r).sum(-1)
    thresh = CG_RTOL * CG_RTOL * rr
    for _ in range(iters):
        ad = apply(d) + ridge_lambda * d
        dad = (d * ad).sum(-1)
        active = (rr > thresh) & (dad > 0)
        alpha = torch.where(active, rr / torch.where(active, dad, torch.ones_like(dad)), torch.zeros_like(dad))
        x = x + alpha[..., None] * d
        r = r - alpha[..., None] * ad
        rr_new = (r * r).sum(-1)
        beta = torch.where(active, rr_new / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        d = r + beta[..., None] * d
        rr = rr_new
    return x


def _centred_product(p: torch.Tensor, k: torch.Tensor, w: torch.Tensor, kbar: torch.Tensor, wbar: torch.Tensor,
                     x: torch.Tensor) -> torch.Tensor:
    """Σ_j p_ij (w_j − w̄_i) ((k_j − k̄_i)·x_i) without forming a D×D matrix: t_ij = k_j·x_i − k̄_i·x_i (centred
    before the weighting, so the products stay small), then Σ_j p_ij t_ij w_j − w̄_i Σ_j p_ij t_ij (the second sum
    is zero in exact arithmetic and cancels the rounding of the first). w = k gives Σ_i x, w = v gives C_i x."""
    t = x @ k.transpose(-1, -2) - (kbar * x).sum(-1, keepdim=True)
    u = p * t
    return u @ w - wbar * u.sum(-1, keepdim=True)


def lla_cg_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               ridge_lambda: float = DEFAULT_RIDGE_LAMBDA, scale: float | None = None,
               cg_iters: int = DEFAULT_CG_ITERS) -> torch.Tensor:
    """LLA matrix-free, as FlashLLA computes it, in fp32: the weights, k̄ and v̄; ``cg_iters`` conjugate-gradient
    iterations on (Σ_i + λI) x = q_i − k̄_i, each applying Σ_i by one pass over the keys
    (Σ_i x = Σ_j p_ij (k_j − k̄_i)((k_j − k̄_i)·x)); then b_i = v̄_i + C_i x by one more pass. Σ_i is never formed.

    Equal to ``lla_ref`` once cg_iters ≥ D (CG is exact in D steps); close for the default budget when λ keeps
    the system well conditioned (its condition number is at most 1 + ‖Σ_i‖/λ). Memory: the Sq × Skv weights.
    fp64 inputs are computed and returned in fp64: the yardstick of the fp32 forms' own rounding (a truncated CG
    iterate can be far more sensitive to rounding than the converged solution; docs/kernels/lla.md, "Precision").
    """
    check_inputs(q, k, v, causal, ridge_lambda, cg_iters, who="lla_cg_ref")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(wide), k.to(wide), v.to(wide)
    p = _probs(qf, kf, scale, causal)
    kbar, vbar = p @ kf, p @ vf
    x = _cg(lambda d: _centred_product(p, kf, kf, kbar, kbar, d), qf - kbar, ridge_lambda, cg_iters)
    return vbar + _centred_product(p, kf, vf, kbar, vbar, x)


def lla_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              ridge_lambda: float = DEFAULT_RIDGE_LAMBDA, scale: float | None = None,
              cg_iters: int = DEFAULT_CG_ITERS, block: int = 1024) -> torch.Tensor:
    """LLA as a PyTorch user writes it (the baseline the kernel is timed against): ``lla_cg_ref``'s maths over
    blocks of ``block`` queries, so memory stays O(block·Skv + S·D) — one block's weights and one product
    t = x·kᵀ at a time, never S × S for the whole sequence, never a D × D matrix per query.

    Everything of size block × Skv (scores, weights, t = (k − k̄)·x, p·t) and every product is in the input
    dtype, as SDPA's math path keeps its weights; the per-query vectors of the solve (k̄, v̄, x, residual,
    direction, CG scalars) are fp32, which costs O(S·D) and keeps CG's recurrences from drifting in 8 bits. Causal blocks read only the keys up to their
    last query. Returns q's dtype.
    """
    check_inputs(q, k, v, causal, ridge_lambda, cg_iters, who="lla_eager")
    if block < 1:
        raise ValueError(f"lla_eager: block must be >= 1, got {block}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dt = q.dtype
    sq = q.shape[-2]
    out = torch.empty_like(q)
    for s in range(0, sq, block):
        e = min(s + block, sq)
        kk, vv = (k[..., :e, :], v[..., :e, :]) if causal else (k, v)
        qb = q[..., s:e, :]
        scores = torch.matmul(qb, kk.transpose(-1, -2)) * scale
        p = torch.softmax(_causal_fill(scores, s) if causal else scores, dim=-1)  # input dtype
        del scores
        kbar, vbar = (p @ kk).float(), (p @ vv).float()
        x = _cg(lambda d: _centred_lowp(p, kk, kk, kbar, kbar, d), qb.float() - kbar, ridge_lambda, cg_iters)
        out[..., s:e, :] = (vbar + _centred_lowp(p, kk, vv, kbar, vbar, x)).to(dt)
    return out


def _centred_lowp(p: torch.Tensor, k: torch.Tensor, w: torch.Tensor, kbar: torch.Tensor, wbar: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """``_centred_product`` with p, k, w and every block × Skv intermediate in the input dtype (k̄, w̄, x fp32). x is
    scaled to a max-norm of 1 per row before it meets the input dtype (fp16's range: see kernel.py)."""
    dt = p.dtype
    n = x.abs().amax(-1, keepdim=True)
    n = torch.where(n > 0, n, torch.ones_like(n))
    xh = (x / n).to(dt)
    u = p * (xh @ k.transpose(-1, -2) - (kbar * xh.float()).sum(-1, keepdim=True).to(dt))
    return ((u @ w).float() - wbar * u.sum(-1, keepdim=True, dtype=torch.float32)) * n


def lla_flops(b: int, h: int, sq: int, skv: int, d: int, cg_iters: int, causal: bool) -> float:
    """The FLOPs LLA is credited with (docs/kernels/lla.md, "FLOP model"): per (query, key) pair and head,
    2·d per inner product of length d —

    - the softmax pass: the score q·k and the weighted sums p·k, p·v: 3 × 2d;
    - each CG iteration, one pass applying Σ_i: t = (k − k̄)·x and Σ p t k: 2 × 2d;
    - the final pass applying C_i: t = (k − k̄)·x and Σ p t v: 2 × 2d;

    so 2·d·(5 + 2·cg_iters) per pair, over Sq·Skv pairs (half for causal), times B·H. The O(S·D) per-query
    vector work of CG and the exponentials are not counted (softmax attention's convention). The kernel executes
    more: it recomputes the score in every pass after the first (one more 2d per pass, 2·d·(cg_iters + 1) per
    pair), since the weights cannot be kept; that is overhead, not credited work. Computed by ``mmchar.flops.lla_cost``.
    """
    from mmchar.flops import lla_cost  # the one formula: the benchmark's rates and this are the same number

    return lla_cost(b, h, sq, skv, d, cg_iters, causal, 2)[0]
