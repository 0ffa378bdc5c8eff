"""The attention swap's own cost on a launch-bound denoiser step (SD 1.5 UNet, batch 2, bf16), per backend.

For each backend PyTorch can also run natively (``sdpa``, and SDPA's ``flash``, ``cudnn``, ``efficient`` kernels),
two variants of one UNet forward (a denoiser step with classifier-free guidance batched):

- ``native``: the model's own processors calling F.scaled_dot_product_attention, pinned to that kernel with
  ``torch.nn.attention.sdpa_kernel`` entered once outside the timed forwards (for ``sdpa``: PyTorch's own choice,
  nothing pinned) -- how a user runs that kernel without mmchar;
- ``swap``: every processor wrapped by mmchar's swap and routed to the registry backend of that name, which calls
  the same kernel.

Their difference is the swap mechanism alone (routing, the backend call). ``math`` and ``triton-flash`` have no
native twin and are timed as swapped only. The variants alternate in blocks, as a run uses the swap: a variant's
context is entered, one forward settles the interpreter (swapping processors and F.sdpa re-specialises Python's
attribute and call sites: a cost paid once per generation in a run, not per step) and ``--block`` forwards are
timed one by one (synchronised); the order of variants is reversed every other round, so the host's load swings,
larger than the effect on a shared machine, hit every variant alike. Wall time and the main thread's CPU time
(immune to waiting on other tenants) are reported as medians.

    python benchmarks/bench_swap_overhead.py [--device cuda] [--preset full] [--rounds 60] [--block 5] [--budget-s S]

Prints a table and writes benchmarks/results/swap_overhead.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mmchar import environment
from mmchar.backends import require_backend
from mmchar.devices import resolve_device, synchronize
from mmchar.errors import MmcharError
from mmchar.swap import swap_attention
from mmchar.workloads import get_workload

NATIVE = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}


def step_ms(unet, inputs, device) -> tuple[float, float]:
    """(wall ms, main-thread CPU ms) of one forward."""
    synchronize(device)
    t0, c0 = time.perf_counter(), time.thread_time()
    with torch.inference_mode():
        unet(*inputs)
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3


def native_context(backend: str):
    if backend == "sdpa":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, NATIVE[backend]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no round after this many seconds of timing (the table reports the rounds run): a "
                         "device call's limit then cuts rounds, not the table")
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
    candidates = ["sdpa", "flash", "cudnn", "efficient", "math", "triton-flash"]
    backends = []
    for b in candidates:
        try:
            require_backend(b, device)
            backends.append(b)
        except MmcharError as e:
            print(f"skipping {b}: {e}")
    variants: dict[str, tuple[str, str]] = {}  # label -> (backend, native | swap)
    for b in backends:
        if b in NATIVE or b == "sdpa":
            variants[f"{b} native"] = (b, "native")
        variants[f"{b} swap"] = (b, "swap")
    # the A/A control: the very same variant twice; their difference is this host's noise floor for the others
    variants["sdpa native, again"] = ("sdpa", "native")
    swaps = {b: swap_attention(target.pipe, ["unet"], b, device) for b in backends}

    def measure(label: str, block: int) -> list[tuple[float, float]]:
        b, how = variants[label]
        ctx = native_context(b) if how == "native" else swaps[b]
        with ctx:
            step_ms(unet, inputs, device)  # settles the re-specialised call sites
            return [step_ms(unet, inputs, device) for _ in range(block)]

    labels = list(variants)
    for label in labels:  # warm-up: autotuning, cuDNN plans, allocator
        measure(label, 3)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in labels}
    t0, rounds = time.monotonic(), 0
    while rounds < a.rounds and (a.budget_s is None or time.monotonic() - t0 < a.budget_s):
        for label in (labels if rounds % 2 == 0 else labels[::-1]):
            times[label] += measure(label, a.block)
        rounds += 1
    calls = len(unet.attn_processors)

    def med(label: str, i: int) -> float:
        return statistics.median(x[i] for x in times[label])

    rows = []
    for label in labels:
        b, how = variants[label]
        row = {"variant": label, "backend": b, "how": how, "median_ms": med(label, 0),
               "min_ms": min(x[0] for x in times[label]), "cpu_ms": med(label, 1)}
        native = f"{b} native"
        if label != native and native in times:
            wall, cpu = med(label, 0) - med(native, 0), med(label, 1) - med(native, 1)
            row.update(overhead_ms=wall, overhead_pct=100 * wall / med(native, 0),
                       cpu_overhead_us_per_call=1e3 * cpu / calls, cpu_overhead_pct=100 * cpu / med(native, 1))
        rows.append(row)
    dev = environment.device_info(device)
    result = {"date": datetime.now(timezone.utc).isoformat(), "device": dev, "versions": environment.versions(),
              "workload": f"sd15 {a.preset} UNet forward, batch 2 (guidance), {p['height']}x{p['width']}, {dtype}",
              "rounds": rounds, "block": a.block, "attention_calls_per_step": calls, "rows": rows}
    lines = [f"# Attention-swap overhead per backend ({dev['name']}, {result['date'][:10]})", "",
             f"{result['workload']}; {calls} attention calls per forward; torch {result['versions']['torch']}, "
             f"diffusers {result['versions']['diffusers']}, mmchar {result['versions'].get('mmchar')}.", "",
             "`native`: the model's own processors, F.scaled_dot_product_attention pinned to the backend's kernel "
             "with `sdpa_kernel` (entered once, outside the timed forwards; `sdpa`: PyTorch's own choice). `swap`: "
             "every processor routed by mmchar to the registry backend of that name, same kernel. The difference "
             "is the swap mechanism's own cost; the bar is < 1 % of a launch-bound step. `sdpa native, again` is the "
             "A/A control: the same variant timed twice; its difference from `sdpa native` is this host's noise "
             "floor for every other row.", "",
             f"Variants alternate in blocks ({rounds} rounds of {a.block} timed forwards each after one settling "
             f"forward, {rounds * a.block} per variant; order reversed every other round); medians of the wall "
             "time and of the main thread's CPU time per forward.", "",
             "| variant | median ms / step | min ms | CPU ms / step | swap overhead, wall | swap overhead, CPU "
             "| CPU µs per attention call |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        over = (f"{r['overhead_ms'] * 1e3:+.0f} µs ({r['overhead_pct']:+.2f}%) | {r['cpu_overhead_pct']:+.2f}% | "
                f"{r['cpu_overhead_us_per_call']:+.2f}") if "overhead_ms" in r else "- | - | -"
        lines.append(f"| {r['variant']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['cpu_ms']:.3f} | {over} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap_overhead.md").write_text(text)
    (out / "swap_overhead.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
