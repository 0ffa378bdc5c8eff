"""The specification of triton_flash: softmax attention in fp32 PyTorch."""

from __future__ import annotations

import torch


def triton_flash_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over [B, H, S, D] tensors, computed in fp32, returned in q's dtype.

    ``causal`` masks key j for query i when j > i (top-left aligned, as F.scaled_dot_product_attention).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype)
