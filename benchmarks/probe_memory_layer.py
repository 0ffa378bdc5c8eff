"""MemoryFormer's Memory Layer against its eager form, PyTorch's fused embedding_bag and the dense cuBLAS layer it
replaces, at real projection shapes (d 1536-3072, 16k-32k tokens), bf16, one process (issue 18, part 2).

    python3 -u benchmarks/probe_memory_layer.py [--tokens 16384,32768] [--out FILE.md]

Columns: ms (triton.testing.do_bench, L2 flushed); the fused kernel's speedup over eager; its bandwidth on unique
bytes (input, output, whole tables: `memory_layer_cost`) against the copy roof measured in the same process;
its rate on gathered bytes (tokens·K·d_out table elements: what each token reads, from L2 at best); dense cuBLAS
(F.linear on the same shape, bf16) and the Memory Layer's time over it. The bars: ≥ 5× eager, ≥ 60 % of the copy
roof on unique bytes.
"""
import argparse
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from mmchar.kernels.memory_layer.kernel import memory_layer
from mmchar.kernels.memory_layer.reference import (memory_layer_cost, memory_layer_eager, memory_layer_embedding_bag,
                                                   memory_layer_gather_bytes)

p = argparse.ArgumentParser()
p.add_argument("--tokens", default="16384,32768")
p.add_argument("--shapes", default="1536x1536,1536x8960,8960x1536,3072x3072,3072x12288,12288x3072",
               help="IN x OUT: Wan 1.3B's attention and FFN layers, then Flux's and Wan 14B-sized ones")
p.add_argument("--eager-max-ms", type=float, default=400.0, help="skip eager beyond this (estimated from 1k tokens)")
p.add_argument("--out", default=None)
a = p.parse_args()


def copy_gbps() -> float:
    x = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / do_bench(lambda: y.copy_(x), rep=200) / 1e6


roof = copy_gbps()
lines = [f"# Memory Layer (MemoryFormer) on {torch.cuda.get_device_name()}, "
         f"{datetime.now(timezone.utc).date()}",
         "",
         f"torch {torch.__version__}, triton {triton.__version__}; bf16, τ = 8; copy roof {roof:.0f} GB/s (measured "
         "here). ms: do_bench median, L2 flushed. `norm`: the FFN's second layer (LayerNorm before hashing).",
         "",
         "| tokens | in → out | norm | tables MB | fused ms | eager ms | fused / eager | embedding_bag ms | "
         "unique GB/s | % copy roof | gathered GB/s | dense ms | fused / dense |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
print("\n".join(lines), flush=True)
for n in map(int, a.tokens.split(",")):
    for shape in a.shapes.split(","):
        d_in, d_out = map(int, shape.split("x"))
        norm = d_in > d_out  # an FFN's contraction: the Memory Block's second layer
        k = d_in // 8
        g = torch.Generator(device="cuda").manual_seed(0)
        try:
            x = torch.randn(n, d_in, device="cuda", dtype=torch.bfloat16, generator=g)
            tables = torch.empty(k, 256, d_out, device="cuda", dtype=torch.bfloat16).normal_(0, k**-0.5, generator=g)
            bias = torch.randn(d_out, device="cuda", dtype=torch.bfloat16, generator=g)
            w = torch.randn(d_out, d_in, device="cuda", dtype=torch.bfloat16, generator=g) * d_in**-0.5
        except torch.OutOfMemoryError:
            print(f"| {n} | {d_in} → {d_out} | {norm} | OOM |", flush=True)
            torch.cuda.empty_cache()
            continue
        kw = {"tau": 8, "normalize": norm}
        fused = do_bench(lambda: memory_layer(x, tables, bias, **kw))
        est = do_bench(lambda: memory_layer_eager(x[:1024], tables, bias, **kw)) * n / 1024
        eager = do_bench(lambda: memory_layer_eager(x, tables, bias, **kw)) if est < a.eager_max_ms else float("nan")
        try:
            bag = do_bench(lambda: memory_layer_embedding_bag(x, tables, bias, **kw))
        except (RuntimeError, torch.OutOfMemoryError) as e:  # noqa: PERF203
            print(f"  embedding_bag: {type(e).__name__}: {str(e)[:80]}")
            bag = float("nan")
        dense = do_bench(lambda: F.linear(x, w, bias))
        _, unique = memory_layer_cost(n, d_in, d_out, 8, 2, normalize=norm)
        gathered = memory_layer_gather_bytes(n, d_in, d_out, 8, 2)
        row = (f"| {n} | {d_in} → {d_out} | {'yes' if norm else ''} | {tables.numel() * 2 / 1e6:.0f} | {fused:.3f} | "
               f"{eager:.2f} | {eager / fused:.1f}× | {bag:.3f} | {unique / fused / 1e6:.0f} | "
               f"{100 * unique / fused / 1e6 / roof:.1f} | {gathered / fused / 1e6:.0f} | {dense:.3f} | "
               f"{fused / dense:.1f}× |")
        print(row, flush=True)
        lines.append(row)
        del x, tables, bias, w
        torch.cuda.empty_cache()
for key, cfg in memory_layer.__globals__["_tuned"].cache.items():
    lines.append(f"\nautotuner pick {key[:5]}: {cfg}")
if a.out:
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
