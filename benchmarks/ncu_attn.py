"""One attention backend at one shape, called a few times: the target `ncu` profiles (benchmarks/ncu_attn.sh).

    python benchmarks/ncu_attn.py BACKEND --b 4 --h 32 --s 4096 --d 64 [--causal] [--calls 3]
"""

from __future__ import annotations

import argparse

import torch

from mmchar.backends import get_backend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("backend")
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--h", type=int, default=32)
    ap.add_argument("--s", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--calls", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        q, k, v = (torch.randn(a.b, a.h, a.s, a.d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        backend = get_backend(a.backend)(f"ncu.{a.backend}")
        for _ in range(2):  # compile and autotune outside the profiled range (ncu runs with --profile-from-start off)
            backend(q, k, v, causal=a.causal)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for _ in range(a.calls):
            backend(q, k, v, causal=a.causal)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
