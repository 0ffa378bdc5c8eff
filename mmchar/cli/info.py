"""The commands about what mmchar can measure here: the registered workloads and attention backends, the device's
calibrated roofs, and the attention and projection backends timed on their own (`bench-attn`, `bench-linear`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer

from mmchar.cli import app
from mmchar.cli.common import check_format
from mmchar.cli.options import Fmt
from mmchar.cli.output import print_frame, say, warn
from mmchar.errors import InvalidParameterError, UnknownNameError


@app.command()
def workloads(fmt: Fmt = "table") -> None:
    """List the workloads: paradigm, modality, task, parameters, default size, attention sites, presets."""
    from mmchar.workloads import get_workload, workload_names

    check_format(fmt)
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
             kind: Annotated[str, typer.Option(help="attention (--backend) or projection (--linear-backend).")] = "attention",
             fmt: Fmt = "table") -> None:
    """List the attention (or projection) backends: constraints, and whether each runs here (and why not)."""
    from mmchar.backends import describe_backends
    from mmchar.devices import resolve_device
    from mmchar.projections import describe_projection_backends

    describe = {"attention": describe_backends, "projection": describe_projection_backends}
    if kind not in describe:
        raise UnknownNameError("backend kind", kind, describe)
    check_format(fmt)
    dev = resolve_device(device)
    df = pd.DataFrame(describe[kind](dev))
    df["available"] = df["available"].map({True: "yes", False: "no"})
    print_frame(df, title=f"{kind} backends on {dev.type}", fmt=fmt)


@app.command()
def calibrate(device: Annotated[Optional[str], typer.Option(help="Device to measure (default: cuda when present).")] = None,
              force: Annotated[bool, typer.Option("--force", help="Measure again even when cached.")] = False) -> None:
    """Measure the device's roofs once (matmul TFLOP/s per dtype, copy GB/s) and cache them for every run."""
    from mmchar.calibrate import calibrate as run_calibrate
    from mmchar.devices import resolve_device
    from mmchar.environment import roofs_cache_path

    roofs = run_calibrate(resolve_device(device), force=force)
    noise = roofs.get("noise") or {}
    rows = [{"roof": f"matmul {k}", "value": v, "unit": "TFLOP/s"} for k, v in roofs["matmul_tflops"].items()]
    rows.append({"roof": "copy", "value": roofs["copy_gbps"], "unit": "GB/s"})
    print_frame(pd.DataFrame(rows), title=f"roofs of {roofs['device']} (measured {roofs['measured'][:19]})")
    if noise.get("noisy"):  # not cached: the runs would record a roof measured under someone else's load
        warn("measured under load, so not cached (runs keep the roofs cached before, if any): "
             + "; ".join(noise["reasons"]) + "; re-run `mmchar calibrate` on a quiet machine")
        return
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


@app.command("bench-linear")
def bench_linear(device: Annotated[Optional[str], typer.Option(help="Device (default: cuda when present).")] = None,
                 only: Annotated[Optional[str], typer.Option(help="workloads or sweep (default: both).")] = None,
                 backends: Annotated[Optional[str], typer.Option(help="Comma-separated projection backends (default: all; unavailable ones are a skipped row).")] = None,
                 max_tokens: Annotated[int, typer.Option("--max-tokens", help="Skip shapes with more tokens (rows).")] = 65536,
                 match: Annotated[Optional[str], typer.Option(help="Only shapes whose name contains this text (e.g. 'ffn', 'wan2.1').")] = None,
                 resume: Annotated[bool, typer.Option("--resume", help="Keep the rows already in the output folder; measure only what is missing.")] = False,
                 output: Annotated[Path, typer.Option("-o", "--output", help="Folder for linear.md / linear.json.")] = Path("bench-linear")) -> None:
    """Time every projection backend on real workloads' linear shapes and a token sweep, beside cuBLAS."""
    from mmchar import bench_linear as bl
    from mmchar.devices import resolve_device
    from mmchar.projections import get_projection_backend

    if only not in (None, "workloads", "sweep"):
        raise UnknownNameError("shape set", only, ("workloads", "sweep"))
    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    for n in names or []:
        if n != bl.BASELINE:  # the baseline is always measured; naming it is harmless
            get_projection_backend(n)
    try:
        text = bl.benchmark(resolve_device(device), only, names, max_tokens, output,
                            progress=lambda m: print(m, file=sys.stderr, flush=True), match=match, resume=resume)
    except ValueError as e:
        raise InvalidParameterError(str(e)) from None
    say(text)
    say(f"tables: {output / 'linear.md'}, {output / 'linear.json'}")
