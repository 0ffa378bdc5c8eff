"""Scaling: latency against each parameter a sweep varied while the rest of the work held, one point per
configuration, with the fitted exponent of latency ∝ parameter^k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.schema import step_key
from mmchar.store import Run

from .tables import (PARAM_KEYS, RUNTIME_MODES, device_short, is_noisy, noise_reasons, run_labels, work_fields,
                     work_key)

# fewer distinct parameter values than this: a series is drawn but gets no exponent (two points always lie on a
# line: its r² of 1 would say nothing)
MIN_FIT_POINTS = 3
# work fields that name a series where they differ between the series of one workload: an H100 series and a CPU
# series (or bf16 and fp32) are two lines, and the reader must see which is which
# the runtime modes (compile, channels-last, CUDA graphs) each make their own series, named by the mode when on
# ("compile", "cuda-graphs") and by nothing when off, as `backend_label` names them
_SERIES_FIELDS = ("device", "dtype", "guidance", "seed", *RUNTIME_MODES, "memory", "fallback", "cross_backend",
                  "scope", "weights")
_BARE_FIELDS = ("device", "dtype", "memory", "weights")  # named by their value alone ("H100", "bf16")


def _series_part(field: str, value: object) -> str | None:
    """How a varied work field reads in a series name: a runtime mode by its name when on (None when off), a bare
    field by its value, any other as ``field=value``; None for no value."""
    if field in RUNTIME_MODES:
        return RUNTIME_MODES[field] if value else None
    if value in (None, ""):
        return None
    return str(value) if field in _BARE_FIELDS else f"{field}={value}"


def series_names(groups: dict[tuple, list[Run]], param: str) -> dict[tuple, str]:
    """A short name per series of ``param``: its preset, the shape parameters it held, and whichever other work
    fields differ between the series of its workload (the device by its short name); names that still collide
    within a workload and backend get ``#2``, ``#3``."""
    fields = {key: dict(key) for key in groups}
    by_workload: dict[object, list[tuple]] = {}
    for key in groups:
        by_workload.setdefault(fields[key]["workload"], []).append(key)
    names: dict[tuple, str] = {}
    for keys in by_workload.values():
        varied = [f for f in _SERIES_FIELDS if len({str(fields[k].get(f)) for k in keys}) > 1]
        for key in keys:
            f = dict(fields[key], device=device_short(groups[key][0].meta))
            held = [f"{p}={f[p]}" for p in PARAM_KEYS
                    if p != param and f.get(p) is not None and not (p == "gpus" and f[p] == 1)]
            extra = [p for p in (_series_part(v, f.get(v)) for v in varied) if p is not None]
            names[key] = ", ".join(str(x) for x in (f["preset"], *held, *extra) if x not in (None, ""))
    counts: dict[tuple, int] = {}
    for key in groups:
        slot = (fields[key]["workload"], fields[key]["backend"], names[key])
        counts[slot] = counts.get(slot, 0) + 1
        if counts[slot] > 1:
            names[key] = f"{names[key]} #{counts[slot]}"
    return names


def _point(pairs: list[tuple[Run, float]], labels: dict[str, str]) -> dict[str, object]:
    """One configuration's point from every run of it: the median latency of its runs the noise guard did not flag
    (a noisy re-measurement would drag a clean point), of all of them only where every run was flagged."""
    pairs = list({r.run_id: (r, ms) for r, ms in pairs}.values())  # one run loaded from two stores counts once
    clean = [(r, ms) for r, ms in pairs if not is_noisy(r.meta)]
    used = clean or pairs
    reasons = () if clean else dict.fromkeys(filter(None, (noise_reasons(r.meta) for r, _ in used)))
    return {"median_ms": float(np.median([ms for _, ms in used])), "n_runs": len(used),
            "n_left_out": len(pairs) - len(used), "noisy": not clean, "noise": "; ".join(reasons),
            "label": ", ".join(labels.get(r.run_id, r.run_id) for r, _ in used),
            "run_id": ", ".join(r.run_id for r, _ in used)}


def scaling_points(runs: Sequence[Run]) -> pd.DataFrame:
    """The latencies behind :func:`scaling_table`: runs that differ in one parameter (height, width, frames, steps,
    batch, gpus) while everything else that changes the work holds (``work_key``: a series never mixes devices,
    dtypes or presets), one point per configuration.

    Returns:
        Columns ``workload, backend, param, series, metric, value, median_ms, n_runs, n_left_out, noisy, noise,
        label, run_id``: one row per series × value. ``series`` names what the series held (a 2-D sweep has one
        height series per width); ``metric`` is ``e2e`` or the runs' step key. A configuration measured more than
        once (a re-measured point, a sweep kept in two stores) is the median of its runs: of those the noise guard
        did not flag when it has any (``n_left_out`` flagged duplicates left out), else of all of them (``noisy``,
        with their reasons in ``noise``); ``label`` and ``run_id`` list the runs behind the point. Series with
        fewer than two distinct values are left out.
    """
    cols = ["workload", "backend", "param", "series", "metric", "value", "median_ms", "n_runs", "n_left_out",
            "noisy", "noise", "label", "run_id"]
    # a forced sequence-parallel scheme is a comparison (sequence_parallel_table), not a point of a series
    ok = [r for r in runs if r.status == "ok" and r.meta.get("timings")
          and (r.meta.get("options") or {}).get("sp_scheme", "auto") == "auto"]
    labels = run_labels(runs)
    rows = []
    for param in PARAM_KEYS:
        groups: dict[tuple, list[Run]] = {}
        for r in ok:
            if work_fields(r).get(param) is not None:
                groups.setdefault(work_key(r, without=(param, "config_hash")), []).append(r)
        values = {key: {float(work_fields(r)[param]) for r in members} for key, members in groups.items()}
        groups = {key: m for key, m in groups.items() if len(values[key]) >= 2 and min(values[key]) > 0}
        names = series_names(groups, param)
        for key, members in groups.items():
            f = dict(key)
            for metric in ("e2e", step_key(members[0].meta["timings"])):
                by_value: dict[float, list[tuple[Run, float]]] = {}
                for r in members:
                    ms = (r.meta["timings"].get(metric) or {}).get("median_ms")
                    if ms:
                        by_value.setdefault(float(work_fields(r)[param]), []).append((r, float(ms)))
                if len(by_value) < 2:
                    continue
                rows += [{"workload": f["workload"], "backend": f["backend"], "param": param, "series": names[key],
                          "metric": metric, "value": x, **_point(by_value[x], labels)} for x in sorted(by_value)]
    return pd.DataFrame(rows, columns=cols)


def scaling_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Latency against each parameter that varies while the others hold (:func:`scaling_points`), with the fitted
    exponent of latency ∝ parameter^k (least squares in log-log).

    Returns:
        Columns ``workload, backend, param, series, metric, n_points, values, exponent, r2``: one row per series;
        ``exponent`` and ``r2`` are NaN for a series of fewer than ``MIN_FIT_POINTS`` distinct values.
    """
    return scaling_fits(scaling_points(runs))


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(k, r²) of the least-squares line through log y against log x."""
    lx, ly = np.log(x), np.log(y)
    k, c = np.polyfit(lx, ly, 1)
    ss = float(((ly - ly.mean()) ** 2).sum())
    return float(k), 1 - float(((ly - (k * lx + c)) ** 2).sum()) / ss if ss > 0 else 1.0


def scaling_fits(pts: pd.DataFrame) -> pd.DataFrame:
    """:func:`scaling_table` from points already gathered (the dashboard draws the points and their fits)."""
    cols = ["workload", "backend", "param", "series", "metric", "n_points", "values", "exponent", "r2"]
    rows = []
    for (workload, backend, param, series, metric), g in pts.groupby(
            ["workload", "backend", "param", "series", "metric"], sort=False):
        values = sorted(set(g["value"]))
        k, r2 = (_fit(g["value"].to_numpy(float), g["median_ms"].to_numpy(float))
                 if len(values) >= MIN_FIT_POINTS else (np.nan, np.nan))
        rows.append({"workload": workload, "backend": backend, "param": param, "series": series, "metric": metric,
                     "n_points": len(values), "values": ",".join(f"{x:g}" for x in values), "exponent": k, "r2": r2})
    return pd.DataFrame(rows, columns=cols)
