"""The Python entry points: profile a registered workload, a pipeline folder, or a pipeline object."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch

from mmchar.devices import DTYPE_NAMES, resolve_device, resolve_dtype
from mmchar.errors import InvalidParameterError
from mmchar.projections import DEFAULT_LINEAR_BACKEND
from mmchar.runner import ProfileOptions, run_and_store
from mmchar.store import Run
from mmchar.target import Target, discover_stage_roots

DEFAULT_STORE = "runs"


def run_config_hash(config: dict[str, Any], options: ProfileOptions) -> str:
    """The hash in a run's id: the resolved configuration plus what selects the attention path."""
    from mmchar.workloads.base import config_hash

    config = {k: v for k, v in config.items() if k != "family"}  # descriptive only: runs before it hash alike
    path = {"config": config, "backend": options.backend, "fallback": options.fallback, "scope": options.scope}
    if options.cross_backend:  # cross attention's backend under linear / WERSA changes what runs
        path["cross_backend"] = options.cross_backend
    if options.compile:  # a compiled run is another point of a sweep, not a repeat of the eager one
        path["compile"] = True
    for mode in ("channels_last", "cuda_graphs"):  # runtime modes (mmchar.modes): other work, as compile is;
        if getattr(options, mode):  # off, a run hashes as before the modes existed
            path[mode] = True
    if options.cache != "none":  # a step cache skips work: another point (no cache hashes as before caches existed)
        path["cache"] = options.cache
        if options.cache_schedule is not None:
            path["cache_schedule"] = options.cache_schedule
    if options.linear_backend != DEFAULT_LINEAR_BACKEND:  # the linear layers replaced: other work (dense hashes
        path["linear_backend"] = options.linear_backend  # as before the projection swap existed)
        path["linear_scope"] = options.linear_scope
    if options.sequence_parallel > 1:  # the same step over more GPUs: another point, not a repeat
        path["sequence_parallel"] = options.sequence_parallel
        if options.sp_scheme != "auto":
            path["sp_scheme"] = options.sp_scheme
        if options.ulysses_degree is not None:
            path["ulysses_degree"] = options.ulysses_degree
    if options.cfg_parallel:  # guidance's two passes on two halves of the ranks: another point (off hashes as before)
        path["cfg_parallel"] = True
    return config_hash(path)


def pipeline_target(pipe: Any, *, steps: int, call_kwargs: dict[str, Any], seed: int = 0,
                    config: dict[str, Any] | None = None, name: str = "pipeline") -> Target:
    """A Target for any diffusers pipeline object: stages from its components, seeded calls."""
    device = getattr(pipe, "device", torch.device("cpu"))
    dtype = getattr(pipe, "dtype", torch.float32)
    roots = discover_stage_roots(pipe)
    accepts = set(inspect.signature(pipe.__call__).parameters)
    unknown = sorted(set(call_kwargs) - accepts) if "kwargs" not in accepts else []
    if unknown:
        raise InvalidParameterError(f"{type(pipe).__name__} takes no argument {unknown[0]!r}; "
                                    f"it takes: {', '.join(sorted(accepts - {'self'}))}")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)

    def run(n: int) -> Any:
        kwargs = dict(call_kwargs, num_inference_steps=n)
        if "generator" in accepts:
            kwargs["generator"] = torch.Generator(device=device).manual_seed(seed)
        with torch.inference_mode():
            return pipe(**kwargs)

    cfg = config or {}
    cfg.setdefault("workload", name)
    cfg.setdefault("pipeline_class", type(pipe).__name__)
    cfg.setdefault("params", {**{k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool))},
                              "steps": steps, "seed": seed})
    cfg.setdefault("dtype", DTYPE_NAMES.get(dtype, str(dtype)))
    cfg.setdefault("device", str(device))
    return Target(name=name, pipe=pipe, run=run, stage_roots=roots, steps=steps, config=cfg, device=device,
                  dtype=dtype)


def profile(pipe: Any, *, prompt: str | list[str] | None = None, num_inference_steps: int = 20,
            store: str | os.PathLike[str] = DEFAULT_STORE, backend: str = "sdpa", fallback: str | None = None,
            repeat: int = 3, profile_steps: int = 2, seed: int = 0, scope: str = "denoiser",
            linear_backend: str = DEFAULT_LINEAR_BACKEND, linear_scope: str = "all", channels_last: bool = False,
            cuda_graphs: bool = False, cache: str = "none", cache_schedule: str | None = None,
            **call_kwargs: Any) -> Run:
    """Profile one generation of any diffusers pipeline object and write the run to ``store``.

    Args:
        pipe: a diffusers pipeline, already on its device and dtype.
        prompt: the prompt (passed to the pipeline as ``prompt``).
        num_inference_steps: denoising steps of the timed pass.
        store: run-store folder (created if missing).
        backend: attention backend (`mmchar backends` lists them).
        fallback: backend for attention layers ``backend`` cannot take.
        repeat: timed generations (median and min/max reported).
        profile_steps: denoising steps under the full profiler.
        seed: generator seed of every call.
        scope: ``denoiser`` (the backend replaces the denoiser's attention) or ``all`` components'.
        linear_backend: projection backend of the denoiser's linear layers (`mmchar backends --kind projection`).
        linear_scope: which of them it replaces: ``attn-proj``, ``ffn`` or ``all``.
        channels_last: the conv-holding components and the latents in channels-last memory format (`mmchar.modes`;
            the pipeline's models are converted in place and stay so).
        cuda_graphs: the denoiser's forward captured into CUDA graphs in the warm-up and replayed (CUDA only).
        cache: a diffusers step-cache hook on the denoiser (`mmchar.step_cache.CACHE_CHOICES`), and
            ``cache_schedule`` the assumed schedule that drives a data-dependent one (first-block) on random weights.
        **call_kwargs: further pipeline arguments (height, width, num_frames, guidance_scale ...).

    Returns:
        The run: ``run.meta``, ``run.breakdown`` and ``run.kernels`` (DataFrames); ``run.path`` its folder.
    """
    if num_inference_steps < 1:
        raise InvalidParameterError(f"num_inference_steps={num_inference_steps} must be at least 1")
    kwargs = dict(call_kwargs)
    if prompt is not None:
        kwargs["prompt"] = prompt
    target = pipeline_target(pipe, steps=num_inference_steps, call_kwargs=kwargs, seed=seed)
    options = ProfileOptions(backend=backend, fallback=fallback, repeat=repeat, profile_steps=profile_steps, scope=scope,
                             linear_backend=linear_backend, linear_scope=linear_scope, channels_last=channels_last,
                             cuda_graphs=cuda_graphs, cache=cache, cache_schedule=cache_schedule)
    run = run_and_store(target, options, store, run_config_hash(target.config, options))
    return run


def load_pipeline_dir(folder: str, device: str | None, dtype: str | None) -> Any:
    """A local diffusers pipeline folder, loaded with DiffusionPipeline (its class from model_index.json)."""
    import diffusers

    from mmchar.workloads.build import load_pipeline

    dev = resolve_device(device)
    return load_pipeline(diffusers.DiffusionPipeline, folder, resolve_dtype(dtype, dev), dev)


def pipeline_dir_config(folder: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"workload": "pipeline", "preset": None, "pipeline_dir": str(Path(folder).resolve()), "params": params}
