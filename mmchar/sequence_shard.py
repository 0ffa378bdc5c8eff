"""Sequence-parallel denoiser steps: a video DiT's token sequence split over the ranks of a process group.

Everything in a DiT block but self-attention works token by token, so each rank can hold one contiguous chunk of
the video tokens from the first block to the last; only self-attention needs the other ranks' tokens, and it gets
them through `mmchar.sequence_parallel` (Ulysses all-to-all where the ranks divide the heads, ring otherwise). A
plan per model class names where the chunk is cut: the inputs of every transformer block (hidden states, and
per-token embeddings computed for the whole sequence); the last block's output is joined again. Hooks do both, so
the model's own code runs unchanged. Text tokens of joint attention (CogVideoX concatenates them before the video
tokens inside the processor) stay whole on every rank: they are the attention's replicated prefix. The same split
as diffusers' own context parallelism (its ``_cp_plan``), built on plain torch.distributed so it runs on gloo (CPU
tests) and for models diffusers gives no plan (CogVideoX).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.sequence_parallel import (
    comm_scope,
    chunk_sizes,
    ring_attention,
    scheme_for,
    ulysses_attention,
    ulysses_degree_for,
    usp_attention,
    usp_mesh,
)


@dataclass(frozen=True)
class ShardPlan:
    """Where one model class's token sequence is split and joined.

    Attributes:
        blocks: the ModuleList of transformer blocks; each block's ``split`` arguments are cut to this rank's chunk
            when they still span the whole sequence (the first block's hidden states; per-token embeddings the
            model computes once and hands to every block).
        split: block argument name -> its token dimension (a tensor, or a tuple of tensors such as RoPE's cos/sin).
        text_prefix: joint attention puts the text tokens, whole on every rank, before the video chunk.
        split_ndim: arguments cut only when they have this many dimensions (Wan 2.2's per-token temb is 4-D;
            Wan 2.1's [B, 6, C] stays whole even when the sequence has 6 tokens).
    """

    blocks: str
    split: dict[str, int]
    text_prefix: bool = False
    split_ndim: dict[str, int] = field(default_factory=dict)


SHARD_PLANS: dict[str, ShardPlan] = {
    # Wan 2.2's per-token timestep embedding (temb [B, S, 6, C]) is cut too; Wan 2.1's [B, 6, C] is left whole
    "WanTransformer3DModel": ShardPlan("blocks", {"hidden_states": 1, "rotary_emb": 1, "temb": 1},
                                       split_ndim={"temb": 4}),
    "CogVideoXTransformer3DModel": ShardPlan("transformer_blocks", {"hidden_states": 1, "image_rotary_emb": 0},
                                             text_prefix=True),
}

Attend = Callable[..., torch.Tensor]
SCHEMES = ("auto", "ulysses", "ring", "usp")


class SequenceShard:
    """This rank's share of a model's token sequence while hooked in (`hooked`); the attention routes of the
    swap call :meth:`attend` for self-attention while a forward pass is sharded (:attr:`active`)."""

    def __init__(self, model: torch.nn.Module, group: dist.ProcessGroup | None = None, scheme: str = "auto",
                 sync_timeout: timedelta | None = None, ulysses_degree: int | None = None,
                 siblings: Sequence[Sequence[int]] | None = None) -> None:
        """``scheme``: ``auto`` (Ulysses where the ranks divide the heads, USP where they share a factor with them,
        ring otherwise), or one of them forced (to compare them on one model; Ulysses still needs divisible
        heads); ``ulysses_degree``: USP's U (default: the largest divisor of the ranks that divides the heads);
        ``siblings``: where ``group`` is one of several disjoint subgroups sharding alike (CFG parallelism's
        halves), the ranks of each of them, this one's included: every rank then creates every group's USP mesh,
        in that order (a subgroup is created by all ranks of the default group together)."""
        if scheme not in SCHEMES:
            raise UnknownNameError("sequence-parallel scheme", scheme, SCHEMES)
        if ulysses_degree is not None and scheme != "usp":
            raise InvalidParameterError("--ulysses-degree sets USP's mesh: it takes --sp-scheme usp")
        self.scheme = scheme
        cls = type(model).__name__
        if cls not in SHARD_PLANS:
            raise UnknownNameError("sequence-parallel model", cls, sorted(SHARD_PLANS))
        self.plan = SHARD_PLANS[cls]
        self.model_class = cls
        self.model = model
        self.group = group
        self.ranks, self.rank = dist.get_world_size(group), dist.get_rank(group)
        # USP's U × R mesh, made now (its subgroups are created by every rank together, before any forward):
        # forced, or where auto would choose it for the model's head count
        heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
        degree = ulysses_degree or (ulysses_degree_for(heads, self.ranks) if heads else 1)
        wants = scheme == "usp" or (scheme == "auto" and heads is not None and scheme_for(heads, self.ranks) == "usp")
        if scheme == "usp" and heads is not None and heads % degree:
            raise InvalidParameterError(f"USP's Ulysses degree {degree} must divide {cls}'s {heads} heads")
        self.mesh = usp_mesh(degree, group, siblings) if wants else None
        self.blocks = model.get_submodule(self.plan.blocks)
        self._signature = inspect.signature(self.blocks[0].forward)
        self.full: int | None = None  # tokens of the sequence being sharded; None outside a sharded forward
        self.sizes: list[int] = []  # chunk lengths of the last sharded sequence (kept for the run record)
        self.prefix: int = 0  # its text prefix
        self.schemes: dict[str, str] = {}  # attention module path -> ulysses / ring
        # host-side barrier (no GPU kernel in the traces): every rank of `group` creates it here, together
        if dist.get_backend(group) == "gloo":
            self._sync_group = group
        elif group is None:
            self._sync_group = dist.new_group(backend="gloo", timeout=sync_timeout)
        else:  # only the subgroup's ranks take part in making it
            self._sync_group = dist.new_group(ranks=dist.get_process_group_ranks(group), backend="gloo",
                                              timeout=sync_timeout, use_local_synchronization=True)

    def align(self) -> None:
        """Line the ranks up (device work done, then a host barrier) before a timed or profiled generation."""
        if next(self.model.parameters()).is_cuda:
            torch.cuda.synchronize()
        dist.barrier(group=self._sync_group)

    @property
    def active(self) -> bool:
        return self.full is not None

    @contextlib.contextmanager
    def hooked(self) -> Iterator[SequenceShard]:
        handles = [self.model.register_forward_pre_hook(self._reset)]
        handles += [b.register_forward_pre_hook(self._split, with_kwargs=True) for b in self.blocks]
        handles.append(self.blocks[-1].register_forward_hook(self._gather))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.full = None

    def _reset(self, module: Any, args: Any) -> None:  # a forward that raised mid-way left its state behind
        self.full = None

    def _split(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = self._signature.bind_partial(*args, **kwargs)
        if self.full is None:
            hs = bound.arguments["hidden_states"]
            n = hs.shape[self.plan.split["hidden_states"]]
            if n < self.ranks:
                raise InvalidParameterError(f"sequence parallelism over {self.ranks} ranks needs at least as many "
                                            f"tokens; this sequence has {n}")
            self.full, self.sizes = n, chunk_sizes(n, self.ranks)
        start, size = sum(self.sizes[:self.rank]), self.sizes[self.rank]

        def cut(x: Any, dim: int) -> Any:
            if isinstance(x, torch.Tensor):
                return x.narrow(dim, start, size).contiguous() if x.dim() > dim and x.shape[dim] == self.full else x
            if isinstance(x, tuple):
                return tuple(cut(t, dim) for t in x)
            return x

        for name, dim in self.plan.split.items():
            arg = bound.arguments.get(name)
            if arg is None or (name in self.plan.split_ndim and getattr(arg, "dim", lambda: -1)()
                                                                   != self.plan.split_ndim[name]):
                continue
            bound.arguments[name] = cut(arg, dim)
        return bound.args, bound.kwargs

    def _gather(self, module: Any, args: tuple, output: Any) -> Any:
        """The last block's hidden states (its output, or the output's first element) joined to the whole
        sequence, in the model's dtype (later modules may upcast)."""
        if self.full is None:
            return None
        x, dim = (output[0] if isinstance(output, tuple) else output), self.plan.split["hidden_states"]
        pad = max(self.sizes) - x.shape[dim]
        if pad:  # all_gather takes equal shapes: shorter chunks travel padded
            x = torch.cat([x, x.new_zeros(*x.shape[:dim], pad, *x.shape[dim + 1:])], dim=dim)
        parts = [torch.empty_like(x) for _ in range(self.ranks)]
        x = x.contiguous()
        with comm_scope("all_gather", x):
            dist.all_gather(parts, x, group=self.group)
        self.full = None
        whole = torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, self.sizes)], dim=dim)
        return (whole, *output[1:]) if isinstance(output, tuple) else whole

    def takes(self, q: torch.Tensor, k: torch.Tensor, has_context: bool) -> bool:
        """Whether an attention call of a sharded forward is self-attention over the split sequence: queries and
        keys alike, and not a cross attention whose text happens to be as long as this rank's chunk (queries
        exactly the chunk while the processor was handed encoder states)."""
        if self.full is None or q.shape[-2] != k.shape[-2]:
            return False
        return not (has_context and q.shape[-2] == self.sizes[self.rank])

    def attend(self, module_path: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               causal: bool, scale: float | None, attend: Attend, scoped: Callable[[int], Any],
               backend: Any) -> torch.Tensor:
        """One self-attention call of a sharded forward over the whole sequence.

        Args:
            q, k, v: [B, H, prefix + s_r, D] of this rank's tokens (text prefix first, if the plan has one).
            attend: the layer's backend with SDPA's signature, run on the Ulysses head shard.
            scoped: ``scoped(key_tokens)`` opens the layer's attention-core profiler scope for a ring call (the
                ring folds key chunks with its own flash calls, so the scope carries the whole key length).
            backend: the layer's backend: the ring merges softmax chunks only (not linear attention, WERSA), and
                a backend that filters by the layer's hidden states (WERSA) would see only this rank's chunk.
        """
        if getattr(backend, "reads_hidden_states", False):
            raise InvalidParameterError(f"{backend.name} filters q and k by the layer's hidden states over the whole "
                                        f"sequence; under sequence parallelism {module_path} holds only its "
                                        "rank's chunk: use softmax or linear attention")
        local = self.sizes[self.rank]
        prefix = q.shape[2] - local
        if mask is not None or prefix < 0 or (prefix and not self.plan.text_prefix):
            why = "an attention mask" if mask is not None else f"{q.shape[2]} query tokens for a {local}-token chunk"
            raise InvalidParameterError(f"sequence parallelism cannot take {module_path}: {why}")
        scheme = scheme_for(q.shape[1], self.ranks) if self.scheme == "auto" else self.scheme
        if scheme == "usp" and self.scheme == "auto" and (self.mesh is None or q.shape[1] % self.mesh.ulysses_degree):
            scheme = "ring"  # a layer whose heads the mesh (sized by the model's config) does not divide
        self.schemes[module_path] = scheme
        self.prefix = prefix
        if scheme == "ulysses":
            return ulysses_attention(q, k, v, self.group, causal=causal, scale=scale, attend=attend, sizes=self.sizes,
                                     prefix=prefix)
        if backend.changes_math:
            raise InvalidParameterError(f"{module_path} has {q.shape[1]} heads, which {self.ranks} ranks do not "
                                        f"divide: {scheme} attention merges softmax chunks over the ring only; use "
                                        "a softmax backend or a rank count that divides the heads")
        with scoped(prefix + self.full):
            if scheme == "usp":
                return usp_attention(q, k, v, self.mesh, causal=causal, scale=scale, sizes=self.sizes, prefix=prefix)
            return ring_attention(q, k, v, self.group, causal=causal, scale=scale, sizes=self.sizes, prefix=prefix)

    def describe(self) -> dict[str, Any]:
        """What the run records: ranks, the plan, the sequence and its chunks, the scheme of each layer."""
        counts: dict[str, int] = {}
        for s in self.schemes.values():
            counts[s] = counts.get(s, 0) + 1
        return {"ranks": self.ranks, "stored_rank": self.rank, "process_group": dist.get_backend(self.group),
                "model": self.model_class, "tokens": sum(self.sizes) or None,
                "mesh": ({"ulysses_degree": self.mesh.ulysses_degree, "ring_degree": self.mesh.ring_degree}
                         if self.mesh is not None else None), "chunk_tokens": self.sizes or None, "text_prefix_tokens": self.prefix, "schemes": counts,
                "split_at": f"{self.plan.blocks}.* ({', '.join(self.plan.split)})",
                "gathered_at": f"{self.plan.blocks}.{len(self.blocks) - 1} (output)"}
