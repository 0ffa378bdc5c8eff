"""One attention backend alone on one shape, bf16 on the GPU: its output against its reference, or the error
that ends the process (run one backend per process: an illegal memory access poisons the CUDA context).

    CUDA_LAUNCH_BLOCKING=1 python benchmarks/probe_shape.py wersa 2,70,1024,300,32 [--causal]
"""

from __future__ import annotations

import sys

import torch

from mmchar.backends import get_backend


def main() -> None:
    name, dims = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    causal = "--causal" in sys.argv
    b, h, sq, skv, d = dims
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for n in (sq, skv, skv))
    host = torch.randn(b, sq, h * d, device="cuda", dtype=torch.bfloat16, generator=g) if sq == skv else None
    backend = get_backend(name)(f"probe.{name}", 0)
    why = backend.unsupported(q, k, v, causal=causal, mask=None)
    if why is not None:
        print(f"{name} {dims}: unsupported: {why}", flush=True)
        return
    with torch.inference_mode():
        backend(q, k, v, causal=causal, hidden_states=host)  # the whole shape, as the model calls it
        torch.cuda.synchronize()
        qs = q[:, :, :128].contiguous()  # then the first rows against the reference, as bench-attn checks
        ref = backend.reference(qs, k, v, causal=causal) if not causal else None
        got = backend(qs, k, v, causal=causal)
        torch.cuda.synchronize()
        err = None if ref is None else ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"{name} {dims}: ok, rel_err {err}", flush=True)


if __name__ == "__main__":
    main()
