"""Host cost of one attention call: microseconds of Python and launch per call while the GPU is kept busy (so
no call waits on the GPU), beside the GPU time of the same call. For the small calls where bench-attn's
one-call-at-a-time timing measures the host, not the kernel (SD 1.5's 1024- and 256-token levels, cross
attention). Run on the GPU machine:

    python -u benchmarks/probe_launch.py [--out FILE.md]
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import torch

from mmchar import environment
from mmchar.backends import get_backend
from mmchar.kernels.triton_flash import triton_flash
from mmchar.kernels.tuning import gpu_time, host_us

SHAPES = {"sd15 L1": (2, 8, 1024, 1024, 80), "sd15 L2": (2, 8, 256, 256, 160), "sd15 cross L0": (2, 8, 4096, 77, 40),
          "pixart cross": (2, 16, 4096, 300, 72), "sd15 L0": (2, 8, 4096, 4096, 40)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = [f"# Host cost per attention call on {environment.device_info(torch.device('cuda'))['name']} "
             f"({datetime.now(timezone.utc):%Y-%m-%d})", "",
             "host_us: Python + launch per call with the GPU busy; gpu_us: GPU time per call, launches queued "
             "ahead; both medians.", "", "| shape | call | host_us | gpu_us |", "|---|---|---|---|"]
    for name, (b, h, sq, skv, d) in SHAPES.items():
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for n in (sq, skv, skv))
        calls = {}
        for backend in ("flash", "cudnn", "triton-flash"):
            be = get_backend(backend)(f"probe.{backend}", 0)
            calls[f"backend {backend}"] = lambda be=be: be(q, k, v, causal=False)
        calls["triton_flash()"] = lambda: triton_flash(q, k, v)
        calls["triton_flash(tma=False)"] = lambda: triton_flash(q, k, v, tma=False)
        with torch.inference_mode():
            for label, fn in calls.items():
                try:
                    row = f"| {name} | {label} | {host_us(fn):.1f} | {gpu_time(fn, quantiles=(0.5,))[0] * 1e3:.1f} |"
                except Exception as e:  # noqa: BLE001 - one failing call must not hide the others
                    row = f"| {name} | {label} | failed: {type(e).__name__}: {str(e)[:80]} | |"
                print(row, flush=True)
                lines.append(row)
    # where the host time of the smallest call goes, function by function
    import cProfile
    import io
    import pstats

    b, h, sq, skv, d = SHAPES["sd15 L1"]
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for n in (sq, skv, skv))
    be = get_backend("triton-flash")("probe.triton-flash", 0)
    with torch.inference_mode():
        host_us(lambda: be(q, k, v, causal=False))
        torch.cuda._sleep(200_000_000)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            be(q, k, v, causal=False)
        prof.disable()
        torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    print(buf.getvalue(), flush=True)
    lines += ["", "cProfile of 300 triton-flash backend calls at sd15 L1 (tottime order):", "", "```",
              buf.getvalue().strip(), "```"]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
