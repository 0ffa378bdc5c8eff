"""The commands. Each is thin: parse flags, call one library function, print through `mmchar.cli.output`."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer

from mmchar.cli import app
from mmchar.cli.output import FORMATS, print_frame, say, warn
from mmchar.analysis.diff import MIN_US
from mmchar.errors import InvalidParameterError, MmcharError, UnknownNameError, WeightsError, first_line

Store = Annotated[Path, typer.Option("--store", help="Run store folder (created if missing).")]
Fmt = Annotated[str, typer.Option("--format", help="Output format: table, csv or json.")]
RunsArg = Annotated[list[Path], typer.Argument(help="Run stores or run folders, mixed.", show_default=False)]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)


@app.command()
def workloads(fmt: Fmt = "table") -> None:
    """List the workloads: paradigm, modality, task, parameters, default size, attention sites, presets."""
    from mmchar.workloads import get_workload, workload_names

    _check_format(fmt)
    rows = []
    for name in workload_names():
        w = get_workload(name)
        full = w.preset_config("full")["defaults"] if "full" in w.presets() else {}
        res = f"{full.get('height')}x{full.get('width')}" + (f"x{full['frames']}f" if full.get("frames") else "")
        counts = w.parameter_count("full") if "full" in w.presets() else {}
        denoiser = {c: n for c, n in counts.items() if c in ("unet", "transformer", "prior", "motion_adapter")}
        rows.append({"name": name, "paradigm": w.paradigm, "modality": w.modality, "task": w.task,
                     "architecture": w.architecture,
                     "parameters": (f"{sum(counts.values()) / 1e9:.2f}B" + "".join(
                         f" ({c} {n / 1e9:.2f}B)" for c, n in denoiser.items())) if counts else "",
                     "default (full)": f"{res}, {full.get('steps')} steps", "attention sites": ", ".join(w.attention_sites),
                     "presets": ", ".join(w.presets()), "stages": ", ".join(w.stages), "description": w.description})
    print_frame(pd.DataFrame(rows), title="workloads", fmt=fmt)


@app.command()
def backends(device: Annotated[Optional[str], typer.Option(help="Device to check availability on.")] = None,
             fmt: Fmt = "table") -> None:
    """List the attention backends: constraints, and whether each runs here (and why not)."""
    from mmchar.backends import describe_backends
    from mmchar.devices import resolve_device

    _check_format(fmt)
    dev = resolve_device(device)
    df = pd.DataFrame(describe_backends(dev))
    df["available"] = df["available"].map({True: "yes", False: "no"})
    print_frame(df, title=f"attention backends on {dev.type}", fmt=fmt)


@app.command()
def calibrate(device: Annotated[Optional[str], typer.Option(help="Device to measure (default: cuda when present).")] = None,
              force: Annotated[bool, typer.Option("--force", help="Measure again even when cached.")] = False) -> None:
    """Measure the device's roofs once (matmul TFLOP/s per dtype, copy GB/s) and cache them for every run."""
    from mmchar.calibrate import calibrate as run_calibrate
    from mmchar.devices import resolve_device
    from mmchar.environment import roofs_cache_path

    roofs = run_calibrate(resolve_device(device), force=force)
    rows = [{"roof": f"matmul {k}", "value": v, "unit": "TFLOP/s"} for k, v in roofs["matmul_tflops"].items()]
    rows.append({"roof": "copy", "value": roofs["copy_gbps"], "unit": "GB/s"})
    print_frame(pd.DataFrame(rows), title=f"roofs of {roofs['device']} (measured {roofs['measured'][:19]})")
    say(f"cached in {roofs_cache_path()}; every run on this device records them in meta.json")


@app.command("bench-attn")
def bench_attn(device: Annotated[Optional[str], typer.Option(help="Device (default: cuda when present).")] = None,
               only: Annotated[Optional[str], typer.Option(help="workloads or sweep (default: both).")] = None,
               backends: Annotated[Optional[str], typer.Option(help="Comma-separated backends (default: all available).")] = None,
               max_seq: Annotated[int, typer.Option("--max-seq", help="Skip shapes with longer sequences.")] = 65536,
               match: Annotated[Optional[str], typer.Option(help="Only shapes whose name contains this text (e.g. 'causal', 'sd15').")] = None,
               resume: Annotated[bool, typer.Option("--resume", help="Keep the rows already in the output folder; measure only what is missing.")] = False,
               output: Annotated[Path, typer.Option("-o", "--output", help="Folder for attention.md / attention.json.")] = Path("bench-attn")) -> None:
    """Time every attention backend on real workloads' attention shapes and an S sweep, with ratios."""
    from mmchar import bench_attn as ba
    from mmchar.backends import get_backend
    from mmchar.devices import resolve_device

    if only not in (None, "workloads", "sweep"):
        raise UnknownNameError("shape set", only, ("workloads", "sweep"))
    names = [b.strip() for b in backends.split(",")] if backends else None
    for n in names or []:
        get_backend(n)
    try:
        text = ba.benchmark(resolve_device(device), only, names, max_seq, output,
                            progress=lambda m: print(m, file=sys.stderr, flush=True), match=match,
                            resume=resume)
    except ValueError as e:
        raise InvalidParameterError(str(e)) from None
    say(text)
    say(f"tables: {output / 'attention.md'}, {output / 'attention.json'}")


# --- profile / compare -----------------------------------------------------------------------------------

def _options(backend: str, fallback: str | None, cross_backend: str | None, scope: str, repeat: int,
             profile_steps: int | None, no_trace: bool, compile: bool = False, sequence_parallel: int = 1,
             sp_scheme: str = "auto") -> Any:
    from mmchar.runner import ProfileOptions

    steps = {} if profile_steps is None else {"profile_steps": profile_steps}  # else ProfileOptions' default
    return ProfileOptions(backend=backend, fallback=fallback, cross_backend=cross_backend, scope=scope, repeat=repeat,
                          keep_trace=not no_trace, compile=compile, **steps,
                          sequence_parallel=sequence_parallel, sp_scheme=sp_scheme)


def _warn_changed_math(backends: list[str]) -> None:
    from mmchar.backends import get_backend

    for name in backends:
        if get_backend(name).changes_math:
            warn(f"{name} changes the model's mathematics (self-attention replaced; cross attention keeps softmax): "
                 "a speed study on real shapes, not a quality claim")


def _build(workload: str | None, pipeline: Path | None, preset: str, weights: Path | None, device: str | None,
           dtype: str | None, backends: list[str], fallback: str | None, params: dict[str, Any],
           cross_backend: str | None = None, memory: dict[str, bool] | None = None, *, store: Path,
           profile_steps: int | None) -> Any:
    """Check everything a user typed, then build the Target (nothing is written before this returns): a store
    that cannot be written fails here, not after the measurement."""
    from mmchar.backends import require_backend
    from mmchar.devices import resolve_device
    from mmchar.store import check_writable

    if (workload is None) == (pipeline is None):
        raise InvalidParameterError("name a WORKLOAD or pass --pipeline DIR (one of them); `mmchar workloads` lists workloads")
    dev = resolve_device(device)
    _check_settings(dtype, dev)
    if workload is not None:
        from mmchar.workloads import get_workload

        w = get_workload(workload)
        config = w.resolve(preset, dtype=dtype, device=str(dev), weights=str(weights) if weights else None,
                           memory=memory, **params)
        if weights is not None and not weights.is_dir():
            raise WeightsError(f"weights folder {str(weights)!r} does not exist; pass a local diffusers pipeline folder")
    for b in backends:
        require_backend(b, dev)
    for extra in (fallback, cross_backend):
        if extra:
            require_backend(extra, dev)
    check_writable(store)
    if workload is not None:
        _check_profile_steps(profile_steps, config["params"]["steps"])
        return w.build(config)
    if preset != "tiny" or weights is not None or any((memory or {}).values()):
        raise InvalidParameterError("--preset, --weights and the memory options apply to workloads; a --pipeline "
                                    "folder is profiled as it is")
    target = _pipeline_target(pipeline, dev, dtype, params)
    _check_profile_steps(profile_steps, target.steps)
    return target


def _check_settings(dtype: str | None, dev: Any) -> None:
    """The run's settings, before anything is built: a valid dtype (half precision on the CPU runs, but says that
    its times stand for nothing a GPU does) and valid noise thresholds in the environment."""
    from mmchar import noise
    from mmchar.devices import resolve_dtype

    import torch

    noise.thresholds()
    if dev.type == "cpu" and resolve_dtype(dtype, dev) == torch.float16:
        warn(f"--dtype {dtype} on the CPU: CPU kernels in float16 are slow and unrepresentative of any GPU run; "
             "fp32 (the CPU default) or a CUDA device measure what users run")


def _check_profile_steps(profile_steps: int | None, steps: int) -> None:
    """An explicit --profile-steps beyond the generation is clipped, and says so (the default clips quietly)."""
    if profile_steps is not None and profile_steps > steps:
        warn(f"--profile-steps {profile_steps} is more than the {steps} steps of a generation: profiling {steps}")


def _pipeline_target(folder: Path, dev: Any, dtype: str | None, params: dict[str, Any]) -> Any:
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


def _hash_for(target: Any) -> Any:
    from mmchar.api import run_config_hash

    return lambda options: run_config_hash(target.config, options)


Workload = Annotated[Optional[str], typer.Argument(help="Workload name (`mmchar workloads`).", show_default=False)]
Pipeline = Annotated[Optional[Path], typer.Option("--pipeline", help="A local diffusers pipeline folder to profile instead of a workload.")]
Preset = Annotated[str, typer.Option(help="Workload preset: tiny (CPU, seconds) or full (the published configuration).")]
Weights = Annotated[Optional[Path], typer.Option(help="Load real weights from a local diffusers pipeline folder.")]
Height = Annotated[Optional[int], typer.Option(help="Image height in pixels (default: the preset's).")]
Width = Annotated[Optional[int], typer.Option(help="Image width in pixels.")]
Frames = Annotated[Optional[int], typer.Option(help="Video frames (video workloads).")]
Steps = Annotated[Optional[int], typer.Option(help="Denoising steps of the timed pass.")]
Batch = Annotated[Optional[int], typer.Option(help="Prompts per generation.")]
Guidance = Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (> 1 doubles the denoiser batch).")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of weights and noise.")]
Prompt = Annotated[Optional[str], typer.Option(help="The prompt.")]
Dtype = Annotated[Optional[str], typer.Option(help="fp32, fp16 or bf16 (default: bf16 on CUDA, fp32 on the CPU).")]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when present).")]
Fallback = Annotated[Optional[str], typer.Option(help="Backend for attention layers the chosen backend cannot take.")]
CrossBackend = Annotated[Optional[str], typer.Option("--cross-backend", help="Softmax backend of cross attention under linear / WERSA (default: the best available).")]
Scope = Annotated[str, typer.Option(help="Whose attention the backend replaces: denoiser or all components.")]
Repeat = Annotated[int, typer.Option(help="Timed generations (median, min and max are reported).")]
ProfileSteps = Annotated[Optional[int], typer.Option("--profile-steps", help="Denoising steps under the full profiler (default 2; every step of a shorter generation).", show_default=False)]
NoTrace = Annotated[bool, typer.Option("--no-trace", help="Do not keep the trace file in the run folder.")]
VaeTiling = Annotated[bool, typer.Option("--vae-tiling", help="Decode (and encode) with the VAE in tiles.")]
VaeSlicing = Annotated[bool, typer.Option("--vae-slicing", help="Decode the batch one latent at a time.")]
CpuOffload = Annotated[bool, typer.Option("--cpu-offload", help="Model CPU offload: each model on the GPU only while it runs.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser / generator (warm-up pays the compile; module attribution inside the graph is partial).")]


@app.command()
def profile(workload: Workload = None, pipeline: Pipeline = None, preset: Preset = "tiny", weights: Weights = None,
            height: Height = None, width: Width = None, frames: Frames = None, steps: Steps = None, batch: Batch = None,
            guidance: Guidance = None, seed: Seed = None, prompt: Prompt = None, dtype: Dtype = None,
            device: Device = None,
            backend: Annotated[str, typer.Option(help="Attention backend (`mmchar backends`).")] = "sdpa",
            fallback: Fallback = None, cross_backend: CrossBackend = None, scope: Scope = "denoiser",
            repeat: Repeat = 3, profile_steps: ProfileSteps = None, no_trace: NoTrace = False,
            vae_tiling: VaeTiling = False, vae_slicing: VaeSlicing = False, cpu_offload: CpuOffload = False,
            compile: Compile = False, store: Store = Path("runs"),
            sequence_parallel: Annotated[bool, typer.Option("--sequence-parallel", help="Under torchrun: split the "
                "denoiser's token sequence over the ranks (one GPU each; self-attention across them, Ulysses or "
                "ring); rank 0 writes the run.")] = False,
            sp_scheme: Annotated[str, typer.Option("--sp-scheme", help="With --sequence-parallel: auto (Ulysses "
                "where the ranks divide the heads, else ring), ulysses or ring.")] = "auto",
            sweep_point: Annotated[bool, typer.Option("--sweep-point", hidden=True, help="Set by `mmchar sweep` "
                "for its children: the run is a sweep's point (findings pair such points by backend).")] = False) -> int:
    """Profile one generation: timed pass, light and full profile; write a run folder."""
    from mmchar import distributed as dd
    from mmchar.runner import measure_backends, store_outcome

    params = dict(height=height, width=width, frames=frames, steps=steps, batch=batch, guidance=guidance, seed=seed,
                  prompt=prompt)
    rank = dd.init_sequence_parallel(device) if sequence_parallel else None
    try:
        if sp_scheme != "auto" and rank is None:
            raise InvalidParameterError("--sp-scheme applies with --sequence-parallel under torchrun")
        options = _options(backend, fallback, cross_backend, scope, repeat, profile_steps, no_trace, compile,
                           rank.world if rank else 1, sp_scheme)
        memory = dict(vae_tiling=vae_tiling, vae_slicing=vae_slicing, cpu_offload=cpu_offload)
        target = _build(workload, pipeline, preset, weights, device, dtype, [backend], fallback, params, cross_backend,
                        memory, store=store, profile_steps=profile_steps)
        leader = rank is None or rank.leader
        if leader:
            _warn_changed_math([backend])
            over = f" split over {rank.world} ranks" if rank else ""
            say(f"profiling {target.config.get('workload')} ({target.config.get('preset') or 'pipeline'}) on "
                f"{target.device}{over} with backend {backend}: {options.repeat} timed generations of "
                f"{target.steps} steps ...")
        # the other ranks measure in lockstep and keep no trace; rank 0 writes one run, failed if any rank failed
        outcome = measure_backends(target, [options if leader else dataclasses.replace(options, keep_trace=False)])[0]
        if rank is not None:
            outcome = dd.agree_on_outcome(outcome, rank)
        mark = (lambda meta, _latents: meta.update(sweep=True)) if sweep_point else None
        run = store_outcome(target, options, outcome, store, _hash_for(target)(options), finish=mark) if leader else None
        if rank is not None:
            dd.leader_done(rank)  # the others wait until the run is written (torchrun ends the group on an exit)
    finally:
        if rank is not None:
            dd.finish()
    if run is None:  # a non-leader rank: the leader reports
        if isinstance(outcome, BaseException):
            raise MmcharError(f"rank {rank.rank}: {first_line(outcome)}")
        return 0
    _report(run)
    if run.status != "ok":
        raise _RunFailed(run)
    return 0


class _RunFailed(MmcharError):
    def __init__(self, run: Any) -> None:
        super().__init__(f"run {run.run_id} failed ({run.status}): {run.meta.get('error')}; stored in {run.path}")


def _report(run: Any) -> None:
    from mmchar.analysis import stage_table

    if run.status != "ok":  # the error line at the CLI edge says it
        return
    st = stage_table([run])
    cols = [c for c in ("stage", "median_ms", "min_ms", "max_ms", "busy_ms", "idle_ms", "busy_frac", "kernels")
            if c in st.columns]
    unit = "GPU" if run.meta.get("device", {}).get("type") == "cuda" else "CPU op"
    print_frame(st[cols], title=f"{run.run_id}: latency per stage (timed pass) and {unit} busy/idle (light profile)")
    from mmchar.schema import STEP_STAGES, step_key

    bd = run.breakdown
    name = next((s for s in STEP_STAGES if s in set(bd["stage"])), None)  # denoiser, or a token model's generator
    den = bd[bd["stage"] == name] if name else bd
    name = name or "generation"
    if not den.empty:
        shares = den.groupby("op_class", observed=True)["share"].sum().sort_values(ascending=False)
        say(f"{name} op-class shares: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
        att = den[den["op_class"] == "attention"]
        if not att.empty and att["time_us"].sum() > 0:
            sites = att.groupby("attn_site")["time_us"].sum() / att["time_us"].sum()
            say(f"{name} attention by site: " + ", ".join(f"{k} {v:.1%}" for k, v in sites.items()))
    timings = run.meta.get("timings") or {}
    for phase in ("generator_prefill", "generator_decode"):
        if phase in timings:
            say(f"{phase.removeprefix('generator_')}: {timings[phase]['median_ms']:.2f} ms per call (median of "
                f"{timings[phase]['n']})")
    tp = run.meta.get("throughput")
    if tp:
        say(f"decode: {tp['tokens_per_s']:.1f} tokens/s per sequence, {tp['tokens_per_s_batch']:.1f} for the batch")
    den_busy = (run.meta.get("busy") or {}).get(step_key(timings)) or {}
    if run.meta.get("device", {}).get("type") == "cuda" and den_busy.get("busy_frac") is not None:
        frac = den_busy["busy_frac"]
        verdict = ("launch-bound: the host cannot feed the GPU, so faster kernels barely change the step latency"
                   if frac < 0.6 else "GPU-bound")
        say(f"{name} step: GPU busy {den_busy['busy_ms']:.2f} of {den_busy['wall_ms']:.2f} ms ({frac:.0%}): {verdict}")
    unmatched = run.meta.get("unmatched_kernels") or []
    if unmatched:
        total = run.kernels["dur_us"].sum() if len(run.kernels) else 0.0
        t = sum(u["time_us"] for u in unmatched)
        warn(f"{len(unmatched)} kernel names matched no taxonomy rule ({t / total:.1%} of kernel time, class 'other'); "
             f"listed in meta.json 'unmatched_kernels', e.g. {unmatched[0]['kernel'][:80]!r}" if total else "")
    so = run.meta.get("swap_overhead") or {}
    if so.get("pct_of_denoiser_step_estimate") is not None:
        say(f"attention swap overhead (estimate): {so['per_call_us_estimate']:.2f} µs per call, "
            f"{so['pct_of_denoiser_step_estimate']:.2f}% of a {name} step")
    _report_noise(run)
    say(f"run folder: {run.path}")


def _report_noise(run: Any, prefix: str = "") -> None:
    """The noise guard's verdict: a warning with every reason when flagged, one quiet line when clean."""
    noise = run.meta.get("noise") or {}
    if noise.get("noisy"):
        warn(f"{prefix}NOISY measurement, do not trust its latencies: " + "; ".join(noise.get("reasons") or [])
             + " (re-run on a quiet machine; `mmchar sweep --retry-noisy N` re-measures such points)")
    elif noise:
        t = (run.meta.get("timings") or {}).get("e2e") or {}
        timed = (noise.get("windows") or {}).get("timed") or {}
        load = timed.get("other_cpu_cores")
        spread = f"e2e spread {t['spread']:.1%}" if t.get("spread") is not None else "one timed generation"
        other = f", other processes {load:.2f} CPU cores" if load is not None else ""
        gpu = ", no other process on the GPU" if timed.get("gpu") else ""
        say(f"{prefix}noise guard: clean ({spread}{other}{gpu})")
    unchecked = ((noise.get("windows") or {}).get("timed") or {}).get("gpu_unchecked")
    if unchecked:
        warn(f"{prefix}the noise guard did not check the GPU (other processes, clocks): {unchecked}")


@app.command()
def compare(workload: Workload = None, pipeline: Pipeline = None,
            backends: Annotated[str, typer.Option(help="Comma-separated backends; the first is the baseline (list math first).")] = "math,flash",
            preset: Preset = "tiny", weights: Weights = None, height: Height = None, width: Width = None,
            frames: Frames = None, steps: Steps = None, batch: Batch = None, guidance: Guidance = None,
            seed: Seed = None, prompt: Prompt = None, dtype: Dtype = None, device: Device = None,
            fallback: Fallback = None, cross_backend: CrossBackend = None, scope: Scope = "denoiser",
            repeat: Repeat = 3, profile_steps: ProfileSteps = None, no_trace: NoTrace = False,
            vae_tiling: VaeTiling = False, vae_slicing: VaeSlicing = False, cpu_offload: CpuOffload = False,
            compile: Compile = False, store: Store = Path("runs"), fmt: Fmt = "table") -> int:
    """Run one workload under several attention backends; compare latency, attention time and outputs."""
    from mmchar.compare import compare as run_compare

    _check_format(fmt)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise InvalidParameterError("--backends is empty; pass e.g. --backends math,flash")
    params = dict(height=height, width=width, frames=frames, steps=steps, batch=batch, guidance=guidance, seed=seed,
                  prompt=prompt)
    options = _options(names[0], fallback, cross_backend, scope, repeat, profile_steps, no_trace, compile)
    memory = dict(vae_tiling=vae_tiling, vae_slicing=vae_slicing, cpu_offload=cpu_offload)
    target = _build(workload, pipeline, preset, weights, device, dtype, names, fallback, params, cross_backend,
                    memory, store=store, profile_steps=profile_steps)
    _warn_changed_math(names)
    say(f"comparing {', '.join(names)} on {target.config.get('workload')} ({target.device}) ...")
    result = run_compare(target, names, options, store, _hash_for(target))
    cols = ["backend", "status", "e2e_ms", "denoiser_step_ms", "denoiser_busy_ms", "attention_us_per_step",
            "e2e_speedup", "step_speedup", "busy_speedup", "attention_speedup", "max_abs_diff", "cosine", "agrees"]
    tokens = result.table["token_match"].notna().any()  # a token model: its outputs are ids, compared by match
    if tokens:
        cols[cols.index("cosine")] = "token_match"
    title = f"{result.group} (speedups against {names[0]})"
    if fmt != "table":
        print_frame(result.table[cols], title=title, fmt=fmt)
    else:  # short headers, one column for the outputs' agreement: a 100-column terminal holds it (csv: all)
        t = result.table
        agree = [("-" if a is pd.NA or a is None else ("yes" if a else "NO")) + (
                 f" {x:.0%}" if tokens and x == x else f" {c:.4f}" if c == c else "")
                 for a, c, x in zip(t["agrees"], t["cosine"], t["token_match"])]
        shown = pd.DataFrame({"backend": t["backend"], "status": t["status"], "e2e ms": t["e2e_ms"],
                              "step ms": t["denoiser_step_ms"], "busy ms": t["denoiser_busy_ms"],
                              "attn µs": t["attention_us_per_step"], "e2e ×": t["e2e_speedup"],
                              "step ×": t["step_speedup"], "busy ×": t["busy_speedup"],
                              "attn ×": t["attention_speedup"], "agrees": agree})
        busy = "GPU" if target.device.type == "cuda" else "CPU ops'"
        print_frame(shown, title=f"{title}; busy: {busy} busy time of a step; attn: attention µs per step; agrees: "
                                 + ("share of equal tokens" if tokens else "output cosine"))
    for run in result.runs:
        if run.status == "ok":
            _report_noise(run, prefix=f"{run.backend}: ")
        if run.status != "ok":
            warn(f"{run.backend}: {run.status}: {run.meta.get('error')}")
        elif (run.meta.get("compare") or {}).get("agrees") is False:
            cmp = run.meta["compare"]
            match = cmp.get("token_match")
            if match is not None and match == match:  # token ids (NaN or absent for latents)
                warn(f"{run.backend}: generated tokens differ from {names[0]}'s at {1 - cmp['token_match']:.0%} "
                     f"of positions (sampling: one flipped token changes all later ones)")
            else:
                warn(f"{run.backend}: final latents DIVERGE from {names[0]}'s (cosine "
                     f"{cmp['cosine']:.4f} < {cmp['cosine_min']})")
    say(f"table: {result.table_path}\nruns: {', '.join(str(r.path) for r in result.runs)}")
    return 0 if any(r.status == "ok" for r in result.runs) else 1


@app.command()
def sweep(workload: Annotated[str, typer.Argument(help="Workload name (`mmchar workloads`).", show_default=False)],
          vary: Annotated[Optional[list[str]], typer.Option(help="NAME=V1,V2,...: a parameter's values (repeatable: height, width, frames, steps, batch, guidance, seed).")] = None,
          backends: Annotated[str, typer.Option(help="Comma-separated attention backends; every point runs under each.")] = "sdpa",
          preset: Preset = "tiny", weights: Weights = None, height: Height = None, width: Width = None,
          frames: Frames = None, steps: Steps = None, batch: Batch = None, guidance: Guidance = None,
          seed: Seed = None, prompt: Prompt = None, dtype: Dtype = None, device: Device = None,
          fallback: Fallback = None, cross_backend: CrossBackend = None, scope: Scope = "denoiser",
          repeat: Repeat = 3, profile_steps: ProfileSteps = None, no_trace: NoTrace = False,
          vae_tiling: VaeTiling = False, vae_slicing: VaeSlicing = False, cpu_offload: CpuOffload = False,
          compile: Compile = False, store: Store = Path("runs"), fmt: Fmt = "table",
          distributed: Annotated[bool, typer.Option("--distributed", help="Under torchrun: split the points across "
                                                    "ranks, one GPU each; the summary prints once.")] = False,
          retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run points whose stored run failed "
                                                     "(oom, error) again.")] = False,
          retry_noisy: Annotated[int, typer.Option("--retry-noisy", help="Measure a point the noise guard flagged "
                                                   "again, up to N times (stored points included).")] = 0) -> int:
    """Profile every combination of --vary values and --backends, each in a fresh process; a re-run resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mmchar import distributed as dd
    from mmchar import sweep as sw
    from mmchar.devices import resolve_device
    from mmchar.store import check_writable

    rank = dd.rank_from_env() if distributed else None
    if rank is not None and device is not None and device.startswith("cuda:"):
        raise InvalidParameterError(f"--device {device} with --distributed: each rank takes its own GPU; "
                                    "pass --device cuda (or leave it out)")
    if retry_noisy < 0:
        raise InvalidParameterError(f"--retry-noisy {retry_noisy} must be 0 or more (the re-measurements allowed)")

    _check_format(fmt)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    fixed = dict(height=height, width=width, frames=frames, steps=steps, batch=batch, guidance=guidance, seed=seed,
                 prompt=prompt)
    options = {"fallback": fallback, "cross_backend": cross_backend, "scope": scope, "repeat": repeat,
               "keep_trace": not no_trace, "compile": compile,
               **({"profile_steps": profile_steps} if profile_steps is not None else {})}
    memory = dict(vae_tiling=vae_tiling, vae_slicing=vae_slicing, cpu_offload=cpu_offload)
    _check_settings(dtype, resolve_device(device))
    plan = sw.plan(workload, sw.parse_vary(vary or []), names, store, preset=preset, fixed=fixed, options=options,
                   device=device, dtype=dtype, weights=str(weights) if weights else None, memory=memory)
    plan = dataclasses.replace(plan, retry_failed=retry_failed, retry_noisy=retry_noisy)
    check_writable(store)
    for steps_of_point in sorted({p.config["params"]["steps"] for p in plan.points}):
        _check_profile_steps(profile_steps, steps_of_point)
    todo = pending = plan.todo  # read once: each stored point's meta says whether it is redone
    env = dd.child_env(rank, device) if rank is not None else None
    if rank is not None:
        dd.init()
        todo = rank.shard(todo, key=lambda p: p.config_hash)
    lead = rank is None or rank.leader
    tag = f"(rank {rank.rank}/{rank.world}) " if rank is not None else ""
    if lead:
        _warn_changed_math(names)
        kept = len(plan.points) - len(pending)
        say(f"sweep of {workload} ({preset}): {len(plan.points)} points, {kept} already in {store}, "
            f"{len(pending)} to run" + (f" over {rank.world} ranks" if rank is not None else ""))
        otherwise = plan.measured_otherwise() if kept else []
        if otherwise:
            warn(f"points already in {store} were measured with {', '.join(otherwise)}: how a point is measured is "
                 "not part of its identity, so they are kept as stored (use another --store to measure them again)")
    folders = dict(plan.done)
    failure: BaseException | None = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not lead) as bar:
        task = bar.add_task("starting", total=len(todo))
        try:
            for point in todo:
                bar.update(task, description=point.label())
                folders[point.config_hash] = _sweep_point(plan, point, store, env, bar.console, tag)
                bar.advance(task)
        except KeyboardInterrupt:
            if rank is None:  # what is finished, then the CLI's one line
                bar.stop()
                _sweep_summary(plan, folders, workload, store, fmt, partial=True)
                raise
            failure = KeyboardInterrupt()
        except BaseException as e:  # a sharded rank still joins the gather below, so the others do not hang
            if rank is None:
                raise
            failure = e
    if rank is not None:  # every rank's folders, on rank 0 (the barrier: all points are stored before the summary)
        shards = dd.gather_to_leader({h: str(f) for h, f in folders.items()}, rank)
        dd.finish()
        if failure is not None:
            raise failure
        if not rank.leader:
            return 0
        folders = {h: Path(f) for shard in shards for h, f in shard.items()}
        missing = [p for p in plan.points if p.config_hash not in folders]  # a rank that failed mid-way
        if missing:
            folders.update(sw.stored_points(store, {p.config_hash for p in missing}))
            plan = dataclasses.replace(plan, points=[p for p in plan.points if p.config_hash in folders])
    return _sweep_summary(plan, folders, workload, store, fmt)


def _sweep_point(plan: Any, point: Any, store: Path, env: dict[str, str] | None, console: Any, tag: str) -> Path:
    """One point in a fresh process, measured again while the noise guard flags it, ``--retry-noisy`` times at
    most (a stored noisy point's first measurement here is already one of them); the best of its runs stands."""
    from rich.markup import escape

    from mmchar import sweep as sw

    stored = plan.done.get(point.config_hash)
    retries = plan.retry_noisy - (1 if stored is not None and sw.summary_row(point, stored)["noisy"] == "yes" else 0)
    row = sw.summary_row(point, sw.run_point(plan, point, store, env=env))
    for attempt in range(max(retries, 0)):
        if row["noisy"] != "yes":
            break
        console.print(escape(f"{tag}{point.label()}: noisy ({row['noise']}); measuring again ({attempt + 1} of "
                             f"{retries})"))
        row = sw.summary_row(point, sw.run_point(plan, point, store, env=env))
    folder = sw.stored_points(store, {point.config_hash})[point.config_hash]  # ok and clean first, then newest
    row = sw.summary_row(point, folder)
    console.print(escape(f"{tag}{point.label()}: {row['status']}" + (
        f", {row['e2e_ms']} ms per generation" + (" (noisy)" if row["noisy"] == "yes" else "")
        if row["status"] == "ok" else f" ({row['error']})")))
    return folder


def _sweep_summary(plan: Any, folders: dict[str, Path], workload: str, store: Path, fmt: str,
                   partial: bool = False) -> int:
    from mmchar import sweep as sw

    points = [p for p in plan.points if p.config_hash in folders]
    rows = [sw.summary_row(p, folders[p.config_hash]) for p in points]
    table = pd.DataFrame(rows)
    done = f"{len(rows)} of {len(plan.points)} points done, " if partial else ""
    if fmt == "table" and len(table):  # a person reads the point's parameters; the run ids are in csv / json
        table = table.drop(columns=["run"])
    print_frame(table, title=f"sweep of {workload} ({done}{store})", fmt=fmt, truncate=("error", "noise"))
    if not rows:
        return 1
    failed = int((table["status"] != "ok").sum())
    noisy = int((table["noisy"] == "yes").sum())
    if failed:
        warn(f"{failed} of {len(rows)} points failed (stored with their status; --retry-failed runs them again); "
             f"the rest are in {store}")
    if noisy:
        warn(f"{noisy} of {len(rows)} points were measured under noise (--retry-noisy N measures them again)")
    return 0 if failed < len(rows) else 1


# --- export / dashboard / tensorboard ---------------------------------------------------------------------

@app.command()
def export(runs: RunsArg,
           output: Annotated[Path, typer.Option("-o", "--output", help="CSV file to write.")] = Path("breakdown.csv"),
           ) -> None:
    """Write the tidy breakdown (run × stage × op class × attention site) of runs as one CSV."""
    from mmchar.analysis import breakdown_table

    _check_output_file(output, "breakdown.csv")
    loaded = _load(runs, kernels=False)
    table = breakdown_table(loaded)
    _write_atomic(output, lambda p: table.to_csv(p, index=False))
    say(f"wrote {len(table)} rows from {len(loaded)} runs to {output}")
    _say_noisy(loaded)


@app.command()
def runs(paths: RunsArg,
         workload: Annotated[Optional[str], typer.Option(help="Only runs of this workload.")] = None,
         backend: Annotated[Optional[str], typer.Option(help="Only runs under this attention backend.")] = None,
         status: Annotated[Optional[str], typer.Option(help="Only runs with this status: ok, oom or error.")] = None,
         fmt: Fmt = "table") -> None:
    """List runs with their key parameters and status (filter by workload, backend, status)."""
    from mmchar.analysis import run_table
    from mmchar.schema import RUN_STATUSES

    _check_format(fmt)
    if status is not None and status not in RUN_STATUSES:
        raise UnknownNameError("status", status, RUN_STATUSES)
    loaded = _load(paths, kernels=False)
    table = run_table(loaded)
    for col, value in (("workload", workload), ("backend", backend), ("status", status)):
        if value is not None:
            table = table[table[col] == value]
    if fmt != "table":  # machine-readable: every column, the full run id
        print_frame(table, title=f"{len(table)} runs", fmt=fmt)
        return
    from mmchar.analysis.tables import device_short

    short = {r.run_id: device_short(r.meta) for r in loaded}
    shown = pd.DataFrame({
        "run": table["label"], "status": table["status"],
        "noisy": table["noisy"].map({True: "yes", False: "no"}).fillna("-"),
        "device": table["run_id"].map(short), "dtype": table["dtype"],
        "created": table["created"].fillna("").astype(str).str.slice(5, 16).str.replace("T", " "),
        "note": [(e or n or "")[:70] for e, n in zip(table["error"], table["noise"])]})
    print_frame(shown, title=f"{len(table)} runs (full ids: --format csv)", fmt=fmt, truncate=("note",))


@app.command()
def analyze(traces: Annotated[list[Path], typer.Argument(help="PyTorch profiler traces (.json or .json.gz) that mmchar "
                                                         "did not record.", show_default=False)],
            store: Store = Path("runs"),
            stage: Annotated[str, typer.Option(help="The stage the traced code stands for (the step views read "
                                                    "denoiser or generator).")] = "denoiser",
            name: Annotated[Optional[str], typer.Option(help="Workload name of the run (default: from the file "
                                                             "name).")] = None) -> None:
    """Attribute foreign profiler traces (by aten op, and by module where the trace holds nn.Module events) into
    run folders that export, study, diff and the dashboard read."""
    from mmchar.analyze import analyze_trace

    for path in traces:
        run = analyze_trace(path, store, stage=stage, name=name)
        k = run.kernels
        unit = "GPU kernels" if run.meta["device"]["type"] == "cuda" else "CPU ops (self time)"
        total = float(k["dur_us"].sum()) if len(k) else 0.0
        say(f"{run.run_id}: {len(k)} {unit}, {total / 1e3:.2f} ms over {len(run.meta['profiled_steps'])} step(s)")
        if total > 0:
            shares = k.groupby("op_class", observed=True)["dur_us"].sum().sort_values(ascending=False) / total
            say("op-class shares: " + ", ".join(f"{c} {v:.1%}" for c, v in shares.items() if v >= 0.001))
            top = k.groupby("aten_op", observed=True)["dur_us"].sum().sort_values(ascending=False).head(5)
            say("top aten ops: " + ", ".join(f"{op or '(none)'} {t / 1e3:.2f} ms" for op, t in top.items()))
        if not run.meta["has_module_events"]:
            warn("the trace holds no nn.Module events: module paths are empty (record with with_stack=True, "
                 "with_modules=True for them)")
        say(f"run folder: {run.path}")


@app.command()
def diff(a: Annotated[Path, typer.Argument(help="Baseline: a run folder or a store.", show_default=False)],
         b: Annotated[Path, typer.Argument(help="New side: a run folder or a store.", show_default=False)],
         fail_above: Annotated[Optional[float], typer.Option("--fail-above", help="Exit 1 when a latency or class time grew by more than this percentage (0 or more), beyond both runs' spread and --min-us (CI gating).")] = None,
         min_us: Annotated[float, typer.Option("--min-us", help="Smallest growth in µs that --fail-above gates on (0 or more; latencies compare in µs too).")] = MIN_US,
         top: Annotated[int, typer.Option(help="Modules shown per pair (largest changes).")] = 10,
         output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write every difference as CSV.")] = None,
         fmt: Fmt = "table") -> int:
    """Diff two runs (or two stores, run by run, pairing runs that did the same work) by latency, op class and
    module; list the runs left unpaired and why."""
    from mmchar.analysis.diff import check_gate, diff_table, regressions, unpaired_runs, work_mismatch
    from mmchar.analysis.tables import is_noisy, run_labels

    _check_format(fmt)
    check_gate(0.0 if fail_above is None else fail_above, min_us)
    if output is not None:
        _check_output_file(output, "diff.csv")
    runs_a, runs_b = _load([a]), _load([b])
    table, unpaired = diff_table(runs_a, runs_b), unpaired_runs(runs_a, runs_b)
    if table.empty:
        why = (f"{unpaired['run_id'].iloc[0]}: {unpaired['reason'].iloc[0]}" if len(unpaired)
               else "the paired runs hold no timings or kernel times")
        raise InvalidParameterError(f"no run of {b} did the work of a run of {a} ({why}); diff runs of one "
                                    "configuration, or two run folders to diff them anyway")
    if len(runs_a) == 1 and len(runs_b) == 1 and (note := work_mismatch(runs_a[0], runs_b[0])):
        warn(note)
    if output is not None:
        _write_atomic(output, lambda p: table.to_csv(p, index=False))
    labels = run_labels(runs_a)  # what the pair ran, in short; then which two runs
    for pair, part in table.groupby("pair"):
        title = f"{labels.get(part['run_a'].iloc[0])}: {part['run_a'].iloc[0]} -> {part['run_b'].iloc[0]}"
        shown = part[part["level"] != "module"]
        mods = part[part["level"] == "module"]
        mods = mods.reindex((mods["b"] - mods["a"]).abs().sort_values(ascending=False).index).head(top)
        print_frame(pd.concat([shown, mods]).drop(columns=["pair", "run_a", "run_b"]).round(3), title=title, fmt=fmt)
    if len(unpaired):
        print_frame(unpaired[["side", "run_id", "reason", "closest"]], title=f"{len(unpaired)} runs left unpaired",
                    fmt=fmt)
    paired = set(table["run_a"]) | set(table["run_b"])
    upgraded = {r.meta.get("upgraded_from") for r in runs_a + runs_b if r.run_id in paired}
    if len(upgraded) > 1:
        warn("one side holds runs of schema version 1, whose host time still includes the scheduler's step calls "
             "(version 2 times them apart): their host and scheduler rows compare different things")
    noisy = [r.run_id for r in runs_a + runs_b if r.run_id in paired and is_noisy(r.meta)]
    if noisy:
        warn(f"{len(noisy)} of the diffed runs were measured under noise (`mmchar runs` says why); their "
             f"differences are not trustworthy: {', '.join(noisy[:3])}" + (" ..." if len(noisy) > 3 else ""))
    if fail_above is not None:
        gate = f"more than {fail_above:g}% beyond both runs' spread and {min_us:g} us"
        bad = regressions(table, fail_above, min_us)
        if not bad.empty:
            w = bad.sort_values("change_pct", ascending=False).iloc[0]
            what = " ".join(x for x in (w["level"], w["stage"], w["key"]) if x)
            raise MmcharError(f"{len(bad)} latencies or class times regressed by {gate} (worst: {what} "
                              f"{w['a']:.4g} -> {w['b']:.4g} {w['unit']}, +{w['change_pct']:.1f}%, "
                              f"{w['run_a']} -> {w['run_b']})")
        say(f"no latency or class time regressed by {gate}")
    return 0


@app.command()
def study(paths: RunsArg,
          output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the tables, findings and dashboard.")] = Path("study")) -> None:
    """Every analysis of the study as CSV, the findings summary and the dashboard, from run stores only."""
    from mmchar import analysis as an
    from mmchar.dashboards import write_dashboard

    _check_output_folder(output)
    loaded = _load(paths)
    tables = {"runs": an.run_table, "breakdown": an.breakdown_table, "stages": an.stage_table,
              "comparison": an.comparison_table, "attention_sites": an.attention_site_table,
              "sequence": an.sequence_table, "roofline": an.roofline_table, "launch": an.launch_table,
              "phases": an.phase_table, "scaling": an.scaling_table, "modules": an.module_tree,
              "communication": an.communication_table, "sequence_parallel": an.sequence_parallel_table}
    output.mkdir(parents=True, exist_ok=True)
    for name, fn in tables.items():
        table = fn(loaded)
        _write_atomic(output / f"{name}.csv", lambda p, t=table: t.to_csv(p, index=False))
    found = an.findings(loaded)
    text = an.findings_markdown(found)
    _write_atomic(output / "findings.md", lambda p: p.write_text(text))
    _write_atomic(output / "dashboard.html", lambda p: write_dashboard(loaded, p, title="mmchar study"))
    print_frame(found[["question", "answer"]], title=f"findings ({len(loaded)} runs)")
    say(f"wrote {len(tables)} tables, findings.md and dashboard.html to {output}")


@app.command()
def dashboard(runs: RunsArg,
              output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
              title: Annotated[str, typer.Option(help="Page title.")] = "mmchar report",
              png: Annotated[Optional[Path], typer.Option("--png", help="Also write one PNG per view into this folder "
                                                          "(needs kaleido and a Chromium).")] = None) -> None:
    """Write an interactive, self-contained offline HTML dashboard of runs."""
    from mmchar.dashboards import write_dashboard, write_pngs

    _check_output_file(output, "report.html")
    if png is not None:
        _check_output_folder(png, "--png")
    loaded = _load(runs)
    _write_atomic(output, lambda p: write_dashboard(loaded, p, title=title))
    say(f"dashboard of {len(loaded)} runs: {output.resolve()}")
    if png is not None:
        written = write_pngs(loaded, png)
        say(f"{len(written)} PNGs ({', '.join(p.stem for p in written)}): {png.resolve()}")


@app.command()
def tensorboard(runs: RunsArg, port: Annotated[int, typer.Option(help="Port to serve on.")] = 6006) -> None:
    """Open runs' traces in TensorBoard's profiler plugin (needs the `tensorboard` extra)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("torch_tb_profiler") is None:
        raise MmcharError("TensorBoard's profiler plugin is not installed; pip install 'mmchar[tensorboard]'")
    loaded = [r for r in _load(runs, kernels=False) if r.trace_path is not None]
    if not loaded:
        raise MmcharError("none of these runs holds a trace (slim copies and --no-trace runs have none)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmchar-tb-") as tmp:
        logdir = Path(tmp)
        for r in loaded:  # the plugin wants <logdir>/<run>/<worker>.pt.trace.json.gz
            (logdir / r.run_id).mkdir()
            (logdir / r.run_id / "mmchar.pt.trace.json.gz").symlink_to(r.trace_path.resolve())
        say(f"serving {len(loaded)} traces from {logdir} on http://localhost:{port} (Ctrl-C stops)")
        subprocess.run([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)],
                       check=False)


def _load(paths: list[Path], kernels: bool = True) -> list[Any]:
    """Runs for a reading command: a damaged run folder is skipped with one warning line naming it, the rest
    are read (one truncated table must not take a whole store's dashboard down)."""
    from mmchar.errors import RunNotFoundError
    from mmchar.store import load_runs

    loaded = load_runs(paths, kernels=kernels,
                       on_damaged=lambda folder, why: warn(f"skipped damaged run {folder}: {why}"))
    if not loaded:
        raise RunNotFoundError(f"no readable run in {', '.join(map(str, paths))}; the damaged ones are listed above")
    return loaded


def _say_noisy(loaded: list[Any]) -> None:
    from mmchar.analysis.tables import is_noisy

    noisy = [r.run_id for r in loaded if is_noisy(r.meta)]
    if noisy:
        warn(f"{len(noisy)} of {len(loaded)} runs were measured under noise (column 'noisy'; `mmchar runs` says "
             f"why): {', '.join(noisy[:3])}" + (" ..." if len(noisy) > 3 else ""))


def _check_output_file(path: Path, example: str) -> None:
    """``-o`` names a file: an existing folder there is an error now, not a hidden temporary file inside it."""
    from mmchar.store import StorePathError, check_writable

    if path.is_dir():
        raise StorePathError(f"-o {str(path)!r} is a folder; name the file to write, e.g. -o {path / example}")
    check_writable(path.parent, "-o")


def _check_output_folder(path: Path, flag: str = "-o") -> None:
    from mmchar.store import StorePathError, check_writable

    if path.exists() and not path.is_dir():
        raise StorePathError(f"{flag} {str(path)!r} is a file; this command writes a folder there, pass a folder path")
    check_writable(path, flag)


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary sibling so an interrupted export leaves no half file."""
    if path.is_dir():
        raise MmcharError(f"{path} is a folder; name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        shutil.move(str(tmp), path)
    finally:
        if tmp.exists():
            tmp.unlink()
