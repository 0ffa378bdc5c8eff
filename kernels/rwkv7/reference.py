"""The specification of rwkv7 (RWKV-7's generalized delta rule, forward), in PyTorch.

Convention: fla-core 0.6.0's (``fla.ops.rwkv7.chunk_rwkv7`` = ``chunk_dplr_delta_rule(q=r, k, v, a, b, gk=w)``;
its token loop is ``fused_recurrent_dplr_delta_rule_fwd_kernel`` and ``dplr.naive.dplr_recurrence``), in mmchar's
[B, H, T, D] layout. Per head, with the state h as fla holds it, D_k × D_v (h = Sᵀ, S the paper's D_v × D_k):

    h_t = diag(exp(w_t)) h_{t-1} + b_t (a_tᵀ h_{t-1}) + k_t v_tᵀ,        o_t = h_tᵀ (scale · r_t)

i.e. S_t = S_{t-1} (diag(exp(w_t)) + a_tᵀ b_t) + v_tᵀ k_t with row vectors, o_t = S_t r_t · scale: the decay and
the rank-one term both act on the previous state (the rank-one term sees it undecayed), and the output reads the
state after the token's own update. w is the log decay (w < 0). RWKV-7 (Peng et al. 2025, arXiv 2503.14456,
the time-mix block) is the case a = −κ̂, b = κ̂ ⊙ a_lr, k = k̃: S_t = S_{t−1}(diag(w_t) − κ̂_tᵀ(a_lr ⊙ κ̂_t)) +
v_tᵀ k̃_t. ``initial_state`` is [B, H, D_k, D_v] (fla's layout, h_0).

The chunked form (docs/kernels/rwkv7.md, "The chunked form") is the WY/UT representation of fla's
``chunk_dplr_delta_rule``, derived again here; ``rwkv7_chunk_ref`` writes it plainly, ``rwkv7_eager`` the way a
PyTorch user would run it at length, and the Triton kernel (kernel.py) tiles the same maths. For decoding with a
carried state: ``rwkv7_final_state`` (the chunked form's state pass alone: h after a sequence) and
``rwkv7_decode`` (the token loop continued from a state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(r, w, k, v, a, b) -> None:
    shapes = {tuple(t.shape) for t in (r, w, k, v, a, b)}
    if len(shapes) != 1 or r.dim() != 4:
        raise ValueError("rwkv7: r, w, k, v, a, b must all be [B, H, T, D]; got "
                         + ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip("rwkvab", (r, w, k, v, a, b))))


def _recurrence(r, w, k, v, a, b, scale: float, initial_state: torch.Tensor | None):
    """The token loop in fp32; returns (o [B, H, T, D], h_T [B, H, D_k, D_v])."""
    _check(r, w, k, v, a, b)
    bsz, heads, n, d = r.shape
    q, w, k, v, a, b = (t.float() for t in (r, w, k, v, a, b))
    q = q * scale
    h = (torch.zeros(bsz, heads, d, d, dtype=torch.float32, device=r.device) if initial_state is None
         else initial_state.float().clone())
    o = torch.empty(bsz, heads, n, d, dtype=torch.float32, device=r.device)
    for t in range(n):
        # fla's fused recurrent step: h ← exp(w)·h (rows = keys) + b ⊗ (aᵀh) + k ⊗ v, then o = hᵀ q
        removal = torch.einsum("bhk,bhkv->bhv", a[:, :, t], h)
        h = (torch.exp(w[:, :, t]).unsqueeze(-1) * h + b[:, :, t].unsqueeze(-1) * removal.unsqueeze(-2)
             + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2))
        o[:, :, t] = torch.einsum("bhk,bhkv->bhv", q[:, :, t], h)
    return o, h


def rwkv7_recurrent_ref(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                        b: torch.Tensor, *, scale: float = 1.0,
                        initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """The definition, token by token in fp32 (the module docstring gives the convention): all inputs
    [B, H, T, D]; returns o [B, H, T, D] in fp32. T steps of O(D²) each: the truth the other forms are tested
    against, for short sequences."""
    return _recurrence(r, w, k, v, a, b, scale, initial_state)[0]


def _pad_time(ts, multiple: int):
    """Zero-pad the token axis to a multiple of ``multiple``: a padded token (w = 0, a = b = k = v = 0) has the
    identity as its transition, so it changes no state (and causality keeps it out of earlier outputs)."""
    n = ts[0].shape[2]
    pad = -n % multiple
    return [F.pad(t, (0, 0, 0, pad)) if pad else t for t in ts]


def _chunk_step(h, q, k, v, a, b, g, ge, aqk, aqb, aak, aab, mm):
    """One chunk of the WY form, given its intra-chunk matrices. h [.., Dk, Dv] is the state before the chunk;
    g / ge the inclusive / exclusive cumulative log decays from the chunk's start ([.., C, D], ≤ 0); the A's the
    [.., C, C] token-pair matrices; ``mm`` the matrix product (its dtype policy). Returns (o, h after the chunk).

    With ν_i = h_{i-1}ᵀ a_i (what the rank-one term reads), unrolling h_i from h_0 gives
        ν_i = (a_i ⊙ e^{ge_i})ᵀ h_0 + Σ_{j<i} A_ak[i,j] v_j + A_ab[i,j] ν_j
    i.e. (I − A_ab) N = Ã h_0 + A_ak V: N = T (Ã h_0 + A_ak V), T = (I − A_ab)⁻¹ lower triangular with unit
    diagonal (the UT transform; fla's ``prepare_wy_repr_fwd``). Then
        O   = Q̃ h_0 + A_qk V + A_qb N,                       Q̃ = q ⊙ e^{g}
        h_C = e^{g_C} ⊙ h_0 + (k ⊙ e^{g_C − g})ᵀ V + (b ⊙ e^{g_C − g})ᵀ N.
    """
    n_ = _chunk_nu(h, a, v, ge, aak, aab, mm)
    o = mm(q * torch.exp(g), h) + mm(aqk, v) + mm(aqb, n_)
    return o, _chunk_advance(h, k, v, b, g, n_, mm)


def _chunk_nu(h, a, v, ge, aak, aab, mm):
    """N = T (Ã h_0 + A_ak V), T = (I − A_ab)⁻¹: what each token's rank-one term reads (`_chunk_step`)."""
    eye = torch.eye(aab.shape[-1], dtype=torch.float32, device=aab.device)
    tri = torch.linalg.solve_triangular(eye - aab.float(), eye.expand_as(aab), upper=False, unitriangular=True)
    return mm(tri, mm(a * torch.exp(ge), h) + mm(aak, v))


def _chunk_advance(h, k, v, b, g, n_, mm):
    """h_C = e^{g_C} ⊙ h_0 + (k ⊙ e^{g_C − g})ᵀ V + (b ⊙ e^{g_C − g})ᵀ N: the state after the chunk."""
    g_last = g[..., -1:, :]  # [.., 1, D]
    decay = torch.exp(g_last - g)
    return torch.exp(g_last).transpose(-1, -2) * h + mm((k * decay).transpose(-1, -2), v) \
        + mm((b * decay).transpose(-1, -2), n_)


def rwkv7_chunk_ref(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                    b: torch.Tensor, *, scale: float = 1.0, chunk_size: int = 16) -> torch.Tensor:
    """The chunked (WY / UT-transform) form in fp32, written plainly: per chunk the four token-pair matrices
    from the exact pairwise decays e^{Γ_i − Γ_j} (a [C, C, D] tensor: small chunks only), the unit lower
    triangular solve, and the state carried to the next chunk (``_chunk_step``). Equal to the recurrence;
    returns o [B, H, T, D] in fp32."""
    _check(r, w, k, v, a, b)
    n = r.shape[2]
    c = chunk_size
    q, w, k, v, a, b = _pad_time([t.float() for t in (r, w, k, v, a, b)], c)
    q = q * scale
    bsz, heads, np_, d = q.shape
    h = torch.zeros(bsz, heads, d, d, dtype=torch.float32, device=r.device)
    o = torch.empty_like(q)
    idx = torch.arange(c, device=r.device)
    incl = (idx[:, None] >= idx[None, :])[..., None]  # pairs j ≤ i (the output reads the state after token i)
    strict = (idx[:, None] > idx[None, :])[..., None]  # pairs j < i (ν_i reads the state before token i)
    for s in range(0, np_, c):
        sl = slice(s, s + c)
        g = w[:, :, sl].cumsum(2)  # inclusive Γ_i from the chunk's start
        ge = g - w[:, :, sl]  # exclusive Γ_{i-1}
        gi, gj, gei = g[:, :, :, None], g[:, :, None], ge[:, :, :, None]
        # masked before the exponential: the pairs j > i would overflow for strong decays
        d_in = torch.exp(torch.where(incl, gi - gj, float("-inf")))
        d_ex = torch.exp(torch.where(strict, gei - gj, float("-inf")))
        qs, ks, as_, bs = q[:, :, sl], k[:, :, sl], a[:, :, sl], b[:, :, sl]
        pair = lambda x, y, dec: torch.einsum("bhid,bhjd,bhijd->bhij", x, y, dec)  # noqa: E731
        o[:, :, sl], h = _chunk_step(h, qs, ks, v[:, :, sl], as_, bs, g, ge, pair(qs, ks, d_in), pair(qs, bs, d_in),
                                     pair(as_, ks, d_ex), pair(as_, bs, d_ex), torch.matmul)
    return o[:, :, :n]


def rwkv7_final_state(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
                      chunk_size: int = 32, initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """The state after the whole sequence (h_T, [B, H, D_k, D_v] fp32, fla's layout), without the outputs: the
    chunked form's state pass alone (`_chunk_nu`, `_chunk_advance`: the UT transform of each chunk and the state
    carried over it), with the exact pairwise decays of `rwkv7_chunk_ref` (a [C, C, D] tensor per chunk: chunks
    of tens of tokens). Equal to the recurrence's h_T; what `rwkv7_decode` continues from (the `rwkv7` backend's
    state after a causal prefill). w, k, v, a, b [B, H, T, D]; ``initial_state`` h_0 or zeros."""
    _check(w, w, k, v, a, b)
    c = chunk_size
    if c < 1:
        raise ValueError(f"rwkv7_final_state: chunk_size {c} must be positive")
    w, k, v, a, b = _pad_time([t.float() for t in (w, k, v, a, b)], c)  # padded tokens: the identity
    bsz, heads, np_, d = k.shape
    h = (torch.zeros(bsz, heads, d, d, dtype=torch.float32, device=k.device) if initial_state is None
         else initial_state.float())
    idx = torch.arange(c, device=k.device)
    strict = (idx[:, None] > idx[None, :])[..., None]  # pairs j < i (ν_i reads the state before token i)
    for s in range(0, np_, c):
        sl = slice(s, s + c)
        g = w[:, :, sl].cumsum(2)  # inclusive Γ_i from the chunk's start
        ge = F.pad(g[:, :, :-1], (0, 0, 1, 0))  # exclusive Γ_{i-1}
        d_ex = torch.exp(torch.where(strict, ge[:, :, :, None] - g[:, :, None], float("-inf")))
        as_, ks, bs = a[:, :, sl], k[:, :, sl], b[:, :, sl]
        aak = torch.einsum("bhid,bhjd,bhijd->bhij", as_, ks, d_ex)
        aab = torch.einsum("bhid,bhjd,bhijd->bhij", as_, bs, d_ex)
        n_ = _chunk_nu(h, as_, v[:, :, sl], ge, aak, aab, torch.matmul)
        h = _chunk_advance(h, ks, v[:, :, sl], bs, g, n_, torch.matmul)
    return h


def rwkv7_decode(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                 b: torch.Tensor, state: torch.Tensor, *, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode steps: the token loop over a few new tokens ([B, H, S, D] each) continued from ``state`` (h,
    [B, H, D_k, D_v] fp32: `rwkv7_final_state`'s, or an earlier step's). Returns (o [B, H, S, D] fp32, the state
    after the new tokens); O(D²) per head and token."""
    if state.shape != (*r.shape[:2], r.shape[-1], r.shape[-1]):
        raise ValueError(f"rwkv7_decode: state {tuple(state.shape)} must be [B, H, D, D] = "
                         f"{(*r.shape[:2], r.shape[-1], r.shape[-1])}")
    return _recurrence(r, w, k, v, a, b, scale, state)


def rwkv7_eager(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
                b: torch.Tensor, *, scale: float = 1.0, chunk_size: int = 64) -> torch.Tensor:
    """The chunked form as a PyTorch user runs it at length (the baseline the Triton kernel is measured
    against): a Python loop over chunks of ``chunk_size`` tokens (a multiple of 16), batched over B and H,
    memory O(T·D + D²) per head. Returns o [B, H, T, D] in r's dtype.

    Matrix products run in the input dtype; the decays, the triangular solve and the running state are fp32 (a
    16-bit state drifts over thousands of tokens). The token-pair decays are exact for any w < 0, as fla's
    default 16-token path is, without a [C, C, D] tensor: inside each 16-token block the pairwise
    e^{Γ_i − Γ_j} ([16, 16, D] per block); across blocks I > J the product of three factors, each ≤ 1,
    e^{Γ_i − Γ^s_I} · e^{Γ^s_I − Γ^e_J} · e^{Γ^e_J − Γ_j} (Γ^s_I, Γ^e_J: the cumulative decay at I's start and
    J's end), so no factor overflows where fla's centred 64-token factorization needs a bound on w
    (``gate_bound_is_safe``).
    """
    _check(r, w, k, v, a, b)
    if chunk_size % 16:
        raise ValueError(f"rwkv7_eager: chunk_size {chunk_size} is not a multiple of 16")
    dt = r.dtype
    n = r.shape[2]
    c, sub = chunk_size, 16
    ns = c // sub
    q, w, k, v, a, b = _pad_time([r.float() * scale, w.float(), k, v, a, b], c)  # q, w in fp32
    bsz, heads, np_, d = q.shape
    dev = r.device

    def mm(x, y):  # the input dtype's product, read back into fp32
        return torch.matmul(x.to(dt), y.to(dt)).float()

    h = torch.zeros(bsz, heads, d, d, dtype=torch.float32, device=dev)
    out = torch.empty(bsz, heads, np_, d, dtype=dt, device=dev)
    i16 = torch.arange(sub, device=dev)
    incl = (i16[:, None] >= i16[None, :])[..., None]
    strict = (i16[:, None] > i16[None, :])[..., None]
    ib = torch.arange(ns, device=dev)
    later = (ib[:, None] > ib[None, :])[..., None]  # block pairs I > J
    eye_blocks = torch.eye(ns, device=dev)[:, None, :, None]
    for s in range(0, np_, c):
        sl = slice(s, s + c)
        blocks = lambda t: t[:, :, sl].unflatten(2, (ns, sub))  # noqa: E731  [B, H, NS, 16, D]
        qb, kb, vb, ab, bb = (blocks(t) for t in (q, k, v, a, b))
        lw = blocks(w).cumsum(3)  # Γ from each block's start, inclusive
        lwe = F.pad(lw[..., :-1, :], (0, 0, 1, 0))  # exclusive (the same sums, shifted)
        tot = lw[..., -1, :]  # [B, H, NS, D]: each block's total log decay
        start = F.pad(tot.cumsum(2)[:, :, :-1], (0, 0, 1, 0))  # Γ at each block's start, from the chunk's
        # diagonal blocks, exact pairwise decays
        li, lj, lei = lw[..., :, None, :], lw[..., None, :, :], lwe[..., :, None, :]
        d_in = torch.exp(torch.where(incl, li - lj, float("-inf"))).to(dt)
        d_ex = torch.exp(torch.where(strict, lei - lj, float("-inf"))).to(dt)
        diag = lambda x, y, dec: torch.einsum("bhnid,bhnjd,bhnijd->bhnij", x, y, dec).float()  # noqa: E731
        # blocks I > J: row factor e^{Γ_i − Γ^s_I}, middle e^{Γ^s_I − Γ^e_J}, column factor e^{Γ^e_J − Γ_j}
        mid = torch.exp(torch.where(later, start[:, :, :, None] - (start + tot)[:, :, None], float("-inf")))
        col = torch.exp(tot[..., None, :] - lw)
        q_r, a_r = (qb * torch.exp(lw)).to(dt), (ab * torch.exp(lwe)).to(dt)
        k_c, b_c, mid = (kb * col).to(dt), (bb * col).to(dt), mid.to(dt)
        off = lambda x, y: torch.einsum("bhIid,bhIJd,bhJjd->bhIiJj", x, mid, y).float()  # noqa: E731

        def full(x, y, xr, yc, dec):  # [B, H, C, C]
            return (off(xr, yc) + diag(x.to(dt), y.to(dt), dec)[:, :, :, :, None] * eye_blocks).flatten(4, 5) \
                .flatten(2, 3)

        # the chunk-level cumulative decays for the gating in _chunk_step
        g = (start[..., None, :] + lw).flatten(2, 3)
        ge = (start[..., None, :] + lwe).flatten(2, 3)
        flat = lambda t: t.flatten(2, 3).float()  # noqa: E731
        o, h = _chunk_step(h, flat(qb), flat(kb), flat(vb), flat(ab), flat(bb), g, ge,
                           full(qb, kb, q_r, k_c, d_in), full(qb, bb, q_r, b_c, d_in),
                           full(ab, kb, a_r, k_c, d_ex), full(ab, bb, a_r, b_c, d_ex), mm)
        out[:, :, sl] = o.to(dt)
    return out[:, :, :n]
