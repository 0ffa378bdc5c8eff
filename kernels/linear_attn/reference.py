"""The specification of linear_attn, in fp32 PyTorch.

o_t = φ(q_t)ᵀ U / (φ(q_t)·z + ε) with U = Σ_s φ(k_s) v_sᵀ and z = Σ_s φ(k_s) over all s (non-causal), or over
s ≤ t (causal). Feature maps: ``relu`` (SANA's, no 1/√d scale), ``elu1`` (elu(x) + 1) and ``identity`` (features the caller mapped
already: SANA-Video's rotated ones, where only the numerator is meaningful).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_MAPS = ("relu", "elu1", "identity")


def feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "elu1":
        return F.elu(x) + 1.0
    if name == "identity":
        return x
    raise ValueError(f"unknown feature map {name!r}; valid: {', '.join(FEATURE_MAPS)}")


def linear_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    feature: str = "relu", eps: float = 1e-6, normalize: bool = True) -> torch.Tensor:
    """[B, H, Sq, D] × [B, H, Skv, D] × [B, H, Skv, Dv] -> [B, H, Sq, Dv] in q's dtype, computed in fp32;
    ``normalize=False``: the numerator φ(q)ᵀU alone (fla's ``normalize=False``)."""
    fq, fk, vv = feature_map(q.float(), feature), feature_map(k.float(), feature), v.float()
    if not causal:
        u = torch.einsum("bhsd,bhse->bhde", fk, vv)
        z = fk.sum(dim=2)
        num = torch.einsum("bhtd,bhde->bhte", fq, u)
        den = torch.einsum("bhtd,bhd->bht", fq, z)
    else:
        if q.shape[2] != k.shape[2]:
            raise ValueError("causal linear attention needs as many queries as keys")
        kv = torch.einsum("bhsd,bhse->bhsde", fk, vv).cumsum(dim=2)
        z = fk.cumsum(dim=2)
        num = torch.einsum("bhtd,bhtde->bhte", fq, kv)
        den = torch.einsum("bhtd,bhtd->bht", fq, z)
    return (num / (den.unsqueeze(-1) + eps) if normalize else num).to(q.dtype)


def linear_attn_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                      feature: str = "relu", eps: float = 1e-6, normalize: bool = True) -> torch.Tensor:
    """The same maths in plain PyTorch in the input dtype (the baseline the Triton kernels are measured against):
    three einsums non-causal; chunked prefix states causal (no n × d × d cumsum)."""
    fq, fk = feature_map(q, feature), feature_map(k, feature)
    if not causal:
        u = torch.einsum("bhsd,bhse->bhde", fk, v)
        num = torch.einsum("bhtd,bhde->bhte", fq, u)
        if not normalize:
            return num
        return num / (torch.einsum("bhtd,bhd->bht", fq, fk.sum(dim=2)).unsqueeze(-1) + eps)
    b, h, n, d = q.shape
    out = torch.empty(b, h, n, v.shape[-1], dtype=q.dtype, device=q.device)
    state = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32, device=q.device)
    zs = torch.zeros(b, h, d, dtype=torch.float32, device=q.device)
    c = 64
    mask = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    for s in range(0, n, c):
        qc, kc, vc = fq[:, :, s:s + c].float(), fk[:, :, s:s + c].float(), v[:, :, s:s + c].float()
        m = mask[: qc.shape[2], : qc.shape[2]]
        a = (qc @ kc.transpose(-1, -2)).masked_fill(~m, 0.0)
        num = a @ vc + qc @ state
        if normalize:
            num = num / (a.sum(-1) + torch.einsum("bhtd,bhd->bht", qc, zs)).unsqueeze(-1).add(eps)
        out[:, :, s:s + c] = num.to(q.dtype)
        state = state + kc.transpose(-1, -2) @ vc
        zs = zs + kc.sum(2)
    return out
