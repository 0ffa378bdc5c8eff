"""Step caching (``--cache METHOD``): the denoiser's cache hooks that diffusers ships, installed the way their users
install them (``transformer.enable_cache(config)``), with what each denoiser call really computed counted.

A cache skips work inside the denoiser: First Block Cache runs only the first transformer block of a step and reuses
the rest's residual when that block's output barely moved; Pyramid Attention Broadcast reuses attention outputs
every few steps inside a timestep range; TaylorSeer predicts whole outputs between its full steps. With random
weights a data-dependent decision (First Block Cache's threshold on the first block's change) is not the real
model's, so such a method is driven by an explicit schedule (``--cache-schedule``: the share of steps skipped, or a
pattern of computed and skipped steps), and the run says the schedule is assumed; with ``--weights`` and no schedule
the method decides itself. Methods whose decisions follow the step count alone (PAB, TaylorSeer) run as configured.

Every denoiser call is classified from counters below the hooks (each transformer block's and attention module's
own forward, wrapped before the hooks are installed, so they count only work that ran): ``computed`` (every block
and attention ran), ``skipped`` (at most the first block ran) or ``partial``; steps likewise, from their calls. The
counts of the timed generation go into ``meta.json`` (``step_cache``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.target import Target

NO_CACHE = "none"


@dataclasses.dataclass(frozen=True)
class CacheMethod:
    """One of diffusers' cache hooks: the config class, how it is built, and whether its decisions depend on the
    data (then random weights need ``--cache-schedule``)."""

    name: str
    config_class: str
    data_dependent: bool
    what: str
    paper: str


CACHE_METHODS: dict[str, CacheMethod] = {m.name: m for m in (
    CacheMethod("first-block", "FirstBlockCacheConfig", True,
                "runs the first transformer block; reuses the other blocks' residual when its output moved less "
                "than a threshold", "ParaAttention's First Block Cache (after TeaCache, arXiv 2411.19108)"),
    CacheMethod("pab", "PyramidAttentionBroadcastConfig", False,
                "reuses self-attention outputs every other step inside timesteps 100-800",
                "Pyramid Attention Broadcast (arXiv 2408.12588)"),
    CacheMethod("taylorseer", "TaylorSeerCacheConfig", False,
                "computes every 5th step after the first 3 and predicts the others by a first-order Taylor "
                "expansion of each module's output", "TaylorSeer (arXiv 2503.06923)"),
)}
CACHE_CHOICES = (NO_CACHE, *CACHE_METHODS)


def check_cache(cache: str, schedule: str | None) -> None:
    """The device-free refusals of ``--cache`` / ``--cache-schedule`` (`ProfileOptions` calls this).

    Raises:
        UnknownNameError: a method diffusers' hooks do not offer here.
        InvalidParameterError: a schedule without a method, or for a method that decides by the step count alone.
    """
    if cache != NO_CACHE and cache not in CACHE_METHODS:
        raise UnknownNameError("cache method", cache, CACHE_CHOICES)
    if schedule is None:
        return
    if cache == NO_CACHE:
        raise InvalidParameterError("--cache-schedule drives a step cache: name one with --cache "
                                    f"({', '.join(CACHE_METHODS)})")
    if not CACHE_METHODS[cache].data_dependent:
        raise InvalidParameterError(f"--cache {cache} decides by the step count alone: it takes no --cache-schedule")
    parse_schedule(schedule, None)


def check_cache_inputs(cache: str, schedule: str | None, weights: bool) -> None:
    """A data-dependent method on random weights needs an assumed schedule: refused before a model is built.

    Raises:
        InvalidParameterError: ``--cache first-block`` without ``--cache-schedule`` or ``--weights``.
    """
    method = CACHE_METHODS.get(cache)
    if method is not None and method.data_dependent and schedule is None and not weights:
        raise InvalidParameterError(f"--cache {cache} decides by the model's outputs, which random weights do not "
                                    "have: give --cache-schedule (the share of steps skipped, e.g. the method's "
                                    "published rate for this model) or --weights")


def check_cache_architecture(cache: str, workload: str, architecture: str) -> None:
    """What the workload's architecture alone rules out, before its model is built (a sweep's every point, a
    profile's store): a UNet has no transformer block list for diffusers' cache hooks. The rest of `unsupported`
    needs the built pipeline.

    Raises:
        InvalidParameterError: ``--cache`` on a UNet workload.
    """
    if cache != NO_CACHE and architecture == "unet":
        raise InvalidParameterError(f"--cache {cache}: {workload} is a UNet, and diffusers' cache hooks act on "
                                    "transformer denoisers' block lists (a UNet's would need DeepCache)")


def parse_schedule(text: str, steps: int | None) -> list[bool] | float:
    """``--cache-schedule``: a share of steps skipped (``0.4``) or a pattern of computed ``c`` and skipped ``s``
    steps (``ccscsc``, one letter per step, the first computed: a cache has nothing to reuse before it). With
    ``steps`` the compute flag of each step; without, the text is only checked (a share is returned as is)."""
    text = text.strip().lower()
    if text and set(text) <= {"c", "s"}:
        if text[0] != "c":
            raise InvalidParameterError(f"--cache-schedule {text}: the first step must be computed (c): there is "
                                        "nothing to reuse before it")
        if steps is not None and len(text) != steps:
            raise InvalidParameterError(f"--cache-schedule {text} has {len(text)} steps; the generation has {steps}")
        return [ch == "c" for ch in text] if steps is not None else 0.0
    try:
        share = float(text)
    except ValueError:
        raise InvalidParameterError(f"--cache-schedule {text!r}: give the share of steps skipped (0 <= s < 1, e.g. "
                                    "0.4) or a pattern of c (computed) and s (skipped), one letter per step") from None
    if not 0 <= share < 1 or math.isnan(share):
        raise InvalidParameterError(f"--cache-schedule {text}: the share of steps skipped must be in [0, 1)")
    return share if steps is None else skip_evenly(share, steps)


def skip_evenly(share: float, steps: int) -> list[bool]:
    """Compute flags of ``steps`` steps with ``round(share × steps)`` of them skipped, spread evenly over steps 1..N-1
    (step 0 always computed), as a method that skips at a steady rate would."""
    k = min(round(share * steps), max(steps - 1, 0))
    skipped = {1 + int((j + 0.5) * (steps - 1) / k) for j in range(k)} if k else set()
    return [i not in skipped for i in range(steps)]


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks diffusers' block-level hooks act on: the ModuleLists it knows by name."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [b for name, child in model.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList) for b in child]


def _attentions(model: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.hooks._common import _ATTENTION_CLASSES  # what diffusers' attention-level hooks act on

    return [m for m in model.modules() if isinstance(m, _ATTENTION_CLASSES)]


def unsupported(target: Target) -> str | None:
    """Why diffusers' cache hooks cannot run on this target's denoiser (one line), or None: a run records it, so
    `mmchar advise` offers a runnable `--cache` only where the run could take it."""
    models = [(n, getattr(target.pipe, n, None)) for n in target.step_components()]
    what = ", ".join(f"{n} ({type(m).__name__})" for n, m in models) or "none"
    hookable = [m for _, m in models if hasattr(m, "enable_cache")]
    if not hookable:
        return (f"the denoiser ({what}) has no diffusers cache hooks (enable_cache): caching runs on diffusers' "
                "transformer denoisers")
    if not any(_blocks(m) for m in hookable):
        return (f"the denoiser ({what}) has no transformer block list that diffusers' cache hooks act on (a UNet's "
                "blocks are not)")
    try:
        source = inspect.getsource(type(target.pipe).__call__)
    except (OSError, TypeError):
        source = ""
    if "cache_context" not in source:
        return (f"{type(target.pipe).__name__} calls its denoiser without a cache context, which diffusers' cache "
                "hooks need")
    return None


class StepCache:
    """One session's step cache on the denoiser: installed while the session's passes run (``with``), removed
    after, so sessions of a `compare` do not see each other's hooks; ``describe()`` is what the run records."""

    def __init__(self, target: Target, method: str, schedule: str | None, weights: bool) -> None:
        self.target, self.method = target, CACHE_METHODS[method]
        why = unsupported(target)
        if why:
            raise InvalidParameterError(f"--cache {method}: {why}")
        self.models = [(n, m) for n in target.step_components()
                       if hasattr(m := getattr(target.pipe, n, None), "enable_cache")]
        check_cache_inputs(method, schedule, weights)
        self.schedule_text = schedule
        self.flags = parse_schedule(schedule, target.steps) if schedule is not None else None
        self.calls: list[dict[str, int]] = []  # per denoiser call of the current generation
        self.generations: list[list[dict[str, int]]] = []
        self._undo: list[Callable[[], None]] = []
        self._current: dict[str, int] | None = None
        self._sizes: dict[int, tuple[int, int]] = {}  # per model: its blocks and attention modules
        self._steps_done, self._new_generation = 0, False

    # -- the step the pipeline is in: its scheduler's ``step`` calls since its ``set_timesteps`` (every diffusers
    # pipeline calls set_timesteps once per generation and step once per denoising step; not every scheduler keeps
    # a step index of its own)
    def _step(self) -> int:
        return self._steps_done

    def _watch_scheduler(self) -> None:
        scheduler = getattr(self.target.pipe, "scheduler", None)
        for name, after in (("set_timesteps", self._generation_starts), ("step", self._step_done)):
            method = getattr(scheduler, name, None)
            if not callable(method):
                continue
            had = name in vars(scheduler)

            def watched(*args: Any, __method: Callable[..., Any] = method, __after: Callable[[], None] = after,
                        **kwargs: Any) -> Any:
                out = __method(*args, **kwargs)
                __after()
                return out

            # diffusers reads these methods' signatures (retrieve_timesteps: sigmas / timesteps; the extra step
            # kwargs: eta, generator): the wrapper must show the scheduler's own
            setattr(scheduler, name, functools.update_wrapper(watched, method))
            self._undo.append(lambda s=scheduler, n=name, m=method, h=had: setattr(s, n, m) if h
                              else vars(s).pop(n, None))

    def _generation_starts(self) -> None:
        self._steps_done, self._new_generation = 0, True

    def _step_done(self) -> None:
        self._steps_done += 1

    def _config(self) -> Any:
        import diffusers

        cls = getattr(diffusers, self.method.config_class)
        if self.method.name == "pab":
            return cls(spatial_attention_block_skip_range=2,
                       current_timestep_callback=lambda: self.target.pipe.current_timestep)
        return cls()

    def __enter__(self) -> StepCache:
        try:
            self._install()
        except BaseException:
            self.__exit__()  # what was installed comes off again: the model is left as it was
            raise
        return self

    def _install(self) -> None:
        self._watch_scheduler()
        for name, model in self.models:
            blocks = _blocks(model)
            for i, block in enumerate(blocks):
                self._count(block, "blocks", first=i == 0)
            for attn in _attentions(model):
                self._count(attn, "attention")
            self._sizes[id(model)] = (len(blocks), len(_attentions(model)))
            pre = model.register_forward_pre_hook(self._call_starts)
            self._undo.append(pre.remove)
            model.enable_cache(self._config())
            self._undo.append(model.disable_cache)
            if not self._hooked(model):  # diffusers installs nothing where its module patterns match no name
                raise InvalidParameterError(
                    f"--cache {self.method.name} installed no hook on {type(model).__name__}: diffusers' "
                    f"{self.method.config_class} matches none of its modules by name; use another --cache method")
            if self.flags is not None:
                self._force_decisions(model)

    def __exit__(self, *exc: Any) -> None:
        while self._undo:
            self._undo.pop()()
        self._close_generation()

    @staticmethod
    def _hooked(model: torch.nn.Module) -> bool:
        from diffusers.hooks import HookRegistry

        root = HookRegistry.check_if_exists_or_initialize(model)
        return any(reg.hooks for reg in (root, *root._get_child_registries()))

    def _count(self, module: torch.nn.Module, kind: str, first: bool = False) -> None:
        """Wrap ``module``'s own forward (below the hooks to come) so only work that ran is counted."""
        had = "forward" in vars(module)
        inner = module.forward

        @functools.wraps(inner)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self._current is not None:
                self._current[kind] += 1
                if first:
                    self._current["first_block"] += 1
            return inner(*args, **kwargs)

        module.forward = counted

        def undo() -> None:
            if had:
                module.forward = inner
            else:
                vars(module).pop("forward", None)
        self._undo.append(undo)

    def _call_starts(self, module: torch.nn.Module, args: Any) -> None:
        step = self._step()
        if self._new_generation:  # the scheduler's timesteps were set again: a new generation
            self._new_generation = False
            self._close_generation()
            for _, model in self.models:  # every expert's state, not only the one called first
                self._reset(model)
        blocks, attention = self._sizes[id(module)]
        self._current = {"step": step, "blocks": 0, "attention": 0, "first_block": 0, "blocks_total": blocks,
                         "attention_total": attention}
        self.calls.append(self._current)

    def _reset(self, module: torch.nn.Module) -> None:
        """The hooks' state of the last generation dropped (what a user does between generations), keeping the
        cache context the pipeline has just set for this call: diffusers' reset clears it too."""
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.hooks import StateManager

        root = HookRegistry.check_if_exists_or_initialize(module)
        managers = [a for reg in (root, *root._get_child_registries()) for hook in reg.hooks.values()
                    for a in vars(hook).values() if isinstance(a, StateManager)]
        contexts = [(m, m._context) for m in managers]
        module._reset_stateful_cache()
        for m, context in contexts:
            m.set_context(context)

    def _close_generation(self) -> None:
        if self.calls:
            self.generations.append(self.calls)
        self.calls, self._current = [], None

    def _force_decisions(self, model: torch.nn.Module) -> None:
        """First Block Cache's threshold decision replaced by the schedule: its head-block hook asks
        ``_should_compute_remaining_blocks`` once per call; the answer is the schedule's for the scheduler's step."""
        from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

        blocks = _blocks(model)
        hook = blocks[0]._diffusers_hook.get_hook(_FBC_LEADER_BLOCK_HOOK)
        flags = self.flags

        def scheduled(residual: torch.Tensor) -> bool:
            step = self._step()
            # a call with nothing cached yet computes whatever the schedule says (an expert's first step: Wan 2.2
            # switches models mid-generation); the run's pattern records what really ran
            cached = hook.state_manager.get_state().tail_block_residuals is not None
            return True if step >= len(flags) or not cached else flags[step]

        hook._should_compute_remaining_blocks = scheduled

    @staticmethod
    def classify(call: dict[str, int]) -> str:
        if call["blocks"] >= call["blocks_total"] and call["attention"] >= call["attention_total"]:
            return "computed"
        if call["blocks"] <= call["first_block"] and call["blocks_total"] > 0:
            return "skipped"
        return "partial"

    def describe(self, generation: int = -1) -> dict[str, Any]:
        """What the cache did in one generation (the last closed one: the timed pass's last)."""
        gens = self.generations + ([self.calls] if self.calls else [])
        calls = gens[generation] if gens else []
        kinds = [self.classify(c) for c in calls]
        steps: dict[int, list[str]] = {}
        for c, k in zip(calls, kinds):
            steps.setdefault(c["step"], []).append(k)
        step_kinds = [v[0] if len(set(v)) == 1 else "partial" for _, v in sorted(steps.items())]
        count = lambda ks: {k: ks.count(k) for k in ("computed", "skipped", "partial")}  # noqa: E731
        ran = sum(c["blocks"] for c in calls)
        total = sum(c["blocks_total"] for c in calls)
        return {
            "method": self.method.name, "config": self.method.config_class, "what": self.method.what,
            "paper": self.method.paper, "mechanism": "diffusers enable_cache",
            "schedule": ("assumed: " + self.schedule_text) if self.flags is not None else
                        ("the method's own decisions" + (" (random weights: not the real model's)"
                                                         if self.method.data_dependent else
                                                         ": by the step count, not the data")),
            "schedule_assumed": self.flags is not None,
            "planned": None if self.flags is None else "".join("c" if f else "s" for f in self.flags),
            "steps": count(step_kinds), "calls": count(kinds),
            "pattern": "".join({"computed": "c", "skipped": "s", "partial": "p"}[k] for k in step_kinds),
            "blocks_run_share": ran / total if total else None,
        }
