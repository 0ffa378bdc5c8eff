"""A first look at the three mixer kernels on a GPU (issue 16): one shape each, bf16, the first call (autotuning)
and then the mean of a few calls, the relative error against the fp32 eager form, and the peer / SDPA beside it.

    python3 -u benchmarks/probe_mixers.py mlstm|rwkv7|lla

Not the benchmark: `mmchar bench-attn` rows are (they check against the reference, time with do_bench and write
benchmarks/results/); this prints, for a session whose device time ran short."""
import time, torch, sys
torch.manual_seed(0)
dev = "cuda"
def rel(a, b): return float((a.float() - b.float()).norm() / b.float().norm())
def timeit(fn, n=5):
    fn(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3
which = sys.argv[1]
B, H, T = 1, 16, 4096
if which == "mlstm":
    from mmchar.kernels.mlstm.kernel import mlstm
    from mmchar.kernels.mlstm.reference import mlstm_eager
    q, k, v = (torch.randn(B, H, T, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    i, f = torch.randn(B, H, T, device=dev), torch.randn(B, H, T, device=dev) + 4
    t0 = time.perf_counter(); out = mlstm(q, k, v, i, f, normalize=False); torch.cuda.synchronize()
    print("mlstm first call (autotune) s", round(time.perf_counter() - t0, 1), flush=True)
    ref = mlstm_eager(q.float(), k.float(), v.float(), i, f, normalize=False)
    print("mlstm rel err vs fp32 eager", rel(out, ref), "ms", timeit(lambda: mlstm(q, k, v, i, f, normalize=False)), flush=True)
    try:
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk_siging import mlstm_siging_chunkwise__xl_chunk as tf
        po = tf(q, k, v, i, f, normalize=False, chunk_size=128, autocast_kernel_dtype=torch.bfloat16)
        print("TFLA rel err vs ref", rel(po, ref), "ms", timeit(lambda: tf(q, k, v, i, f, normalize=False, chunk_size=128, autocast_kernel_dtype=torch.bfloat16)), flush=True)
    except Exception as e: print("TFLA failed", e, flush=True)
elif which == "rwkv7":
    from mmchar.kernels.rwkv7.kernel import rwkv7
    from mmchar.kernels.rwkv7.reference import rwkv7_eager
    H, D = 32, 64
    r, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    w = (-0.6 * torch.sigmoid(torch.randn(B, H, T, D, device=dev))).to(torch.bfloat16)
    kap = torch.nn.functional.normalize(torch.randn(B, H, T, D, device=dev), dim=-1)
    lr = torch.sigmoid(torch.randn(B, H, T, D, device=dev))
    a, b = (-kap).to(torch.bfloat16), (kap * lr).to(torch.bfloat16)
    t0 = time.perf_counter(); out = rwkv7(r, w, k, v, a, b, scale=D ** -0.5); torch.cuda.synchronize()
    print("rwkv7 first call s", round(time.perf_counter() - t0, 1), flush=True)
    ref = rwkv7_eager(*(x.float() for x in (r, w, k, v, a, b)), scale=D ** -0.5)
    print("rwkv7 rel err vs fp32 eager", rel(out, ref), "ms", timeit(lambda: rwkv7(r, w, k, v, a, b, scale=D ** -0.5)), flush=True)
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
        nat = [x.transpose(1, 2).contiguous() for x in (r, w, k, v, a, b)]
        po = chunk_rwkv7(*nat, scale=D ** -0.5)[0].transpose(1, 2)
        print("fla rel err vs ref", rel(po, ref), "ms", timeit(lambda: chunk_rwkv7(*nat, scale=D ** -0.5)), flush=True)
    except Exception as e: print("fla failed", repr(e)[:200], flush=True)
else:
    from mmchar.kernels.lla.kernel import lla
    from mmchar.kernels.lla.reference import lla_eager
    q, k, v = (torch.randn(B, H, T, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
    t0 = time.perf_counter(); out = lla(q, k, v); torch.cuda.synchronize()
    print("lla first call s", round(time.perf_counter() - t0, 1), flush=True)
    ref = lla_eager(q.float(), k.float(), v.float())
    print("lla rel err vs fp32 eager", rel(out, ref), "ms", timeit(lambda: lla(q, k, v), 3), "eager bf16 ms", timeit(lambda: lla_eager(q, k, v), 1), flush=True)
    sd = torch.nn.functional.scaled_dot_product_attention
    print("sdpa ms", timeit(lambda: sd(q, k, v)), flush=True)
