"""`mmchar sweep`: every combination of --vary values and --backends, each point profiled in a fresh process
(`mmchar.sweep`), alone or sharded over torchrun's ranks (`mmchar.distributed`); a summary table at the end. The
WORKLOAD argument may name a suite (``sd15,amused``, ``all``): a plan per workload, every point in one store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import pandas as pd
import typer

from mmchar.cli import app
from mmchar.cli.common import check_format
from mmchar.cli.options import (Batch, Cache, CacheSchedule, ChannelsLast, Compile, CpuOffload, CrossBackend, CudaGraphs, Device, Dtype,
                                Fallback, Fmt, Frames, Guidance, Height, KvCache, LinearBackend, LinearScope, NoTrace,
                                Preset, ProfileSteps, Prompt, Repeat, Scope, Seed, Steps, Store, VaeSlicing, VaeTiling,
                                Weights, Width)
from mmchar.cli.output import console, err_console, print_frame, say, warn
from mmchar.cli.run_options import RunOptions
from mmchar.cli.target import check_profile_steps, check_settings, warn_changed_math
from mmchar.errors import InvalidParameterError
from mmchar.schema import DEFAULT_LINEAR_BACKEND

if TYPE_CHECKING:  # mmchar.sweep is imported where a sweep runs, as the other heavy modules are
    from mmchar.sweep import SweepSuite


@app.command()
def sweep(workload: Annotated[str, typer.Argument(help="Workload name (`mmchar workloads`); several, comma-separated, "
                                                  "or `all`: each swept alike, into one store.", show_default=False)],
          vary: Annotated[Optional[list[str]], typer.Option(help="NAME=V1,V2,...: a parameter's values (repeatable: height, width, frames, steps, batch, guidance, seed).")] = None,
          backends: Annotated[str, typer.Option(help="Comma-separated attention backends; every point runs under each.")] = "sdpa",
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
            cache_schedule: CacheSchedule = None, store: Store = Path("runs"), fmt: Fmt = "table",
          distributed: Annotated[bool, typer.Option("--distributed", help="Under torchrun: split the points across "
                                                    "ranks, one GPU each; the summary prints once.")] = False,
          retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run points whose stored run failed "
                                                     "(oom, error) again.")] = False,
          retry_noisy: Annotated[int, typer.Option("--retry-noisy", help="Measure a point the noise guard flagged "
                                                   "again, up to N times (stored points included).")] = 0) -> int:
    """Profile every combination of --vary values and --backends, each in a fresh process; a re-run resumes.
    Several workloads (or ``all``) make one suite: every workload planned (and checked) before a point runs, their
    points resumed, sharded over ranks and summarised as one sweep's."""
    opts = RunOptions.from_params(locals())
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mmchar import distributed as dd
    from mmchar import sweep as sw
    from mmchar.devices import resolve_device
    from mmchar.store import check_writable

    rank = dd.sweep_rank(device) if distributed else None
    if retry_noisy < 0:
        raise InvalidParameterError(f"--retry-noisy {retry_noisy} must be 0 or more (the re-measurements allowed)")

    check_format(fmt)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    check_settings(dtype, resolve_device(device))
    plan = opts.sweep_suite(sw.parse_vary(vary or []), names, retry_failed=retry_failed, retry_noisy=retry_noisy)
    check_writable(store)
    for steps_of_point in sorted({p.config["params"]["steps"] for p in plan.points}):
        check_profile_steps(profile_steps, steps_of_point)
    pending = plan.todo  # read once: each stored point's meta says whether it is redone
    env = dd.child_env(rank, device) if rank is not None else None
    todo = sw.rank_points(pending, rank)
    lead = dd.leads(rank)
    tag = f"(rank {rank.rank}/{rank.world}) " if rank is not None else ""
    if lead:
        warn_changed_math(names, opts.linear_backends())
        kept = len(plan.points) - len(pending)
        say(f"sweep of {plan.name} ({preset}): {len(plan.points)} points, {kept} already in {store}, "
            f"{len(pending)} to run" + (f" over {rank.world} ranks" if rank is not None else ""), fmt)
        otherwise = plan.measured_otherwise() if kept else []
        if otherwise:
            warn(f"points already in {store} were measured with {', '.join(otherwise)}: how a point is measured is "
                 "not part of its identity, so they are kept as stored (use another --store to measure them again)")
    folders = dict(plan.done)
    failure: BaseException | None = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not lead, console=console if fmt == "table" else err_console) as bar:
        task = bar.add_task("starting", total=len(todo))
        try:
            for point in todo:
                bar.update(task, description=plan.label(point))
                folders[point.config_hash] = sw.measure_point(
                    plan.plan_of(point), point, store, env, note=lambda line: bar.console.print(escape(tag + line)),
                    label=plan.label(point))
                bar.advance(task)
        except KeyboardInterrupt:
            if rank is None:  # what is finished, then the CLI's one line
                bar.stop()
                # a point's process may have finished after the sweep was interrupted (a signal to the sweep alone)
                folders.update(sw.stored_points(store, {p.config_hash for p in plan.points}))
                _summary(plan, folders, store, fmt, partial=True)
                raise
            failure = KeyboardInterrupt()
        except BaseException as e:  # a sharded rank still joins the gather below, so the others do not hang
            if rank is None:
                raise
            failure = e
    if rank is not None:
        gathered = sw.gather_points(plan, folders, store, rank)
        if failure is not None:
            raise failure
        if gathered is None:  # rank 0 prints the summary
            return 0
        plan, folders = gathered
    return _summary(plan, folders, store, fmt)


def _summary(plan: SweepSuite, folders: dict[str, Path], store: Path, fmt: str, partial: bool = False) -> int:
    """The points' table (``partial``: those finished before Ctrl-C) and what failed or was noisy, led by a
    workload column where several workloads were swept; the exit code is 1 when no point has an ok run."""
    points = [p for p in plan.points if p.config_hash in folders]
    rows = [plan.summary_row(p, folders[p.config_hash]) for p in points]
    table = pd.DataFrame(rows)
    done = f"{len(rows)} of {len(plan.points)} points done, " if partial else ""
    if fmt == "table" and len(table):  # a person reads the point's parameters; the run ids are in csv / json
        table = table.drop(columns=["run"])
    print_frame(table, title=f"sweep of {plan.name} ({done}{store})", fmt=fmt, truncate=("error", "noise"))
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
