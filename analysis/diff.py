"""Diff of two runs, or of two stores run by run: latency per timing key, kernel time per stage × op class, and
kernel time per module, each as A, B and the change in percent (positive: B is slower).

Runs of two stores pair up by what they ran (workload, preset, backend, parameters), so a store of last week's
runs diffs against this week's. Kernel times of a step stage are per profiled step (runs profiled over different
step counts compare), other stages per generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from mmchar.schema import STEP_STAGES
from mmchar.store import Run

from .tables import backend_label

DIFF_COLUMNS = ("pair", "run_a", "run_b", "level", "stage", "key", "a", "b", "change_pct")


def _what(run: Run) -> tuple:
    params = (run.meta.get("config") or {}).get("params") or {}
    return (run.workload, run.meta.get("preset"), backend_label(run.meta),
            tuple(sorted((k, v) for k, v in params.items() if k != "prompt")))


def pair_runs(a: Sequence[Run], b: Sequence[Run]) -> list[tuple[Run, Run]]:
    """One run against one run as given; otherwise runs that ran the same thing (the newest of each side)."""
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])]
    newest = {}
    for side, runs in (("a", a), ("b", b)):
        for r in sorted(runs, key=lambda r: r.meta.get("created") or ""):
            newest[(side, _what(r))] = r
    return [(newest[("a", w)], newest[("b", w)]) for side, w in list(newest) if side == "a" and ("b", w) in newest]


def _pct(a: float, b: float) -> float:
    return (b - a) / a * 100.0 if a else float("nan")


def _profiled_steps(run: Run) -> int:
    return max(int((run.meta.get("passes") or {}).get("profile_steps") or 1), 1)


def _times(run: Run, frame: pd.DataFrame | None, key: str, col: str) -> dict[tuple[str, str], float]:
    """Time per (stage, ``key``): per profiled step for step stages, per generation for the others."""
    if frame is None or frame.empty:
        return {}
    steps = _profiled_steps(run)
    per = frame.groupby(["stage", key], observed=True)[col].sum()
    return {(str(s), str(x)): float(t) / (steps if s in STEP_STAGES else 1) for (s, x), t in per.items() if str(x)}


def _class_times(run: Run) -> dict[tuple[str, str], float]:
    return _times(run, run.breakdown, "op_class", "time_us")


def _module_times(run: Run) -> dict[tuple[str, str], float]:
    return _times(run, run.kernels, "module_path", "dur_us")


def diff_table(a: Sequence[Run], b: Sequence[Run]) -> pd.DataFrame:
    """Every paired run's differences.

    Args:
        a, b: loaded runs (with kernels for the module level): the baseline side and the new side.

    Returns:
        Columns ``pair, run_a, run_b, level, stage, key, a, b, change_pct``: ``level`` is ``latency`` (key: a
        timing key, ms), ``class`` (key: an op class, µs per step or per generation) or ``module`` (key: a module
        path, µs); only ok runs pair.
    """
    rows: list[dict[str, Any]] = []
    for i, (ra, rb) in enumerate(pair_runs([r for r in a if r.status == "ok"], [r for r in b if r.status == "ok"])):
        base = {"pair": i, "run_a": ra.run_id, "run_b": rb.run_id}
        ta, tb = ra.meta.get("timings") or {}, rb.meta.get("timings") or {}
        for key in ta:
            if key in tb:
                x, y = ta[key]["median_ms"], tb[key]["median_ms"]
                rows.append({**base, "level": "latency", "stage": "", "key": key, "a": x, "b": y, "change_pct": _pct(x, y)})
        for level, fn in (("class", _class_times), ("module", _module_times)):
            xa, xb = fn(ra), fn(rb)
            for sk in sorted(set(xa) | set(xb)):
                x, y = xa.get(sk, 0.0), xb.get(sk, 0.0)
                rows.append({**base, "level": level, "stage": sk[0], "key": sk[1], "a": x, "b": y,
                             "change_pct": _pct(x, y)})
    return pd.DataFrame(rows, columns=list(DIFF_COLUMNS))


def regressions(diff: pd.DataFrame, above_pct: float, min_us: float = 1.0) -> pd.DataFrame:
    """Latencies and class times that grew by more than ``above_pct`` percent (class times under ``min_us`` µs in
    both runs are noise, not regressions)."""
    gated = diff[diff["level"].isin(["latency", "class"])]
    big = (gated["level"] == "latency") | (gated[["a", "b"]].max(axis=1) >= min_us)
    return gated[big & (gated["change_pct"] > above_pct)]
