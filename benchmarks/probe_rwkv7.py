"""Where the RWKV-7 kernel's time goes: each pass timed alone for every config of its autotune list (bypassing
the autotuner), per chunk size, at one shape; --ncu runs one chosen pair once, nothing else (for Nsight Compute).

    python3 -u benchmarks/probe_rwkv7.py [B H T D] [--chunks 32,16] [--strided] [--ncu C,W1,S1,BV,W2,S2]

--strided hands the kernel [B, H, T, D] views of [B, T, H, D] tensors, as the backend does (its projections of the
hidden states [B, S, H·d]); by default the inputs are contiguous [B, H, T, D].

The pass-1 results do not depend on its config, so the state pass is timed on the outputs of one intra launch."""
import argparse

import torch
import triton
from triton.testing import do_bench

from mmchar.kernels.rwkv7 import kernel as K
from mmchar.kernels.tuning import bucket

p = argparse.ArgumentParser()
p.add_argument("shape", nargs="*", type=int, default=[1, 32, 16384, 64])
p.add_argument("--chunks", default="32,16")
p.add_argument("--strided", action="store_true")
p.add_argument("--ncu", default=None)
a = p.parse_args()
B, H, T, D = a.shape
gen = torch.Generator(device="cuda").manual_seed(0)
x = [torch.randn(B, H, T, D, device="cuda", generator=gen) for _ in range(6)]
r, k, v = x[0], torch.nn.functional.normalize(x[2], dim=-1), x[3]
w = -(0.5 ** 0.5) * torch.sigmoid(x[1] - 2.0)  # RWKV-7's range: −e^{−1/2}·σ(·)
kappa = torch.nn.functional.normalize(x[4], dim=-1)
ts = [t.to(torch.bfloat16) for t in (r * D ** -0.5, w, k, v, -kappa, kappa * torch.sigmoid(x[5]))]
if a.strided:
    ts = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in ts]
bd, bh = max(16, triton.next_power_of_2(D)), B * H


def buffers(c):
    nt = triton.cdiv(T, c)
    mk = lambda dt: torch.empty((bh, nt * c, bd), dtype=dt, device="cuda")  # noqa: E731
    bufs = [mk(torch.bfloat16) for _ in range(3)] + [mk(torch.float32)] + [mk(torch.bfloat16) for _ in range(2)]
    g = torch.empty((bh, nt, bd), dtype=torch.float32, device="cuda")
    return nt, bufs, g


def launchers(c):
    nt, (qp, wy, u, oi, kg, bg), g = buffers(c)
    o = torch.empty((B, H, T, D), dtype=ts[0].dtype, device="cuda")
    strides = [s for t in ts for s in t.stride()]
    intra_args = (*ts, qp, wy, u, oi, kg, bg, g, T, nt, 1.0, *strides, H)
    state_args = (ts[3], qp, wy, u, oi, kg, bg, g, o, T, nt, *ts[3].stride(), *o.stride(), H)

    def intra(w_, s_):
        return lambda: K._rwkv7_intra_kernel[(bh, nt)](*intra_args, D=D, BD=bd, C=c, BC=K._BLOCK, PREC="tf32",
                                                       num_warps=w_, num_stages=s_)

    def state(bv, w_, s_):
        return lambda: K._rwkv7_state_kernel[(bh, bd // bv)](*state_args, D=D, BD=bd, C=c, PREC="tf32",
                                                             NB=bucket(bh), BV=bv, num_warps=w_, num_stages=s_)
    return intra, state


if a.ncu:
    c, w1, s1, bv, w2, s2 = map(int, a.ncu.split(","))
    intra, state = launchers(c)
    intra(w1, s1)()
    state(bv, w2, s2)()
    torch.cuda.synchronize()
    raise SystemExit
ref = K.rwkv7(*ts)  # the autotuned call, for the total
total = do_bench(lambda: K.rwkv7(*ts))
print(f"shape B{B} H{H} T{T} D{D} bf16, {'strided [B, T, H, D] views' if a.strided else 'contiguous'}; "
      f"autotuned call {total:.3f} ms")
for c in map(int, a.chunks.split(",")):
    intra, state = launchers(c)
    it = {(w_, s_): do_bench(intra(w_, s_)) for w_, s_ in K._INTRA_CONFIGS}
    st = {cfg: do_bench(state(*cfg)) for cfg in K._STATE_CONFIGS if cfg[0] <= bd}
    bi, bs = min(it, key=it.get), min(st, key=st.get)
    print(f"C={c}: intra " + " ".join(f"w{w_}s{s_}={t:.3f}" for (w_, s_), t in it.items()))
    print(f"C={c}: state " + " ".join(f"bv{e}w{w_}s{s_}={t:.3f}" for (e, w_, s_), t in st.items()))
    print(f"best C={c}: intra {it[bi]:.3f} + state {st[bs]:.3f} = {it[bi] + st[bs]:.3f} ms  ncu: {c},{bi[0]},{bi[1]},{','.join(map(str, bs))}")
