"""Instrumentation the runner puts around a generation: stage timers and module annotations.

`StageTimer` wraps each stage root's method (an instance attribute shadowing the class method, removed on
exit) and records one interval per call: CUDA events on a GPU, ``perf_counter`` on the CPU. It is the only
instrumentation of the timed pass (two event records per stage call). Steps are numbered per stage, not per root:
the roots of a step stage share one count, so a denoiser of several experts (Wan 2.2 A14B's ``transformer`` and
``transformer_2``, switched at a timestep boundary) numbers its steps 0 .. steps-1 whichever expert runs each.
With ``annotate`` it also opens a ``mmchar.stage::<stage>::<step>`` profiler range per call; `ModuleAnnotator`
opens ``mmchar.module::<path>`` around every module forward for the full profile (eager traces carry no module
paths: docs/integration.md, "Profiling").
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from mmchar.schema import STEP_STAGES
from mmchar.scopes import module_label, stage_label
from mmchar.target import Target

_rf_enter = torch.ops.profiler._record_function_enter_new
_rf_exit = torch.ops.profiler._record_function_exit


@dataclass
class StageCall:
    stage: str
    step: int
    start: Any  # torch.cuda.Event or float seconds
    end: Any
    phase: str | None = None
    component: str | None = None  # the root's component (which expert ran a step)


@dataclass
class StageMemory:
    weights_bytes: int
    peak_bytes: int = 0
    activation_peak_bytes: int = 0


@dataclass
class GenerationTiming:
    """Stage intervals of one generation, resolved to milliseconds."""

    e2e_ms: float
    stage_ms: dict[str, float]  # summed over calls
    step_ms: list[float]  # one per step of the step stage (denoiser or generator)
    calls: dict[str, int]
    step_stage: str | None = None
    phase_ms: dict[str, list[float]] | None = None  # generator phases: one entry per call
    # the component that ran each step of the step stage ("a+b" for a step whose calls went to several)
    step_components: list[str] | None = None


class StageTimer:
    """Context manager timing every stage-root call of ``target`` (see module docstring)."""

    def __init__(self, target: Target, *, annotate: bool = False, measure_memory: bool = False,
                 capture_decoder_input: bool = False) -> None:
        self.target = target
        self.cuda = target.device.type == "cuda"
        self.annotate = annotate
        self.measure_memory = measure_memory and self.cuda
        self.capture = capture_decoder_input
        self.calls: list[StageCall] = []
        # per step stage: [the current step, the calls made in it]; every root of the stage shares it, so whichever
        # root (expert) runs step i, its calls are step i's
        self._steps: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.memory: dict[str, StageMemory] = {}
        # what compare checks backends by: the decoder's input (final latents, or token ids), or, for a model
        # that denoises pixels directly (no decoder stage: IF stage I), its denoiser's output at the last step;
        # held on the device while the generation runs, copied to the CPU once when read
        self._captured: torch.Tensor | None = None
        self._has_decoder = any(r.stage == "decoder" for r in target.stage_roots)
        self._restore: list[tuple[Any, str, Any]] = []

    @property
    def decoder_input(self) -> torch.Tensor | None:
        x = self._captured  # token ids stay integers: compare matches them, not their distance
        return None if x is None else (x.float() if x.is_floating_point() else x).cpu()

    def _mark(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def __enter__(self) -> StageTimer:
        for root in self.target.stage_roots:
            comp = self.target.component(root.component)
            had = root.method in vars(comp)
            orig = getattr(comp, root.method)
            self._restore.append((comp, root.method, vars(comp)[root.method] if had else None))
            setattr(comp, root.method, self._wrap(root, orig, comp))
        return self

    def __exit__(self, *exc: Any) -> None:
        for comp, method, previous in reversed(self._restore):
            if previous is None:
                delattr(comp, method)
            else:
                setattr(comp, method, previous)
        self._restore.clear()

    def _wrap(self, root: Any, orig: Any, comp: Any) -> Any:
        stage, per_step, phases = root.stage, root.calls_per_step, root.phases
        if self.measure_memory and stage not in self.memory:
            self.memory[stage] = StageMemory(weights_bytes=0)
        if self.measure_memory and isinstance(comp, torch.nn.Module):
            self.memory[stage].weights_bytes += sum(t.numel() * t.element_size()
                                                    for t in (*comp.parameters(), *comp.buffers()))

        def timed(*args: Any, **kwargs: Any) -> Any:
            step = call = -1
            if stage in STEP_STAGES:  # a step is ``calls_per_step`` calls of the root that runs it
                state = self._steps[stage]
                step, call = state
                state[1] += 1
                if state[1] >= per_step:
                    state[0], state[1] = step + 1, 0
            phase = None
            if phases:
                phase = phases[0] if len(phases) == 1 or step == 0 else phases[1]
            if self.capture and stage == "decoder" and self._captured is None and args and torch.is_tensor(args[0]):
                self._captured = args[0].detach()
            handle = _rf_enter(stage_label(stage, step, call), None) if self.annotate else None
            if self.measure_memory:
                torch.cuda.reset_peak_memory_stats(self.target.device)
                base = torch.cuda.memory_allocated(self.target.device)
            start = self._mark()
            try:
                out = orig(*args, **kwargs)
                if self.capture and stage == "denoiser" and not self._has_decoder:
                    x = out if torch.is_tensor(out) else out[0]  # a tuple or diffusers' output (``.sample``)
                    self._captured = x.detach()  # each step replaces the last: the final prediction stays
                return out
            finally:
                self.calls.append(StageCall(stage, step, start, self._mark(), phase, root.component))
                if handle is not None:
                    _rf_exit(handle)
                if self.measure_memory:
                    peak = torch.cuda.max_memory_allocated(self.target.device)
                    mem = self.memory[stage]
                    mem.peak_bytes = max(mem.peak_bytes, peak)
                    mem.activation_peak_bytes = max(mem.activation_peak_bytes, peak - base)

        # pipelines read a root's parameters before calling it (diffusers passes ``generator`` and ``eta`` to
        # ``scheduler.step`` only if its signature names them): the wrapper shows the original's signature
        return functools.update_wrapper(timed, orig)

    def resolve(self, e2e_ms: float) -> GenerationTiming:
        """Milliseconds per stage (call this after synchronising)."""
        stage_ms: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        steps: dict[int, float] = defaultdict(float)
        step_comps: dict[int, list[str]] = defaultdict(list)
        phase_ms: dict[str, list[float]] = defaultdict(list)
        step_stage = None
        for c in self.calls:
            ms = c.start.elapsed_time(c.end) if self.cuda else (c.end - c.start) * 1e3
            stage_ms[c.stage] += ms
            calls[c.stage] += 1
            if c.stage in STEP_STAGES:
                step_stage = c.stage
                steps[c.step] += ms
                if c.component not in step_comps[c.step]:
                    step_comps[c.step].append(c.component)
            if c.phase is not None:
                phase_ms[c.phase].append(ms)
        return GenerationTiming(e2e_ms, dict(stage_ms), [steps[k] for k in sorted(steps)], dict(calls), step_stage,
                                dict(phase_ms) or None, ["+".join(step_comps[k]) for k in sorted(steps)] or None)


class ModuleAnnotator:
    """Context manager opening a ``mmchar.module::<path>`` profiler range around every module forward."""

    def __init__(self, target: Target, skip: tuple[str, ...] = ()) -> None:
        """``skip``: components left unannotated (compiled ones: new hooks would re-guard their graphs)."""
        self.target = target
        self.skip = skip
        self._handles: list[Any] = []

    def __enter__(self) -> ModuleAnnotator:
        seen: set[int] = set()
        for root in self.target.stage_roots:
            comp = self.target.component(root.component)
            if root.component in self.skip or not isinstance(comp, torch.nn.Module) or id(comp) in seen:
                continue
            seen.add(id(comp))
            for path, module in comp.named_modules(prefix=root.component):
                stack: list[Any] = []
                label = module_label(path)

                def pre(_m: Any, _inp: Any, label: str = label, stack: list[Any] = stack) -> None:
                    stack.append(_rf_enter(label, None))

                def post(_m: Any, _inp: Any, _out: Any, stack: list[Any] = stack) -> None:
                    if stack:
                        _rf_exit(stack.pop())

                self._handles.append(module.register_forward_pre_hook(pre))
                self._handles.append(module.register_forward_hook(post, always_call=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

