"""The study's headline questions, each answered from the given runs with the measured value and the runs it
comes from, or "not covered by these runs" (Golden et al., 2023, asked them of 2023's models).

Runs the noise guard flagged are left out of every answer (their latencies are someone else's load), and an
answer whose runs span several devices or dtypes says so: a median over an H100 and a CPU is not one number.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from datetime import datetime
from statistics import median

import pandas as pd

from mmchar.schema import STEP_STAGES, step_key
from mmchar.shares import time_shares
from mmchar.store import Run

from .communication import sequence_parallel_table
from .decoder import decoder_table
from .mechanisms import mechanisms_table
from .projections import DENSE, projections_table
from .sequence import sequence_table
from .step_structure import step_structure_table
from .tables import comparison_table, device_short, is_noisy, runtime_modes, work_fields, work_key

NOT_COVERED = "not covered by these runs"
FUSED_SOFTMAX = ("flash", "cudnn", "efficient", "sdpa", "triton-flash", "flex")
FINDING_COLUMNS = ("question", "answer", "value", "runs")


def _family(run: Run) -> dict:
    return (run.meta.get("config") or {}).get("family") or {}


def _one_device_eager(run: Run) -> bool:
    """A run the share questions may use: one device, the eager model under no runtime mode (a compiled graph's
    attribution is partial, channels-last drops cuDNN's layout transforms from the conv time and replayed CUDA graphs
    remove the host's share: each answers its own questions; a sequence-parallel step's shares are per rank and hold
    communication)."""
    options = run.meta.get("options") or {}
    return not runtime_modes(run.meta) and int(options.get("sequence_parallel") or 1) == 1


def _step_ms(run: Run) -> float | None:
    t = run.meta.get("timings") or {}
    return (t.get(step_key(t)) or {}).get("median_ms") if t else None


def _compile_speedups(ok: list[Run]) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """(eager step / compiled step, the compiled run) for each compiled run with an eager sdpa run of the same work
    (every work field but the backend and compilation: an fp32 eager run says nothing of a bf16 compiled one); and
    the ratio of their kernel counts per step. Only torch.compile alone against no mode at all: a run that also
    replays CUDA graphs or runs channels-last would credit compile with the other mode's saving. Of several such
    eager runs, the one created nearest the compiled run (the same session's, on the same machine), the newer of
    two as near: not the first listed, which made the answer depend on the order of the stores."""
    def key(r: Run) -> tuple:
        return work_key(r, without=("backend", "compile", "config_hash"))

    def created(r: Run) -> float:
        try:
            return datetime.fromisoformat(r.meta.get("created") or "").timestamp()
        except ValueError:  # no time recorded: as far as can be
            return 0.0

    eager: dict[tuple, list[Run]] = {}
    for r in ok:
        if r.backend == "sdpa" and not runtime_modes(r.meta) and _step_ms(r):
            eager.setdefault(key(r), []).append(r)
    speed, kernels = [], []
    for r in ok:
        if runtime_modes(r.meta) != ("compile",) or key(r) not in eager or not _step_ms(r):
            continue
        base = min(eager[key(r)], key=lambda e: (abs(created(e) - created(r)), -created(e), e.run_id))
        speed.append((_step_ms(base) / _step_ms(r), r.run_id))
        sk = step_key(r.meta["timings"])
        kb, kc = ((x.meta.get("busy") or {}).get(sk) or {} for x in (base, r))
        if kb.get("kernels") and kc.get("kernels"):
            kernels.append((kb["kernels"] / kc["kernels"], r.run_id))
    return speed, kernels


def _share(run: Run, stage: str, op_class: str) -> float | None:
    bd = run.breakdown
    if bd is None or bd.empty:
        return None
    part = bd[bd["stage"] == stage]
    return float(part.loc[part["op_class"] == op_class, "share"].sum()) if len(part) else None


def _per_workload(values: list[tuple[float, str]], by_id: dict[str, Run]) -> list[float]:
    """One value per workload: the median of its runs' values."""
    per: dict[str, list[float]] = {}
    for x, rid in values:
        per.setdefault(by_id[rid].workload if rid in by_id else rid, []).append(x)
    return [median(xs) for xs in per.values()]


def _mixes(run_ids: Sequence[str], by_id: dict[str, Run]) -> str:
    """`` (mixes devices H100, H200; dtypes bf16, fp32)`` when the runs behind an answer ran on more than one
    device or dtype (runs that do not record one are not counted), else ""."""
    runs = [by_id[rid] for rid in run_ids if rid in by_id]
    devices = sorted({device_short(r.meta) for r in runs if r.meta.get("device")})
    dtypes = sorted({str(d) for r in runs if (d := (r.meta.get("config") or {}).get("dtype"))})
    parts = [f"{name} {', '.join(values)}" for name, values in (("devices", devices), ("dtypes", dtypes))
             if len(values) > 1]
    return f" (mixes {'; '.join(parts)})" if parts else ""


def _row(question: str, values: list[tuple[float, str]], fmt: str, by_id: dict[str, Run]) -> dict:
    """The answer over workloads, not runs: each workload's runs (a sweep's points, several backends) give one
    value, their median, so a swept model does not outvote the others; then the median over workloads."""
    if not values:
        return {"question": question, "answer": NOT_COVERED, "value": None, "runs": ""}
    each = _per_workload(values, by_id)
    v, lo, hi = median(each), min(each), max(each)
    spread = "" if len(each) == 1 else f" (median of {len(each)} workloads: {fmt.format(lo)} to {fmt.format(hi)})"
    if len(values) > len(each):
        spread += f", from {len(values)} runs"
    spread += _mixes([rid for _, rid in values], by_id)
    return {"question": question, "answer": fmt.format(v) + spread, "value": v,
            "runs": ", ".join(r for _, r in values)}


def _with_sweep_groups(runs: Sequence[Run]) -> list[Run]:
    """``runs``, where sweep points (``meta["sweep"]``) of one configuration under math and other backends carry a
    ``compare`` entry
    against the math point, as `mmchar compare` would have written: `mmchar sweep --backends math,flash` measures
    the flash-over-unfused question too. Runs already in a compare group (members and baselines) keep theirs, and
    only the newest point of each configuration and backend takes part, so no run counts twice."""
    compared = {r.run_id for r in runs if r.meta.get("compare")}
    compared |= {r.meta["compare"].get("baseline_run_id") for r in runs if r.meta.get("compare")}
    groups: dict[tuple, dict[str, Run]] = {}
    for r in sorted(runs, key=lambda r: r.meta.get("created") or ""):
        if r.run_id not in compared and r.meta.get("sweep"):  # sweep points only, not any two profiles
            # the resolved configuration itself (model configs, prompt ...) must match: the config hash differs
            # between backends, so it cannot say so
            config = json.dumps(r.meta.get("config") or {}, sort_keys=True, default=str)
            groups.setdefault((work_key(r, without=("backend", "config_hash")), config), {})[r.backend] = r
    entries: dict[str, dict] = {}
    for members in groups.values():
        base = members.get("math")
        if base is None or len(members) < 2:
            continue
        for r in members.values():
            entries[r.run_id] = {"group": f"sweep-{base.run_id}", "baseline_run_id": base.run_id,
                                 "baseline_backend": "math"}
    return [dataclasses.replace(r, meta={**r.meta, "compare": entries[r.run_id]}) if r.run_id in entries else r
            for r in runs]


def _fastest_mechanism(question: str, runs: Sequence[Run], by_id: dict[str, Run]) -> dict:
    """Per comparison group of ``runs`` (`mechanisms_table`: one workload, shape and device under several
    backends), the backend with the shortest step and its speedup over the group's cuDNN run (its baseline where
    it has none): ``mlstm: 1.35x over cudnn (wan2.1-1.3b)``; groups without a reference run or with one backend
    answer nothing. The value is the median over workloads of those speedups."""
    mech = mechanisms_table(runs)
    mech = mech[mech["step_ms"].notna() & mech["reference_run_id"].notna()] if len(mech) else mech
    picks = []
    for _, part in mech.groupby("group", sort=False):
        if len(part) < 2:
            continue
        best = part.loc[part["step_ms"].idxmin()]
        picks.append(best)
    if not picks:
        return {"question": question, "answer": NOT_COVERED, "value": None, "runs": ""}
    picks.sort(key=lambda b: (str(b["workload"]), str(b["device"]), str(b["group"])))
    devices = len({b["device"] for b in picks}) > 1
    answers, values, ids = [], [], []
    for b in picks:
        where = str(b["workload"]) + (f", {device_short(by_id[b['run_id']].meta)}" if devices else "")
        answers.append(f"{b['backend']}: {b['step_speedup']:.2f}x over {b['reference_backend']} ({where})")
        values.append((float(b["step_speedup"]), b["run_id"]))
        ids += [b["run_id"]] + ([b["reference_run_id"]] if b["reference_run_id"] != b["run_id"] else [])
    return {"question": question, "answer": "; ".join(answers) + _mixes(ids, by_id),
            "value": median(_per_workload(values, by_id)), "runs": ", ".join(ids)}


def _num(value: object) -> float | None:
    """A table cell as a float, None where it holds nothing (NaN, NA, None)."""
    return None if value is None or pd.isna(value) else float(value)


def _projection_rows(runs: Sequence[Run]) -> list[dict]:
    """One row per projection backend other than dense in ``runs`` (`projections_table`): per group (a workload's
    shape on a device under one attention backend), its step speedup over the dense run, how the step's gemm and
    memory shares and its GPU-busy fraction moved, the state it held, and the runs that ran out of memory with the
    state they recorded. The value is the median over workloads of the speedups; no rows without such runs."""
    table = projections_table(runs)
    if table.empty:
        return []
    by_id = {r.run_id: r for r in runs}
    row_of = {rid: row for rid, row in zip(table["run_id"], table.to_dict("records"))}
    rows = []
    for linear in dict.fromkeys(b for b in table["linear_backend"] if b != DENSE):
        part = table[table["linear_backend"] == linear]
        op_class = next((c for c in part["linear_op_class"] if isinstance(c, str) and c), "?")
        answers, values, ids = [], [], []
        for r in part.to_dict("records"):
            run = by_id[r["run_id"]]
            shape = "×".join(str(int(v)) for v in (r["height"], r["width"]) if _num(v) is not None)
            frames = _num(r["frames"])
            if frames and frames > 1:
                shape += f", {int(frames)} frames"
            # the device always named: the question is what removing the FLOPs does on this GPU
            where = f"{r['workload']}{' ' + shape if shape else ''} ({device_short(run.meta)}, {r['backend']})"
            ref = row_of.get(r["reference_run_id"]) if r["reference_run_id"] else None
            state = _num(r["state_gb"])
            ids.append(r["run_id"])
            if ref is not None and ref["run_id"] not in ids:
                ids.append(ref["run_id"])
            if r["status"] == "oom":
                needed = _num(r["state_needed_gb"])
                held = f" drawing {needed:.1f} GB of state" if needed is not None else \
                    " (the state it needed was not recorded)"
                if needed is not None and state is not None:
                    held += f" ({state:.1f} GB drawn when it ran out)"
                answers.append(f"{where}: out of memory{held}")
                continue
            if r["status"] != "ok":
                answers.append(f"{where}: failed ({str(r['error'] or r['status']).splitlines()[0][:80]})")
                continue
            speedup = _num(r["step_speedup"])
            # latents compared but no finite difference (NaN: the cosine recorded, the difference not; inf): a NaN /
            # inf output, not the same work (a token model's agreement is its token match: neither is recorded)
            diff = _num(r["max_abs_diff"])
            if (diff is None and _num(r["cosine"]) is not None) or (diff is not None and math.isinf(diff)):
                answers.append(f"{where}: its output was not finite (NaN or inf against dense), left out of the "
                               "speedup")
                continue
            if ref is None or speedup is None:
                answers.append(f"{where}: {r['step_ms']:.1f} ms a step, no dense run of it to compare")
                continue
            values.append((speedup, r["run_id"]))
            moves = " and ".join(f"{c} {ref[c + '_share']:.1%} → {r[c + '_share']:.1%}" for c in ("gemm", "memory")
                              if _num(ref[c + "_share"]) is not None and _num(r[c + "_share"]) is not None)
            text = f"{where}: {speedup:.2f}x ({ref['step_ms']:.1f} → {r['step_ms']:.1f} ms)"
            if moves:
                text += f": {moves} of the step's kernel time"
            busy, ref_busy = _num(r["busy_frac"]), _num(ref["busy_frac"])
            if busy is not None and ref_busy is not None:
                text += f", GPU busy {ref_busy:.0%} → {busy:.0%} of its wall time"
            if state:
                text += f", {state:.2f} GB of state"
            answers.append(text)
        question = (f"Step speedup of the {linear} projection backend ({op_class} kernels) over the model's dense "
                    "linear layers, and what limits it")
        value = median(_per_workload(values, by_id)) if values else None
        rows.append({"question": question, "answer": "; ".join(answers) + _mixes(ids, by_id), "value": value,
                     "runs": ", ".join(ids)})
    return rows


def _guidance_row(runs: Sequence[Run]) -> dict:
    """Which pipelines run classifier-free guidance as two denoiser calls a step and which as one batch of two
    (or none: off, or distilled into an embedding), from each run's guidance record; one mode per workload."""
    question = "How classifier-free guidance reaches the denoiser (two calls a step, one batch of 2, or none)"
    modes: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        mode = (r.meta.get("guidance") or {}).get("mode")
        if mode:
            modes.setdefault(mode, {}).setdefault(str(r.workload), []).append(r.run_id)
    if not modes:
        return {"question": question, "answer": NOT_COVERED, "value": None, "runs": ""}
    order = ("two calls", "batched", "none")
    parts = [f"{m}: {', '.join(sorted(modes[m]))}" for m in sorted(modes, key=lambda m: (order + (m,)).index(m))]
    ids = [rid for m in modes.values() for rs in m.values() for rid in rs]
    return {"question": question, "answer": "; ".join(parts), "value": len(modes.get("two calls", {})),
            "runs": ", ".join(ids)}


def _expert_row(runs: Sequence[Run]) -> dict:
    """A mixture-of-experts denoiser's step split: each expert's steps and kernel time per profiled step."""
    question = "Expert split of a mixture-of-experts denoiser (steps each expert ran, kernel ms per step)"
    split = step_structure_table([r for r in runs if (r.meta.get("step_components") or {}).get("counts")])
    if split.empty:
        return {"question": question, "answer": NOT_COVERED, "value": None, "runs": ""}
    answers, ratios = [], []
    for (rid, workload), part in split.groupby(["run_id", "workload"], sort=False):
        named = part[part["steps"].fillna(0) > 0]
        each = [f"{c} {int(n)} step{'s' if n != 1 else ''} " + (f"at {ms:.0f} ms" if p else "(not profiled)")
                for c, n, ms, p in zip(named["component"], named["steps"], named["kernel_ms_per_step"],
                                       named["profiled_steps"])]
        timed = named[named["profiled_steps"] > 0]
        if len(timed) > 1:
            ratios.append(float(timed["kernel_ms_per_step"].iloc[-1] / timed["kernel_ms_per_step"].iloc[0]))
        answers.append(f"{workload}: {', '.join(each)}")
    value = median(ratios) if ratios else None
    tail = f"; last expert / first per step {value:.2f}x" if value is not None else ""
    return {"question": question, "answer": "; ".join(answers) + tail, "value": value,
            "runs": ", ".join(dict.fromkeys(split["run_id"]))}


def _routing_shares(runs: Sequence[Run]) -> list[tuple[float, str]]:
    """Each run with routed mixture-of-experts layers in a step stage (``meta["moe_layers"]``; a compiled denoiser
    records none: no module ranges to place its kernels in): its ``routing`` kernels' share of the step stage's
    kernel time (gate, token dispatch and combine beside the experts' compute)."""
    values = []
    for r in runs:
        moe = r.meta.get("moe_layers") or {}
        stages = moe.get("stages") or [""] * int(moe.get("count") or 0)
        if not any(st in STEP_STAGES or not st for st in stages) or r.breakdown.empty:
            continue
        b = r.breakdown[r.breakdown["stage"].astype(str).isin(STEP_STAGES)]
        total = float(b["time_us"].sum())
        if total > 0:
            values.append((float(b.loc[b["op_class"].astype(str) == "routing", "time_us"].sum()) / total, r.run_id))
    return values


def _noisy_row(noisy: Sequence[Run]) -> dict:
    ids = ", ".join(r.run_id for r in noisy)
    return {"question": "Runs left out of every finding (the noise guard flagged their timed pass)",
            "answer": f"{len(noisy)} noisy run{'s' if len(noisy) != 1 else ''} left out: {ids}",
            "value": len(noisy), "runs": ids}


def findings(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per headline question: ``question, answer, value, runs``. Shares and the busy fraction come from
    one-device eager runs of the model's own maths (no mixer swapped in); compiled and sequence-parallel runs
    answer their own questions. Where the runs hold projection backends other than dense, one row per such backend
    compares it with dense (`projections_table`; its runs that ran out of memory are part of the answer). Runs the
    noise guard flagged answer none: a last row names them."""
    noisy = [r for r in runs if r.status == "ok" and is_noisy(r.meta) is True]
    every = [r for r in runs if r.status == "ok" and is_noisy(r.meta) is not True]
    ok = [r for r in every if _one_device_eager(r)]
    # the share questions ask about the model as published: a run whose backend changes the maths (a mixer in
    # place of softmax) answers only the questions that compare backends
    model = [r for r in ok if r.meta.get("backend_changes_math") is not True
             and (r.meta.get("linear_backend") or DENSE) == DENSE]  # nor the linear layers (projection backends)
    run_of = {r.run_id: r for r in every}
    rows = []

    # the 2023 claim is about UNet denoisers; diffusion transformers have almost no conv, so they are asked apart
    for arch, label in (("unet", "UNet"), ("dit", "diffusion-transformer (DiT)")):
        conv = [(s, r.run_id) for r in model if _family(r).get("paradigm") == "diffusion"
                and _family(r).get("architecture") == arch and _family(r).get("task") == "text-to-image"
                and r.backend in FUSED_SOFTMAX and (s := _share(r, "denoiser", "conv")) is not None]
        rows.append(_row(f"Share of conv in a {label} text-to-image denoiser step after flash attention", conv,
                         "{:.1%}", run_of))

    dit_video = [(s, r.run_id) for r in model if _family(r).get("architecture") == "dit"
                 and _family(r).get("modality") == "video" and (s := _share(r, "denoiser", "attention")) is not None]
    rows.append(_row("Share of attention in a video diffusion-transformer denoiser step", dit_video, "{:.1%}",
                     run_of))

    gemm = [(s, r.run_id) for r in model if _family(r).get("paradigm") == "transformer"
            and _family(r).get("task") == "text-to-image" and (s := _share(r, "generator", "gemm")) is not None]
    rows.append(_row("Share of gemm (linear layers) in a transformer text-to-image generation step", gemm, "{:.1%}",
                     run_of))

    cmp = comparison_table(_with_sweep_groups(ok))
    by_id = {r.run_id: r for r in ok}
    for paradigm in ("diffusion", "transformer"):
        sel = cmp[(cmp["backend"] == "flash") & (cmp["baseline_backend"] == "math")] if len(cmp) else cmp
        mine = sel[[rid in by_id and _family(by_id[rid]).get("paradigm") == paradigm for rid in sel.get("run_id", [])]] \
            if len(sel) else sel
        row = _row(f"Step speedup of flash attention over unfused attention, {paradigm} models",
                   [(float(x), rid) for rid, x in zip(mine.get("run_id", []), mine.get("step_speedup", [])) if x == x],
                   "{:.2f}x", run_of)
        busy = [(float(x), rid) for rid, x in zip(mine.get("run_id", []), mine.get("busy_speedup", [])) if x == x]
        if busy and row["value"] is not None:  # wall time hides kernel speedups when the host is the bottleneck
            row["answer"] += f"; GPU-busy time {median(_per_workload(busy, run_of)):.2f}x"
        rows.append(row)

    # softmax kernels against the mixers on a long video sequence: Wan 2.1's full shape (480×832, 81 frames)
    video = [r for r in ok if _family(r).get("modality") == "video" and _family(r).get("architecture") == "dit"
             and (w := work_fields(r))["height"] == 480 and w["frames"] == 81]
    rows.append(_fastest_mechanism("Fastest attention mechanism for a 480p, 81-frame video diffusion-transformer "
                                   "denoiser step", video, run_of))

    # the projection backends against the model's own linear layers; a run that ran out of memory is an answer too
    rows += _projection_rows([r for r in runs if is_noisy(r.meta) is not True])

    seq = sequence_table([r for r in model if _family(r).get("architecture") == "unet"])
    levels = []
    if len(seq):
        spatial = seq[(seq["stage"] == "denoiser") & (seq["attn_site"] == "spatial") & (seq["level"] != "")]
        for rid, part in spatial.groupby("run_id"):
            per = part.groupby("level")["q_len"].max()
            if len(per) > 1:
                levels.append((float(per.max() / per.min()), rid))
    rows.append(_row("Change of the spatial attention sequence length across a UNet's levels (largest / smallest)",
                     levels, "{:.0f}x", run_of))

    temporal = []
    for r in model:
        if _family(r).get("modality") != "video" or r.breakdown is None or r.breakdown.empty:
            continue
        att = r.breakdown[(r.breakdown["stage"] == "denoiser") & (r.breakdown["op_class"] == "attention")]
        sites = time_shares(att, ["attn_site"])
        share = sites.loc[sites["attn_site"] == "temporal", "share"]
        if len(share) and share.notna().all():  # NaN: the step's attention took no time
            temporal.append((float(share.iloc[0]), r.run_id))
    rows.append(_row("Share of temporal attention in a video denoiser's attention time", temporal, "{:.1%}",
                     run_of))

    decoder = decoder_table([r for r in model if _family(r).get("modality") == "video"])
    shares = decoder.drop_duplicates("run_id") if len(decoder) else decoder
    rows.append(_row("Share of end-to-end time in a video model's decoder (VAE decode)",
                     [(float(x), rid) for x, rid in zip(shares.get("decoder_share", []), shares.get("run_id", []))
                      if x == x], "{:.1%}", run_of))
    rows.append(_guidance_row(model))
    rows.append(_expert_row(model))
    rows.append(_row("Share of a routed mixture-of-experts denoiser's step in routing (gate, top-k, token dispatch "
                     "and combine; random weights route as an untrained gate)", _routing_shares(model), "{:.1%}",
                     run_of))

    busy = []  # the GPU's busy share of one step's wall time: below 1, the host (launches, Python) is the limit
    for r in model:
        if (r.meta.get("device") or {}).get("type") != "cuda":  # a CPU run is always "busy": no GPU to idle
            continue
        key = step_key(r.meta.get("timings") or {})
        frac = ((r.meta.get("busy") or {}).get(key) or {}).get("busy_frac") if key else None
        if frac is not None:
            busy.append((float(frac), r.run_id))
    rows.append(_row("GPU busy share of a denoiser step or generated token's wall time", busy, "{:.0%}",
                     run_of))

    speed, kernels = _compile_speedups(every)
    row = _row("Step speedup of torch.compile over the eager model (default SDPA)", speed, "{:.2f}x", run_of)
    if kernels and row["value"] is not None:
        row["answer"] += f"; {median(_per_workload(kernels, run_of)):.2f}x fewer kernels per step"
    rows.append(row)

    sp = sequence_parallel_table(every)
    sp = sp[(sp["gpus"] > 1) & sp["speedup"].notna()] if len(sp) else sp
    best = sp.loc[sp.groupby(["workload", "backend", "device", "series", "gpus"])["speedup"].idxmax()] if len(sp) else sp
    gpus = sorted({int(g) for g in best["gpus"]}) if len(best) else []
    row = _row("Denoiser step speedup of sequence parallelism over one GPU (best scheme)",
               [(float(x), rid) for x, rid in zip(best.get("speedup", []), best.get("run_id", []))], "{:.2f}x",
               run_of)
    if gpus and row["value"] is not None:
        schemes = ", ".join(sorted(set(best["scheme"])))
        eff = median(_per_workload(list(zip(best["efficiency"], best["run_id"])), run_of))
        row["answer"] += f" at {'/'.join(map(str, gpus))} GPUs ({schemes}; efficiency {eff:.0%})"
    rows.append(row)
    if noisy:
        rows.append(_noisy_row(noisy))
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))


def findings_markdown(table: pd.DataFrame) -> str:
    lines = ["# Findings", "", "| question | answer | runs |", "|---|---|---|"]
    lines += [f"| {q} | {a} | {r or '-'} |" for q, a, r in zip(table["question"], table["answer"], table["runs"])]
    return "\n".join(lines) + "\n"
