"""Time the LLA kernel's configs one by one at one shape (bypassing the autotuner), with CG iteration counts 0
and the given one so the per-pass cost falls out as a difference, beside SDPA (cuDNN, flash) at the same shape:
one LLA pass over the keys is an attention-like sweep, so SDPA's time is what one pass could cost.

    python3 -u benchmarks/tune_lla.py [B H S D] [--causal] [--iters 32] [--ncu BM,BN,W,S,TMA]

--ncu runs one config once with 4 CG iterations and nothing else (for `ncu --clock-control none`)."""
import argparse
import torch
import triton
from triton.testing import do_bench

from mmchar.kernels.lla import kernel as K
from mmchar.kernels.lla.reference import CG_RTOL, DEFAULT_RIDGE_LAMBDA
from mmchar.kernels.tuning import bucket, ensure_descriptor_scratch

p = argparse.ArgumentParser()
p.add_argument("shape", nargs="*", type=int, default=[1, 16, 4096, 64])
p.add_argument("--causal", action="store_true")
p.add_argument("--iters", type=int, default=32)
p.add_argument("--ncu", default=None)
a = p.parse_args()
B, H, S, D = a.shape
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
o = torch.empty_like(q)
bd = max(16, triton.next_power_of_2(D))


def launch(bm, bn, w, st, tma, iters):
    if tma:
        ensure_descriptor_scratch()
    args = (q, k, v, o, D ** -0.5 * K.LOG2E, DEFAULT_RIDGE_LAMBDA, CG_RTOL ** 2, *q.stride(), *k.stride(),
            *v.stride(), *o.stride(), H, S, S, iters, bucket(S), bucket(S), 1)
    return lambda: K._lla_fwd_kernel[(B * H * triton.cdiv(S, bm),)](
        *args, HEAD_DIM=D, BLOCK_D=bd, CAUSAL=a.causal, PREC="tf32", BLOCK_M=bm, BLOCK_N=bn, TMA=bool(tma),
        num_warps=w, num_stages=st)


if a.ncu:
    cfg = tuple(int(x) for x in a.ncu.split(","))
    launch(*cfg, 4)()
    torch.cuda.synchronize()
    raise SystemExit
ref = K.lla(q, k, v, causal=a.causal, cg_iters=a.iters)
flops = B * H * S * S * 2 * D * (5 + 2 * a.iters) / (2 if a.causal else 1)
print(f"shape B{B} H{H} S{S} D{D} causal={a.causal} iters={a.iters}; credited {flops:.3g} FLOP", flush=True)
from torch.nn.attention import SDPBackend, sdpa_kernel
for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
    with sdpa_kernel(be):
        ms = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=a.causal))
    print(f"sdpa {be.name}: {ms:.3f} ms", flush=True)
base = [(64, 64, 8, 2), (64, 64, 8, 3), (64, 32, 8, 2), (32, 64, 4, 2), (128, 64, 8, 2), (32, 128, 4, 2)]
if D > 64:
    base = [(32, 32, 8, 2), (16, 64, 8, 2), (16, 32, 4, 2), (32, 64, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2),
            (128, 32, 8, 2), (128, 64, 8, 2)]
configs = [c + (t,) for t in (0, 1) for c in base]
times = {}
for cfg in configs:
    try:
        f32, f0 = launch(*cfg, a.iters), launch(*cfg, 0)
        f32()
        err = float((o.float() - ref.float()).norm() / ref.float().norm())
        t32, t0 = do_bench(f32, warmup=50, rep=150), do_bench(f0, warmup=10, rep=50)
        per = (t32 - t0) / max(a.iters, 1)
        times[cfg] = t32
        print(f"cfg {cfg}: {t32:.2f} ms (0 iters {t0:.3f}; per CG pass {per:.3f} ms), "
              f"{flops / t32 / 1e9:.0f} TFLOP/s credited, rel diff vs autotuned {err:.1e}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"cfg {cfg}: failed {type(e).__name__} {str(e)[:120]}", flush=True)
if times:
    best = min(times, key=times.get)
    print("best", ",".join(map(str, best)), f"{times[best]:.2f} ms; autotuned lla() "
          f"{do_bench(lambda: K.lla(q, k, v, causal=a.causal, cg_iters=a.iters), rep=300):.2f} ms", flush=True)
