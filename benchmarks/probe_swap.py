"""Where the attention swap's host time goes on a launch-bound step (SD 1.5 UNet, batch 2, bf16 on CUDA).

Times the main thread's CPU time per UNet forward (median of alternating rounds) for variants that add one part of
the swap at a time, then profiles native and swapped forwards with cProfile (functions by own time):

- ``native``: the model's processors, F.sdpa as PyTorch ships it;
- ``router``: F.sdpa replaced by mmchar's router, processors unwrapped (every call defers at once);
- ``wrapped``: processors wrapped, F.sdpa not replaced (the wrapper's own frame);
- ``swap sdpa`` / ``swap <backend>``: the whole swap.

    python benchmarks/probe_swap.py [--device cuda] [--rounds 100]
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import pstats
import statistics
import time

import torch

from mmchar import swap as sw
from mmchar.devices import resolve_device, synchronize
from mmchar.workloads import get_workload


def cpu_ms(unet, inputs, device) -> float:
    synchronize(device)
    c0 = time.thread_time()
    with torch.inference_mode():
        unet(*inputs)
    synchronize(device)
    return (time.thread_time() - c0) * 1e3


@contextlib.contextmanager
def router_only():
    sw._install()
    try:
        yield
    finally:
        sw._uninstall()


@contextlib.contextmanager
def wrapped_only(swap):
    for module, _, wrapped in swap._modules:
        module.set_processor(wrapped)
    try:
        yield
    finally:
        for module, original, _ in swap._modules:
            module.set_processor(original)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--backends", default="sdpa,flash,cudnn")
    a = ap.parse_args()
    device = resolve_device(a.device)
    w = get_workload("sd15")
    cfg = w.resolve(a.preset, device=str(device))
    unet = w.build(cfg).pipe.unet
    lat = cfg["params"]["height"] // 8
    dt = unet.dtype
    inputs = (torch.randn(2, 4, lat, lat, device=device, dtype=dt), torch.tensor(999, device=device),
              torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dt))
    pipe = type("P", (), {"unet": unet})()
    swaps = {b: sw.swap_attention(pipe, ["unet"], b, device) for b in a.backends.split(",")}
    variants = {"native": contextlib.nullcontext, "router": router_only,
                "wrapped": lambda: wrapped_only(swaps["sdpa"])}
    variants.update({f"swap {b}": (lambda b=b: swaps[b]) for b in swaps})
    for v in variants.values():
        for _ in range(3):
            with v():
                cpu_ms(unet, inputs, device)
    times = {k: [] for k in variants}
    names = list(variants)
    for r in range(a.rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            with variants[k]():
                times[k].append(cpu_ms(unet, inputs, device))
    calls = len(unet.attn_processors)
    base = statistics.median(times["native"])
    print(f"{calls} attention calls per forward; CPU ms per forward (median of {a.rounds})")
    for k in names:
        m = statistics.median(times[k])
        print(f"{k:16s} {m:8.3f} ms  {1e3 * (m - base) / calls:+7.2f} us per attention call")
    for k in ("native", "swap sdpa", f"swap {names[-1].split()[-1]}"):
        prof = cProfile.Profile()
        with variants[k]():
            prof.enable()
            for _ in range(20):
                cpu_ms(unet, inputs, device)
            prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(22)
        print(f"\n===== cProfile {k} (20 forwards) =====")
        print("\n".join(ln for ln in s.getvalue().splitlines() if ln.strip())[:6000])


if __name__ == "__main__":
    main()
