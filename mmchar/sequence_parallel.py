"""Sequence-parallel attention over a torch.distributed process group: each rank holds one contiguous chunk of
the sequence ([B, H, S/P, D]) and gets the attention output of its chunk, equal to single-process attention.

Three schemes, chosen by the head count (what video DiTs such as Wan and CogVideoX need to spread a denoiser step's
long sequence over GPUs):
- **Ulysses** (all-to-all over heads), when P divides H: one all-to-all turns sequence shards into head shards
  ([B, H/P, S, D]), each rank runs ordinary attention on its heads over the whole sequence, one all-to-all turns
  the result back. Communication: 4 all-to-alls of the local q, k, v, o; any attention kernel works unchanged.
- **Ring**, otherwise: the key/value chunks travel around the ring (P - 1 point-to-point exchanges) while each
  rank folds every chunk into its rows with the online-softmax merge (running log-sum-exp), so no rank ever
  holds the whole sequence. Causal: chunks after the rank's own are skipped, its own is masked on the diagonal
  (contiguous shards leave the last rank the most work; zig-zag sharding would balance it).

- **USP** (unified sequence parallelism, Fang and Zhao 2024, xDiT's default), a 2-D mesh of U × R ranks: Ulysses over
  the U consecutive ranks of each row (U divides H), the ring over the R rows; each row's U chunks become one
  contiguous block of the sequence, so the ring passes U-times-longer chunks among R (not P) ranks and the
  all-to-alls stay inside a row. Where P does not divide H but shares a factor with it (Wan 1.3B's 12 heads on 8
  ranks: U = 4, R = 2), it keeps most of Ulysses' bandwidth and the ring only where it must.

The ring's per-chunk attention is PyTorch's flash kernel on CUDA (it returns the log-sum-exp the merge needs), and
exact fp32 scores elsewhere (memory S/P × S/P per head: the CPU tests' sizes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmchar.errors import InvalidParameterError
from mmchar.scopes import comm_label

Attend = Callable[..., torch.Tensor]

# The profiler label of one collective this module issues (`mmchar.scopes.comm_label`; `mmchar.trace` and
# `mmchar.attribution` read it back): the kernels inside are communication and the scope carries its payload (bytes
# this rank sends), which the NCCL kernels' own records lack (a coalesced P2P batch launches with no enclosing op;
# tensor lists record no dtype).


def comm_scope(kind: str, sent: torch.Tensor) -> torch.profiler.record_function:
    """The scope of one collective whose payload is ``sent`` (this rank's send buffer)."""
    return torch.profiler.record_function(comm_label(kind, sent.numel() * sent.element_size()))


def chunk_sizes(length: int, ranks: int) -> list[int]:
    """Contiguous shard lengths of a ``length``-token sequence over ``ranks``: the first ``length % ranks`` ranks
    hold one token more (torch.tensor_split's rule), so any length splits, not only multiples of the ranks."""
    return [length // ranks + (1 if r < length % ranks else 0) for r in range(ranks)]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sizes: list[int], rank: int, prefix: int) -> None:
    if q.dim() != 4 or k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise InvalidParameterError(f"sequence-parallel attention takes q, k, v as [B, H, S/P, D] chunks of one "
                                    f"self-attention; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != prefix + sizes[rank]:
        raise InvalidParameterError(f"rank {rank}'s chunk has {q.shape[2]} tokens; the shard sizes {sizes} and a "
                                    f"replicated prefix of {prefix} say {prefix + sizes[rank]}")


def _sizes(q: torch.Tensor, p: int, sizes: list[int] | None, prefix: int) -> list[int]:
    return list(sizes) if sizes is not None else [q.shape[2] - prefix] * p


def _seq_to_heads(x: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """[B, H, s_r, D] sequence shards -> [B, H/P, S, D] head shards (one all-to-all; shards may differ in length)."""
    p, (b, h, s, d) = len(sizes), x.shape
    hp = h // p
    send = x.reshape(b, p, hp, s, d).transpose(0, 1).reshape(-1)  # [P, B, H/P, s, D]: part i goes to rank i
    recv = x.new_empty(b * hp * d * sum(sizes))
    unit = b * hp * d
    with comm_scope("all_to_all", send):
        dist.all_to_all_single(recv, send, output_split_sizes=[unit * n for n in sizes],
                               input_split_sizes=[unit * s] * p, group=group)
    parts = recv.split([unit * n for n in sizes])  # rank i's tokens of my heads
    return torch.cat([t.view(b, hp, n, d) for t, n in zip(parts, sizes)], dim=2)


def _heads_to_seq(x: torch.Tensor, sizes: list[int], rank: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """[B, H/P, S, D] head shards -> [B, H, s_r, D] sequence shards (the inverse all-to-all)."""
    p, (b, hp, _, d) = len(sizes), x.shape
    unit = b * hp * d
    send = torch.cat([t.reshape(-1) for t in x.split(sizes, dim=2)])  # rank i's tokens, for rank i
    recv = x.new_empty(p * unit * sizes[rank])
    with comm_scope("all_to_all", send):
        dist.all_to_all_single(recv, send, output_split_sizes=[unit * sizes[rank]] * p,
                               input_split_sizes=[unit * n for n in sizes], group=group)
    return recv.view(p, b, hp, sizes[rank], d).transpose(0, 1).reshape(b, p * hp, sizes[rank], d)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup | None = None, *,
                      causal: bool = False, scale: float | None = None,
                      attend: Attend = F.scaled_dot_product_attention, sizes: list[int] | None = None,
                      prefix: int = 0) -> torch.Tensor:
    """Attention of this rank's sequence chunk by all-to-all over heads (P must divide H).

    Args:
        q, k, v: [B, H, prefix + s_r, D]: ``prefix`` tokens every rank holds alike (the text tokens of a joint
            text+video attention, first in the sequence), then this rank's contiguous chunk of the sharded tokens
            (rank r holds sharded positions sum(sizes[:r]) ... sum(sizes[:r+1]) - 1).
        group: the process group (default: the world).
        causal, scale: as F.scaled_dot_product_attention (causal only without a prefix).
        attend: the attention run on [B, H/P, prefix + S, D] (any backend with SDPA's signature).
        sizes: every rank's chunk length (default: all equal to this rank's).
        prefix: the replicated leading tokens: each rank attends with its own heads of them, and their output
            rows are gathered over heads, so every rank again holds all of them.

    Returns:
        [B, H, prefix + s_r, Dv], this rank's rows of the full attention.
    """
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    sizes = _sizes(q, p, sizes, prefix)
    _check(q, k, v, sizes, rank, prefix)
    h = q.shape[1]
    if h % p:
        raise InvalidParameterError(f"Ulysses attention needs the head count ({h}) divisible by the ranks ({p}); "
                                    "use ring_attention (sequence_parallel_attention chooses)")
    if causal and prefix:
        raise InvalidParameterError("causal sequence-parallel attention takes no replicated prefix")
    mine = slice(rank * (h // p), (rank + 1) * (h // p))

    def to_heads(x: torch.Tensor) -> torch.Tensor:
        sharded = _seq_to_heads(x[:, :, prefix:].contiguous(), sizes, group)
        return torch.cat([x[:, mine, :prefix], sharded], dim=2) if prefix else sharded

    out = attend(to_heads(q), to_heads(k), to_heads(v), is_causal=causal, scale=scale)
    rows = _heads_to_seq(out[:, :, prefix:].contiguous(), sizes, rank, group)
    if not prefix:
        return rows
    heads = [torch.empty_like(out[:, :, :prefix]) for _ in range(p)]  # the prefix rows of every rank's heads
    mine_rows = out[:, :, :prefix].contiguous()
    with comm_scope("all_gather", mine_rows):
        dist.all_gather(heads, mine_rows, group=group)
    return torch.cat([torch.cat(heads, dim=1), rows], dim=2)


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
                   causal: bool = False, scale: float | None = None, sizes: list[int] | None = None,
                   prefix: int = 0) -> torch.Tensor:
    """Attention of this rank's sequence chunk with the key/value chunks passed around the ring.

    Args: as :func:`ulysses_attention` (any head count); the replicated prefix's keys are folded in locally, and
    its query rows are computed on every rank alike.

    Returns:
        [B, H, prefix + s_r, Dv] in q's dtype.
    """
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    sizes = _sizes(q, p, sizes, prefix)
    _check(q, k, v, sizes, rank, prefix)
    if causal and prefix:
        raise InvalidParameterError("causal sequence-parallel attention takes no replicated prefix")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], -math.inf, dtype=torch.float32, device=q.device)

    # the prefix rows' partial results by chunk (-1: the prefix's own keys), merged in one order at the end: every
    # rank then holds bit-identical prefix rows (an online merge in each rank's arrival order would let the
    # replicated text stream drift apart across ranks)
    prefix_parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def merge(o: torch.Tensor, m: torch.Tensor, blk_o: torch.Tensor, blk_m: torch.Tensor):
        new = torch.logaddexp(m, blk_m)
        return o * torch.exp(m - new)[..., None] + blk_o * torch.exp(blk_m - new)[..., None], new

    def fold(key: torch.Tensor, value: torch.Tensor, diagonal: bool, chunk: int) -> None:
        nonlocal out, lse
        blk_out, blk_lse = _chunk_attention(q, key, value, scale, diagonal=diagonal)
        if prefix:
            prefix_parts[chunk] = (blk_out[:, :, :prefix].clone(), blk_lse[:, :, :prefix].clone())  # not a view
        out, lse = merge(out, lse, blk_out, blk_lse)

    if prefix:
        fold(k[:, :, :prefix], v[:, :, :prefix], False, -1)
    dk = k.shape[-1]
    kv = torch.cat([k[:, :, prefix:], v[:, :, prefix:]], dim=-1).contiguous()  # one message per step
    nxt, prv = (rank + 1) % p, (rank - 1) % p
    peer = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
    for step in range(p):
        j = (rank - step) % p  # whose chunk this rank holds now
        pending = []
        if step < p - 1:  # pass it on while this one is folded in
            shape = list(kv.shape)
            shape[2] = sizes[(j - 1) % p]  # the chunk arriving next: the previous rank's current one
            incoming = kv.new_empty(shape)
            with comm_scope("sendrecv", kv):
                pending = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, peer(nxt), group),
                                                  dist.P2POp(dist.irecv, incoming, peer(prv), group)])
        if (not causal or j <= rank) and kv.shape[2]:
            fold(kv[..., :dk], kv[..., dk:], causal and j == rank, j)
        for work in pending:
            work.wait()
        if step < p - 1:
            kv = incoming
    if prefix:
        o, m = prefix_parts[-1]
        for chunk in sorted(c for c in prefix_parts if c >= 0):
            o, m = merge(o, m, *prefix_parts[chunk])
        out[:, :, :prefix] = o
    return out.to(q.dtype)


def ulysses_degree_for(heads: int, ranks: int) -> int:
    """The largest Ulysses degree a U × R mesh of ``ranks`` can give ``heads``: the greatest divisor of the ranks
    that divides the heads (1: none, the ring alone)."""
    return max(u for u in range(1, ranks + 1) if ranks % u == 0 and heads % u == 0)


def scheme_for(heads: int, ranks: int) -> str:
    """Ulysses where the ranks divide the heads; else USP where they share a factor with the heads; else ring."""
    if heads % ranks == 0:
        return "ulysses"
    return "usp" if ulysses_degree_for(heads, ranks) > 1 else "ring"


@dataclasses.dataclass(frozen=True)
class Mesh:
    """This rank's place in a U × R mesh of a process group: its row (``ulysses``: the U consecutive ranks it
    exchanges heads with) and its column (``ring``: the R ranks, one per row, it passes key/value blocks among)."""

    ulysses_degree: int
    ring_degree: int
    ulysses: dist.ProcessGroup
    ring: dist.ProcessGroup


def usp_mesh(ulysses_degree: int, group: dist.ProcessGroup | None = None,
             siblings: Sequence[Sequence[int]] | None = None) -> Mesh:
    """This rank's row and column subgroups of a U × R mesh over ``group``. Every rank of the world calls this
    together, since each subgroup is created collectively, in one order on every rank: where ``group`` is one of
    several equal rank groups (the halves of a CFG-parallel run), ``siblings`` lists them all (``group``'s among
    them) and every rank makes each one's mesh, one after another.

    Raises:
        InvalidParameterError: U does not divide the ranks.
    """
    mine = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    p, me = len(mine), dist.get_rank()
    if ulysses_degree < 1 or p % ulysses_degree:
        raise InvalidParameterError(f"--ulysses-degree {ulysses_degree} must divide the {p} ranks "
                                    f"(one of {', '.join(str(u) for u in range(1, p + 1) if p % u == 0)})")
    u = ulysses_degree
    row = col = None
    for ranks in [list(r) for r in siblings] if siblings is not None else [mine]:
        for i in range(len(ranks) // u):  # rows: consecutive ranks
            g = dist.new_group(ranks[i * u:(i + 1) * u])
            if me in ranks[i * u:(i + 1) * u]:
                row = g
        for j in range(u):  # columns: one rank of each row
            g = dist.new_group(ranks[j::u])
            if me in ranks[j::u]:
                col = g
    assert row is not None and col is not None, "this rank is in none of the mesh's groups"
    return Mesh(u, p // u, row, col)


def usp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mesh: Mesh, *, causal: bool = False,
                  scale: float | None = None, sizes: list[int] | None = None, prefix: int = 0) -> torch.Tensor:
    """Attention of this rank's sequence chunk over a U × R mesh: Ulysses within the row (its U chunks become one
    block, the row's contiguous share of the sequence, on H/U heads), the ring over the column's R blocks.

    Args: as :func:`ulysses_attention`; ``sizes`` are the chunks of every rank of the mesh's group in rank order.

    Returns:
        [B, H, prefix + s_r, Dv], this rank's rows of the full attention.
    """
    u, r = mesh.ulysses_degree, mesh.ring_degree
    p = u * r
    sizes = _sizes(q, p, sizes, prefix)
    row_rank, col_rank = dist.get_rank(mesh.ulysses), dist.get_rank(mesh.ring)
    rank = col_rank * u + row_rank
    _check(q, k, v, sizes, rank, prefix)
    h = q.shape[1]
    if h % u:
        raise InvalidParameterError(f"USP's Ulysses degree {u} must divide the head count ({h})")
    if causal and prefix:
        raise InvalidParameterError("causal sequence-parallel attention takes no replicated prefix")
    row_sizes = sizes[col_rank * u:(col_rank + 1) * u]  # the chunks this row joins into its block
    blocks = [sum(sizes[i * u:(i + 1) * u]) for i in range(r)]
    mine = slice(row_rank * (h // u), (row_rank + 1) * (h // u))

    def to_heads(x: torch.Tensor) -> torch.Tensor:
        sharded = _seq_to_heads(x[:, :, prefix:].contiguous(), row_sizes, mesh.ulysses)
        return torch.cat([x[:, mine, :prefix], sharded], dim=2) if prefix else sharded

    out = ring_attention(to_heads(q), to_heads(k), to_heads(v), mesh.ring, causal=causal, scale=scale,
                         sizes=blocks, prefix=prefix)
    rows = _heads_to_seq(out[:, :, prefix:].contiguous(), row_sizes, row_rank, mesh.ulysses)
    if not prefix:
        return rows
    heads = [torch.empty_like(out[:, :, :prefix]) for _ in range(u)]  # the prefix rows of the row's heads
    mine_rows = out[:, :, :prefix].contiguous()
    with comm_scope("all_gather", mine_rows):
        dist.all_gather(heads, mine_rows, group=mesh.ulysses)
    return torch.cat([torch.cat(heads, dim=1), rows], dim=2)


def sequence_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                group: dist.ProcessGroup | None = None, *, causal: bool = False,
                                scale: float | None = None, sizes: list[int] | None = None,
                                prefix: int = 0, mesh: Mesh | None = None) -> tuple[torch.Tensor, str]:
    """Ulysses where the ranks divide the heads, USP on ``mesh`` where one is given and they share a factor, ring
    otherwise; returns the output and the scheme's name."""
    scheme = scheme_for(q.shape[1], dist.get_world_size(group))
    if scheme == "usp" and mesh is None:
        scheme = "ring"
    if scheme == "usp":
        return usp_attention(q, k, v, mesh, causal=causal, scale=scale, sizes=sizes, prefix=prefix), scheme
    if scheme == "ulysses":
        return ulysses_attention(q, k, v, group, causal=causal, scale=scale, sizes=sizes, prefix=prefix), scheme
    return ring_attention(q, k, v, group, causal=causal, scale=scale, sizes=sizes, prefix=prefix), scheme
