"""The attention swap's own cost on a launch-bound denoiser step (SD 1.5 UNet, batch 2, bf16).

Times one UNet forward (a denoiser step with classifier-free guidance batched) with the model's own
processors, and with every processor wrapped by mmchar's swap routed to the ``sdpa`` backend, which calls the
very same F.scaled_dot_product_attention: the difference is the mechanism alone. The variants alternate
forward by forward (each forward timed alone, synchronised), so the host's load swings, which on a shared
machine are larger than the effect, hit every variant alike. Also times the direct-op backends.

    python benchmarks/bench_swap_overhead.py [--device cuda] [--preset full] [--iters 30] [--rounds 7]

Prints a table and writes benchmarks/results/swap_overhead.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mmchar import environment
from mmchar.devices import resolve_device, synchronize
from mmchar.swap import swap_attention
from mmchar.workloads import get_workload


def step_ms(unet, inputs, iters: int, device) -> tuple[float, float]:
    """(wall ms, main-thread CPU ms) per forward: launch-bound, the two are close; the CPU time is immune to
    waiting on other tenants of the host."""
    synchronize(device)
    t0, c0 = time.perf_counter(), time.thread_time()
    with torch.inference_mode():
        for _ in range(iters):
            unet(*inputs)
    synchronize(device)
    return (time.perf_counter() - t0) / iters * 1e3, (time.thread_time() - c0) / iters * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    device = resolve_device(a.device)
    w = get_workload("sd15")
    cfg = w.resolve(a.preset, device=str(device))
    target = w.build(cfg)
    unet = target.pipe.unet
    p = cfg["params"]
    lat = p["height"] // 8
    dtype = target.dtype
    inputs = (torch.randn(2, 4, lat, lat, device=device, dtype=dtype), torch.tensor(999, device=device),
              torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype))
    variants = ["original", "sdpa", "cudnn", "flash"] if device.type == "cuda" else ["original", "sdpa", "flash"]
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    swaps = {v: swap_attention(target.pipe, ["unet"], v, device) for v in variants if v != "original"}

    def measure(v: str, iters: int) -> tuple[float, float]:
        if v == "original":
            return step_ms(unet, inputs, iters, device)
        with swaps[v]:
            return step_ms(unet, inputs, iters, device)

    for v in variants:  # warm-up
        measure(v, 3)
    for r in range(a.rounds):  # interleaved, order reversed every other round
        for v in (variants if r % 2 == 0 else variants[::-1]):
            times[v].append(measure(v, a.iters))
    rows = []
    for v, t in times.items():
        med, cpu = statistics.median(x[0] for x in t), statistics.median(x[1] for x in t)
        base, base_cpu = statistics.median(x[0] for x in times["original"]), statistics.median(x[1] for x in times["original"])
        rows.append({"variant": v, "median_ms": med, "min_ms": min(x[0] for x in t), "cpu_ms": cpu,
                     "vs_original_pct": 100 * (med / base - 1), "cpu_vs_original_pct": 100 * (cpu / base_cpu - 1)})
    dev = environment.device_info(device)
    result = {"date": datetime.now(timezone.utc).isoformat(), "device": dev, "versions": environment.versions(),
              "workload": f"sd15 {a.preset} UNet forward, batch 2 (guidance), {p['height']}x{p['width']}, {dtype}",
              "iters": a.iters, "rounds": a.rounds, "attention_calls_per_step": len(unet.attn_processors), "rows": rows}
    lines = [f"# Attention-swap overhead ({dev['name']}, {result['date'][:10]})", "",
             f"{result['workload']}; torch "
             f"{result['versions']['torch']}, diffusers {result['versions']['diffusers']}.", "",
             "`sdpa` wraps every processor and routes its core call back to the same F.scaled_dot_product_attention:"
             " its difference from `original` is the swap mechanism's own cost.", "",
             f"Variants alternate forward by forward ({a.rounds} forwards each, order reversed every other round); "
             "medians of wall and main-thread CPU time per forward.", "",
             "| variant | median ms / step | min ms | CPU ms / step | wall vs original | CPU vs original |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['cpu_ms']:.3f} | "
              f"{r['vs_original_pct']:+.2f}% | {r['cpu_vs_original_pct']:+.2f}% |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap_overhead.md").write_text(text)
    (out / "swap_overhead.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
