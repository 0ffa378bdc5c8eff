"""From what a user typed to a checked Target, for `profile`, `compare` and `sweep`: every value is checked and
the store is known to be writable before a model is built, so a typo fails in a second, not after a load."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmchar.cli.output import warn
from mmchar.cli.run_options import RunOptions
from mmchar.errors import InvalidParameterError, WeightsError


def build_target(opts: RunOptions, backends: list[str]) -> Any:
    """Check everything a user typed, then build the Target (nothing is written before this returns): a store
    that cannot be written fails here, not after the measurement."""
    from mmchar.backends import require_backend
    from mmchar.devices import resolve_device
    from mmchar.projections import require_projection_backend
    from mmchar.store import check_writable

    if (opts.workload is None) == (opts.pipeline is None):
        raise InvalidParameterError("name a WORKLOAD or pass --pipeline DIR (one of them); `mmchar workloads` lists workloads")
    from mmchar.modes import check_modes

    dev = resolve_device(opts.device)
    check_settings(opts.dtype, dev)
    memory = opts.memory()
    check_modes(opts.cuda_graphs, dev, memory)
    from mmchar.step_cache import check_cache_architecture, check_cache_inputs

    # a user's own pipeline folder carries its weights, as --weights does
    check_cache_inputs(opts.cache, opts.cache_schedule, weights=opts.weights is not None or opts.pipeline is not None)
    if opts.workload is not None:
        from mmchar.workloads import get_workload

        w = get_workload(opts.workload)
        check_cache_architecture(opts.cache, w.name, w.architecture)
        config = w.resolve(opts.preset, dtype=opts.dtype, device=str(dev),
                           weights=str(opts.weights) if opts.weights else None, memory=memory,
                           generation=opts.generation(), **opts.params())
        if opts.weights is not None and not opts.weights.is_dir():
            raise WeightsError(f"weights folder {str(opts.weights)!r} does not exist; pass a local diffusers pipeline folder")
    for b in backends + opts.extra_backends():
        require_backend(b, dev)
    for name in opts.linear_backends():
        require_projection_backend(name, dev)
    check_writable(opts.store)
    if opts.workload is not None:
        check_profile_steps(opts.profile_steps, config["params"]["steps"])
        return _cache_runs_on(w.build(config), opts.cache)
    if opts.preset != "tiny" or opts.weights is not None or any(memory.values()) or opts.generation():
        raise InvalidParameterError("--preset, --weights, --kv-cache and the memory options apply to workloads; a "
                                    "--pipeline folder is profiled as it is")
    target = _pipeline_target(opts.pipeline, dev, opts.dtype, opts.params())
    check_profile_steps(opts.profile_steps, target.steps)
    return _cache_runs_on(target, opts.cache)


def _cache_runs_on(target: Any, cache: str) -> Any:
    """``target``, once ``--cache`` can run on it. What only the built pipeline tells (a transformer without cache
    hooks, a pipeline without a cache context) is refused here, before anything is measured or stored: found at the
    first measured generation, it was stored as a failed run."""
    from mmchar.step_cache import NO_CACHE, unsupported

    why = unsupported(target) if cache != NO_CACHE else None
    if why:
        raise InvalidParameterError(f"--cache {cache}: {why}")
    return target


def check_settings(dtype: str | None, dev: Any) -> None:
    """The run's settings, before anything is built: a valid dtype (half precision on the CPU runs, but says that
    its times stand for nothing a GPU does) and valid noise thresholds in the environment."""
    from mmchar import noise
    from mmchar.devices import resolve_dtype

    import torch

    noise.thresholds()
    if dev.type == "cpu" and resolve_dtype(dtype, dev) == torch.float16:
        warn(f"--dtype {dtype} on the CPU: CPU kernels in float16 are slow and unrepresentative of any GPU run; "
             "fp32 (the CPU default) or a CUDA device measure what users run")


def check_profile_steps(profile_steps: int | None, steps: int) -> None:
    """An explicit --profile-steps beyond the generation is clipped, and says so (the default clips quietly)."""
    if profile_steps is not None and profile_steps > steps:
        warn(f"--profile-steps {profile_steps} is more than the {steps} steps of a generation: profiling {steps}")


def warn_changed_math(backends: list[str], linear_backends: list[str] | None = None) -> None:
    """A backend that replaces self-attention's (or the linear layers') mathematics measures speed only: say so
    before measuring it."""
    from mmchar.backends import get_backend
    from mmchar.projections import get_projection_backend

    for name in backends:
        if get_backend(name).changes_math:
            warn(f"{name} changes the model's mathematics (self-attention replaced; cross attention keeps softmax): "
                 "a speed study on real shapes, not a quality claim")
    for name in linear_backends or []:
        if get_projection_backend(name).changes_math:
            warn(f"{name} changes the model's mathematics (linear layers replaced): a speed study on real "
                 "shapes, not a quality claim")


def hash_for(target: Any) -> Callable[[Any], str]:
    """The config hash of a run of ``target`` under given ProfileOptions (what its run id ends with)."""
    from mmchar.api import run_config_hash

    return lambda options: run_config_hash(target.config, options)


def _pipeline_target(folder: Path, dev: Any, dtype: str | None, params: dict[str, Any]) -> Any:
    """A --pipeline folder: its generation parameters checked against the scheduler and the VAE before (and as
    soon as) the pipeline is loaded, since a folder has no preset to resolve them against."""
    from mmchar.api import load_pipeline_dir, pipeline_dir_config, pipeline_target

    from mmchar.workloads.base import check_guidance
    from mmchar.workloads.build import check_steps

    steps = 20 if params.get("steps") is None else params["steps"]
    if steps < 1:
        raise InvalidParameterError(f"steps={steps} must be at least 1")
    check_guidance(params.get("guidance"))
    try:  # the scheduler's own limit, before the pipeline's models are loaded
        check_steps(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), steps, folder.name)
    except (OSError, ValueError):
        pass
    pipe = load_pipeline_dir(str(folder), str(dev), dtype)
    factor = int(getattr(pipe, "vae_scale_factor", 1) or 1)
    for dim in ("height", "width"):
        v = params.get(dim)
        if v is not None and (v < factor or v % factor):
            raise InvalidParameterError(f"{dim}={v} is not a positive multiple of {factor} (the VAE factor of this "
                                        f"pipeline); use e.g. {max(factor, round(v / factor) * factor)}")
    kw: dict[str, Any] = {"prompt": params.get("prompt") or "a photograph of an astronaut riding a horse"}
    for key, arg in (("height", "height"), ("width", "width"), ("frames", "num_frames"),
                     ("guidance", "guidance_scale"), ("batch", "num_images_per_prompt")):
        if params.get(key) is not None:
            kw[arg] = params[key]
    seed = params.get("seed") or 0
    explicit = set(inspect.signature(pipe.__call__).parameters)
    if params.get("frames") is not None and "num_frames" not in explicit:
        raise InvalidParameterError(f"{type(pipe).__name__} generates images: --frames does not apply")
    cfg = pipeline_dir_config(str(folder), dict(params, steps=steps, seed=seed))
    return pipeline_target(pipe, steps=steps, call_kwargs=kw, seed=seed, config=cfg)
