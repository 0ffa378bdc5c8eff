"""Where non-causal linear attention's time goes: per kernel (state zeroing, state pass, output pass) GPU time
from the profiler, the autotuner's pick, and the pass's bytes against the copy roof, at the sweep's shapes
from S = 16k (B·S = 16 384, H·d = 2048: B·H = 32 at d = 64, 16 at d = 128).

    python3 -u benchmarks/probe_linear.py [--seqs 16384,32768,65536] [--dims 64,128]

A call's kernels are timed back to back (launches queued, L2 warm between calls as inside a model); bench-attn
(`mmchar bench-attn --match "sweep d64 S16k"`) is the cold, do_bench figure the bar is judged on."""
import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from mmchar.kernels.linear_attn import kernel as K

p = argparse.ArgumentParser()
p.add_argument("--seqs", default="16384,32768,65536")
p.add_argument("--dims", default="64,128")
p.add_argument("--copy-gbps", type=float, default=None, help="the copy roof (default: measured here)")
a = p.parse_args()


def copy_gbps() -> float:
    x = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    from triton.testing import do_bench

    return 2 * x.numel() / do_bench(lambda: y.copy_(x), rep=200) / 1e6


roof = a.copy_gbps or copy_gbps()
print(f"{torch.cuda.get_device_name()}: copy roof {roof:.0f} GB/s")
print(f"{'shape':<22}{'kernel':<34}{'us':>9}{'GB/s':>9}{'% roof':>8}")
for d in map(int, a.dims.split(",")):
    for s in map(int, a.seqs.split(",")):
        b, h = max(16384 // s, 1), 2048 // d
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        for _ in range(3):
            K.linear_attn(q, k, v)  # autotune, compile
        torch.cuda.synchronize()
        n = 20
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                K.linear_attn(q, k, v)
            torch.cuda.synchronize()
        per = defaultdict(float)
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                per[e.name[:32]] += e.device_time / n
        qkvo = 4 * b * h * s * d * 2
        name = f"B{b} H{h} S{s // 1024}k d{d}"
        for kname, us in sorted(per.items(), key=lambda kv: -kv[1]):
            bytes_ = {"_linear_attn_state_kernel": qkvo / 2, "_linear_attn_out_kernel": qkvo / 2}.get(kname, 0)
            rate = bytes_ / us / 1e3 if bytes_ else float("nan")
            print(f"{name:<22}{kname:<34}{us:9.1f}{rate:9.0f}{100 * rate / roof:8.1f}")
        total = sum(per.values())
        print(f"{name:<22}{'all kernels':<34}{total:9.1f}{qkvo / total / 1e3:9.0f}{100 * qkvo / total / 1e3 / roof:8.1f}")
        for tuned in (K._state_tuned, K._out_tuned):
            for key, cfg in tuned.cache.items():
                if key[0] == d:
                    print(f"{'':<22}{tuned.fn.__name__} {key[:3]}: {cfg}")
