"""Markdown summary of core GPU evidence from a run store (slim copies are enough).

    python benchmarks/summarize_core.py benchmarks/results/core/runs -o benchmarks/results/core/README.md

Per run: latencies of the timed pass, GPU busy vs wall of a denoiser step, the denoiser's op-class shares,
the attention-site split of its attention time, and the compare figures against the group's baseline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmchar.analysis import comparison_table, stage_table
from mmchar.schema import OP_CLASSES
from mmchar.store import load_runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--extra", default=None, help="markdown file appended verbatim (e.g. swap_overhead.md)")
    a = ap.parse_args()
    runs = [r for r in load_runs(a.runs, kernels=False) if r.status == "ok"]
    runs.sort(key=lambda r: (r.workload, ["math", "flash", "cudnn", "efficient", "sdpa"].index(r.backend)
                             if r.backend in ("math", "flash", "cudnn", "efficient", "sdpa") else 9))
    cmp = comparison_table(runs).set_index("run_id")
    st = stage_table(runs)
    dev = runs[0].meta["device"]
    v = runs[0].meta["versions"]
    out = [f"# Core evidence: SD 1.5 and ModelScope T2V on {dev['name']}", "",
           f"{runs[0].meta['created'][:10]}; torch {v['torch']}, CUDA {v['cuda']}, cuDNN {v['cudnn']}, diffusers "
           f"{v['diffusers']}, transformers {v['transformers']}; driver {dev.get('driver')}. Random weights, bf16, "
           "full presets (sd15: 512x512, batch 1 with guidance = denoiser batch 2; modelscope-t2v: 16 frames 256x256, "
           "batch 2 with guidance). Timed pass: "
           f"{runs[0].meta['passes']['repeat']} generations of {runs[0].meta['passes']['steps']} steps, backends "
           "interleaved round by round; shares from the full profile "
           f"({runs[0].meta['passes']['profile_steps']} steps). Slim run stores in `runs/`.", "",
           "## Latency and GPU busy time", "",
           "| workload | backend | e2e ms | denoiser step ms | GPU busy / step ms | busy % | step speedup | busy speedup | "
           "attention speedup | latents cosine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = cmp.loc[r.run_id] if r.run_id in cmp.index else None
        b = r.meta["busy"]["denoiser_step"]
        f = lambda x, p=2: "-" if x is None or x != x else f"{x:.{p}f}"  # noqa: E731
        out.append(f"| {r.workload} | {r.backend} | {f(r.meta['timings']['e2e']['median_ms'], 1)} | "
                   f"{f(r.meta['timings']['denoiser_step']['median_ms'])} | {f(b['busy_ms'])} | {f(100 * b['busy_frac'], 0)} | "
                   f"{f(c['step_speedup'] if c is not None else None)} | {f(c['busy_speedup'] if c is not None else None)} | "
                   f"{f(c['attention_speedup'] if c is not None else None)} | {f(c['cosine'] if c is not None else None, 4)} |")
    out += ["", "## Denoiser op-class shares (of GPU kernel time) and attention sites", "",
            "| workload | backend | " + " | ".join(OP_CLASSES[:6]) + " | attention: spatial | temporal | cross |",
            "|---|---|" + "---|" * 9]
    for r in runs:
        bd = r.breakdown[r.breakdown["stage"] == "denoiser"]
        sh = bd.groupby("op_class")["share"].sum()
        att = bd[bd["op_class"] == "attention"]
        site = att.groupby("attn_site")["time_us"].sum() / max(att["time_us"].sum(), 1e-9)
        out.append(f"| {r.workload} | {r.backend} | " + " | ".join(f"{100 * sh.get(c, 0):.1f}%" for c in OP_CLASSES[:6])
                   + " | " + " | ".join(f"{100 * site.get(s, 0):.1f}%" for s in ("spatial", "temporal", "cross")) + " |")
    out += ["", "## Stages (median ms of the timed pass; busy from the light profile)", "",
            "| workload | backend | stage | median ms | min | max | busy ms | busy % | kernels |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for _, row in st[st["run_id"] == r.run_id].iterrows():
            if row["stage"] in ("text_encoder", "denoiser_step", "decoder", "scheduler"):
                bf = row.get("busy_frac")
                out.append(f"| {r.workload} | {r.backend} | {row['stage']} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
                           f"{row['max_ms']:.2f} | {row.get('busy_ms', float('nan')):.2f} | "
                           f"{'-' if bf != bf else f'{100 * bf:.0f}'} | {row.get('kernels', float('nan')):.0f} |")
    if a.extra and Path(a.extra).exists():
        out += ["", Path(a.extra).read_text().replace("# ", "## ", 1)]
    Path(a.output).write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
