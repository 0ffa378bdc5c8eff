"""The study's analyses over run stores (roofline, launch-bound, prefill/decode, scaling): each a function from
loaded runs to one tidy DataFrame. Rates come from kernel times and the FLOPs / bytes recorded per kernel
(conventions.md formulas, so custom kernels count); roofs from each run's meta.json (`mmchar calibrate`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.schema import STEP_STAGES, step_key
from mmchar.store import Run

from .tables import PARAM_KEYS, _ids, device_short, is_noisy, noise_reasons, run_labels, work_fields, work_key

_DTYPE_ROOF = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def _roofs(run: Run) -> tuple[float, float]:
    """(matmul TFLOP/s of the run's dtype, copy GB/s), NaN where the device was never calibrated."""
    roofs = run.meta.get("roofs") or {}
    dtype = (run.meta.get("config") or {}).get("dtype") or "bf16"
    peak = (roofs.get("matmul_tflops") or {}).get(_DTYPE_ROOF.get(dtype, dtype), np.nan)
    return float(peak if peak is not None else np.nan), float(roofs.get("copy_gbps") or np.nan)


def _phase(stage: str, step: int, phased: bool) -> str:
    if stage == "generator" and phased:
        return "prefill" if step == 0 else "decode"
    return "step" if stage in STEP_STAGES else "once"


def roofline_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run × stage × op class: FLOPs and bytes of the kernels that have them, achieved rates, arithmetic
    intensity, the attainable rate under the run's roofs (min(peak, intensity × bandwidth)) and the share of it
    achieved.

    Returns:
        Columns ``run_id, label, workload, backend, device, stage, op_class, time_us, flops, bytes, tflops, gbps,
        intensity, roof_tflops, roof_gbps, attainable_tflops, pct_of_attainable`` (``label``: the run's short name,
        :func:`~mmchar.analysis.tables.run_labels`); op classes with no FLOPs and no bytes recorded are left out.
    """
    cols = ["run_id", "label", "workload", "backend", "device", "stage", "op_class", "time_us", "flops", "bytes",
            "tflops", "gbps", "intensity", "roof_tflops", "roof_gbps", "attainable_tflops", "pct_of_attainable"]
    labels = run_labels(runs)
    parts = []
    for run in runs:
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        # an op's cost sits on its first kernel (attribution costs each op once); its other kernels (a conv's
        # transform, a split-K reduction, every kernel of an attention scope) share the time, so the time is
        # every kernel of a costed aten op, and every attention kernel (scopes are costed whole). Matched by op
        # name, not op instance: an instance whose shapes had no cost still adds its time (a lower rate, never
        # one above the roof)
        costed = k["flops"].notna() | k["bytes"].notna()
        ops = set(k.loc[costed, "aten_op"]) - {""}
        k = k[costed | (k["op_class"] == "attention") | k["aten_op"].isin(ops)]
        if not costed.any():
            continue
        g = k.groupby(["stage", "op_class"], observed=True).agg(
            time_us=("dur_us", "sum"), flops=("flops", "sum"), bytes=("bytes", "sum")).reset_index()
        g = g[(g["flops"] > 0) | (g["bytes"] > 0)]  # attention kernels of a run whose scopes carry no cost
        peak, bw = _roofs(run)
        ids = _ids(run, labels[run.run_id])
        for col in ("run_id", "label", "workload", "backend", "device"):
            g[col] = ids[col]
        sec = g["time_us"] * 1e-6
        g["tflops"] = g["flops"] / sec / 1e12
        g["gbps"] = g["bytes"] / sec / 1e9
        g["intensity"] = g["flops"] / g["bytes"].where(g["bytes"] > 0)
        g["roof_tflops"], g["roof_gbps"] = peak, bw
        g["attainable_tflops"] = np.minimum(peak, g["intensity"] * bw / 1e3)
        g["pct_of_attainable"] = g["tflops"] / g["attainable_tflops"] * 100
        parts.append(g[cols])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def launch_table(runs: Sequence[Run], short_us: float = 10.0) -> pd.DataFrame:
    """Per run × stage: wall, busy and idle time of one call (meta's busy table: the light profile against the
    timed pass), kernels per call, median kernel length and the share of kernels shorter than ``short_us`` from the
    full profile: a stage whose GPU idles while its kernels are short is launch-bound.

    Returns:
        Columns ``run_id, label, workload, backend, device, stage, wall_ms, busy_ms, idle_ms, busy_frac,
        kernels_per_call, median_kernel_us, short_kernel_share``.
    """
    cols = ["run_id", "label", "workload", "backend", "device", "stage", "wall_ms", "busy_ms", "idle_ms",
            "busy_frac", "kernels_per_call", "median_kernel_us", "short_kernel_share"]
    labels = run_labels(runs)
    rows = []
    for run in runs:
        if run.status != "ok":
            continue
        ids = _ids(run, labels[run.run_id])
        k = run.kernels if run.kernels is not None else pd.DataFrame(columns=["stage", "dur_us"])
        for key, b in (run.meta.get("busy") or {}).items():
            stage = key.removesuffix("_step") if key.endswith("_step") else key
            stage = "generator" if key == "generator_prefill" else stage
            durs = k.loc[k["stage"].astype(str) == stage, "dur_us"]
            rows.append({**{c: ids[c] for c in ("run_id", "label", "workload", "backend", "device")}, "stage": key,
                         "wall_ms": b.get("wall_ms"), "busy_ms": b.get("busy_ms"), "idle_ms": b.get("idle_ms"),
                         "busy_frac": b.get("busy_frac"), "kernels_per_call": b.get("kernels"),
                         "median_kernel_us": float(durs.median()) if len(durs) else np.nan,
                         "short_kernel_share": float((durs < short_us).mean()) if len(durs) else np.nan})
    return pd.DataFrame(rows, columns=cols)


def phase_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The prefill/decode analogy: per run × phase × op class (gemm and attention) of the step stage, FLOPs, bytes,
    arithmetic intensity and achieved TFLOP/s. A diffusion denoiser's phase is ``step``; an autoregressive
    generator's step 0 is ``prefill`` and its other steps ``decode``; a masked generator's are ``step``.

    Returns:
        Columns ``run_id, workload, backend, paradigm_stage, phase, op_class, time_us, flops, bytes, intensity,
        tflops``.
    """
    cols = ["run_id", "workload", "backend", "paradigm_stage", "phase", "op_class", "time_us", "flops", "bytes",
            "intensity", "tflops"]
    parts = []
    for run in runs:
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        k = k[k["stage"].astype(str).isin(STEP_STAGES) & k["op_class"].astype(str).isin(["gemm", "attention"])]
        if k.empty:
            continue
        phased = "generator_decode" in (run.meta.get("timings") or {})
        k = k.assign(phase=[_phase(str(s), int(t), phased) for s, t in zip(k["stage"], k["step"])])
        g = k.groupby(["stage", "phase", "op_class"], observed=True).agg(
            time_us=("dur_us", "sum"), flops=("flops", "sum"), bytes=("bytes", "sum")).reset_index()
        g = g.rename(columns={"stage": "paradigm_stage"})
        g["run_id"], g["workload"], g["backend"] = run.run_id, run.workload, run.backend
        g["intensity"] = g["flops"] / g["bytes"].where(g["bytes"] > 0)
        g["tflops"] = g["flops"] / (g["time_us"] * 1e-6) / 1e12
        parts.append(g[cols])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


# fewer distinct parameter values than this: a series is drawn but gets no exponent (two points always lie on a
# line: its r² of 1 would say nothing)
MIN_FIT_POINTS = 3
# work fields that name a series where they differ between the series of one workload: an H100 series and a CPU
# series (or bf16 and fp32) are two lines, and the reader must see which is which
_SERIES_FIELDS = ("device", "dtype", "guidance", "seed", "compile", "memory", "fallback", "cross_backend", "scope",
                  "weights")
_BARE_FIELDS = ("device", "dtype", "memory", "weights")  # named by their value alone ("H100", "bf16")


def _series_names(groups: dict[tuple, list[Run]], param: str) -> dict[tuple, str]:
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
            extra = [str(f[v]) if v in _BARE_FIELDS else f"{v}={f[v]}" for v in varied if f.get(v) not in (None, "")]
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
        names = _series_names(groups, param)
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


_LEVEL = re.compile(r"(down_blocks|up_blocks)\.(\d+)|(mid_block)")


def _level(module_path: str) -> str:
    """A UNet's resolution level from a module path (``down.1``, ``mid``, ``up.2``), ``""`` outside a UNet."""
    m = _LEVEL.search(module_path)
    if not m:
        return ""
    return "mid" if m.group(3) else f"{m.group(1).removesuffix('_blocks')}.{m.group(2)}"


def sequence_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Every attention call of the profiled steps: batch, heads, query and key lengths, head dim, its UNet level,
    and the bytes an unfused score matrix (B·H·Sq·Skv in the run's dtype) would need.

    Returns:
        Columns ``run_id, label, workload, backend, stage, step, module_path, level, attn_site, batch, heads, q_len,
        kv_len, head_dim, score_bytes``; one row per call (its first kernel carries the call's FLOPs).
    """
    cols = ["run_id", "label", "workload", "backend", "stage", "step", "module_path", "level", "attn_site", "batch",
            "heads", "q_len", "kv_len", "head_dim", "score_bytes"]
    labels = run_labels(runs)
    rows = []
    for run in runs:
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        elem = {"fp32": 4, "fp16": 2, "bf16": 2}.get((run.meta.get("config") or {}).get("dtype"), 2)
        calls = k[(k["op_class"].astype(str) == "attention") & k["flops"].notna()]
        for r in calls.itertuples(index=False):
            try:
                dims = json.loads(str(r.input_shapes))
                (b, h, sq, d), (_, _, skv, _) = dims[0][:4], dims[1][:4]
            except (ValueError, TypeError, IndexError):
                continue
            rows.append({"run_id": run.run_id, "label": labels[run.run_id], "workload": run.workload,
                         "backend": run.backend, "stage": str(r.stage),
                         "step": int(r.step), "module_path": str(r.module_path), "level": _level(str(r.module_path)),
                         "attn_site": str(r.attn_site), "batch": b, "heads": h, "q_len": sq, "kv_len": skv,
                         "head_dim": d, "score_bytes": float(b) * h * sq * skv * elem})
    return pd.DataFrame(rows, columns=cols)


def _step_stage(kernels: pd.DataFrame) -> str | None:
    """The stage holding a run's steps: the denoiser, or a token model's generator; None for neither."""
    stages = set(kernels["stage"].astype(str))
    return next((s for s in STEP_STAGES if s in stages), None)


def module_tree(runs: Sequence[Run], max_depth: int = 6) -> pd.DataFrame:
    """Kernel time of the step stage (the denoiser, or a token model's generator; else every stage) rolled up the
    module hierarchy, per run: one row per module-path prefix down to ``max_depth`` levels, with its inclusive
    time and its parent, as a sunburst or treemap takes it.

    Returns:
        Columns ``run_id, run_label, stage, id, parent, label, time_us, share, top_class``; ``run_label`` is the
        run's short name (``label`` already names the sector), ``id`` the path prefix (the stage name at the root),
        ``share`` its part of the stage's kernel time, ``top_class`` the op class with most time under it. Kernels
        outside every module count at the root.
    """
    cols = ["run_id", "run_label", "stage", "id", "parent", "label", "time_us", "share", "top_class"]
    labels = run_labels(runs)
    parts = []
    for run in runs:
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        step = _step_stage(k)
        k = k[k["stage"].astype(str) == step] if step else k
        root = step or "all stages"
        total = float(k["dur_us"].sum())
        times: dict[str, float] = {root: total}
        by_class: dict[str, dict[str, float]] = {root: {}}
        grouped = k.groupby([k["module_path"].astype(str), k["op_class"].astype(str)], observed=True)["dur_us"].sum()
        for (path, op_class), t in grouped.items():
            segs = [p for p in str(path).split(".") if p][:max_depth]
            for key in [root] + [root + "/" + ".".join(segs[:i]) for i in range(1, len(segs) + 1)]:
                if key != root:
                    times[key] = times.get(key, 0.0) + float(t)
                cls = by_class.setdefault(key, {})
                cls[op_class] = cls.get(op_class, 0.0) + float(t)
        rows = []
        for key, t in times.items():
            parent = "" if key == root else (key.rsplit(".", 1)[0] if "." in key.split("/", 1)[1] else root)
            segs = key.split("/", 1)[-1].split(".")
            label = root if key == root else (".".join(segs[-2:]) if segs[-1].isdigit() else segs[-1])  # up_blocks.3
            cls = by_class.get(key) or {"": 0.0}
            rows.append({"run_id": run.run_id, "run_label": labels[run.run_id], "stage": root, "id": key,
                         "parent": parent, "label": label, "time_us": t, "share": t / total if total > 0 else np.nan,
                         "top_class": max(cls, key=cls.get)})
        parts.append(pd.DataFrame(rows, columns=cols))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def step_timeline(runs: Sequence[Run], max_runs: int = 12) -> pd.DataFrame:
    """Every kernel (every op with self time, on CPU runs) of one denoiser step (or a token model's first generator
    call), in launch order with its start relative to the step's first kernel: the step's timeline.

    Args:
        runs: loaded runs; the first ``max_runs`` that have a profiled step contribute (a page stays light).

    Returns:
        Columns ``run_id, label, stage, step, start_ms, dur_ms, op_class, attn_site, kernel, module_path``.
    """
    cols = ["run_id", "label", "stage", "step", "start_ms", "dur_ms", "op_class", "attn_site", "kernel",
            "module_path"]
    labels = run_labels(runs)
    parts = []
    for run in runs:
        if len(parts) >= max_runs:
            break
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        step_stage = _step_stage(k)
        if step_stage is None:
            continue
        k = k[(k["stage"].astype(str) == step_stage) & (k["step"] >= 0)]
        if k.empty:
            continue
        k = k[k["step"] == k["step"].min()].sort_values("ts_us")
        t0 = float(k["ts_us"].iloc[0])
        parts.append(pd.DataFrame({
            "run_id": run.run_id, "label": labels[run.run_id], "stage": step_stage,
            "step": k["step"].astype(int).to_numpy(),
            "start_ms": (k["ts_us"].to_numpy(float) - t0) / 1e3, "dur_ms": k["dur_us"].to_numpy(float) / 1e3,
            "op_class": k["op_class"].astype(str).to_numpy(), "attn_site": k["attn_site"].astype(str).to_numpy(),
            "kernel": k["kernel"].astype(str).to_numpy(), "module_path": k["module_path"].astype(str).to_numpy()}))
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def _union(intervals: np.ndarray) -> list[tuple[float, float]]:
    """Merged [start, end) intervals, sorted."""
    out: list[list[float]] = []
    for a, b in sorted(map(tuple, intervals)):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, merged interval lists."""
    i = j = 0
    total = 0.0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        total += max(0.0, hi - lo)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def communication_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run × stage: time in communication kernels, their payload bytes (collective inputs, read once), and how
    much of that time compute kernels ran at the same moment (other streams): communication hidden behind work.

    Returns:
        Columns ``run_id, workload, backend, device, stage, comm_us, comm_kernels, payload_bytes, compute_us,
        overlap_us, overlap_share``; runs with no communication kernels are left out.
    """
    cols = ["run_id", "workload", "backend", "device", "stage", "comm_us", "comm_kernels", "payload_bytes",
            "compute_us", "overlap_us", "overlap_share"]
    rows = []
    for run in runs:
        k = run.kernels
        if run.status != "ok" or k is None or k.empty:
            continue
        comm = k["op_class"].astype(str) == "communication"
        if not comm.any():
            continue
        ids = _ids(run)
        for stage, g in k.groupby(k["stage"].astype(str), sort=False):
            c = comm.loc[g.index]
            if not c.any():
                continue
            spans = np.stack([g["ts_us"].to_numpy(float), (g["ts_us"] + g["dur_us"]).to_numpy(float)], axis=1)
            comm_u, work_u = _union(spans[c.to_numpy()]), _union(spans[~c.to_numpy()])
            comm_us = float(g.loc[c, "dur_us"].sum())
            overlap = _overlap(comm_u, work_u)
            union_us = sum(b - a for a, b in comm_u)
            rows.append({"run_id": ids["run_id"], "workload": ids["workload"], "backend": ids["backend"],
                         "device": ids["device"], "stage": stage, "comm_us": comm_us, "comm_kernels": int(c.sum()),
                         "payload_bytes": float(g.loc[c, "bytes"].sum(min_count=1)),
                         "compute_us": float(g.loc[~c, "dur_us"].sum()), "overlap_us": overlap,
                         "overlap_share": overlap / union_us if union_us > 0 else np.nan})
    return pd.DataFrame(rows, columns=cols)


def sequence_parallel_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Denoiser step latency over 1, 2, 4 ... GPUs: runs of one configuration (``work_key``: same device, dtype ...)
    that differ only in the ranks their sequence was split over (and the scheme), with the speedup and parallel
    efficiency against the one-GPU run of the same configuration (when present) and what each step spent in
    communication kernels (time, payload, share of the step, hidden behind compute) from the full profile.

    Returns:
        Columns ``workload, backend, device, series, gpus, scheme, step_ms, speedup, efficiency, comm_ms_per_step,
        comm_share, payload_mb_per_step, overlap_share, run_id``; configurations without a sequence-parallel run
        are left out.
    """
    cols = ["workload", "backend", "device", "series", "gpus", "scheme", "step_ms", "speedup", "efficiency",
            "comm_ms_per_step", "comm_share", "payload_mb_per_step", "overlap_share", "run_id"]
    comm = communication_table(runs)
    comm = comm[comm["stage"].isin(STEP_STAGES)].groupby("run_id")[["comm_us", "payload_bytes", "overlap_us"]].sum()
    groups: dict[tuple, list[tuple[Run, dict]]] = {}
    for run in runs:
        t = run.meta.get("timings") or {}
        if run.status != "ok" or not t:
            continue
        # one configuration but for its ranks and scheme: never a bf16 run's speedup over an fp32 run's step
        groups.setdefault(work_key(run, without=("gpus", "sp_scheme", "config_hash")), []).append((run, _ids(run)))
    groups = {key: m for key, m in groups.items() if any(ids["gpus"] > 1 for _, ids in m)}
    names = _series_names({key: [r for r, _ in m] for key, m in groups.items()}, "gpus")
    rows = []
    for key, members in groups.items():
        f, held = dict(key), names[key]
        step = {r.run_id: (r.meta["timings"].get(step_key(r.meta["timings"])) or {}).get("median_ms")
                for r, _ in members}
        ones = [step[r.run_id] for r, ids in members if ids["gpus"] == 1 and step[r.run_id]]
        base = min(ones) if ones else None
        for r, ids in sorted(members, key=lambda m: m[1]["gpus"]):
            ms, gpus = step[r.run_id], ids["gpus"]
            psteps = max(int((r.meta.get("passes") or {}).get("profile_steps") or 1), 1)
            c = comm.loc[r.run_id] if r.run_id in comm.index else None
            comm_ms = float(c["comm_us"]) / 1e3 / psteps if c is not None else 0.0
            scheme = "+".join(sorted((r.meta.get("sequence_parallel") or {}).get("schemes") or {}))
            rows.append({"workload": f["workload"], "backend": f["backend"], "device": f["device"], "series": held,
                         "gpus": gpus, "scheme": scheme or ("one device" if gpus == 1 else ""),
                         "step_ms": ms, "speedup": base / ms if base and ms else np.nan,
                         "efficiency": base / ms / gpus if base and ms else np.nan, "comm_ms_per_step": comm_ms,
                         "comm_share": comm_ms / ms if ms else np.nan,
                         "payload_mb_per_step": float(c["payload_bytes"]) / 1e6 / psteps if c is not None else 0.0,
                         "overlap_share": float(c["overlap_us"]) / float(c["comm_us"])
                         if c is not None and c["comm_us"] > 0 else np.nan, "run_id": r.run_id})
    return pd.DataFrame(rows, columns=cols)
