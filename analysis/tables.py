"""Tidy tables over many runs: the one place that turns run stores into the frames exports and dashboards use.

Every function here is pure (a list of :class:`mmchar.store.Run` in, a long-format DataFrame out), so the CSV
export, the dashboard and a notebook all see the same numbers; nothing here prints, plots or imports torch.
Each table starts with the identifying columns ``run_id, workload, backend`` so tables can be joined on
``run_id`` and grouped by workload or backend without going back to the runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmchar.schema import BREAKDOWN_COLUMNS, DEFAULT_LINEAR_BACKEND, STEP_STAGES, TIMING_KEYS, step_key
from mmchar.shares import share_of, shares_within
from mmchar.store import Run, with_added_columns

# shape parameters, and ``gpus``: the ranks a sequence-parallel run split the denoiser over (1 on one device)
PARAM_KEYS = ("height", "width", "frames", "steps", "batch", "gpus")
# who ran what, where, in which precision, and whether its timed pass can be trusted (``noisy``: the noise guard)
ID_COLUMNS = ("run_id", "label", "workload", "preset", "backend", "device", "dtype", "status", "noisy")
# what else changes the work besides the shape: shown by ``runs`` and ``export`` so such runs can be told apart
EXTRA_KEYS = ("guidance", "compile", "channels_last", "cuda_graphs")
# the runtime modes beside compile (mmchar.modes), as ``options`` records them; a run before them ran neither
MODE_KEYS = ("channels_last", "cuda_graphs")
# every runtime mode (``options`` key -> its name in labels, ``sdpa+compile``): a run under any of them is its own
# configuration, never a plain eager run (`runtime_modes`)
RUNTIME_MODES = {"compile": "compile", "channels_last": "channels-last", "cuda_graphs": "cuda-graphs"}
MEASURE_COLUMNS = ("time_us", "share", "calls", "flops", "bytes")
BUSY_KEYS = ("wall_ms", "busy_ms", "idle_ms", "busy_frac", "kernels")


def _device_name(meta: dict[str, Any]) -> str:
    device = meta.get("device") or {}
    return str(device.get("name") or device.get("type") or "")


def device_short(meta: dict[str, Any]) -> str:
    """The device as a person names it: ``H100`` for "NVIDIA H100 80GB HBM3", ``cpu`` for any CPU, the kind of any
    other accelerator (``mtia``: a foreign trace's)."""
    device = meta.get("device") or {}
    kind = device.get("type", "cuda" if device.get("name") else "cpu")
    if kind != "cuda":
        return str(kind)
    words = [w for w in str(device.get("name") or "cuda").split() if w.upper() not in ("NVIDIA", "TESLA", "GEFORCE")]
    return words[0] if words else "cuda"


def _params(meta: dict[str, Any]) -> dict[str, Any]:
    return (meta.get("config") or {}).get("params") or {}


def gpu_count(meta: dict[str, Any]) -> int:
    """The GPUs a run used: its sequence-parallel ranks, twice as many under --cfg-parallel (the halves of a guided
    step on two groups of them)."""
    opts = meta.get("options") or {}
    return int(opts.get("sequence_parallel") or 1) * (2 if opts.get("cfg_parallel") else 1)


def runtime_modes(meta: dict[str, Any]) -> tuple[str, ...]:
    """The runtime modes a run ran under, by their label names in ``RUNTIME_MODES`` order (``("compile",
    "cuda-graphs")``); ``()`` for a plain eager run. The one test of "eager" every analysis uses: a compiled graph,
    channels-last activations or replayed CUDA graphs each change the kernels and the host's share of the step, so
    such a run answers its own questions and never stands in for the eager model."""
    opts = meta.get("options") or {}
    cache = opts.get("cache") or "none"  # a step cache (mmchar.step_cache): skipped work is other work
    return (*(name for key, name in RUNTIME_MODES.items() if opts.get(key)),
            *((f"cache-{cache}",) if cache != "none" else ()))


def backend_label(meta: dict[str, Any]) -> Any:
    """The backend as tables show it: ``sdpa+compile`` for a torch.compile'd run, ``sdpa+channels-last`` and
    ``sdpa+cuda-graphs`` for the other runtime modes (``sdpa+compile+cuda-graphs`` together), ``cudnn+fp8`` for a
    run whose linear layers a projection backend computed, so analyses never mix any of them with the plain run."""
    backend = meta.get("backend")
    linear = meta.get("linear_backend") or DEFAULT_LINEAR_BACKEND
    if linear != DEFAULT_LINEAR_BACKEND:  # the linear layers replaced too (mmchar.projections): another thing measured
        backend = f"{backend}+{linear}"
    return "+".join((str(backend), *runtime_modes(meta))) if runtime_modes(meta) else backend


def is_noisy(meta: dict[str, Any]) -> bool | None:
    """The noise guard's verdict on a run's timed pass (``meta["noise"]``): True, False, or None for a run
    recorded before the guard (or a failed run, which has no timed pass)."""
    verdict = (meta.get("noise") or {}).get("noisy")
    return None if verdict is None else bool(verdict)


def noise_reasons(meta: dict[str, Any]) -> str:
    """Why the noise guard flagged a run, one line ("" when clean or unknown)."""
    return "; ".join((meta.get("noise") or {}).get("reasons") or [])


def work_fields(run: Run) -> dict[str, Any]:
    """Everything that changes the work a run measured, by name: two runs with equal fields ran the same thing.

    ``diff`` pairs runs on them (all of them, the config hash included: a changed model configuration is other
    work), a sweep's points of one configuration under several backends pair on them without ``backend`` and
    ``config_hash``, and findings never pool runs of different ``dtype`` or ``device`` silently.
    """
    meta = run.meta
    cfg = meta.get("config") or {}
    params = _params(meta)
    opts = meta.get("options") or {}
    return {
        "workload": meta.get("workload"), "preset": meta.get("preset"), "backend": backend_label(meta),
        "device": _device_name(meta), "dtype": cfg.get("dtype"),
        **{k: params.get(k) for k in ("height", "width", "frames", "steps", "batch", "guidance", "seed")},
        "compile": bool(opts.get("compile")), **{k: bool(opts.get(k)) for k in MODE_KEYS},
        "cache": opts.get("cache") or "none", "cache_schedule": opts.get("cache_schedule"),
        "memory": ",".join(sorted(cfg.get("memory") or {})),
        "gpus": gpu_count(meta), "sp_scheme": opts.get("sp_scheme") or "auto",
        "ulysses_degree": opts.get("ulysses_degree"), "cfg_parallel": bool(opts.get("cfg_parallel")),
        "fallback": opts.get("fallback"), "cross_backend": opts.get("cross_backend"),
        "scope": opts.get("scope") or "denoiser", "weights": cfg.get("weights"),
        # which linear layers a projection backend replaced (none under dense, whatever the scope said)
        "linear_scope": meta.get("linear_scope") if (meta.get("linear_backend") or DEFAULT_LINEAR_BACKEND)
        != DEFAULT_LINEAR_BACKEND else None,
        "config_hash": meta.get("config_hash"),
    }


def work_key(run: Run, without: Sequence[str] = ()) -> tuple:
    """:func:`work_fields` as a hashable key, leaving out the fields named in ``without``."""
    return tuple((k, v) for k, v in work_fields(run).items() if k not in without)


# how a varied field reads in a short label (None: its value alone, e.g. "fp16", "H100", "tiny")
_LABEL_FIELDS = {"preset": None, "device": None, "dtype": None, "height": "h", "width": "w", "frames": "f",
                 "steps": "steps", "batch": "b", "guidance": "g", "seed": "seed", "gpus": "gpus",
                 "memory": None, "sp_scheme": "sp", "fallback": "fallback", "cross_backend": "cross",
                 "scope": "scope", "linear_scope": "linear", "weights": "weights"}
# the runtime modes are not among them: the backend names them (``sdpa+channels-last``, `backend_label`)


def run_labels(runs: Sequence[Run]) -> dict[str, str]:
    """A short label per run, for everything that names a run to a person (terminal tables, dashboard axes, legends
    and dropdowns): workload, backend, then only the fields that vary among the given runs of that workload
    (``sd15 flash h=512``); runs that still collide (the same configuration measured twice) get ``#2``, ``#3`` in
    the order they were created. Full run ids stay in CSVs and hover text."""
    by_workload: dict[Any, list[Run]] = {}
    for r in runs:
        by_workload.setdefault(r.meta.get("workload"), []).append(r)
    labels: dict[str, str] = {}
    for workload, members in by_workload.items():
        fields = {r.run_id: work_fields(r) for r in members}
        for r in members:
            fields[r.run_id]["device"] = device_short(r.meta)
        varied = [k for k in _LABEL_FIELDS
                  if len({str(f.get(k)) for f in fields.values()}) > 1]
        for r in members:
            f = fields[r.run_id]
            parts = [str(workload), str(f["backend"])]
            for k in varied:
                v = f.get(k)
                if v is None or v == "" or v is False:
                    continue
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                parts.append(str(v) if _LABEL_FIELDS[k] is None else f"{_LABEL_FIELDS[k]}={v}")
            labels[r.run_id] = " ".join(parts)
    seen: dict[str, list[Run]] = {}
    # ok runs take the plain label before failed ones, then the order they were created in
    for r in sorted(runs, key=lambda r: (r.meta.get("status") != "ok", r.meta.get("created") or "", r.run_id)):
        seen.setdefault(labels[r.run_id], []).append(r)
    for label, members in seen.items():
        if len(members) > 1:
            for i, r in enumerate(members[1:], start=2):
                labels[r.run_id] = f"{label} #{i}"
    return labels


def _ids(run: Run, label: str | None = None) -> dict[str, Any]:
    """The identifying columns of one run: who ran what, where, with which shape parameters."""
    meta = run.meta
    params = _params(meta)
    ids = {
        "run_id": run.run_id,
        "label": label if label is not None else run.run_id,
        "workload": meta.get("workload"),
        "preset": meta.get("preset"),
        "backend": backend_label(meta),
        "device": _device_name(meta),
        "dtype": (meta.get("config") or {}).get("dtype"),
        "status": meta.get("status"),
        "noisy": is_noisy(meta),
    }
    ids.update({k: params.get(k) for k in PARAM_KEYS})
    ids["gpus"] = gpu_count(meta)
    ids["guidance"] = params.get("guidance")
    ids["compile"] = bool((meta.get("options") or {}).get("compile"))
    ids.update({k: bool((meta.get("options") or {}).get(k)) for k in MODE_KEYS})
    return ids


def with_kernels(runs: Sequence[Run]) -> Iterator[tuple[Run, pd.DataFrame]]:
    """Each ``ok`` run that holds kernel rows, with its rows (every column of the schema: one added since a run
    was written reads as its default, `with_added_columns`; `load_run` has done so for stored runs, this covers
    runs built in memory): the analyses over kernels leave out failed runs and runs stored without kernels alike."""
    for run in runs:
        k = run.kernels
        if run.status == "ok" and k is not None and not k.empty:
            yield run, with_added_columns(k)


def profiled_steps(run: Run) -> int:
    """The steps of the full profile: a step stage's kernel time in ``kernels.parquet`` over this is its time per
    step. ``passes.profile_steps`` of a profiled run; the ``ProfilerStep`` numbers an imported trace's kernels fall
    in (``profiled_steps``: without them `diff` read an imported two-step trace of a run as twice its time per
    step); 1 where a run says neither."""
    planned = (run.meta.get("passes") or {}).get("profile_steps")
    if planned:
        return max(int(planned), 1)
    seen = run.meta.get("profiled_steps")
    return max(len(seen), 1) if isinstance(seen, list) else 1


def _has_rows(run: Run) -> bool:
    return run.status == "ok" and len(run.breakdown) > 0


def run_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: identity, parameters, status, the noise guard's verdict and error message (the overview's
    source).

    Args:
        runs: loaded runs, any status.

    Returns:
        Columns ``run_id, label, workload, preset, backend, device, dtype, status, noisy, height, width, frames,
        steps, batch, gpus, guidance, compile, channels_last, cuda_graphs, created, noise, error, changes_math``
        (``label``: the short name of :func:`run_labels`; ``noise``: why the guard flagged the run;
        ``changes_math``: the backend replaced self-attention with other maths: linear, WERSA); one row per run in
        input order.
    """
    labels = run_labels(runs)
    rows = [dict(_ids(r, labels[r.run_id]), created=r.meta.get("created"), noise=noise_reasons(r.meta),
                 error=r.meta.get("error"), changes_math=bool(r.meta.get("backend_changes_math", False)))
            for r in runs]
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, *PARAM_KEYS, *EXTRA_KEYS, "created", "noise", "error",
                                       "changes_math"])


def breakdown_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Every run's ``breakdown.csv`` stacked, with identifying columns prepended.

    A run without breakdown rows (a failed run, status ``oom``/``error``) contributes one row with its status
    and NaN measures, so an export still lists it.

    Args:
        runs: loaded runs, any status.

    Returns:
        Columns ``run_id, label, workload, preset, backend, device, dtype, status, noisy, height, width, frames,
        steps, batch, gpus, guidance, compile, channels_last, cuda_graphs, stage, op_class, attn_site, time_us,
        share, calls, flops, bytes``;
        ``attn_site`` is ``""`` outside attention.
    """
    columns = [*ID_COLUMNS, *PARAM_KEYS, *EXTRA_KEYS, *BREAKDOWN_COLUMNS]
    labels = run_labels(runs)
    frames = []
    for run in runs:
        ids = _ids(run, labels[run.run_id])
        if _has_rows(run):
            bd = run.breakdown.reindex(columns=list(BREAKDOWN_COLUMNS)).copy()
            bd["attn_site"] = bd["attn_site"].fillna("").astype(str)
            for key, value in ids.items():
                bd[key] = value
        else:
            bd = pd.DataFrame([dict(ids, stage="", op_class="", attn_site="")])
        frames.append(bd.reindex(columns=columns))
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    for col in MEASURE_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def stage_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Latency and GPU busy/idle per run and timing key.

    ``stage`` holds a timing key of ``meta["timings"]`` (``e2e``, ``denoiser_step`` and the stages) or a stage
    that only ``meta["busy"]`` reports; latency comes from the uninstrumented timed pass, busy/idle from the
    light profile, so they sit side by side rather than being derived from each other.

    Args:
        runs: loaded runs; runs without timings or busy data contribute no rows.

    Returns:
        Columns ``run_id, label, workload, backend, device, status, stage, median_ms, min_ms, max_ms, n, cv,
        spread, wall_ms, busy_ms, idle_ms, busy_frac, kernels`` (``cv``: the coefficient of variation of the timed
        samples; ``spread``: their robust spread, what the noise guard judges; NaN for runs recorded before them);
        rows ordered by run, then by ``schema.TIMING_KEYS``.
    """
    columns = ["run_id", "label", "workload", "backend", "device", "status", "stage",
               "median_ms", "min_ms", "max_ms", "n", "cv", "spread", *BUSY_KEYS]
    order = {k: i for i, k in enumerate(TIMING_KEYS)}
    labels = run_labels(runs)
    rows = []
    for run in runs:
        timings = run.meta.get("timings") or {}
        busy = run.meta.get("busy") or {}
        keys = sorted(set(timings) | set(busy), key=lambda k: (order.get(k, len(order)), k))
        ids = {k: v for k, v in _ids(run, labels[run.run_id]).items() if k in columns}
        for key in keys:
            t, b = timings.get(key) or {}, busy.get(key) or {}
            rows.append(dict(ids, stage=key,
                             **{k: t.get(k, np.nan) for k in ("median_ms", "min_ms", "max_ms", "n", "cv", "spread")},
                             **{k: b.get(k, np.nan) for k in BUSY_KEYS}))
    out = pd.DataFrame(rows, columns=columns)
    for col in columns[7:]:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def attention_site_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Attention time per run, stage and attention site, with each site's share of the stage's attention.

    Args:
        runs: loaded runs; only ``ok`` runs with attention rows contribute.

    Returns:
        Columns ``run_id, label, workload, backend, stage, attn_site, time_us, calls, attn_share, stage_share``:
        ``label`` = the run's short name (:func:`run_labels`), ``attn_share`` = site time / attention time of the
        stage (sums to 1 per run × stage), ``stage_share`` = site time / all kernel time of the stage (the
        breakdown's share).
    """
    columns = ["run_id", "label", "workload", "backend", "stage", "attn_site", "time_us", "calls", "attn_share",
               "stage_share"]
    bd = breakdown_table(runs)
    att = bd[bd["op_class"] == "attention"]
    if att.empty:
        return pd.DataFrame(columns=columns)
    keys = ["run_id", "label", "workload", "backend", "stage", "attn_site"]
    out = (att.groupby(keys, sort=False, dropna=False)
              .agg(time_us=("time_us", "sum"), calls=("calls", "sum"), stage_share=("share", "sum"))
              .reset_index())
    out["attn_share"] = shares_within(out, ["run_id", "stage"])
    return out[columns]


def top_kernels_table(runs: Sequence[Run], n: int = 15) -> pd.DataFrame:
    """The ``n`` kernels with the most total time in each run.

    Kernels are grouped by name over all stages and steps; a name that ran under several op classes (a bmm
    inside and outside attention cores) is labelled with the class that holds most of its time.

    Args:
        runs: loaded runs; runs without kernel rows contribute nothing.
        n: kernels kept per run.

    Returns:
        Columns ``run_id, label, workload, backend, rank, kernel, op_class, calls, time_us, share`` with ``label``
        = the run's short name (:func:`run_labels`) and ``share`` = kernel time / all kernel time of the run;
        ``rank`` starts at 1 (most time), ties broken by name.
    """
    columns = ["run_id", "label", "workload", "backend", "rank", "kernel", "op_class", "calls", "time_us", "share"]
    labels = run_labels(runs)
    frames = []
    for run in runs:
        k = run.kernels
        if k is None or k.empty:
            continue
        k = pd.DataFrame({"kernel": k["kernel"].astype(str), "op_class": k["op_class"].astype(str),
                          "dur_us": k["dur_us"].astype(float)})
        total = k["dur_us"].sum()
        by_class = k.groupby(["kernel", "op_class"], sort=False)["dur_us"].sum().reset_index()
        dominant = (by_class.sort_values(["dur_us", "op_class"], ascending=[False, True])
                    .drop_duplicates("kernel").set_index("kernel")["op_class"])
        agg = k.groupby("kernel", sort=False).agg(calls=("dur_us", "size"), time_us=("dur_us", "sum")).reset_index()
        agg = agg.sort_values(["time_us", "kernel"], ascending=[False, True]).head(n).reset_index(drop=True)
        agg["op_class"] = agg["kernel"].map(dominant)
        agg["share"] = share_of(agg["time_us"], total)  # of all the run's kernels, not of the n shown
        agg["rank"] = np.arange(1, len(agg) + 1)
        agg["run_id"], agg["label"] = run.run_id, labels[run.run_id]
        agg["workload"], agg["backend"] = run.workload, run.backend
        frames.append(agg[columns])
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def _median_ms(meta: dict[str, Any], key: str) -> float:
    value = ((meta.get("timings") or {}).get(key) or {}).get("median_ms")
    return float(value) if value is not None else np.nan


def _busy_ms(meta: dict[str, Any], key: str) -> float:
    value = ((meta.get("busy") or {}).get(key) or {}).get("busy_ms")
    return float(value) if value is not None else np.nan


def _attention_us_per_step(run: Run) -> float:
    """Attention time of one denoising step: recorded in meta, else the profiled denoiser steps' mean."""
    value = run.meta.get("attention_time_us_per_step")
    if value is not None:
        return float(value)
    k = run.kernels
    if k is None or k.empty:
        return np.nan
    den = k[k["stage"].astype(str).isin(STEP_STAGES)]
    steps = den["step"].nunique()
    if not steps:
        return np.nan
    return float(den.loc[den["op_class"].astype(str) == "attention", "dur_us"].sum()) / steps


def _step(run: Run) -> str:
    """The timing key of the run's step (a token model's generator step stands where a denoiser step would)."""
    return step_key(run.meta.get("timings") or {})


def comparison_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Backend comparison: latency, attention time and agreement of each run against its group's baseline.

    Rows are the runs whose meta has a ``compare`` entry, plus each group's baseline run when it is among
    ``runs`` (``is_baseline`` True, speedups 1). Speedup = baseline time / run time (> 1 is faster); NaN where
    the baseline run is not among ``runs``.

    Args:
        runs: loaded runs, any mix.

    Returns:
        Columns ``group, run_id, label, workload, backend, baseline_run_id, baseline_backend, is_baseline, status,
        e2e_ms, denoiser_step_ms, attention_us_per_step, e2e_speedup, step_speedup, attention_speedup,
        max_abs_diff, cosine, token_match, agrees`` (token_match: a token model's fraction of equal tokens, where
        cosine means nothing; agrees is a nullable boolean: NA where not checked).
    """
    columns = ["group", "run_id", "label", "workload", "backend", "baseline_run_id", "baseline_backend", "is_baseline",
               "status", "e2e_ms", "denoiser_step_ms", "denoiser_busy_ms", "attention_us_per_step", "e2e_speedup",
               "step_speedup", "busy_speedup", "attention_speedup", "max_abs_diff", "cosine", "token_match", "agrees"]
    by_id = {r.run_id: r for r in runs}
    members: list[tuple[Run, dict[str, Any]]] = [(r, r.meta["compare"]) for r in runs if r.meta.get("compare")]
    seen = {r.run_id for r, _ in members}
    for _, cmp in list(members):
        base = by_id.get(cmp.get("baseline_run_id"))
        if base is not None and base.run_id not in seen:
            seen.add(base.run_id)
            members.append((base, {"group": cmp.get("group"), "baseline_run_id": base.run_id,
                                   "baseline_backend": base.backend}))
    labels = run_labels([r for r, _ in members])
    rows = []
    for run, cmp in members:
        base = by_id.get(cmp.get("baseline_run_id"))
        row = {
            "group": cmp.get("group"), "run_id": run.run_id, "label": labels[run.run_id], "workload": run.workload,
            "backend": cmp.get("variant", run.backend),  # compare's name for it: cudnn+fp8 beside cudnn
            "baseline_run_id": cmp.get("baseline_run_id"), "baseline_backend": cmp.get("baseline_backend"),
            "is_baseline": run.run_id == cmp.get("baseline_run_id"), "status": run.status,
            "e2e_ms": _median_ms(run.meta, "e2e"), "denoiser_step_ms": _median_ms(run.meta, _step(run)),
            "denoiser_busy_ms": _busy_ms(run.meta, _step(run)), "attention_us_per_step": _attention_us_per_step(run),
            "max_abs_diff": cmp.get("max_abs_diff", np.nan), "cosine": cmp.get("cosine", np.nan),
            "token_match": cmp.get("token_match", np.nan), "agrees": cmp.get("agrees"),
        }
        base_values = ((_median_ms(base.meta, "e2e"), _median_ms(base.meta, _step(base)),
                        _busy_ms(base.meta, _step(base)), _attention_us_per_step(base))
                       if base is not None else (np.nan,) * 4)
        for name, b, value in zip(("e2e_speedup", "step_speedup", "busy_speedup", "attention_speedup"), base_values,
                                  (row["e2e_ms"], row["denoiser_step_ms"], row["denoiser_busy_ms"],
                                   row["attention_us_per_step"])):
            row[name] = b / value if value and not np.isnan(value) else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    for col in ("max_abs_diff", "cosine", "token_match"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out["agrees"] = out["agrees"].astype("boolean")  # NA where not checked (the baseline itself)
    out["is_baseline"] = out["is_baseline"].astype(bool)
    # each group together, its baseline first; groups in order of first appearance
    first = {g: i for i, g in reversed(list(enumerate(out["group"])))}
    out["_g"] = out["group"].map(first)
    return out.sort_values(["_g", "is_baseline"], ascending=[True, False], kind="stable").drop(
        columns="_g").reset_index(drop=True)
