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

from .tables import PARAM_KEYS, _ids

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
        Columns ``run_id, workload, backend, device, stage, op_class, time_us, flops, bytes, tflops, gbps,
        intensity, roof_tflops, roof_gbps, attainable_tflops, pct_of_attainable``; op classes with no FLOPs and
        no bytes recorded are left out.
    """
    cols = ["run_id", "workload", "backend", "device", "stage", "op_class", "time_us", "flops", "bytes", "tflops",
            "gbps", "intensity", "roof_tflops", "roof_gbps", "attainable_tflops", "pct_of_attainable"]
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
        ids = _ids(run)
        g["run_id"], g["workload"], g["backend"], g["device"] = ids["run_id"], ids["workload"], ids["backend"], ids["device"]
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
        Columns ``run_id, workload, backend, device, stage, wall_ms, busy_ms, idle_ms, busy_frac,
        kernels_per_call, median_kernel_us, short_kernel_share``.
    """
    cols = ["run_id", "workload", "backend", "device", "stage", "wall_ms", "busy_ms", "idle_ms", "busy_frac",
            "kernels_per_call", "median_kernel_us", "short_kernel_share"]
    rows = []
    for run in runs:
        if run.status != "ok":
            continue
        ids = _ids(run)
        k = run.kernels if run.kernels is not None else pd.DataFrame(columns=["stage", "dur_us"])
        for key, b in (run.meta.get("busy") or {}).items():
            stage = key.removesuffix("_step") if key.endswith("_step") else key
            stage = "generator" if key == "generator_prefill" else stage
            durs = k.loc[k["stage"].astype(str) == stage, "dur_us"]
            rows.append({"run_id": ids["run_id"], "workload": ids["workload"], "backend": ids["backend"],
                         "device": ids["device"], "stage": key, "wall_ms": b.get("wall_ms"), "busy_ms": b.get("busy_ms"),
                         "idle_ms": b.get("idle_ms"), "busy_frac": b.get("busy_frac"),
                         "kernels_per_call": b.get("kernels"),
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


def scaling_points(runs: Sequence[Run]) -> pd.DataFrame:
    """The latencies behind :func:`scaling_table`: runs that differ in one parameter (height, width, frames, steps,
    batch) while the others hold, per workload × backend.

    Returns:
        Columns ``workload, backend, param, series, metric, value, median_ms, run_id``; ``series`` names what the
        other parameters held (a 2-D sweep has one height series per width); ``metric`` is ``e2e`` or the runs'
        step key; series with fewer than two distinct values are left out.
    """
    cols = ["workload", "backend", "param", "series", "metric", "value", "median_ms", "run_id"]
    # a forced sequence-parallel scheme is a comparison (sequence_parallel_table), not a point of a series
    ok = [r for r in runs if r.status == "ok" and r.meta.get("timings")
          and (r.meta.get("options") or {}).get("sp_scheme", "auto") == "auto"]
    rows = []
    for param in PARAM_KEYS:
        groups: dict[tuple, list[Run]] = {}
        for r in ok:
            ids = _ids(r)
            if ids.get(param) is None:
                continue
            rest = tuple(ids.get(p) for p in PARAM_KEYS if p != param)
            groups.setdefault((ids["workload"], ids["backend"], ids["preset"], rest), []).append(r)
        for (workload, backend, preset, rest), members in groups.items():
            if len({float(_ids(r)[param]) for r in members}) < 2 or min(float(_ids(r)[param]) for r in members) <= 0:
                continue
            held = [f"{p}={v}" for p, v in zip([p for p in PARAM_KEYS if p != param], rest) if v is not None]
            series = ", ".join([str(preset)] + held) if preset else ", ".join(held)
            for metric in ("e2e", step_key(members[0].meta["timings"])):
                pts = [(float(_ids(r)[param]), r.meta["timings"].get(metric, {}).get("median_ms"), r.run_id)
                       for r in members]
                pts = [p for p in pts if p[1]]
                if len({x for x, _, _ in pts}) < 2:
                    continue
                rows += [{"workload": workload, "backend": backend, "param": param, "series": series,
                          "metric": metric, "value": x, "median_ms": y, "run_id": rid} for x, y, rid in sorted(pts)]
    return pd.DataFrame(rows, columns=cols)


def scaling_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Latency against each parameter that varies while the others hold (:func:`scaling_points`), with the fitted
    exponent of latency ∝ parameter^k (least squares in log-log).

    Returns:
        Columns ``workload, backend, param, series, metric, n_points, values, exponent, r2``: one fit per series.
    """
    return scaling_fits(scaling_points(runs))


def scaling_fits(pts: pd.DataFrame) -> pd.DataFrame:
    """:func:`scaling_table` from points already gathered (the dashboard draws the points and their fits)."""
    cols = ["workload", "backend", "param", "series", "metric", "n_points", "values", "exponent", "r2"]
    rows = []
    for (workload, backend, param, series, metric), g in pts.groupby(
            ["workload", "backend", "param", "series", "metric"], sort=False):
        lx, ly = np.log(g["value"].to_numpy(float)), np.log(g["median_ms"].to_numpy(float))
        k, c = np.polyfit(lx, ly, 1)
        resid = ly - (k * lx + c)
        ss = float(((ly - ly.mean()) ** 2).sum())
        rows.append({"workload": workload, "backend": backend, "param": param, "series": series, "metric": metric,
                     "n_points": len(g), "values": ",".join(f"{x:g}" for x in sorted(set(g["value"]))),
                     "exponent": float(k), "r2": 1 - float((resid ** 2).sum()) / ss if ss > 0 else 1.0})
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
        Columns ``run_id, workload, backend, stage, step, module_path, level, attn_site, batch, heads, q_len,
        kv_len, head_dim, score_bytes``; one row per call (its first kernel carries the call's FLOPs).
    """
    cols = ["run_id", "workload", "backend", "stage", "step", "module_path", "level", "attn_site", "batch", "heads",
            "q_len", "kv_len", "head_dim", "score_bytes"]
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
            rows.append({"run_id": run.run_id, "workload": run.workload, "backend": run.backend, "stage": str(r.stage),
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
        Columns ``run_id, stage, id, parent, label, time_us, share, top_class``; ``id`` is the path prefix (the
        stage name at the root), ``share`` its part of the stage's kernel time, ``top_class`` the op class with
        most time under it. Kernels outside every module count at the root.
    """
    cols = ["run_id", "stage", "id", "parent", "label", "time_us", "share", "top_class"]
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
            rows.append({"run_id": run.run_id, "stage": root, "id": key, "parent": parent, "label": label,
                         "time_us": t, "share": t / total if total > 0 else np.nan,
                         "top_class": max(cls, key=cls.get)})
        parts.append(pd.DataFrame(rows, columns=cols))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def step_timeline(runs: Sequence[Run], max_runs: int = 12) -> pd.DataFrame:
    """Every kernel (every op with self time, on CPU runs) of one denoiser step (or a token model's first generator
    call), in launch order with its start relative to the step's first kernel: the step's timeline.

    Args:
        runs: loaded runs; the first ``max_runs`` that have a profiled step contribute (a page stays light).

    Returns:
        Columns ``run_id, stage, step, start_ms, dur_ms, op_class, attn_site, kernel, module_path``.
    """
    cols = ["run_id", "stage", "step", "start_ms", "dur_ms", "op_class", "attn_site", "kernel", "module_path"]
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
            "run_id": run.run_id, "stage": step_stage, "step": k["step"].astype(int).to_numpy(),
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
    """Denoiser step latency over 1, 2, 4 ... GPUs: runs of one configuration that differ only in the ranks their
    sequence was split over, with the speedup and parallel efficiency against the one-GPU run of the same
    configuration (when present) and what each step spent in communication kernels (time, payload, share of the
    step, hidden behind compute) from the full profile.

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
        ids = _ids(run)
        rest = tuple(ids.get(p) for p in PARAM_KEYS if p != "gpus")
        groups.setdefault((ids["workload"], ids["backend"], ids["device"], ids["preset"], rest), []).append((run, ids))
    rows = []
    for (workload, backend, device, preset, rest), members in groups.items():
        if all(ids["gpus"] == 1 for _, ids in members):
            continue
        held = ", ".join([str(preset)] + [f"{p}={v}" for p, v in zip([p for p in PARAM_KEYS if p != "gpus"], rest)
                                          if v is not None])
        step = {r.run_id: (r.meta["timings"].get(step_key(r.meta["timings"])) or {}).get("median_ms")
                for r, _ in members}
        ones = [step[r.run_id] for r, ids in members if ids["gpus"] == 1 and step[r.run_id]]
        base = min(ones) if ones else None
        for r, ids in sorted(members, key=lambda m: m[1]["gpus"]):
            ms, gpus = step[r.run_id], ids["gpus"]
            psteps = max(int((r.meta.get("passes") or {}).get("profile_steps") or 1), 1)
            c = comm.loc[r.run_id] if r.run_id in comm.index else None
            comm_ms = float(c["comm_us"]) / 1e3 / psteps if c is not None else 0.0
            sp = r.meta.get("sequence_parallel") or {}
            rows.append({"workload": workload, "backend": backend, "device": device, "series": held, "gpus": gpus,
                         "scheme": "+".join(sorted(sp.get("schemes") or {})) or ("one device" if gpus == 1 else ""),
                         "step_ms": ms, "speedup": base / ms if base and ms else np.nan,
                         "efficiency": base / ms / gpus if base and ms else np.nan, "comm_ms_per_step": comm_ms,
                         "comm_share": comm_ms / ms if ms else np.nan,
                         "payload_mb_per_step": float(c["payload_bytes"]) / 1e6 / psteps if c is not None else 0.0,
                         "overlap_share": float(c["overlap_us"]) / float(c["comm_us"])
                         if c is not None and c["comm_us"] > 0 else np.nan, "run_id": r.run_id})
    return pd.DataFrame(rows, columns=cols)
