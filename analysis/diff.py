"""Diff of two runs, or of two stores run by run: latency per timing key, kernel time per stage × op class, and
kernel time per module, each as A, B, the change in percent (positive: B is slower) and each run's own spread.

Runs of two stores pair up only when they did the same work (every field of :func:`work_fields`: dtype, device,
guidance, memory options, the config hash ...): an fp32 run against an fp16 run measures the dtype, not the code.
The runs left unpaired are listed with the fields that kept them apart. Kernel times of a step stage are per
profiled step (runs profiled over different step counts compare), other stages per generation.

A change is only a regression when it is larger than the noise: both runs' measured spread (a latency's timed
samples, a class time's profiled steps) and an absolute floor in µs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from mmchar.errors import InvalidParameterError
from mmchar.schema import STEP_STAGES
from mmchar.store import Run

from .tables import profiled_steps, run_labels, work_fields, work_key

DIFF_COLUMNS = ("pair", "run_a", "run_b", "level", "stage", "key", "unit", "a", "b", "change_pct", "spread_a",
                "spread_b")
UNPAIRED_COLUMNS = ("side", "run_id", "label", "reason", "closest")
UNITS = {"latency": "ms", "class": "us", "module": "us"}
MIN_US = 50.0  # the smallest growth --fail-above gates on: below it, a kernel class's change is launch jitter


def _created(run: Run) -> str:
    return run.meta.get("created") or ""


def _ok(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.status == "ok"]


def _newest(runs: Sequence[Run]) -> dict[tuple, Run]:
    """The newest ok run of each configuration, in the order the configurations first appear (oldest first)."""
    newest: dict[tuple, Run] = {}
    for r in sorted(_ok(runs), key=_created):
        newest[work_key(r)] = r
    return newest


def pair_runs(a: Sequence[Run], b: Sequence[Run]) -> list[tuple[Run, Run]]:
    """One run against one run as given (both ok); otherwise runs that did the same work (equal :func:`work_key`),
    the newest of each side."""
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])] if a[0].status == b[0].status == "ok" else []
    na, nb = _newest(a), _newest(b)
    return [(ra, nb[key]) for key, ra in na.items() if key in nb]


def _show(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def work_differences(run: Run, other: Run) -> list[str]:
    """The work fields in which ``run`` differs from ``other``, as ``"dtype fp32 vs fp16"`` (``run``'s value
    first). The config hash is named only when nothing else differs: it changes with every other field, and alone
    it means the model configuration or the prompt changed."""
    mine, theirs = work_fields(run), work_fields(other)
    named = [f"{k} {_show(v)} vs {_show(theirs[k])}" for k, v in mine.items()
             if k != "config_hash" and v != theirs[k]]
    if not named and mine["config_hash"] != theirs["config_hash"]:
        named = [f"config_hash {_show(mine['config_hash'])} vs {_show(theirs['config_hash'])} (model configuration "
                 "or prompt)"]
    return named


def _distance(run: Run, other: Run) -> tuple[int, bool]:
    """How far apart two runs' work is: the fields that differ, then whether the config hash does."""
    mine, theirs = work_fields(run), work_fields(other)
    fields = sum(v != theirs[k] for k, v in mine.items() if k != "config_hash")
    return fields, mine["config_hash"] != theirs["config_hash"]


def _closest(run: Run, candidates: Sequence[Run]) -> Run:
    """The candidate whose work is nearest ``run``'s (the newest among equals)."""
    return min(sorted(candidates, key=_created, reverse=True), key=lambda c: _distance(run, c))


def _why_unpaired(run: Run, newest_mine: dict[tuple, Run], other: Sequence[Run]) -> tuple[str, str]:
    """Why ``run`` paired with no run of ``other``, and the closest run there ("" if none); ``newest_mine``: the
    newest run of each configuration on ``run``'s side."""
    if run.status != "ok":
        return f"status {run.status}: only ok runs pair", ""
    newest = newest_mine[work_key(run)]
    if newest is not run:
        return f"an older run of the same configuration: the newest, {newest.run_id}, stands for it", ""
    same = [r for r in _ok(other) if r.workload == run.workload]
    if not same:
        failed = any(r.workload == run.workload for r in other)
        return f"no {'ok ' if failed else ''}run of workload {run.workload} on the other side", ""
    closest = _closest(run, same)
    return "; ".join(work_differences(run, closest)), closest.run_id


def unpaired_runs(a: Sequence[Run], b: Sequence[Run]) -> pd.DataFrame:
    """Every run :func:`pair_runs` leaves out, and why: the fields by which it differs from the closest run of the
    other side with its workload, "no run of workload X on the other side", a failed status, or a newer run of the
    same configuration that pairs in its place.

    Args:
        a, b: loaded runs of the baseline side and of the new side, any status.

    Returns:
        Columns ``side, run_id, label, reason, closest`` (``side``: ``a`` or ``b``; ``closest``: the run id the
        reason compares with, "" when none); side a first, each side in the given order.
    """
    paired = {(side, r.run_id) for pair in pair_runs(a, b) for side, r in zip("ab", pair)}
    labels = run_labels([*a, *b])
    rows = []
    for side, mine, other in (("a", a, b), ("b", b, a)):
        newest = _newest(mine)
        for r in mine:
            if (side, r.run_id) not in paired:
                reason, closest = _why_unpaired(r, newest, other)
                rows.append({"side": side, "run_id": r.run_id, "label": labels[r.run_id], "reason": reason,
                             "closest": closest})
    return pd.DataFrame(rows, columns=list(UNPAIRED_COLUMNS))


def _pct(a: float, b: float) -> float:
    return (b - a) / a * 100.0 if a else float("nan")


def _times(run: Run, frame: pd.DataFrame | None, key: str, col: str) -> dict[tuple[str, str], float]:
    """Time per (stage, ``key``): per profiled step for step stages, per generation for the others."""
    if frame is None or frame.empty:
        return {}
    steps = profiled_steps(run)
    per = frame.groupby(["stage", key], observed=True)[col].sum()
    return {(str(s), str(x)): float(t) / (steps if s in STEP_STAGES else 1) for (s, x), t in per.items() if str(x)}


def _step_spreads(run: Run, key: str) -> dict[tuple[str, str], float]:
    """Range (max − min) over the profiled steps of each step stage × ``key``'s kernel time per step, in µs.

    A step where the class or module launched nothing counts as 0 µs. Stages called once per generation, and
    runs profiled over one step, have no measured spread: they are absent.
    """
    k = run.kernels
    if k is None or k.empty:
        return {}
    k = pd.DataFrame({"stage": k["stage"].astype(str), "step": k["step"], "x": k[key].astype(str),
                      "dur_us": k["dur_us"].astype(float)})
    out: dict[tuple[str, str], float] = {}
    for stage, part in k[k["stage"].isin(STEP_STAGES)].groupby("stage"):
        per = part.groupby(["x", "step"])["dur_us"].sum().unstack(fill_value=0.0)
        if per.shape[1] < 2:
            continue
        out.update({(str(stage), x): float(row.max() - row.min()) for x, row in per.iterrows() if x})
    return out


def _latency_rows(ra: Run, rb: Run) -> list[dict[str, Any]]:
    ta, tb = ra.meta.get("timings") or {}, rb.meta.get("timings") or {}
    rows = []
    for key in ta:
        if key not in tb:
            continue
        x, y = ta[key]["median_ms"], tb[key]["median_ms"]
        rows.append({"level": "latency", "stage": "", "key": key, "a": x, "b": y, "change_pct": _pct(x, y),
                     "spread_a": _spread_ms(ta[key]), "spread_b": _spread_ms(tb[key])})
    return rows


def _spread_ms(timing: dict[str, Any]) -> float:
    """The spread of one timing key in ms: its robust spread (1.4826 x MAD, the noise guard's measure: one outlier
    among the timed samples cannot switch the gate off) times its median; for runs recorded before it, the range
    of the samples (NaN when not recorded)."""
    spread, median = timing.get("spread"), timing.get("median_ms")
    if spread is not None and median is not None:
        return float(spread) * float(median)
    lo, hi = timing.get("min_ms"), timing.get("max_ms")
    return float(hi) - float(lo) if lo is not None and hi is not None else math.nan


def _kernel_rows(ra: Run, rb: Run, level: str) -> list[dict[str, Any]]:
    if level == "class":
        xa, xb = (_times(r, r.breakdown, "op_class", "time_us") for r in (ra, rb))
        sa, sb = (_step_spreads(r, "op_class") for r in (ra, rb))
    else:
        xa, xb = (_times(r, r.kernels, "module_path", "dur_us") for r in (ra, rb))
        sa, sb = (_step_spreads(r, "module_path") for r in (ra, rb))
    rows = []
    for sk in sorted(set(xa) | set(xb)):
        x, y = xa.get(sk, 0.0), xb.get(sk, 0.0)
        rows.append({"level": level, "stage": sk[0], "key": sk[1], "a": x, "b": y, "change_pct": _pct(x, y),
                     "spread_a": sa.get(sk, math.nan), "spread_b": sb.get(sk, math.nan)})
    return rows


def diff_table(a: Sequence[Run], b: Sequence[Run]) -> pd.DataFrame:
    """Every paired run's differences, with each run's spread so a reader (and :func:`regressions`) can tell a
    change from noise.

    Args:
        a, b: loaded runs (with kernels for the module level and the class spread): the baseline side and the new
            side.

    Returns:
        Columns ``pair, run_a, run_b, level, stage, key, unit, a, b, change_pct, spread_a, spread_b``: ``level``
        is ``latency`` (key: a timing key; unit ``ms``; spread: the robust spread of the timed samples in ms), ``class`` (key: an
        op class, µs per step or per generation; unit ``us``; spread: the range over the profiled steps, NaN for
        stages called once per generation) or ``module`` (key: a module path, ``us``); only ok runs pair.
    """
    rows: list[dict[str, Any]] = []
    for i, (ra, rb) in enumerate(pair_runs(a, b)):
        base = {"pair": i, "run_a": ra.run_id, "run_b": rb.run_id}
        for row in [*_latency_rows(ra, rb), *_kernel_rows(ra, rb, "class"), *_kernel_rows(ra, rb, "module")]:
            rows.append({**base, **row, "unit": UNITS[row["level"]]})
    return pd.DataFrame(rows, columns=list(DIFF_COLUMNS))


def check_gate(above_pct: float, min_us: float) -> None:
    """Refuse gate thresholds that would flag every change (a negative percentage, a negative floor)."""
    if not above_pct >= 0:
        raise InvalidParameterError(f"--fail-above {above_pct:g} is out of range; pass a percentage of 0 or more "
                                    "(e.g. --fail-above 5)")
    if not min_us >= 0:
        raise InvalidParameterError(f"--min-us {min_us:g} is out of range; pass a floor in µs of 0 or more "
                                    f"(default {MIN_US:g})")


def regressions(diff: pd.DataFrame, above_pct: float, min_us: float = MIN_US) -> pd.DataFrame:
    """Latencies and class times that grew by more than ``above_pct`` percent, by more than both runs' spread and
    by more than ``min_us`` µs: a change inside the noise of either run, or too small to matter, gates nothing."""
    check_gate(above_pct, min_us)
    gated = diff[diff["level"].isin(["latency", "class"])]
    grew = gated["b"] - gated["a"]
    grew_us = grew * gated["unit"].map({"ms": 1000.0, "us": 1.0})
    spread = gated[["spread_a", "spread_b"]].max(axis=1).fillna(0.0)
    return gated[(gated["change_pct"] > above_pct) & (grew > spread) & (grew_us > min_us)]


def work_mismatch(ra: Run, rb: Run) -> str:
    """One line on what besides the code differs between two runs diffed one against the other ("" when they did
    the same work): their change is then partly, or wholly, the change of workload, dtype, device ..."""
    if ra.workload != rb.workload:
        return f"diff of two different workloads ({ra.workload} vs {rb.workload}): the changes are the models'"
    named = work_differences(ra, rb)
    return f"the two runs differ in {', '.join(named)}: the changes are not the code's alone" if named else ""
