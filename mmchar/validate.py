"""`mmchar advise --validate`: the top opportunities of one run measured for real, so each projection stands beside
what the option actually did.

Each opportunity is one new run of the source run's work (its workload, preset, resolved configuration and seed,
read back from its ``meta.json``) with only that opportunity's options changed (both of a combination), planned and
checked by the sweep's planner (`mmchar.sweep.plan`: the same refusals as `mmchar profile`, before anything runs) and
measured in a fresh `mmchar profile` process (`mmchar.sweep.run_point`), as the source was: one process per
measurement keeps an out-of-memory error or a leaked CUDA context of one option out of the next one's figures.

What cannot be measured here is listed with why, never raised: step caching (no option of `mmchar profile` skips
denoiser calls yet), another GPU (it needs that GPU: measured only where this machine has it), and any option the
planner refuses (``--cuda-graphs`` on the CPU) with its one-line reason.

The table, ``validation.csv`` (columns `VALIDATION_COLUMNS`), sits next to the validating runs and is merged, a
re-validation replacing the rows of the same run and option; `mmchar.analysis.advise.advice_table` reads it for its
``measured_step_ms`` column. This module imports no torch itself: the planner and the profile processes do.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mmchar.analysis.advise import (BASELINE_KIND, BASELINE_OPTION, VALIDATE_DIR, VALIDATION_COLUMNS,
                                    VALIDATION_FILE, gpu_key, load_gpus, read_validation)
from mmchar.errors import InvalidParameterError, MmcharError, first_line
from mmchar.schema import step_key
from mmchar.store import Run, read_meta

# advice options that set a ProfileOptions field: flags without a value turn a mode on, the others take one
MODE_FLAGS = {"--cuda-graphs": "cuda_graphs", "--channels-last": "channels_last", "--compile": "compile"}
VALUE_FLAGS = {"--backend": "backend", "--linear-backend": "linear_backend", "--linear-scope": "linear_scope",
               "--cache": "cache", "--cache-schedule": "cache_schedule"}
TARGET_GPU_FLAG = "--target-gpu"

STEP_CACHE_KIND = "step-cache"
STEP_CACHE_WHY = ("step caching runs through diffusers' cache hooks (`--cache`), which this run's denoiser or "
                  "pipeline cannot take (its meta.json `step_cache_support` says why; a UNet's would need DeepCache, "
                  "which diffusers does not ship), so its projection stays unvalidated")

# validation statuses: measured (an ok run), a failed run's own status (oom, error), or not measured
MEASURED, REFUSED, NOT_RUNNABLE = "measured", "refused", "not runnable"


class NotRunnable(Exception):
    """An opportunity no run here can measure; its message says why, in one line."""


@dataclasses.dataclass
class Change:
    """What one opportunity asks of the validating run: ProfileOptions fields set, or the GPU it moves to."""

    fields: dict[str, Any]
    target_gpu: str | None = None


def parse_option(option: str, kind: str = "") -> Change:
    """The ProfileOptions fields an advice row's ``option`` sets (``--channels-last --cuda-graphs``: both).

    Raises:
        NotRunnable: step caching, an option without its value (a row that names no backend), or a flag that no
            ProfileOptions field stands for.
    """
    if kind == STEP_CACHE_KIND and not (option or "").startswith("--cache"):
        raise NotRunnable(STEP_CACHE_WHY)
    if kind == "sequence-parallel":
        raise NotRunnable("a sequence-parallel run is N processes measured together: run `torchrun --nproc-per-node N "
                          "-m mmchar profile ... --sequence-parallel` on N GPUs (benchmarks/gpu_sequence_parallel.sh)")
    try:
        words = shlex.split(option or "")
    except ValueError:
        words = []
    if not words:
        raise NotRunnable(f"the {kind or 'advice'} row names no option to run")
    change = Change({})
    i = 0
    while i < len(words):
        flag = words[i]
        if flag in MODE_FLAGS:
            change.fields[MODE_FLAGS[flag]] = True
            i += 1
        elif flag in VALUE_FLAGS or flag == TARGET_GPU_FLAG:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise NotRunnable(f"{flag} without a value: the row names no {flag.removeprefix('--')} to run")
            if flag == TARGET_GPU_FLAG:
                change.target_gpu = words[i + 1]
            else:
                change.fields[VALUE_FLAGS[flag]] = words[i + 1]
            i += 2
        else:
            raise NotRunnable(f"{option!r}: {flag} is no option of `mmchar profile` that validate knows how to set")
    return change


def changes_anything(change: Change, options: dict[str, Any]) -> bool:
    """Whether ``change`` asks for other work than the source run's ``options`` did (a mode it ran already does not)."""
    return change.target_gpu is not None or any(options.get(k) != v for k, v in change.fields.items())


@dataclasses.dataclass
class Opportunity:
    """One advice row picked for validation, with what it changes, or why it cannot run."""

    row: dict[str, Any]
    change: Change | None
    why: str = ""


def pick(advice: pd.DataFrame, options: dict[str, Any], top: int) -> list[Opportunity]:
    """The ``top`` opportunities of one run's advice: its ranked rows by rank (those that cannot run included, to
    be listed with why), then rows whose projection does not apply but whose option is other work the run can
    measure (a CPU run's channels-last: the projection has no model there, the measurement still tells), in the
    table's order. Rows naming no option, or one the run ran already, are no opportunity."""
    ranked = advice[advice["rank"].notna()].sort_values("rank", kind="stable")
    picked: list[Opportunity] = []
    for _, r in ranked.iterrows():
        try:
            picked.append(Opportunity(r.to_dict(), parse_option(str(r["option"]), str(r["kind"]))))
        except NotRunnable as e:
            picked.append(Opportunity(r.to_dict(), None, str(e)))
    for _, r in advice[advice["rank"].isna()].iterrows():
        try:
            change = parse_option(str(r["option"]), str(r["kind"]))
        except NotRunnable:
            continue
        if changes_anything(change, options):
            picked.append(Opportunity(r.to_dict(), change))
    return picked[:top]


def default_store(run: Run) -> Path:
    """Where validating runs go unless ``--store`` says: a ``validate/`` folder of the source run's store (a
    subfolder, so reading the store does not mix them with the runs they validate)."""
    assert run.path is not None, "a validated run is read from its folder"
    return Path(run.path).parent / VALIDATE_DIR


def _source_refusal(run: Run) -> str | None:
    """Why no opportunity of this run can be measured again here, or None."""
    meta = run.meta
    config, options = meta.get("config") or {}, meta.get("options") or {}
    if run.status != "ok":
        return f"the run is {run.status}: there is no measurement to validate against"
    if not config.get("preset") or config.get("workload") in (None, "pipeline"):
        return ("the run is not of a registered workload preset (a --pipeline folder, a pipeline object or an "
                "imported trace): re-profile it with the option to measure it")
    if int(options.get("sequence_parallel") or 1) > 1 or options.get("cfg_parallel"):
        return ("a --sequence-parallel or --cfg-parallel run is measured by torchrun's ranks together: re-profile it "
                "under torchrun with the option")
    return None


def _generation(workload: Any, preset: str, config: dict[str, Any]) -> dict[str, Any]:
    """The generation settings the run chose where they differ from the preset's (``--kv-cache``): the rest resolve
    alike from the preset."""
    from mmchar.workloads.base import GENERATION_OPTIONS

    default = workload.preset_config(preset).get("generation") or {}
    return {k: v for k, v in (config.get("generation") or {}).items()
            if k in GENERATION_OPTIONS and default.get(k) != v}


def plan_change(run: Run, change: Change, store: Path) -> tuple[Any, Any]:
    """The sweep plan of the source run's work with ``change`` applied, and its one point: checked by the sweep's
    planner (an option the device cannot run is refused here, before a process starts).

    Raises:
        MmcharError: the planner's refusal (its first line is the reason), or a configuration that no longer
            resolves as the run's did (the preset changed since the run was written).
    """
    from mmchar import sweep as sw
    from mmchar.runner import ProfileOptions
    from mmchar.workloads import get_workload

    config, stored = run.meta["config"], run.meta.get("options") or {}
    known = {f.name for f in dataclasses.fields(ProfileOptions)}
    options = {k: v for k, v in stored.items()
               if k in known and k not in ("backend", "sequence_parallel", "sp_scheme", "ulysses_degree", "cfg_parallel")}
    options.update({k: v for k, v in change.fields.items() if k != "backend"})
    backend = change.fields.get("backend", stored.get("backend") or run.backend)
    w = get_workload(config["workload"])
    plan = sw.plan(config["workload"], {}, [backend], store, preset=config["preset"],
                   fixed={k: v for k, v in (config.get("params") or {}).items() if v is not None},
                   options=options, device=config.get("device"), dtype=config.get("dtype"),
                   weights=config.get("weights"), memory=config.get("memory"),
                   generation=_generation(w, config["preset"], config))
    point = plan.points[0]
    differ = _differences(point.config, config)
    if differ:
        raise InvalidParameterError(f"the run's configuration resolves differently here ({', '.join(differ[:3])}): "
                                    "its preset changed since the run was written; re-profile the run first")
    return plan, point


def _differences(now: dict[str, Any], then: dict[str, Any]) -> list[str]:
    """The configuration keys (``params.height``, ``models``) whose values differ; descriptive keys left out."""
    out = []
    for key in sorted((set(now) | set(then)) - {"family", "sources"}):
        a, b = now.get(key), then.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key == "params":
            out += [f"params.{k}: {b.get(k)!r} then, {a.get(k)!r} now" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def profile_command(sweep: Any, point: Any, store: str | os.PathLike[str]) -> list[str]:
    """The sweep's `mmchar profile` command of a point, not marked a sweep point: a validating run is one run of
    an option, which findings must not pair with a sweep's points."""
    from mmchar.sweep import child_command

    return [a for a in child_command(sweep, point, store) if a != "--sweep-point"]


def this_gpu() -> str | None:
    """The CUDA device here, by name (None without one)."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _target_gpu(run: Run, change: Change, here: Callable[[], str | None]) -> Change:
    """A move to another GPU measures the run's own options on that GPU, where this machine is one.

    Raises:
        NotRunnable: this machine is not that GPU (or the run is no CUDA run).
    """
    target = change.target_gpu or ""
    spec = load_gpus().get(target, {})
    name = here() if (run.meta.get("device") or {}).get("type") == "cuda" else None
    if name is None or gpu_key(name) != target:
        cuda = (run.meta.get("device") or {}).get("type") == "cuda"
        have = (name or "no CUDA device") if cuda else "the run is a CPU run"
        raise NotRunnable(f"--target-gpu {target} needs the other GPU: measure the run on an "
                          f"{spec.get('name', target)} (here: {have})")
    return Change(dict(change.fields))


def _same_gpu(run: Run, here: Callable[[], str | None]) -> None:
    """An option of a CUDA run is measured on the run's own GPU model, or its measurement would mix the option
    with a change of GPU (that is `--target-gpu`'s projection, measured apart).

    Raises:
        NotRunnable: the run is a CUDA run and this machine has no GPU, or another one.
    """
    device = run.meta.get("device") or {}
    if device.get("type") != "cuda":
        return
    source, name = device.get("name") or "its GPU", here()
    if name is None or (gpu_key(name) or name) != (gpu_key(source) or source):
        raise NotRunnable(f"the run was measured on an {source}; this machine has {name or 'no CUDA device'}: "
                          f"measure the option on an {source}")


def _row(run: Run, opp: Opportunity, status: str, why: str = "", measured: float = float("nan"),
         validating_run: str | None = None, noisy: bool | None = None) -> dict[str, Any]:
    r = opp.row
    projected = float(r.get("projected_step_ms")) if r.get("projected_step_ms") is not None else float("nan")
    error_pct = (projected - measured) / measured * 100 if (
        math.isfinite(projected) and math.isfinite(measured) and measured > 0) else float("nan")
    return {"run_id": run.run_id, "rank": r.get("rank"), "kind": r.get("kind"), "option": r.get("option"),
            "step_key": r.get("step_key"), "step_ms": r.get("step_ms"), "projected_step_ms": projected,
            "measured_step_ms": measured, "error_pct": error_pct, "baseline_step_ms": float("nan"),
            "ratio_error_pct": float("nan"), "error": r.get("error"), "status": status,
            "why": why, "validating_run": validating_run,
            "noisy": None if noisy is None else ("yes" if noisy else "no"),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def measure(run: Run, opp: Opportunity, store: Path, *, here: Callable[[], str | None] = this_gpu,
            runner: Callable[..., Path] | None = None, starting: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One opportunity validated: its run measured (a failed run is a row of its status and error), or a row
    saying why it was not (refused by the planner, not runnable here). ``runner``: `mmchar.sweep.run_point`;
    ``starting`` is called once the planner accepted the run, before it starts (a measurement takes a while)."""
    if opp.change is None:
        return _row(run, opp, NOT_RUNNABLE, opp.why)
    refusal = _source_refusal(run)
    if refusal:
        return _row(run, opp, REFUSED, refusal)
    try:
        if opp.change.target_gpu:
            change = _target_gpu(run, opp.change, here)
        else:
            change = opp.change
            _same_gpu(run, here)
        plan, point = plan_change(run, change, store)
    except NotRunnable as e:
        return _row(run, opp, NOT_RUNNABLE, str(e))
    except MmcharError as e:
        return _row(run, opp, REFUSED, first_line(e))
    if runner is None:
        from mmchar.sweep import run_point as runner
    starting()
    folder = runner(plan, point, store, command=profile_command)
    meta = read_meta(folder)
    noisy = (meta.get("noise") or {}).get("noisy")
    if meta.get("status") != "ok":
        return _row(run, opp, str(meta.get("status")), first_line(Exception(meta.get("error") or "")),
                    validating_run=meta.get("run_id"), noisy=noisy)
    timings = meta.get("timings") or {}
    key = opp.row.get("step_key") or step_key(timings)
    # a cache's step is the mean over the generation (computed and skipped steps), as its projection is: the
    # median of a mix of the two is one of them
    stat = "mean_ms" if opp.row.get("kind") == STEP_CACHE_KIND else "median_ms"
    value = (timings.get(key) or {}).get(stat)
    if value is None:
        return _row(run, opp, "error", f"the validating run has no {key} timing", validating_run=meta.get("run_id"),
                    noisy=noisy)
    row = _row(run, opp, MEASURED, measured=float(value), validating_run=meta.get("run_id"), noisy=noisy)
    # both statistics of the step, so a baseline is read by the one each option's row is (not written to the table)
    row["_stats"] = {s: (timings.get(key) or {}).get(s) for s in ("median_ms", "mean_ms")}
    return row


def validate(run: Run, advice: pd.DataFrame, top: int, store: Path, *,
             note: Callable[[int, int, Opportunity], None] = lambda i, n, opp: None,
             done: Callable[[int, int, dict[str, Any]], None] = lambda i, n, row: None,
             here: Callable[[], str | None] = this_gpu, runner: Callable[..., Path] | None = None) -> pd.DataFrame:
    """The ``top`` opportunities of ``run`` (its rows of ``advice``) measured into ``store``, one run each;
    ``validation.csv`` there is rewritten after each, so an interruption keeps what was measured. ``note`` hears
    an opportunity as its run starts (index, count, opportunity), ``done`` each row after (index, count, row).

    Returns:
        One row per opportunity (`VALIDATION_COLUMNS`), in the order picked.
    """
    if top < 1:
        raise InvalidParameterError(f"--top {top}: validate at least one opportunity")
    mine = advice[advice["run_id"] == run.run_id]
    picked = pick(mine, run.meta.get("options") or {}, top)
    if any(opp.change is not None for opp in picked):  # something will run: the unchanged work runs first
        picked.insert(0, baseline_opportunity(mine))
    rows: list[dict[str, Any]] = []
    for i, opp in enumerate(picked):
        rows.append(measure(run, opp, store, here=here, runner=runner,
                            starting=lambda i=i, opp=opp: note(i, len(picked), opp)))
        rows = against_baseline(rows)
        write_validation(store, _frame(rows))
        done(i, len(picked), rows[-1])
    return _frame(rows)


def baseline_opportunity(advice: pd.DataFrame) -> Opportunity:
    """The run's own options measured again, in a fresh process beside the options' runs: its "projection" is the
    source run's step, so its ``error_pct`` is the drift of the unchanged work between the two measurements."""
    first = advice.iloc[0].to_dict() if len(advice) else {}
    row = {"rank": None, "kind": BASELINE_KIND, "option": BASELINE_OPTION, "step_key": first.get("step_key"),
           "step_ms": first.get("step_ms"), "projected_step_ms": first.get("step_ms"),
           "error": "the unchanged work measured again: its error is the drift between processes"}
    return Opportunity(row, Change({}))


def against_baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured option read against the re-measured baseline too: ``ratio_error_pct`` compares the projected
    ratio (projected step / the source's step) with the measured one (option's step / baseline's step), which
    cancels a drift both measurements share. NaN without a measured baseline."""
    base = next((r for r in rows if r["kind"] == BASELINE_KIND and r["status"] == MEASURED), None)
    if base is None:
        return rows
    out = []
    for r in rows:
        # the baseline's step by the statistic the row's own step is (a cache's mean, else the median)
        stat = "mean_ms" if r["kind"] == STEP_CACHE_KIND else "median_ms"
        b = (base.get("_stats") or {}).get(stat) or base["measured_step_ms"]
        r = dict(r, baseline_step_ms=b)
        proj, step, got = r["projected_step_ms"], r["step_ms"], r["measured_step_ms"]
        ok = r["kind"] != BASELINE_KIND and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                                for v in (proj, step, got))
        r["ratio_error_pct"] = ((proj / step) / (got / b) - 1) * 100 if ok else float("nan")
        out.append(r)
    return out


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=list(VALIDATION_COLUMNS))
    out["rank"] = pd.array([None if pd.isna(v) else int(v) for v in out["rank"]], dtype="Int64")
    return out


def write_validation(store: Path, rows: pd.DataFrame) -> Path:
    """``validation.csv`` of ``store`` with ``rows`` merged in: a row of the same run and option replaces the one
    before (the latest measurement stands), except that a row without a measurement (refused, not runnable, a
    failed run) never replaces one with a measurement: a re-validation elsewhere must not lose a result. Other
    rows are kept. Written through a temporary sibling; an existing table that cannot be read stops it."""
    path = Path(store) / VALIDATION_FILE
    old = read_validation([path], strict=True) if path.exists() else read_validation([])
    merged = pd.concat([old, rows], ignore_index=True) if len(old) else rows
    has = pd.to_numeric(merged["measured_step_ms"], errors="coerce").notna()
    measured_keys = set(zip(merged["run_id"][has], merged["option"][has]))
    keep = [bool(m) or (r, o) not in measured_keys for r, o, m in zip(merged["run_id"], merged["option"], has)]
    merged = _frame(merged[keep].drop_duplicates(["run_id", "option"], keep="last").to_dict("records"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    merged.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
