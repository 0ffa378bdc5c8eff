"""Sequence-parallel attention over a torch.distributed process group: each rank holds one contiguous chunk of
the sequence ([B, H, S/P, D]) and gets the attention output of its chunk, equal to single-process attention.

Two schemes, chosen by the head count (what video DiTs such as Wan and CogVideoX need to spread a denoiser step's
long sequence over GPUs):
- **Ulysses** (all-to-all over heads), when P divides H: one all-to-all turns sequence shards into head shards
  ([B, H/P, S, D]), each rank runs ordinary attention on its heads over the whole sequence, one all-to-all turns
  the result back. Communication: 4 all-to-alls of the local q, k, v, o; any attention kernel works unchanged.
- **Ring**, otherwise: the key/value chunks travel around the ring (P - 1 point-to-point exchanges) while each
  rank folds every chunk into its rows with the online-softmax merge (running log-sum-exp), so no rank ever
  holds the whole sequence. Causal: chunks after the rank's own are skipped, its own is masked on the diagonal
  (contiguous shards leave the last rank the most work; zig-zag sharding would balance it).

The ring's per-chunk attention is PyTorch's flash kernel on CUDA (it returns the log-sum-exp the merge needs), and
exact fp32 scores elsewhere (memory S/P × S/P per head: the CPU tests' sizes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmchar.errors import InvalidParameterError

Attend = Callable[..., torch.Tensor]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise InvalidParameterError(f"sequence-parallel attention takes q, k, v as [B, H, S/P, D] chunks of one "
                                    f"self-attention; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup | None = None, *,
                      causal: bool = False, scale: float | None = None,
                      attend: Attend = F.scaled_dot_product_attention) -> torch.Tensor:
    """Attention of this rank's sequence chunk by all-to-all over heads (P must divide H).

    Args:
        q, k, v: [B, H, S/P, D], this rank's contiguous chunk (rank r holds positions r·S/P ... (r+1)·S/P - 1).
        group: the process group (default: the world).
        causal, scale: as F.scaled_dot_product_attention.
        attend: the attention run on [B, H/P, S, D] (any backend with SDPA's signature).

    Returns:
        [B, H, S/P, D], this rank's rows of the full attention.
    """
    _check(q, k, v)
    p = dist.get_world_size(group)
    b, h, s, d = q.shape
    if h % p:
        raise InvalidParameterError(f"Ulysses attention needs the head count ({h}) divisible by the ranks ({p}); "
                                    "use ring_attention (sequence_parallel_attention chooses)")

    def to_heads(x: torch.Tensor) -> torch.Tensor:  # [B, H, s, D] -> [B, H/P, P·s, D]
        send = x.reshape(b, p, h // p, s, x.shape[-1]).transpose(0, 1).contiguous()
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)  # recv[i]: rank i's chunk of my heads
        return recv.permute(1, 2, 0, 3, 4).reshape(b, h // p, p * s, x.shape[-1])

    out = attend(to_heads(q), to_heads(k), to_heads(v), is_causal=causal, scale=scale)
    dv = out.shape[-1]
    send = out.reshape(b, h // p, p, s, dv).permute(2, 0, 1, 3, 4).contiguous()  # [P, B, H/P, s, Dv]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: head group i of my chunk
    return recv.transpose(0, 1).reshape(b, h, s, dv)


def _chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     diagonal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (fp32) and log-sum-exp of q's rows against one key chunk; ``diagonal``: the causal mask within.

    On CUDA in fp16/bf16, PyTorch's flash kernel, which returns the log-sum-exp the merge needs (no S/P × S/P
    scores in memory); elsewhere exact fp32 scores."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256 and v.shape[-1] == q.shape[-1]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, diagonal, False, scale=scale)[:2]
        return out.float(), lse.float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if diagonal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse[..., None]), v.float()), lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup | None = None, *,
                   causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """Attention of this rank's sequence chunk with the key/value chunks passed around the ring.

    Args: as :func:`ulysses_attention` (any head count).

    Returns:
        [B, H, S/P, Dv] in q's dtype.
    """
    _check(q, k, v)
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], -math.inf, dtype=torch.float32, device=q.device)
    kv = torch.cat([k, v], dim=-1).contiguous()  # one message per step
    nxt, prv = (rank + 1) % p, (rank - 1) % p
    peer = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
    for step in range(p):
        j = (rank - step) % p  # whose chunk this rank holds now
        pending = []
        if step < p - 1:  # pass it on while this one is folded in
            incoming = torch.empty_like(kv)
            pending = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, peer(nxt), group),
                                              dist.P2POp(dist.irecv, incoming, peer(prv), group)])
        if not causal or j <= rank:
            blk_out, blk_lse = _chunk_attention(q, kv[..., :k.shape[-1]], kv[..., k.shape[-1]:], scale,
                                                diagonal=causal and j == rank)
            new = torch.logaddexp(lse, blk_lse)
            out = out * torch.exp(lse - new)[..., None] + blk_out * torch.exp(blk_lse - new)[..., None]
            lse = new
        for work in pending:
            work.wait()
        if step < p - 1:
            kv = incoming
    return out.to(q.dtype)


def sequence_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                group: dist.ProcessGroup | None = None, *, causal: bool = False,
                                scale: float | None = None) -> tuple[torch.Tensor, str]:
    """Ulysses where the ranks divide the heads, ring otherwise; returns the output and the scheme's name."""
    if q.shape[1] % dist.get_world_size(group) == 0:
        return ulysses_attention(q, k, v, group, causal=causal, scale=scale), "ulysses"
    return ring_attention(q, k, v, group, causal=causal, scale=scale), "ring"
