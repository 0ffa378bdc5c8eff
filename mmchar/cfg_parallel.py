"""CFG parallelism: the conditional and unconditional halves of a guided denoiser step on two halves of the ranks.

Classifier-free guidance runs the denoiser on the prompts and on the negative prompts each step; the two passes
do not depend on each other until the pipeline mixes their outputs, so two groups of ranks can compute one each
(xDiT's "CFG parallel"). With P ranks: 2 CFG halves × P/2 sequence-parallel ranks. The SP groups are consecutive
ranks (0 .. P/2-1 the first half), the CFG groups pair rank i with rank i + P/2; every rank creates every subgroup,
in one order (`cfg_groups`).

Two ways guidance reaches the denoiser (`mmchar.runner._DenoiserBatches`):
- **batched** (SD, CogVideoX): one call per step on 2B samples, negatives first. Each CFG rank computes its half
  of the batch (every tensor argument whose leading dimension is 2B cut to its B); the output is all-gathered
  over the CFG group along the batch, so the pipeline sees the whole batch.
- **two calls** (Wan, Qwen-Image): the conditional call, then the unconditional one. CFG rank 0 computes the first
  call of each step, rank 1 the second (the call's place in its step from the count of denoiser calls); on the call
  a rank skips it returns a placeholder of the output's shape (the hidden states' shape for these models, checked
  on the computing rank at the first exchange), and after the second call the two outputs are exchanged and the
  placeholders filled in place: the pipeline reads the first call's output only once the second has returned
  (diffusers' pipeline_wan.py: ``noise_uncond + scale * (noise_pred - noise_uncond)`` after both calls).

Both wrap the denoiser's ``forward`` (an instance attribute, as the stage timer does, and below it), so the
exchange lies inside the denoiser stage's interval and its profiler scope: it is the step's communication.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mmchar.errors import InvalidParameterError
from mmchar.sequence_parallel import comm_scope

MODES = ("batched", "two calls")
FLAG = "--cfg-parallel"


@dataclass(frozen=True)
class CfgGroups:
    """This rank's place in the 2 × P/2 layout and its process groups.

    Attributes:
        cfg_rank: 0 (the first half of the ranks) or 1.
        cfg: the CFG pair (rank i and i + P/2) this rank belongs to.
        sp: this rank's sequence-parallel group (its half's ranks), or None with one rank per half.
        sp_ranks: ranks per half (P/2).
        sp_groups: every half's ranks, in order (the USP meshes of all halves are created by every rank).
        sync: a gloo group of all ranks (host-side barrier before a timed generation), None: the default group.
    """

    cfg_rank: int
    cfg: dist.ProcessGroup
    sp: dist.ProcessGroup | None
    sp_ranks: int
    sp_groups: tuple[tuple[int, ...], ...]
    sync: dist.ProcessGroup | None


def check_rank_count(world: int) -> None:
    """Two CFG halves need an even rank count (one-line refusal otherwise)."""
    if world < 2 or world % 2:
        raise InvalidParameterError(f"{FLAG} puts the conditional and unconditional passes on two halves of the "
                                    f"ranks: it needs an even number of ranks (2, 4, 8 ...); {world} joined")


def cfg_groups(sync_timeout: timedelta | None = None) -> CfgGroups:
    """The CFG and SP subgroups of torch.distributed's default group; every rank calls this together (each
    subgroup is created collectively, in one order on every rank)."""
    p, me = dist.get_world_size(), dist.get_rank()
    check_rank_count(p)
    half = p // 2
    halves = (tuple(range(half)), tuple(range(half, p)))
    sp = None
    if half > 1:  # with one rank per half there is no sequence to split
        for ranks in halves:
            g = dist.new_group(list(ranks))
            if me in ranks:
                sp = g
    cfg = None
    for i in range(half):
        g = dist.new_group([i, i + half])
        if me in (i, i + half):
            cfg = g
    assert cfg is not None
    sync = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=sync_timeout)
    return CfgGroups(me // half, cfg, sp, half, halves, sync)


def _guidance_scale(params: dict[str, Any]) -> float | None:
    scale = params.get("guidance", params.get("guidance_scale"))
    return None if scale is None else float(scale)


def check_guidance(scale: float | None, name: str = "this run") -> None:
    """A guidance scale above 1 (one-line refusal otherwise: no unconditional pass to move)."""
    if scale is None:
        raise InvalidParameterError(f"{FLAG} splits classifier-free guidance's two passes; {name} sets no guidance "
                                    "scale: it runs no unconditional pass")
    if scale <= 1:
        raise InvalidParameterError(f"{FLAG} splits classifier-free guidance's two passes, but guidance is off "
                                    f"(scale {scale:g} <= 1: {name} runs no unconditional pass); pass --guidance "
                                    "above 1 or drop --cfg-parallel")


def cfg_mode(target: Any) -> str:
    """How ``target``'s guided step reaches its denoiser: ``batched`` or ``two calls`` (from its stage roots'
    calls per step), or a one-line refusal: guidance off, or more than two calls a step.

    A workload whose guidance is distilled into the model (FLUX, HunyuanVideo: one call on the prompts alone) looks
    batched here; the first denoiser call finds no 2B batch and refuses (`CfgParallel`)."""
    from mmchar.schema import STEP_STAGES

    name = target.config.get("workload", getattr(target, "name", "this workload"))
    check_guidance(_guidance_scale(target.config.get("params") or {}), name)
    per_step = max((r.calls_per_step for r in target.stage_roots if r.stage in STEP_STAGES), default=1)
    if per_step > 2:
        raise InvalidParameterError(f"{FLAG} puts one guided pass on each CFG rank; {name}'s denoiser runs "
                                    f"{per_step} calls a step")
    return "two calls" if per_step == 2 else "batched"


def _prompts(target: Any) -> int | None:
    """The samples of one guided half (prompts × outputs per prompt), None where the run does not say."""
    params = target.config.get("params") or {}
    call = target.config.get("call") or {}
    batch = params.get("batch")
    if not batch:
        return None
    per = call.get("num_images_per_prompt", call.get("num_videos_per_prompt", 1)) or 1
    return int(batch) * int(per)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0), None)


def _sample(output: Any) -> torch.Tensor:
    """The tensor a denoiser returns: itself, a tuple's first element, or diffusers' output's ``sample``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def _with_sample(output: Any, x: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return x
    if isinstance(output, tuple):
        return (x, *output[1:])
    output.sample = x
    return output


class CfgParallel:
    """The denoisers of ``models`` computing this CFG rank's share of each guided step while :meth:`hooked`."""

    def __init__(self, target: Any, models: list[torch.nn.Module], groups: CfgGroups, mode: str | None = None) -> None:
        self.mode = mode or cfg_mode(target)
        if self.mode not in MODES:
            raise InvalidParameterError(f"CFG mode {self.mode!r} is not one of {MODES}")
        self.models, self.groups = models, groups
        self.prompts = _prompts(target)
        self.calls = 0  # denoiser calls since the hooks went in (all models: a step runs one of them twice)
        self._checked = False  # the first exchange checked the output against the hidden states (two calls)
        self._mine: torch.Tensor | None = None  # this rank's computed output of the current step (two calls)
        self._placeholder: torch.Tensor | None = None  # the output it returned for the call it skipped

    def align(self) -> None:
        """Line every rank up (device work done, then a host barrier over all ranks) before a timed generation."""
        if next(self.models[0].parameters()).is_cuda:
            torch.cuda.synchronize()
        dist.barrier(group=self.groups.sync)

    @contextlib.contextmanager
    def hooked(self) -> Iterator[CfgParallel]:
        self.calls, self._checked, self._mine, self._placeholder = 0, False, None, None
        restore = []
        for model in self.models:
            had = "forward" in vars(model)
            orig = model.forward
            restore.append((model, vars(model)["forward"] if had else None))
            step = self._batched if self.mode == "batched" else self._two_calls
            model.forward = functools.update_wrapper(functools.partial(step, orig), orig)
        try:
            yield self
        finally:
            for model, previous in reversed(restore):
                if previous is None:
                    del model.forward
                else:
                    model.forward = previous
            self._mine = self._placeholder = None

    # batched: this rank's half of the batch, the output gathered back

    def _batched(self, orig: Any, *args: Any, **kwargs: Any) -> Any:
        first = _first_tensor(args, kwargs)
        n = int(first.shape[0]) if first is not None else 0
        if n < 2 or n % 2 or (self.prompts is not None and n != 2 * self.prompts):
            why = (f"its denoiser runs on {n} sample(s) a call for {self.prompts} prompt(s)"
                   if self.prompts is not None else f"its denoiser's batch ({n}) has no two halves")
            raise InvalidParameterError(f"{FLAG} needs classifier-free guidance batched as conditional and "
                                        f"unconditional halves; {why}: guidance distilled into the model (or off) "
                                        "leaves no unconditional pass to move")
        half, r = n // 2, self.groups.cfg_rank

        def cut(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n:
                return x.narrow(0, r * half, half)
            if isinstance(x, dict):  # SDXL's added_cond_kwargs
                return {k: cut(v) for k, v in x.items()}
            return x  # tuples (RoPE's cos/sin) are per token, not per sample

        self.calls += 1
        out = orig(*(cut(a) for a in args), **{k: cut(v) for k, v in kwargs.items()})
        x = _sample(out).contiguous()
        parts = [torch.empty_like(x) for _ in range(2)]
        with comm_scope("all_gather", x):
            dist.all_gather(parts, x, group=self.groups.cfg)
        return _with_sample(out, torch.cat(parts, dim=0))

    # two calls: rank 0 computes each step's first call, rank 1 its second

    def _hidden_states(self, orig: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        if "hidden_states" in kwargs:
            return kwargs["hidden_states"]
        try:
            bound = inspect.signature(orig).bind_partial(*args, **kwargs)  # positional: a pipeline of one's own
            hs = bound.arguments.get("hidden_states", bound.arguments.get("sample"))
        except TypeError:
            hs = None
        hs = hs if isinstance(hs, torch.Tensor) else _first_tensor(args, kwargs)
        if hs is None:
            raise InvalidParameterError(f"{FLAG} (two calls) finds no hidden states among the denoiser's arguments")
        return hs

    def _two_calls(self, orig: Any, *args: Any, **kwargs: Any) -> Any:
        index = self.calls % 2
        self.calls += 1
        hs = self._hidden_states(orig, args, kwargs)
        if index == self.groups.cfg_rank:
            out = orig(*args, **kwargs)
            self._mine = _sample(out)
        else:  # skipped: an output of the hidden states' shape, filled after the step's exchange
            self._placeholder = torch.empty_like(hs)
            if kwargs.get("return_dict", True) is False:
                out = (self._placeholder,)
            else:
                from diffusers.models.modeling_outputs import Transformer2DModelOutput

                out = Transformer2DModelOutput(sample=self._placeholder)
        if index == 1:
            self._exchange(hs)
        return out

    def _exchange(self, hs: torch.Tensor) -> None:
        """After a step's second call: the two computed outputs swapped over the CFG pair; the skipped call's
        placeholder filled in place."""
        mine, placeholder = self._mine, self._placeholder
        self._mine = self._placeholder = None
        if mine is None or placeholder is None:
            raise InvalidParameterError(f"{FLAG} lost count of the denoiser's calls (a step ran one call, not two)")
        if not self._checked:  # once per hooked pass: every CFG pair agrees before the first exchange
            ok = mine.shape == hs.shape and mine.dtype == hs.dtype
            flags = [torch.zeros(1, dtype=torch.int32, device=hs.device) for _ in range(2)]
            dist.all_gather(flags, torch.tensor([int(ok)], dtype=torch.int32, device=hs.device),
                            group=self.groups.cfg)
            if not all(int(f.item()) for f in flags):
                raise InvalidParameterError(f"{FLAG} (two calls) returns a placeholder of the hidden states' shape on "
                                            f"the call a rank skips; this denoiser returns {tuple(mine.shape)} "
                                            f"{mine.dtype} for hidden states {tuple(hs.shape)} {hs.dtype}"
                                            if not ok else f"{FLAG} (two calls): the other CFG rank's denoiser output "
                                            "does not have the hidden states' shape")
            self._checked = True
        x = mine.contiguous()
        parts = [torch.empty_like(x) for _ in range(2)]
        with comm_scope("all_gather", x):
            dist.all_gather(parts, x, group=self.groups.cfg)
        placeholder.copy_(parts[1 - self.groups.cfg_rank])

    def describe(self) -> dict[str, Any]:
        """What the run records (meta.json ``cfg_parallel``)."""
        return {"ranks": 2, "mode": self.mode, "sp_ranks": self.groups.sp_ranks}
