"""The study's headline questions, each answered from the given runs with the measured value and the runs it
comes from, or "not covered by these runs" (Golden et al., 2023, asked them of 2023's models)."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

import pandas as pd

from mmchar.schema import step_key
from mmchar.store import Run

from .study import sequence_table
from .tables import comparison_table

NOT_COVERED = "not covered by these runs"
FUSED_SOFTMAX = ("flash", "cudnn", "efficient", "sdpa", "triton-flash", "flex")
FINDING_COLUMNS = ("question", "answer", "value", "runs")


def _family(run: Run) -> dict:
    return (run.meta.get("config") or {}).get("family") or {}


def _share(run: Run, stage: str, op_class: str) -> float | None:
    bd = run.breakdown
    if bd is None or bd.empty:
        return None
    part = bd[bd["stage"] == stage]
    return float(part.loc[part["op_class"] == op_class, "share"].sum()) if len(part) else None


def _row(question: str, values: list[tuple[float, str]], fmt: str) -> dict:
    if not values:
        return {"question": question, "answer": NOT_COVERED, "value": None, "runs": ""}
    v = median(x for x, _ in values)
    lo, hi = min(x for x, _ in values), max(x for x, _ in values)
    spread = "" if len(values) == 1 else f" (median of {len(values)}: {fmt.format(lo)} to {fmt.format(hi)})"
    return {"question": question, "answer": fmt.format(v) + spread, "value": v,
            "runs": ", ".join(r for _, r in values)}


def findings(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per headline question: ``question, answer, value, runs``."""
    ok = [r for r in runs if r.status == "ok"]
    rows = []

    # the 2023 claim is about UNet denoisers; diffusion transformers have almost no conv, so they are asked apart
    for arch, label in (("unet", "UNet"), ("dit", "diffusion-transformer (DiT)")):
        conv = [(s, r.run_id) for r in ok if _family(r).get("paradigm") == "diffusion"
                and _family(r).get("architecture") == arch and _family(r).get("task") == "text-to-image"
                and r.backend in FUSED_SOFTMAX and (s := _share(r, "denoiser", "conv")) is not None]
        rows.append(_row(f"Share of conv in a {label} text-to-image denoiser step after flash attention", conv,
                         "{:.1%}"))

    dit_video = [(s, r.run_id) for r in ok if _family(r).get("architecture") == "dit"
                 and _family(r).get("modality") == "video" and (s := _share(r, "denoiser", "attention")) is not None]
    rows.append(_row("Share of attention in a video diffusion-transformer denoiser step", dit_video, "{:.1%}"))

    gemm = [(s, r.run_id) for r in ok if _family(r).get("paradigm") == "transformer"
            and _family(r).get("task") == "text-to-image" and (s := _share(r, "generator", "gemm")) is not None]
    rows.append(_row("Share of gemm (linear layers) in a transformer text-to-image generation step", gemm, "{:.1%}"))

    cmp = comparison_table(ok)
    by_id = {r.run_id: r for r in ok}
    for paradigm in ("diffusion", "transformer"):
        sel = cmp[(cmp["backend"] == "flash") & (cmp["baseline_backend"] == "math")] if len(cmp) else cmp
        mine = sel[[rid in by_id and _family(by_id[rid]).get("paradigm") == paradigm for rid in sel.get("run_id", [])]] \
            if len(sel) else sel
        row = _row(f"Step speedup of flash attention over unfused attention, {paradigm} models",
                   [(float(x), rid) for rid, x in zip(mine.get("run_id", []), mine.get("step_speedup", [])) if x == x],
                   "{:.2f}x")
        busy = [float(x) for x in mine.get("busy_speedup", []) if x == x]
        if busy and row["value"] is not None:  # wall time hides kernel speedups when the host is the bottleneck
            row["answer"] += f"; GPU-busy time {median(busy):.2f}x"
        rows.append(row)

    seq = sequence_table([r for r in ok if _family(r).get("architecture") == "unet"])
    levels = []
    if len(seq):
        spatial = seq[(seq["stage"] == "denoiser") & (seq["attn_site"] == "spatial") & (seq["level"] != "")]
        for rid, part in spatial.groupby("run_id"):
            per = part.groupby("level")["q_len"].max()
            if len(per) > 1:
                levels.append((float(per.max() / per.min()), rid))
    rows.append(_row("Change of the spatial attention sequence length across a UNet's levels (largest / smallest)",
                     levels, "{:.0f}x"))

    temporal = []
    for r in ok:
        if _family(r).get("modality") != "video" or r.breakdown is None or r.breakdown.empty:
            continue
        att = r.breakdown[(r.breakdown["stage"] == "denoiser") & (r.breakdown["op_class"] == "attention")]
        total = float(att["time_us"].sum())
        if total > 0 and (att["attn_site"] == "temporal").any():
            temporal.append((float(att.loc[att["attn_site"] == "temporal", "time_us"].sum()) / total, r.run_id))
    rows.append(_row("Share of temporal attention in a video denoiser's attention time", temporal, "{:.1%}"))

    busy = []  # the GPU's busy share of one step's wall time: below 1, the host (launches, Python) is the limit
    for r in ok:
        if (r.meta.get("device") or {}).get("type") != "cuda":  # a CPU run is always "busy": no GPU to idle
            continue
        key = step_key(r.meta.get("timings") or {})
        frac = ((r.meta.get("busy") or {}).get(key) or {}).get("busy_frac") if key else None
        if frac is not None:
            busy.append((float(frac), r.run_id))
    rows.append(_row("GPU busy share of a denoiser step or generated token's wall time", busy, "{:.0%}"))
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))


def findings_markdown(table: pd.DataFrame) -> str:
    lines = ["# Findings", "", "| question | answer | runs |", "|---|---|---|"]
    lines += [f"| {q} | {a} | {r or '-'} |" for q, a, r in zip(table["question"], table["answer"], table["runs"])]
    return "\n".join(lines) + "\n"
