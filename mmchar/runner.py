"""The runner: one run = warm-up, timed pass, light profile, full profile (docs/conventions.md, "Measurement passes").

1. warm-up (not recorded; layers a backend cannot take are found here);
2. timed: the whole generation ``repeat`` times with no profiler and no hooks besides the stage timers
   (two CUDA event records per stage call): the latencies mmchar reports, median and min/max;
3. light profile: kernels only (no shapes, no module hooks): GPU busy vs idle per stage, kernel counts;
4. full profile: module ranges and shapes over ``profile_steps`` denoising steps plus one pass of the other
   stages: the attribution tables. Its wall time against the timed pass is recorded as its overhead.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from mmchar import environment, modes, noise
from mmchar.attribution import attribute
from mmchar.backends import get_backend
from mmchar.devices import synchronize
from mmchar.errors import InvalidParameterError, MmcharError, UnknownNameError, first_line
from mmchar.instrument import GenerationTiming, ModuleAnnotator, StageTimer
from mmchar.intervals import covered
from mmchar.linear_swap import LinearSwap
from mmchar.projections import DEFAULT_LINEAR_BACKEND, LINEAR_SCOPES, get_projection_backend
from mmchar.routing import moe_layers_record
from mmchar.schema import OUTSIDE_STAGES, SCHEMA_VERSION, STEP_STAGES, step_key
from mmchar.store import Run, unique_run_id, write_run
from mmchar.swap import measure_dispatch_overhead_us, swap_attention
from mmchar.target import Target
from mmchar.trace import parse_trace

SWAP_SCOPES = ("denoiser", "all")


@dataclass
class ProfileOptions:
    """How to measure one run (CLI flags of the same names)."""

    backend: str = "sdpa"
    fallback: str | None = None
    cross_backend: str | None = None  # cross attention's softmax backend under linear / WERSA
    scope: str = "denoiser"  # whose attention the backend replaces: the denoiser's, or every component's
    repeat: int = 3
    profile_steps: int = 2
    warmup: int = 1
    keep_trace: bool = True
    compile: bool = False  # torch.compile the generating model (denoiser / generator); warm-up pays the compile
    # runtime modes (mmchar.modes): convs and latents in channels-last memory format; the generating model's
    # forward captured into CUDA graphs in the warm-up and replayed (under compile: mode "reduce-overhead")
    channels_last: bool = False
    cuda_graphs: bool = False
    # a diffusers cache hook on the denoiser (mmchar.step_cache), and the schedule that drives a data-dependent one
    cache: str = "none"
    cache_schedule: str | None = None
    # ranks of torch.distributed's default group the denoiser's token sequence is split over (torchrun, one GPU
    # each; mmchar.sequence_shard); 1: one device
    sequence_parallel: int = 1
    sp_scheme: str = "auto"  # auto (Ulysses where the ranks divide the heads, else USP, else ring), ulysses, ring, usp
    ulysses_degree: int | None = None  # USP's Ulysses degree (default: the largest that divides ranks and heads)
    # classifier-free guidance's conditional and unconditional passes on two halves of the ranks (mmchar.cfg_parallel);
    # the default group then holds 2 × sequence_parallel ranks
    cfg_parallel: bool = False
    # what computes the generating model's linear layers (mmchar.projections), and which of them
    linear_backend: str = DEFAULT_LINEAR_BACKEND
    linear_scope: str = "all"

    def __post_init__(self) -> None:
        """One check for the CLI and the Python API alike."""
        if self.scope not in SWAP_SCOPES:
            raise UnknownNameError("scope", self.scope, SWAP_SCOPES)
        if self.linear_scope not in LINEAR_SCOPES:
            raise UnknownNameError("linear scope", self.linear_scope, LINEAR_SCOPES)
        get_projection_backend(self.linear_backend)  # an unknown name fails here, naming the valid ones
        if self.compile and self.linear_backend != DEFAULT_LINEAR_BACKEND:
            raise InvalidParameterError(f"--compile runs the model's own linear layers, not {self.linear_backend!r}: "
                                        "the projection swap is not traced into a compiled graph; drop "
                                        "--linear-backend or --compile")
        if self.compile and self.backend != "sdpa":
            raise InvalidParameterError(f"--compile runs the model's own attention (backend sdpa), not {self.backend!r}: "
                                        "the backend swap is not traced into a compiled graph; drop --backend or --compile")
        from mmchar.sequence_shard import SCHEMES

        if self.sp_scheme not in SCHEMES:
            raise UnknownNameError("sequence-parallel scheme", self.sp_scheme, SCHEMES)
        if self.ulysses_degree is not None and (self.sp_scheme != "usp" or self.ulysses_degree < 1):
            raise InvalidParameterError(f"--ulysses-degree {self.ulysses_degree} sets USP's mesh: it takes "
                                        "--sp-scheme usp and a degree of at least 1")
        if self.sequence_parallel > 1 and get_backend(self.backend).reads_hidden_states:
            raise InvalidParameterError(f"{self.backend} filters q and k by each layer's hidden states over the whole "
                                        "sequence, which --sequence-parallel splits over the ranks: use a softmax "
                                        "backend or linear")
        if self.sequence_parallel > 1 and self.compile:
            raise InvalidParameterError("--compile and --sequence-parallel do not combine: the sequence split hooks "
                                        "into the eager model; drop one of them")
        if self.sequence_parallel > 1 and self.cuda_graphs:
            raise InvalidParameterError("--cuda-graphs and --sequence-parallel do not combine: the sequence split's "
                                        "collectives and hooks run outside a captured graph; drop one of them")
        for flag, on in (("--compile", self.compile), ("--cuda-graphs", self.cuda_graphs)):
            if self.cfg_parallel and on:
                raise InvalidParameterError(f"{flag} and --cfg-parallel do not combine: the CFG split wraps the eager "
                                            "denoiser's forward and exchanges outputs outside a compiled or captured "
                                            "graph; drop one of them")
        if self.cuda_graphs and get_backend(self.backend).routes_by_state:
            raise InvalidParameterError(f"--cuda-graphs cannot replay {self.backend}: it decides each call by the "
                                        "state it carries in Python, which a replayed graph skips; drop --cuda-graphs "
                                        "or use another backend")
        if self.cross_backend is not None and get_backend(self.cross_backend).mechanism != "softmax":
            from mmchar.backends import backend_names

            # accepted, it ran cross attention under linear attention while the warning said softmax stayed
            softmax = [n for n in backend_names() if get_backend(n).mechanism == "softmax"
                       and not n.startswith("diffusers:")]
            raise InvalidParameterError(f"--cross-backend {self.cross_backend} is not softmax attention; cross "
                                        f"attention keeps a softmax backend: {', '.join(softmax)}")
        from mmchar.step_cache import NO_CACHE, check_cache

        check_cache(self.cache, self.cache_schedule)
        if self.cache != NO_CACHE:
            for flag, on in (("--cuda-graphs", self.cuda_graphs), ("--compile", self.compile),
                             ("--sequence-parallel", self.sequence_parallel > 1), ("--cfg-parallel", self.cfg_parallel)):
                if on:
                    raise InvalidParameterError(f"--cache and {flag} do not combine: the cache decides in Python at "
                                                f"every denoiser call, which {flag} does not run; drop one of them")
        for name in ("repeat", "profile_steps", "warmup", "sequence_parallel"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name}={getattr(self, name)} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Measurement:
    """Everything one run measured, before it becomes a `Run`."""

    meta: dict[str, Any]
    attribution: Any = None
    trace_file: Path | None = None
    latents: torch.Tensor | None = None


def _stats(values: list[float]) -> dict[str, float | None]:
    """The spread of one timing key's samples: what the noise guard judges (`mmchar.noise`)."""
    return {"median_ms": statistics.median(values), "mean_ms": statistics.fmean(values), "min_ms": min(values),
            "max_ms": max(values), "n": len(values),
            "cv": noise.cv(values), "spread": noise.spread(values)}


def _timed_generation(target: Target, steps: int, align: Callable[[], None] | None = None,
                      **timer_kwargs: Any) -> tuple[GenerationTiming, StageTimer]:
    """One generation under the stage timers; ``align`` lines the ranks of a sequence-parallel run up first, so
    the first collective does not absorb another rank's late start (a profiler's start-up, say)."""
    if align is not None:
        align()
    synchronize(target.device)
    timer = StageTimer(target, **timer_kwargs)
    with timer:
        if target.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            target.run(steps)
            end.record()
            synchronize(target.device)
            e2e = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            target.run(steps)
            e2e = (time.perf_counter() - t0) * 1e3
    return timer.resolve(e2e), timer


def _swap_components(target: Target, scope: str) -> list[str]:
    if scope == "all":
        return list(dict.fromkeys(r.component for r in target.stage_roots))
    return target.step_components()  # the generating model


def _sequence_shard(target: Target, ranks: int, scheme: str = "auto", ulysses_degree: int | None = None,
                    cfg: Any = None) -> Any:
    """The denoiser's sequence split over torch.distributed's default group (``ranks`` of them), or over this rank's
    CFG half (``cfg``: `mmchar.cfg_parallel.CfgGroups`, ``ranks`` per half); None for one rank."""
    if ranks == 1:
        return None
    from mmchar.sequence_shard import SequenceShard

    _require_world(ranks * (2 if cfg is not None else 1),
                   f"sequence_parallel={ranks}{' with --cfg-parallel' if cfg else ''}", "--sequence-parallel")
    models = [getattr(target.pipe, c) for c in target.step_components()]
    if len(models) != 1:
        raise InvalidParameterError(f"sequence parallelism splits one denoiser; this target steps {len(models)} models")
    from mmchar.distributed import group_timeout

    return SequenceShard(models[0], group=cfg.sp if cfg else None, scheme=scheme, sync_timeout=group_timeout(),
                         ulysses_degree=ulysses_degree, siblings=cfg.sp_groups if cfg else None)


def _require_world(world: int, what: str, flag: str) -> None:
    """The default process group holds exactly ``world`` ranks, else the one-line error that says how to launch."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() != world:
        have = dist.get_world_size() if dist.is_initialized() else "no"
        raise InvalidParameterError(f"{what} needs a process group of {world} ranks ({have} joined); launch with "
                                    f"`torchrun --nproc-per-node N -m mmchar profile ... {flag}`")


def _cfg_parallel(target: Target, options: ProfileOptions) -> Any:
    """The guided step's two passes over two halves of the default group (`mmchar.cfg_parallel.CfgParallel`), or
    None without ``cfg_parallel``. Refused in one line before any group is made: guidance off, a launch whose rank
    count is not 2 × ``sequence_parallel``."""
    if not options.cfg_parallel:
        return None
    from mmchar.cfg_parallel import CfgParallel, cfg_groups, cfg_mode
    from mmchar.distributed import group_timeout

    mode = cfg_mode(target)
    _require_world(2 * options.sequence_parallel, f"cfg_parallel with sequence_parallel={options.sequence_parallel}",
                   "--cfg-parallel")
    models = [getattr(target.pipe, c) for c in target.step_components()]
    return CfgParallel(target, models, cfg_groups(group_timeout()), mode)


@contextlib.contextmanager
def _stderr_muted() -> Iterator[None]:
    """Kineto prints a "profiler_start / profiler_stop" line per profiler on the C++ side (CPU builds); it
    would interleave with mmchar's output on every run. Muted only while the profiler starts and stops."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _profiler(activities: list[ProfilerActivity], **kwargs: Any) -> Iterator[profile]:
    prof = profile(activities=activities, **kwargs)
    with _stderr_muted():
        prof.start()
    try:
        yield prof
    finally:
        with _stderr_muted():
            prof.stop()


def compile_step_models(target: Target, mode: str = "default") -> dict[str, Any]:
    """``torch.compile`` the forward of each generating model (the stage roots of STEP_STAGES), in place; ``mode``
    ``reduce-overhead`` under ``--cuda-graphs`` (Inductor records the compiled graph into CUDA graphs and replays).

    Only ``forward`` is compiled, not the module call: the stage timer's hooks on the root stay outside the
    graph, so latency, busy/idle and kernel counts are measured as for an eager run. Inside the graph, the
    module ranges and attention-core scopes the full profile relies on are not recorded (Dynamo traces through
    them), so kernels there are classed by name rules and have no module path: the run says so.
    """
    compiled: list[str] = []
    for root in target.stage_roots:
        if root.stage not in STEP_STAGES or root.component in compiled:
            continue
        module = getattr(target.pipe, root.component)
        method = getattr(module, root.method)
        if not hasattr(method, "_torchdynamo_orig_callable"):  # compare: the second backend reuses the wrapper
            compiled_method = torch.compile(method) if mode == "default" else torch.compile(method, mode=mode)
            setattr(module, root.method, compiled_method)
        compiled.append(root.component)
    return {"components": compiled, "mode": mode, "torch": torch.__version__,
            "attribution": "partial: inside compiled graphs kernels are classed by name rules, with no module path "
                           "or attention site; latency, busy/idle and kernel counts are complete"}


class _Session:
    """One backend's measurement of a target, in phases, so several backends can interleave their timed passes."""

    def __init__(self, target: Target, options: ProfileOptions) -> None:
        self.target, self.options = target, options
        self.psteps = min(options.profile_steps, target.steps)
        self.meta: dict[str, Any] = {"passes": {"warmup": options.warmup, "repeat": options.repeat,
                                                "steps": target.steps, "profile_steps": self.psteps}}
        self.m = Measurement(meta=self.meta)
        self.timings: list[GenerationTiming] = []
        self.timed_load: dict[str, Any] | None = None  # the host's load over the timed pass (mmchar.noise)
        # compiled models keep their own processors: Dynamo cannot trace the routing wrapper (it would graph-break
        # at every attention layer), and under --compile the backend is the model's own sdpa anyway
        swapped = [c for c in _swap_components(target, options.scope)
                   if not (options.compile and c in target.step_components())]
        self.cfg = _cfg_parallel(target, options)  # its subgroups first: the shard's sequence group is one of them
        self.shard = _sequence_shard(target, options.sequence_parallel, options.sp_scheme, options.ulysses_degree,
                                     self.cfg.groups if self.cfg is not None else None)
        # every rank lined up: the CFG halves' barrier spans all of them
        self._align = (self.cfg.align if self.cfg is not None else self.shard.align if self.shard is not None
                       else None)
        seed = int(target.config.get("params", {}).get("seed", 0))  # seeds per-layer backend state
        self.swap = swap_attention(target.pipe, swapped, options.backend,
                                   target.device, fallback=options.fallback, site_rules=target.all_site_rules(),
                                   seed=seed, cross_backend=options.cross_backend, shard=self.shard,
                                   compile_safe=options.compile)
        self.linear = LinearSwap(target.pipe, target.step_components(), options.linear_backend, target.device,
                                 scope=options.linear_scope, seed=seed, route=not options.compile)
        if options.channels_last:  # before any capture or compile: they see the converted weights
            self.meta["channels_last"] = modes.to_channels_last(target)
        from mmchar.step_cache import unsupported

        # whether diffusers' cache hooks could run here (`mmchar advise` offers a runnable --cache only then)
        self.meta["step_cache_support"] = unsupported(target) or "ok"
        self.cache = None
        if options.cache != "none":  # installed by _swapped(): the session's passes only, not a compare's others
            from mmchar.step_cache import StepCache

            # a user's own pipeline (--pipeline, the Python API) carries its weights: the cache may decide itself
            self.cache = StepCache(target, options.cache, options.cache_schedule,
                                   weights=bool(target.config.get("weights")) or target.name == "pipeline")
        # --cuda-graphs: eager forwards captured by this session (under its own backends), or compile's own graphs
        self.graphs = modes.StepGraphs(target) if options.cuda_graphs and not options.compile else None
        if options.compile:
            mode = "reduce-overhead" if options.cuda_graphs else "default"
            self.meta["compile"] = compile_step_models(target, mode)
            if options.cuda_graphs:
                self.meta["cuda_graphs"] = modes.compiled_graphs_record(self.meta["compile"]["components"])

    @contextlib.contextmanager
    def _swapped(self) -> Iterator[Any]:
        """Both swaps open (attention and projections), and this session's CUDA graphs installed: the attention
        swap's state is what a pass reads."""
        with self.swap as state, self.linear, (self.graphs or contextlib.nullcontext()), \
                (self.cache or contextlib.nullcontext()), \
                (self.cfg.hooked() if self.cfg is not None else contextlib.nullcontext()):
            yield state

    def warmup(self) -> None:
        """Warm-up, then one untimed generation of full length that records peak memory per stage and the
        final latents (both cost host syncs and allocator-stat resets the timed pass must not carry)."""
        with self._swapped() as state:
            cl = self.meta.get("channels_last")
            for i in range(self.options.warmup):
                # the layout the converted components are called with, from the first warm-up generation
                with (modes.input_formats(self.target, cl["converted"]) if cl and i == 0
                      else contextlib.nullcontext()) as formats, \
                        (_DenoiserBatches(self.target) if i == 0 else contextlib.nullcontext()) as batches:
                    self.target.run(min(self.target.steps, 2))
                if i == 0 and batches is not None:
                    self.meta["guidance"] = batches.record(min(self.target.steps, 2))
                if cl and i == 0:
                    cl["inputs"] = dict(sorted(formats.items()))
                    cl["latents"] = modes.latents_record(self.target.pipe) or cl["latents"]
            synchronize(self.target.device)
            state.check_routed(self.swap.processors)
            state.raise_if_unsupported()
            _, timer = _timed_generation(self.target, self.target.steps, self._align, measure_memory=True,
                                         capture_decoder_input=True)
        self.m.latents = timer.decoder_input
        if self.graphs is not None:  # captured in the warm-up; the timed and profiled passes only replay
            self.graphs.freeze()
            self.meta["cuda_graphs"] = self.graphs.describe()
        self.meta["memory"] = {s: asdict(v) for s, v in timer.memory.items()} or None
        self.meta["backend_per_layer"] = dict(sorted(state.layer_backend.items()))
        if state.later_fallback:  # layers whose later calls of another kind (decode steps ...) took the fallback
            self.meta["backend_later_calls"] = dict(sorted(state.later_fallback.items()))
        if state.math_changed:  # SANA's linear self-attention under a softmax backend
            self.meta["math_changed_layers"] = dict(sorted(state.math_changed.items()))
            self.meta["backend_changes_math"] = True
        notes = {p.module_path: p.backend.notes for p in self.swap.processors if getattr(p.backend, "notes", None)}
        if notes:  # what stateful backends chose per layer (WERSA's filter source ...)
            self.meta["backend_notes"] = dict(sorted(notes.items()))
        self.meta["attention_layers"] = dict(sorted(state.layer_site.items()))
        lin = self.linear.state
        self.meta["linear_layers"] = dict(sorted(lin.layer_role.items()))
        self.meta["linear_backend_per_layer"] = dict(sorted(lin.layer_backend.items()))
        self.meta.update(lin.state_meta())  # what the backend holds beside the model's weights (tables, fp8 copies)
        if lin.unsupported:  # in scope, but run as the model's own layers
            self.meta["linear_unsupported"] = dict(sorted(lin.unsupported.items()))
        if self.shard is not None:
            self.meta["sequence_parallel"] = self.shard.describe()
        if self.cfg is not None:
            self.meta["cfg_parallel"] = self.cfg.describe()
        self.swap.reset_calls()

    def timed(self, i: int) -> None:
        with self._swapped():
            timing, _ = _timed_generation(self.target, self.target.steps, self._align)
        self.timings.append(timing)
        if self.cache is not None:  # what the cache computed, skipped or ran in part in this timed generation
            self.meta["step_cache"] = self.cache.describe()

    def _denoiser_calls_per_step(self) -> float:
        prefixes = tuple(f"{c}." for c in self.target.step_components())
        calls = sum(n for path, n in self.swap.state.calls(self.swap.processors).items() if path.startswith(prefixes))
        return calls / max(len(self.timings), 1) / max(self.target.steps, 1)

    def profiles(self) -> Measurement:
        probe = host_probe(self.target)
        probe.start()
        self._profiles()
        windows = {"timed": self.timed_load, "profiles": probe.stop()}
        judged = self.meta["timings"]
        if self.cache is not None:  # computed and skipped steps differ by design: only the generation is judged
            judged = {k: v for k, v in judged.items() if not k.endswith("_step")}
        verdict = noise.verdict(judged, windows, on_gpu=self.target.device.type == "cuda")
        self.meta["noise"] = {**verdict, "windows": windows}
        return self.m

    def _profiles(self) -> None:
        target, meta, psteps = self.target, self.meta, self.psteps
        meta["timings"] = _timings(self.timings)
        experts = _step_components_record(self.timings)
        if experts:  # only where several models ran the steps (Wan 2.2 A14B's two experts)
            meta["step_components"] = experts
        # compiled components get no module ranges in the full profile (new hooks would re-guard and recompile
        # their graphs inside it), nor do graph replays (no module forwards); the eager ones keep theirs
        skip = tuple((meta.get("compile") or {}).get("components", ())) + tuple(
            (meta.get("cuda_graphs") or {}).get("components", ()))
        routing = target.routing_scopes(skip)
        if routing:  # routed FFNs: their gate, dispatch and combine kernels are op class routing
            meta["moe_layers"] = moe_layers_record(routing)
        calls_per_step = self._denoiser_calls_per_step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if target.device.type == "cuda" else [])
        with self._swapped() as swap, tempfile.TemporaryDirectory(prefix="mmchar-") as tmp:
            # 3. light profile: kernels only, the timed pass's step count (the host residual grows per step)
            light_json = Path(tmp) / "light.json"
            t0 = time.perf_counter()
            with _profiler(activities) as prof:
                _timed_generation(target, target.steps, self._align, annotate=True)
            light_wall = (time.perf_counter() - t0) * 1e3
            prof.export_chrome_trace(str(light_json))
            del prof
            meta["busy"] = _busy(parse_trace(light_json), meta["timings"])
            # 4. full profile: module ranges, shapes, attention-core scopes
            full_json = Path(tmp) / "full.json"
            swap.annotate = self.linear.state.annotate = True
            try:
                t0 = time.perf_counter()
                with ModuleAnnotator(target, skip=skip), _profiler(activities, record_shapes=True) as prof:
                    _timed_generation(target, psteps, self._align, annotate=True)
                full_wall = (time.perf_counter() - t0) * 1e3
            finally:
                swap.annotate = self.linear.state.annotate = False
            prof.export_chrome_trace(str(full_json))
            del prof
            trace = parse_trace(full_json)
            self.m.attribution = attribute(trace, target.all_site_rules(), routing)
            if self.options.keep_trace:
                fd, gz = tempfile.mkstemp(prefix="mmchar-trace-", suffix=".json.gz")
                os.close(fd)
                self.m.trace_file = Path(gz)  # owned by the Measurement from here: store_outcome removes it
                with open(full_json, "rb") as src, gzip.open(gz, "wb", compresslevel=3) as dst:
                    shutil.copyfileobj(src, dst)

        t = meta["timings"]
        step_ms = t.get(step_key(t), {}).get("median_ms")
        if "generator_decode" in t:  # an autoregressive model: image tokens per second of one sequence and of the batch
            batch = int(target.config.get("params", {}).get("batch") or 1)
            per_token = t["generator_decode"]["median_ms"]
            meta["throughput"] = {"decode_ms_per_token": per_token, "tokens_per_s": 1e3 / per_token,
                                  "tokens_per_s_batch": batch * 1e3 / per_token}
        equiv = t["e2e"]["median_ms"] - (step_ms or 0.0) * (target.steps - psteps)
        meta["profile_overhead"] = {"light_wall_ms": light_wall, "full_wall_ms": full_wall,
                                    "uninstrumented_equivalent_ms": equiv,
                                    "light_overhead_x": light_wall / t["e2e"]["median_ms"],
                                    "full_overhead_x": full_wall / equiv if equiv > 0 else None,
                                    "trace_events": trace.n_events}
        per_call = measure_dispatch_overhead_us(compile_safe=self.options.compile)
        meta["swap_overhead"] = {"per_call_us_estimate": per_call, "denoiser_attention_calls_per_step": calls_per_step,
                                 "pct_of_denoiser_step_estimate": (100.0 * per_call * calls_per_step / (step_ms * 1e3))
                                 if step_ms else None,
                                 "method": "host time of the wrapped minus the original processor on a tiny attention "
                                           "module, times the denoiser's attention calls per step; the A/B on a real "
                                           "step is benchmarks/bench_swap_overhead.py"}
        att = self.m.attribution
        meta["unmatched_kernels"] = att.unmatched
        den = att.kernels[att.kernels["stage"].isin(STEP_STAGES) & (att.kernels["op_class"] == "attention")]
        meta["attention_time_us_per_step"] = float(den["dur_us"].sum()) / psteps if psteps else None


Outcome = Measurement | BaseException


def host_probe(target: Target) -> noise.HostProbe:
    """The noise guard's load probe for ``target``: a CPU run keeps its intra-op threads busy, a CUDA run the
    thread that launches its kernels."""
    needed = float(torch.get_num_threads()) if target.device.type == "cpu" else 1.0
    return noise.HostProbe(target.device, needed_cores=needed)


def measure_backends(target: Target, options: list[ProfileOptions]) -> list[Outcome]:
    """Measure ``target`` under each options' backend; their timed passes interleave, round by round.

    Interleaving puts every backend under the same host and clock conditions: on a launch-bound step the
    host's noise is as large as the differences being measured. A backend that fails (cannot take a layer,
    out of memory, error) gets its exception as outcome; the others go on.
    """
    for opt in options:  # refused before anything runs (the CLI refuses sooner, before the model is built)
        modes.check_modes(opt.cuda_graphs, target.device, target.config.get("memory"))
    outcomes: list[Outcome | None] = [None] * len(options)
    try:
        _measure(target, options, outcomes)
    except BaseException:  # interrupted (Ctrl-C) or a failure no run records: no temporary trace is left behind
        for outcome in outcomes:
            if outcome is not None:
                discard(outcome)
        raise
    return [o if o is not None else RuntimeError("not measured") for o in outcomes]


def _measure(target: Target, options: list[ProfileOptions], outcomes: list[Outcome | None]) -> None:
    sessions: list[_Session | None] = [None] * len(options)
    for i, opt in enumerate(options):
        try:
            sessions[i] = _Session(target, opt)
            sessions[i].warmup()
        except _RECORDED as exc:
            outcomes[i], sessions[i] = _detached(exc, sessions[i]), None
            release_memory(target.device)
    repeat = max((o.repeat for o in options), default=0)
    probe = host_probe(target)
    probe.start()
    for r in range(repeat):
        for i, sess in enumerate(sessions):
            if sess is None or r >= sess.options.repeat:
                continue
            try:
                sess.timed(r)
            except _RECORDED as exc:
                outcomes[i], sessions[i] = _detached(exc, sess), None
                release_memory(target.device)
    timed_load = probe.stop()  # one window for every backend: their timed passes interleave
    for i, sess in enumerate(sessions):
        if sess is None:
            continue
        sess.timed_load = timed_load
        try:
            outcomes[i] = sess.profiles()
        except _RECORDED as exc:
            discard(sess.m)
            outcomes[i] = _detached(exc, sess)
        except BaseException:
            discard(sess.m)
            raise
        sessions[i] = None
        release_memory(target.device)


def _timings(runs: list[GenerationTiming]) -> dict[str, dict[str, float]]:
    out = {"e2e": _stats([r.e2e_ms for r in runs])}
    stages = sorted({s for r in runs for s in r.stage_ms})
    for s in stages:
        out[s] = _stats([r.stage_ms.get(s, 0.0) for r in runs])
    steps = [x for r in runs for x in r.step_ms]
    step_stage = next((r.step_stage for r in runs if r.step_stage), "denoiser")
    if steps:
        out[f"{step_stage}_step"] = _stats(steps)
        # the noise guard judges steps that do the same work: a generation's first step may also move offloaded
        # weights or fill caches, so it stays out of the step's spread where a generation has more than one
        steady = [x for r in runs for x in (r.step_ms[1:] if len(r.step_ms) > 1 else r.step_ms)]
        out[f"{step_stage}_step"]["spread"] = noise.spread(steady)
        out[f"{step_stage}_step"]["spread_n"] = len(steady)  # the samples the spread is of (the verdict says so)
    for phase in sorted({p for r in runs for p in (r.phase_ms or {})}):
        if phase != "step":  # a masked model's steps are its generator_step already
            out[f"generator_{phase}"] = _stats([x for r in runs for x in (r.phase_ms or {}).get(phase, [])])
    # everything outside the model and scheduler calls: tokenising, latent preparation, guidance arithmetic, Python
    out[OUTSIDE_STAGES] = _stats([max(r.e2e_ms - sum(r.stage_ms.values()), 0.0) for r in runs])
    return out


class _DenoiserBatches:
    """How a run's classifier-free guidance reached the denoiser, seen in the first warm-up generation: the leading
    dimension of each step-stage call's first tensor and how many calls a step made. ``two calls``: the conditional
    and unconditional passes run apart (Wan, Qwen-Image); ``batched``: one call on twice the prompts (SD, CogVideoX);
    ``none``: one call on the prompts (guidance off, or distilled into an embedding: FLUX, HunyuanVideo)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.roots = target.step_roots()
        self.batches: list[int] = []
        self._hooks: list[Any] = []

    def __enter__(self) -> _DenoiserBatches:
        for r in self.roots:
            module = getattr(self.target.pipe, r.component, None)
            if isinstance(module, torch.nn.Module):
                self._hooks.append(module.register_forward_pre_hook(self._seen, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()

    def _seen(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0), None)
        if first is not None:
            self.batches.append(int(first.shape[0]))

    def record(self, steps: int) -> dict[str, Any] | None:
        """``steps``: the denoising steps the watched generation ran (the calls per step are counted, not declared:
        a user's own pipeline declares one)."""
        params = self.target.config.get("params") or {}
        scale, prompts = params.get("guidance"), params.get("batch")
        if not self.batches or not self.roots or scale is None or not prompts or steps < 1:
            return None
        per_step = max(1, round(len(self.batches) / steps))
        batch = max(set(self.batches), key=self.batches.count)
        mode = ("two calls" if per_step > 1 and float(scale) > 1 else "batched" if batch >= 2 * int(prompts)
                else "none")
        return {"scale": scale, "mode": mode, "denoiser_calls_per_step": per_step, "denoiser_batch": batch,
                "prompts": prompts}


def _step_components_record(runs: list[GenerationTiming]) -> dict[str, Any] | None:
    """Which component ran each step of a timed generation (they all step alike), or None where one model ran
    them all: ``counts`` (steps per component, in order of first use) and ``per_step``."""
    per_step = next((r.step_components for r in runs if r.step_components), None)
    if not per_step or len({c for s in per_step for c in s.split("+")}) < 2:
        return None
    counts: dict[str, int] = {}
    for s in per_step:
        counts[s] = counts.get(s, 0) + 1
    return {"counts": counts, "per_step": per_step}


def _busy(trace: Any, timings: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Busy time per stage call from the light profile, against the timed pass's (uninstrumented) stage wall time."""
    spans: dict[tuple[str, int], list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}
    calls: dict[str, set[int]] = {}
    phased = "generator_decode" in timings  # an autoregressive generator: its prefill (step 0) is reported apart
    for name, ts, dur, ctx in zip(trace.name, trace.ts, trace.dur, trace.ctx):
        stage = ctx.stage or OUTSIDE_STAGES
        if phased and stage == "generator" and ctx.step == 0:
            stage = "generator_prefill"
        spans.setdefault((stage, ctx.step), []).append((ts, ts + dur))
        counts[stage] = counts.get(stage, 0) + 1
        calls.setdefault(stage, set()).add(ctx.step)
    busy: dict[str, float] = {}
    if not trace.on_gpu:  # CPU ops carry self times, not spans: busy is their sum
        for (stage, _), iv in spans.items():
            busy[stage] = busy.get(stage, 0.0) + sum(e - s for s, e in iv)
        spans = {}
    for (stage, _), iv in spans.items():  # kernels on several streams overlap: busy is their union's length
        busy[stage] = busy.get(stage, 0.0) + covered(iv)
    out = {}
    for stage, b in busy.items():
        n_calls = len(calls[stage]) if stage in STEP_STAGES else 1
        key = f"{stage}_step" if stage in STEP_STAGES else stage
        # an autoregressive generator's steps are its decode calls (against their wall time), the prefill apart
        wall = timings.get("generator_decode" if phased and stage == "generator" else key, {}).get("median_ms")
        busy_ms = float(b) / 1e3 / n_calls
        out[key] = {"wall_ms": wall, "busy_ms": busy_ms, "idle_ms": max(wall - busy_ms, 0.0) if wall else None,
                    "busy_frac": min(busy_ms / wall, 1.0) if wall else None, "kernels": counts[stage] / n_calls}
    return out


def new_run_id(workload: str, backend: str, config_hash: str) -> str:
    """The run folder's name. A backend name's ':' (``diffusers:native``) becomes '_': folder names stay portable
    (Windows, archive tools); meta.json keeps the backend's own name."""
    return f"{workload}-{backend.replace(':', '_')}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{config_hash}"


def base_meta(target_config: dict[str, Any], target_device: torch.device, options: ProfileOptions, run_id: str,
              config_hash: str) -> dict[str, Any]:
    dev = environment.device_info(target_device)
    backend = get_backend(options.backend)
    linear = get_projection_backend(options.linear_backend)
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "created": datetime.now(timezone.utc).isoformat(),
            "status": "ok", "error": None, "workload": target_config.get("workload", "pipeline"),
            "preset": target_config.get("preset"), "backend": options.backend, "fallback": options.fallback,
            "backend_changes_math": backend.changes_math, "backend_mechanism": backend.mechanism,
            "swap_scope": options.scope, "linear_backend": options.linear_backend,
            "linear_scope": options.linear_scope, "linear_changes_math": linear.changes_math,
            "linear_op_class": linear.op_class, "config_hash": config_hash, "config": target_config,
            "options": options.to_dict(), "device": dev, "roofs": environment.roofs(dev),
            "versions": environment.versions(), "settings": environment.settings(),
            "mmchar_version": environment.mmchar_version(), "git_commit": environment.git_commit()}


# What a run records as its failure instead of raising: bad layers, OOM, errors inside the model's code.
_RECORDED = (torch.OutOfMemoryError, MemoryError, RuntimeError, MmcharError, ValueError, TypeError, AssertionError,
             IndexError, KeyError, NotImplementedError)


# how allocators say they ran out: CUDA's OutOfMemoryError, and the CPU allocator's RuntimeError ("DefaultCPUAllocator:
# can't allocate memory: you tried to allocate 35184372088832 bytes")
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(t in text for t in _OOM_TEXT)


def _detached(exc: BaseException, session: _Session | None = None) -> BaseException:
    """``exc`` kept as an outcome without its frames: a traceback holds every local of the failed pass (a
    session's projection tables, its activations), so a recorded OOM would keep the memory that the runs after
    it need. The last frames' text stays for the run record (`failed_run`), and so does what the failed
    ``session`` knew of its projection backend's state (built so far, and planned): an OOM drawing MemoryFormer's
    tables is a result only with the size it needed."""
    exc.mmchar_traceback = traceback.format_exception(exc)[-6:]  # type: ignore[attr-defined]
    if session is not None:
        exc.mmchar_meta = session.linear.state.state_meta()  # type: ignore[attr-defined]
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def failed_run(meta: dict[str, Any], exc: BaseException) -> Run:
    """A run record for a generation that raised: status ``oom`` or ``error`` and the message."""
    meta = dict(meta, **getattr(exc, "mmchar_meta", {}), status="oom" if is_oom(exc) else "error")
    meta["error"] = first_line(exc) if isinstance(exc, MmcharError) else f"{type(exc).__name__}: {first_line(exc)}"
    if not isinstance(exc, MmcharError):
        meta["traceback"] = getattr(exc, "mmchar_traceback", None) or traceback.format_exception(exc)[-6:]
    return Run(meta=meta)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def store_outcome(target: Target, options: ProfileOptions, outcome: Outcome, store: str | os.PathLike[str],
                  config_hash: str, finish: Callable[[dict[str, Any], torch.Tensor | None], None] | None = None) -> Run:
    """Write one measurement (or its failure, status ``oom`` / ``error``) to ``store`` as a run.

    ``finish(meta, latents)`` may add to meta.json before the run is written (compare's agreement figures).
    """
    linear = "" if options.linear_backend == DEFAULT_LINEAR_BACKEND else f"+{options.linear_backend}"
    run_id = unique_run_id(store, new_run_id(target.config.get("workload", target.name), options.backend + linear,
                                                config_hash))
    meta = base_meta(target.config, target.device, options, run_id, config_hash)
    if isinstance(outcome, BaseException):
        run = failed_run(meta, outcome)
        if finish is not None:
            finish(run.meta, None)
        write_run(store, run)
        return run
    try:
        meta.update(outcome.meta)
        if finish is not None:
            finish(meta, outcome.latents)
        run = Run(meta=meta, kernels=outcome.attribution.kernels, breakdown=outcome.attribution.breakdown)
        write_run(store, run, outcome.trace_file)
    finally:
        discard(outcome)
    return run


def discard(outcome: Outcome) -> None:
    """Remove a measurement's temporary trace file (it is moved into the run folder when stored)."""
    if isinstance(outcome, Measurement) and outcome.trace_file is not None and outcome.trace_file.exists():
        outcome.trace_file.unlink()


def run_and_store(target: Target, options: ProfileOptions, store: str | os.PathLike[str], config_hash: str) -> Run:
    """Measure ``target`` under one backend and write the run, ok or failed, to ``store``."""
    return store_outcome(target, options, measure_backends(target, [options])[0], store, config_hash)
