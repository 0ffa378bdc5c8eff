"""The specification of mlstm (mLSTM with sigmoid input gate, "mLSTMsig"), in plain PyTorch.

Per batch, head and token t (causal, token 0 first), with q scaled by 1/√Dqk and both gates sigmoids of their
pre-activations (Beck et al., "Tiled Flash Linear Attention", arXiv 2503.14376, section on mLSTMsig):

    f_t = σ(f̃_t), i_t = σ(ĩ_t)
    C_t = f_t C_{t−1} + i_t v_t k_tᵀ            (Dv × Dqk)
    n_t = f_t n_{t−1} + i_t k_t                 (Dqk)
    h_t = C_t q_t / max(|n_tᵀ q_t|, 1)          normalize=True
    h_t = C_t q_t                               normalize=False (TFLA's "n-False", what its speed runs use)

Unrolled: h_t = Σ_{s≤t} D_ts (q_t·k_s) v_s with D_ts = exp(Σ_{s<r≤t} log σ(f̃_r) + log σ(ĩ_s)), and the
normaliser n_tᵀ q_t = Σ_{s≤t} D_ts (q_t·k_s) is the row sum of C̃ = (QKᵀ/√d) ⊙ D. Both gates are bounded by 1,
so every log-gate sum is ≤ 0: no max-state stabiliser is needed (unlike mLSTMexp).

The normaliser follows the peer's parallel reference (NX-AI/mlstm_kernels,
``torch/parallel/native_siging/fw.py``: max(|rowsum C̃|, 1), no exp(−m) stabiliser, which siging has none of),
without its ``eps`` (1e-6 there, added to the denominator; 0 in its chunkwise kernel's own default): the
denominator is ≥ 1, so the difference is at most 1e-6 relative.

Three forms: ``mlstm_recurrent_ref`` (the recurrence, token by token, fp32), ``mlstm_parallel_ref`` (the quadratic
form, fp32, T × T: small shapes only) and ``mlstm_eager`` (chunkwise in the input dtype, never T × T: the
baseline the Triton kernel is measured against). For decoding with a carried state: ``mlstm_final_state`` (the
state after a sequence, closed form) and ``mlstm_decode`` (the recurrence continued from a state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"mlstm: q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, H, T, Dqk], "
                         f"v {tuple(v.shape)} [B, H, T, Dv]")
    if i_pre.shape != q.shape[:3] or f_pre.shape != q.shape[:3]:
        raise ValueError(f"mlstm: gates i_pre {tuple(i_pre.shape)}, f_pre {tuple(f_pre.shape)} must be "
                         f"[B, H, T] = {tuple(q.shape[:3])}")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the inter-chunk state enters the q·C product in: bf16 for bf16 inputs (the peer's choice); fp32
    otherwise, since a state summed over hundreds of tokens can pass fp16's 65 504 (bf16 has fp32's range)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _recurrence(q, k, v, i_pre, f_pre, normalize: bool, state):
    """The token loop in fp32 from ``state`` = (C [B, H, Dqk, Dv], n [B, H, Dqk]) or None (zeros); returns
    (h [B, H, T, Dv] fp32, (C_T, n_T))."""
    _check(q, k, v, i_pre, f_pre)
    qf, kf, vf = q.float() * q.shape[-1] ** -0.5, k.float(), v.float()
    fg, ig = torch.sigmoid(f_pre.float()), torch.sigmoid(i_pre.float())
    b, h, t, d = q.shape
    if state is None:
        c = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32, device=q.device)
        n = torch.zeros(b, h, d, dtype=torch.float32, device=q.device)
    else:
        c, n = (s.float() for s in state)
        if c.shape != (b, h, d, v.shape[-1]) or n.shape != (b, h, d):
            raise ValueError(f"mlstm: state C {tuple(c.shape)}, n {tuple(n.shape)} must be [B, H, Dqk, Dv] = "
                             f"{(b, h, d, v.shape[-1])} and [B, H, Dqk]")
    out = torch.empty(b, h, t, v.shape[-1], dtype=torch.float32, device=q.device)
    for s in range(t):
        f_s, i_s = fg[:, :, s, None], ig[:, :, s, None]
        c = f_s[..., None] * c + (i_s * kf[:, :, s])[..., None] * vf[:, :, s, None, :]
        n = f_s * n + i_s * kf[:, :, s]
        num = torch.einsum("bhd,bhde->bhe", qf[:, :, s], c)
        if normalize:
            den = (qf[:, :, s] * n).sum(-1, keepdim=True).abs().clamp_min(1.0)
            num = num / den
        out[:, :, s] = num
    return out, (c, n)


def mlstm_recurrent_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                        f_pre: torch.Tensor, *, normalize: bool) -> torch.Tensor:
    """The recurrence itself, one token at a time in fp32 (the definition; T steps: small shapes only).

    [B, H, T, Dqk] × [B, H, T, Dqk] × [B, H, T, Dv], gates [B, H, T] -> [B, H, T, Dv] fp32. The state is kept as
    Dqk × Dv (Cᵀ of the docstring above), so h_t = q_tᵀ C_t.
    """
    return _recurrence(q, k, v, i_pre, f_pre, normalize, None)[0]


def mlstm_final_state(k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                      f_pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state after the whole sequence, from a zero state, in closed form (fp32): with the decay from token s
    to the end, log D_Ts = Σ_{s<r≤T} log σ(f̃_r) + log σ(ĩ_s),

        C_T = Σ_s D_Ts k_s v_sᵀ  (Dqk × Dv, Cᵀ of the docstring above: one einsum),   n_T = Σ_s D_Ts k_s.

    The suffix sums of log-gates are summed from the end (every term ≤ 0: nothing cancels). k [B, H, T, Dqk],
    v [B, H, T, Dv], gates [B, H, T]; returns (C_T [B, H, Dqk, Dv], n_T [B, H, Dqk]), what `mlstm_decode` continues
    from (the `mlstm` backend's state after a causal prefill)."""
    _check(k, k, v, i_pre, f_pre)
    lf, li = F.logsigmoid(f_pre.float()), F.logsigmoid(i_pre.float())
    after = F.pad(lf.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))  # Σ_{r>s} log f_r, summed from the end
    kw = k.float() * (after + li).exp().unsqueeze(-1)
    return torch.einsum("bhtd,bhte->bhde", kw, v.float()), kw.sum(2)


def mlstm_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor,
                 state: tuple[torch.Tensor, torch.Tensor], *, normalize: bool
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Decode steps: the recurrence over a few new tokens (q, k, v [B, H, S, ·], gates [B, H, S]) continued from
    ``state`` = (C [B, H, Dqk, Dv], n [B, H, Dqk]) in fp32 (`mlstm_final_state`'s, or an earlier step's). Returns
    (h [B, H, S, Dv] fp32, the state after the new tokens); O(Dqk·Dv) per head and token."""
    return _recurrence(q, k, v, i_pre, f_pre, normalize, state)


def mlstm_parallel_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                       f_pre: torch.Tensor, *, normalize: bool) -> torch.Tensor:
    """The quadratic (parallel) form in fp32: H = (C̃ / max(|rowsum C̃|, 1)) V, C̃ = (QKᵀ/√d) ⊙ D (T × T).

    log D_ts = Σ_{s<r≤t} log σ(f̃_r) + log σ(ĩ_s) is summed directly (a strictly lower triangular cumsum), not as
    a difference of two prefix sums: every term is ≤ 0, so nothing cancels (the peer's ``stable_fgate`` form).
    """
    _check(q, k, v, i_pre, f_pre)
    t = q.shape[2]
    lf, li = F.logsigmoid(f_pre.float()), F.logsigmoid(i_pre.float())
    # decay[t, s] = Σ_{s<r≤t} log σ(f̃_r): column s holds log f_r in rows r > s, summed down the rows
    decay = lf[..., :, None].expand(*lf.shape, t).tril(-1).cumsum(-2)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    log_d = torch.where(causal, decay + li[..., None, :], float("-inf"))
    ctil = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5 * log_d.exp()
    if normalize:
        ctil = ctil / ctil.sum(-1, keepdim=True).abs().clamp_min(1.0)
    return ctil @ v.float()


def mlstm_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor, *,
                normalize: bool, chunk_size: int = 256) -> torch.Tensor:
    """mLSTMsig as a PyTorch user writes it, chunkwise in the input dtype (the Triton kernel's baseline).

    The chunkwise form of TFLA's paper (and of the linear-attention literature before it) with one level of
    chunking: per chunk of ``chunk_size`` tokens the intra-chunk quadratic form (chunk × chunk), plus the
    contribution of the state carried in from the previous chunks; then the state is advanced over the chunk.
    Memory per head O(T·d + d² + chunk²): never T × T. Products run in the input dtype (q·C in
    :func:`state_dtype`); the gates' logs, the decays and the state C, n are fp32.

    Within a chunk starting at token c0, g_j = Σ_{c0≤r≤j} log σ(f̃_r):
        h_j = Σ_{c0≤s≤j} exp(g_j − g_s + log σ(ĩ_s)) (q_j·k_s) v_s + exp(g_j) q_jᵀ C_{c0}
        C_{c0+L} = exp(g_last) C_{c0} + Σ_s exp(g_last − g_s + log σ(ĩ_s)) k_s v_sᵀ   (n likewise with k_s).
    Returns [B, H, T, Dv] in q's dtype.
    """
    _check(q, k, v, i_pre, f_pre)
    if chunk_size < 1:
        raise ValueError(f"mlstm_eager: chunk_size {chunk_size} must be positive")
    b, h, t, d = q.shape
    dt, sdt = q.dtype, state_dtype(q.dtype)
    k, v = k.to(dt), v.to(dt)
    scale = d ** -0.5
    lf, li = F.logsigmoid(f_pre.float()), F.logsigmoid(i_pre.float())
    out = torch.empty(b, h, t, v.shape[-1], dtype=dt, device=q.device)
    c = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32, device=q.device)
    n = torch.zeros(b, h, d, dtype=torch.float32, device=q.device)
    tril = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    for s0 in range(0, t, chunk_size):
        qc, kc, vc = q[:, :, s0:s0 + chunk_size], k[:, :, s0:s0 + chunk_size], v[:, :, s0:s0 + chunk_size]
        g = lf[:, :, s0:s0 + chunk_size].cumsum(-1)
        lic = li[:, :, s0:s0 + chunk_size]
        m = qc.shape[2]
        log_d = (g[..., :, None] - g[..., None, :] + lic[..., None, :]).masked_fill(~tril[:m, :m], float("-inf"))
        sc = (qc @ kc.transpose(-1, -2)) * (log_d.exp() * scale).to(dt)  # C̃ of the chunk, in dt
        qs = qc * (g.exp() * scale).unsqueeze(-1).to(dt)  # q_j scaled by its decay from the chunk's start
        num = (sc @ vc).float() + (qs.to(sdt) @ c.to(sdt)).float()
        if normalize:
            den = sc.float().sum(-1) + (qs.float() @ n.unsqueeze(-1)).squeeze(-1)
            num = num / den.abs().clamp_min(1.0).unsqueeze(-1)
        out[:, :, s0:s0 + m] = num.to(dt)
        if s0 + chunk_size < t:  # advance the state over the chunk
            last = g[..., -1:]
            kbar = kc * (last - g + lic).exp().unsqueeze(-1).to(dt)
            c = c * last.exp()[..., None] + (kbar.transpose(-1, -2) @ vc).float()
            n = n * last.exp() + kbar.float().sum(-2)
    return out
