"""The workload suite's summary table from a run store (issue: workload suite, GPU evidence).

    python benchmarks/summarize_workloads.py STORE... -o benchmarks/results/workloads/README.md

One row per run: workload, parameters (meta-device count of its preset), status (OOM and errors included, as the
tool recorded them), latency per denoiser step or per generated token (prefill apart), GPU busy vs wall of a
step, the step stage's op-class shares, and its attention time by site.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmchar.schema import ATTN_SITES, OP_CLASSES, STEP_STAGES, step_key
from mmchar.shares import time_shares
from mmchar.store import load_runs
from mmchar.workloads import get_workload


def _size(params: dict) -> str:
    return f"{params.get('height')}x{params.get('width')}" + (f"x{params['frames']}" if params.get("frames") else "")


def _f(x: float | None, p: int = 2) -> str:
    return "-" if x is None or x != x else f"{x:.{p}f}"


def summary(paths: list[str]) -> str:
    runs = sorted(load_runs(paths, kernels=False), key=lambda r: (r.workload, r.backend, r.meta["created"]))
    if not runs:
        raise SystemExit("no runs")
    dev, v = runs[0].meta["device"], runs[0].meta["versions"]
    out = [f"# Workload suite on {dev['name']}", "",
           f"{runs[0].meta['created'][:10]}; torch {v['torch']}, diffusers {v['diffusers']}, transformers "
           f"{v['transformers']}. Random weights, each workload's `full` preset at its published default size "
           "(where a run is not, its size names the preset's beside it); latency from the uninstrumented timed pass, "
           "shares and sites from the full profile of the step stage (the denoiser, or a token model's generator).", "",
           "| workload | backend | params (B) | size | status | e2e ms | step ms | prefill ms | busy % | "
           + " | ".join(OP_CLASSES[:6]) + " | other classes | attention by site |", "|" + "---|" * 17]
    for r in runs:
        params = r.meta["config"].get("params", {})
        size = _size(params)
        try:
            workload, preset = get_workload(r.workload), r.meta.get("preset") or "full"
            total = sum(workload.parameter_count(preset).values()) / 1e9
            default = _size(workload.resolve(preset, device="cpu")["params"])
            if default != size:  # the header promises the published size: say where a run is not at it
                size += f" (preset {default})"
        except Exception:  # noqa: BLE001 - a pipeline folder or a removed workload: no count
            total = None
        if r.status != "ok":
            out.append(f"| {r.workload} | {r.backend} | {_f(total)} | {size} | {r.status}: {(r.meta.get('error') or '')[:60]} |"
                       + " |" * 12)
            continue
        t = r.meta["timings"]
        key = step_key(t)
        busy = (r.meta.get("busy") or {}).get(key) or {}
        bd = r.breakdown[r.breakdown["stage"].isin(STEP_STAGES)]  # one step stage per run
        shares = time_shares(bd, ["op_class"], empty=0.0).set_index("op_class")["share"]
        attention = bd[bd["op_class"] == "attention"]
        sites = time_shares(attention, ["attn_site"], empty=0.0).set_index("attn_site")["share"]
        per = "generator_decode" if "generator_decode" in t else key
        out.append(f"| {r.workload} | {r.backend} | {_f(total)} | {size} | ok | {_f(t['e2e']['median_ms'], 1)} | "
                   f"{_f(t[per]['median_ms'])}{' /token' if per == 'generator_decode' else ''} | "
                   f"{_f(t.get('generator_prefill', {}).get('median_ms'))} | {_f(100 * (busy.get('busy_frac') or float('nan')), 0)} | "
                   + " | ".join(f"{100 * shares.get(c, 0):.1f}" for c in OP_CLASSES[:6]) + " | "
                   # the classes past the first six where a run has them (routing in a MoE step, communication)
                   + ", ".join(f"{c} {100 * shares[c]:.1f}" for c in OP_CLASSES[6:] if shares.get(c, 0) >= 5e-4)
                   + " | " + ", ".join(f"{s} {100 * sites[s]:.0f}%" for s in ATTN_SITES if s in sites.index) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--output", default=None)
    a = ap.parse_args()
    text = summary(a.runs)
    print(text)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(text)


if __name__ == "__main__":
    main()
