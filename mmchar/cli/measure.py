"""The commands that measure one configuration: `profile` (one run, alone or split over torchrun's ranks) and
`compare` (one run per attention backend, timed passes interleaved)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer

from mmchar.cli import app
from mmchar.cli.common import check_format
from mmchar.cli.options import (Batch, Cache, CacheSchedule, ChannelsLast, Compile, CpuOffload, CrossBackend, CudaGraphs, Device, Dtype,
                                Fallback, Fmt, Frames, Guidance, Height, KvCache, LinearBackend, LinearScope, NoTrace,
                                Pipeline, Preset, ProfileSteps, Prompt, Repeat, Scope, Seed, Steps, Store, VaeSlicing,
                                VaeTiling, Weights, Width, Workload)
from mmchar.cli.output import print_frame, say, warn
from mmchar.cli.report import RunFailed, report_noise, report_run
from mmchar.cli.run_options import RunOptions
from mmchar.cli.target import build_target, hash_for, warn_changed_math
from mmchar.errors import InvalidParameterError
from mmchar.schema import DEFAULT_LINEAR_BACKEND


@app.command()
def profile(workload: Workload = None, pipeline: Pipeline = None, preset: Preset = "tiny", weights: Weights = None,
            height: Height = None, width: Width = None, frames: Frames = None, steps: Steps = None, batch: Batch = None,
            guidance: Guidance = None, seed: Seed = None, prompt: Prompt = None, dtype: Dtype = None,
            device: Device = None, kv_cache: KvCache = None,
            backend: Annotated[str, typer.Option(help="Attention backend (`mmchar backends`).")] = "sdpa",
            fallback: Fallback = None, cross_backend: CrossBackend = None, scope: Scope = "denoiser",
            linear_backend: LinearBackend = DEFAULT_LINEAR_BACKEND, linear_scope: LinearScope = "all",
            repeat: Repeat = 3, profile_steps: ProfileSteps = None, no_trace: NoTrace = False,
            vae_tiling: VaeTiling = False, vae_slicing: VaeSlicing = False, cpu_offload: CpuOffload = False,
            compile: Compile = False, channels_last: ChannelsLast = False,
            cuda_graphs: CudaGraphs = False, cache: Cache = "none",
            cache_schedule: CacheSchedule = None, store: Store = Path("runs"),
            sequence_parallel: Annotated[bool, typer.Option("--sequence-parallel", help="Under torchrun: split the "
                "denoiser's token sequence over the ranks (one GPU each; self-attention across them, Ulysses or "
                "ring); rank 0 writes the run.")] = False,
            sp_scheme: Annotated[str, typer.Option("--sp-scheme", help="With --sequence-parallel: auto (Ulysses "
                "where the ranks divide the heads, else USP where they share a factor with them, else ring), "
                "ulysses, ring or usp (Ulysses within rows of a U x R mesh, the ring across them).")] = "auto",
            ulysses_degree: Annotated[Optional[int], typer.Option("--ulysses-degree", help="With --sp-scheme usp: "
                "the mesh's Ulysses degree U (dividing the ranks and the heads; default the largest such).",
                show_default=False)] = None,
            cfg_parallel: Annotated[bool, typer.Option("--cfg-parallel", help="Under torchrun (an even number of "
                "ranks): classifier-free guidance's conditional and unconditional passes on two halves of the ranks "
                "(batched guidance: half the batch each, the output gathered; two calls: one call each, the outputs "
                "exchanged); with --sequence-parallel each half splits its sequence over its N/2 ranks.")] = False,
            sweep_point: Annotated[bool, typer.Option("--sweep-point", hidden=True, help="Set by `mmchar sweep` "
                "for its children: the run is a sweep's point (findings pair such points by backend).")] = False) -> int:
    """Profile one generation: timed pass, light and full profile; write a run folder."""
    opts = RunOptions.from_params(locals())
    from mmchar import distributed as dd
    from mmchar.runner import measure_backends, store_outcome

    if cfg_parallel and guidance is not None:  # refused before any rank joins (a preset's default: after the build)
        from mmchar.cfg_parallel import check_guidance

        check_guidance(guidance, workload or "this pipeline")
    with dd.sequence_parallel_ranks(device, sequence_parallel or cfg_parallel,
                                    "--cfg-parallel" if cfg_parallel else "--sequence-parallel") as rank:
        if (sp_scheme != "auto" or ulysses_degree is not None) and not sequence_parallel:
            flag = "--sp-scheme" if sp_scheme != "auto" else "--ulysses-degree"
            raise InvalidParameterError(f"{flag} applies with --sequence-parallel under torchrun")
        sp_ranks = (rank.world // 2 if cfg_parallel else rank.world) if rank else 1
        if cfg_parallel and sp_ranks > 1 and not sequence_parallel:
            raise InvalidParameterError(f"--cfg-parallel on {rank.world} ranks leaves {sp_ranks} to each CFG half: "
                                        "add --sequence-parallel to split each half's token sequence over them, or "
                                        "launch 2 ranks")
        options = opts.profile_options(backend, sp_ranks, sp_scheme, ulysses_degree=ulysses_degree,
                                       cfg_parallel=cfg_parallel)
        target = build_target(opts, [backend])
        if cfg_parallel:  # guidance off, or more than two calls a step: refused before anything runs
            from mmchar.cfg_parallel import cfg_mode

            cfg_mode(target)
        if dd.leads(rank):
            warn_changed_math([backend], opts.linear_backends())
            over = f" split over {rank.world} ranks" if rank else ""
            if cfg_parallel:
                over = f" on {rank.world} ranks (2 CFG halves x {sp_ranks} sequence rank{'s' if sp_ranks > 1 else ''})"
            say(f"profiling {target.config.get('workload')} ({target.config.get('preset') or 'pipeline'}) on "
                f"{target.device}{over} with backend {backend}: {options.repeat} timed generations of "
                f"{target.steps} steps ...")
        mark = (lambda meta, _latents: meta.update(sweep=True)) if sweep_point else None
        # the ranks other than 0 measure in lockstep and keep no trace; rank 0 writes one run
        run = dd.measure_once(
            rank, lambda lead: measure_backends(target, [options if lead else
                                                         dataclasses.replace(options, keep_trace=False)])[0],
            lambda outcome: store_outcome(target, options, outcome, store, hash_for(target)(options), finish=mark))
    if run is None:  # a rank other than 0: rank 0 reports
        return 0
    report_run(run)
    if run.status != "ok":
        raise RunFailed(run)
    return 0


@app.command()
def compare(workload: Workload = None, pipeline: Pipeline = None,
            backends: Annotated[str, typer.Option(help="Comma-separated backends; the first is the baseline (list math first).")] = "math,flash",
            preset: Preset = "tiny", weights: Weights = None, height: Height = None, width: Width = None,
            frames: Frames = None, steps: Steps = None, batch: Batch = None, guidance: Guidance = None,
            seed: Seed = None, prompt: Prompt = None, dtype: Dtype = None, device: Device = None,
            kv_cache: KvCache = None,
            fallback: Fallback = None, cross_backend: CrossBackend = None, scope: Scope = "denoiser",
            linear_backend: LinearBackend = DEFAULT_LINEAR_BACKEND, linear_scope: LinearScope = "all",
            repeat: Repeat = 3, profile_steps: ProfileSteps = None, no_trace: NoTrace = False,
            vae_tiling: VaeTiling = False, vae_slicing: VaeSlicing = False, cpu_offload: CpuOffload = False,
            compile: Compile = False, channels_last: ChannelsLast = False,
            cuda_graphs: CudaGraphs = False, cache: Cache = "none",
            cache_schedule: CacheSchedule = None, store: Store = Path("runs"), fmt: Fmt = "table") -> int:
    """Run one workload under several attention backends; compare latency, attention time and outputs."""
    opts = RunOptions.from_params(locals())
    from mmchar.compare import compare as run_compare, repeated, variant_name

    check_format(fmt)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise InvalidParameterError("--backends is empty; pass e.g. --backends math,flash")
    for flag, given in (("--backends", names), ("--linear-backend", list(opts.linear_backends()))):
        # (found after the model was built, it named the attention backends whatever was repeated)
        if twice := repeated(given):
            raise InvalidParameterError(f"{flag} {','.join(given)} names {', '.join(twice)} more than once; name "
                                        "each once")
    if len(set(names)) * len(set(opts.linear_backends())) < 2:  # it ran a "comparison" of one run, without a word
        pair = "math,flash" if names[0] == "math" else f"math,{names[0]}"
        raise InvalidParameterError(f"--backends {backends} gives one variant and compare needs two or more: add "
                                    f"a baseline (--backends {pair}) or several --linear-backend; `mmchar profile` "
                                    "measures one")
    # every attention backend under every projection backend (--linear-backend dense,fp8,...), baseline first
    variants = [opts.profile_options(b, linear_backend=lin) for b in names for lin in opts.linear_backends()]
    target = build_target(opts, names)
    warn_changed_math(names, opts.linear_backends())
    labels = [variant_name(v) for v in variants]
    say(f"comparing {', '.join(labels)} on {target.config.get('workload')} ({target.device}) ...", fmt)
    result = run_compare(target, variants, store, hash_for(target))
    _print_comparison(result, labels[0], target.device.type, fmt)
    for run in result.runs:
        cmp = run.meta.get("compare") or {}
        name = cmp.get("variant", run.backend)
        if run.status == "ok":
            report_noise(run, prefix=f"{name}: ", fmt=fmt)
        if run.status != "ok":
            warn(f"{name}: {run.status}: {run.meta.get('error')}")
        elif cmp.get("agrees") is False:
            match = cmp.get("token_match")
            if match is not None and match == match:  # token ids (NaN or absent for latents)
                warn(f"{name}: generated tokens differ from {labels[0]}'s at {share_text(1 - cmp['token_match'])} "
                     f"of positions (sampling: one flipped token changes all later ones)")
            else:
                warn(f"{name}: final latents DIVERGE from {labels[0]}'s (cosine "
                     f"{cmp['cosine']:.4f} < {cmp['cosine_min']})")
    say(f"table: {result.table_path}\nruns: {', '.join(str(r.path) for r in result.runs)}", fmt)
    return 0 if any(r.status == "ok" for r in result.runs) else 1


def share_text(fraction: float) -> str:
    """A share (0..1) as a percentage a person cannot misread: ``0%`` and ``100%`` only when exactly so, one decimal
    otherwise (a 99.8 % token match is not a match, and rounding it to 100% said it was); a share that one decimal
    would still round to 0 or 100 reads ``<0.1%`` / ``>99.9%``."""
    if fraction in (0.0, 1.0):
        return f"{fraction:.0%}"
    percent = f"{fraction * 100:.1f}"
    return {"0.0": "<0.1%", "100.0": ">99.9%"}.get(percent, percent + "%")


def _print_comparison(result: Any, baseline: str, device_type: str, fmt: str) -> None:
    """The comparison table: every column for csv / json; for a person, short headers and one column for the
    outputs' agreement, so that a 100-column terminal holds it."""
    cols = ["backend", "status", "e2e_ms", "denoiser_step_ms", "denoiser_busy_ms", "attention_us_per_step",
            "e2e_speedup", "step_speedup", "busy_speedup", "attention_speedup", "max_abs_diff", "cosine", "agrees"]
    t = result.table
    tokens = t["token_match"].notna().any()  # a token model: its outputs are ids, compared by match
    if tokens:
        cols[cols.index("cosine")] = "token_match"
    title = f"{result.group} (speedups against {baseline})"
    if fmt != "table":
        print_frame(t[cols], title=title, fmt=fmt)
        return
    agree = [("-" if a is pd.NA or a is None else ("yes" if a else "NO")) + (
             f" {share_text(x)}" if tokens and x == x else f" {c:.4f}" if c == c else "")
             for a, c, x in zip(t["agrees"], t["cosine"], t["token_match"])]
    shown = pd.DataFrame({"backend": t["backend"], "status": t["status"], "e2e ms": t["e2e_ms"],
                          "step ms": t["denoiser_step_ms"], "busy ms": t["denoiser_busy_ms"],
                          "attn µs": t["attention_us_per_step"], "e2e ×": t["e2e_speedup"],
                          "step ×": t["step_speedup"], "busy ×": t["busy_speedup"],
                          "attn ×": t["attention_speedup"], "agrees": agree})
    busy = "GPU" if device_type == "cuda" else "CPU ops'"
    print_frame(shown, title=f"{title}; busy: {busy} busy time of a step; attn: attention µs per step; agrees: "
                             + ("share of equal tokens" if tokens else "output cosine"))
