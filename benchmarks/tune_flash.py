"""Which triton_flash configurations suit Hopper: every (block, warps, stages, load path) candidate timed on the
S-sweep shapes, with SDPA cuDNN and SDPA flash timed in the same run as the baselines, then the autotuned kernel
(default, pointer-only, descriptor-only) on workload shapes. Informs the config list in
kernels/triton_flash/kernel.py; the table is evidence, not a tuning cache.

    python -u benchmarks/tune_flash.py --out DIR [--jobs 8]

Compilation dominates a fresh machine: candidates are compiled first in a process pool (one tiny launch each,
same specialisations as the timed shapes, into the shared Triton cache), then timed one by one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

SWEEP = [  # name, B, H, S, D
    ("d64 S4k", 4, 32, 4096, 64), ("d64 S16k", 1, 32, 16384, 64),
    ("d128 S4k", 4, 16, 4096, 128), ("d128 S16k", 1, 16, 16384, 128),
]
WORKLOADS = [  # name, B, H, Sq, Skv, D
    ("sdxl self", 2, 10, 4096, 4096, 64), ("flux joint", 1, 24, 4608, 4608, 128),
    ("sd15 d40", 2, 8, 4096, 4096, 40), ("sd15 d80", 2, 8, 1024, 1024, 80), ("sd15 cross", 2, 8, 4096, 77, 40),
    ("pixart d72", 2, 16, 4096, 4096, 72), ("wan 480p", 1, 12, 32760, 32760, 128),
    ("cogvideox 480p", 2, 48, 17776, 17776, 64),
]


def candidates() -> list[dict]:
    out = []
    for bm, bn, w, s, tma in itertools.product([64, 128], [64, 128], [4, 8], [2, 3, 4], [False, True]):
        if bm == 64 and (w == 8 or bn == 128):
            continue
        out.append({"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s, "TMA": tma})
    # Triton's warp specialisation (descriptor loads only; failed to compile under Triton 3.6 in the third
    # session, kept as candidates so a table says whether it still does)
    out += [{"BLOCK_M": 128, "BLOCK_N": bn, "num_warps": w, "num_stages": s, "TMA": True, "WS": True}
            for bn in (64, 128) for w in (4, 8) for s in (2, 3)]
    # scores one block ahead (the AHEAD loop: block j+1's q·kᵀ in flight during block j's softmax), both paths
    out += [{"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s, "TMA": tma, "AHEAD": True}
            for bm, bn, w in ((128, 64, 4), (128, 64, 8), (128, 128, 8), (64, 64, 4)) for s in (2, 3)
            for tma in (False, True)]
    return out


def _fits(c: dict, d: int) -> bool:
    return not (d >= 128 and c["BLOCK_N"] == 128 and c["num_stages"] > 3)


def _launch(c: dict, q, k, v):
    from mmchar.kernels.triton_flash.kernel import triton_flash

    return triton_flash(q, k, v, tma=c["TMA"], config={n: x for n, x in c.items() if n != "TMA"})


def _compile_one(c: dict, d: int) -> str | None:
    """Compile by launching once on a small input with the timed shapes' specialisations (S, strides % 16)."""
    try:
        q = torch.randn(1, 2, 256, d, device="cuda", dtype=torch.bfloat16)
        _launch(c, q, q, q)
        torch.cuda.synchronize()
        return None
    except Exception as e:  # noqa: BLE001 - reported per candidate
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--sweep-only", action="store_true", help="skip the workload shapes")
    a = ap.parse_args()
    from triton.testing import do_bench

    from mmchar.flops import attention_cost
    from mmchar.kernels.triton_flash.kernel import triton_flash

    a.out.mkdir(parents=True, exist_ok=True)
    cands = candidates()
    t0 = time.time()
    jobs = [(c, d) for d in (64, 128) for c in cands if _fits(c, d)]
    with ProcessPoolExecutor(a.jobs, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        errors = list(pool.map(_compile_one, *zip(*jobs)))
    print(f"compiled {len(jobs)} candidates in {time.time() - t0:.0f} s", flush=True)
    broken = {(json.dumps(c, sort_keys=True), d): e for (c, d), e in zip(jobs, errors) if e}

    def tflops(b, h, sq, skv, d, ms):  # non-causal softmax attention, FLOPs as every run counts them
        flops, _ = attention_cost([b, h, sq, d], [b, h, skv, d], [b, h, skv, d], False, 2)
        return flops / ms / 1e9

    def sdpa(kind, q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[kind]

        def fn():
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v)
        return fn

    rows: list[dict] = []

    def write() -> None:  # after every shape: a run cut short keeps what it measured
        import pandas as pd
        import triton

        from mmchar.bench_attn import _markdown

        df = pd.DataFrame(rows)
        head = (f"# triton_flash candidates on {torch.cuda.get_device_name()} ({time.strftime('%Y-%m-%d')}), bf16 "
                f"non-causal forward\n\ntorch {torch.__version__}, triton {triton.__version__}, cuDNN "
                f"{torch.backends.cudnn.version()}; ms = median of triton.testing.do_bench; baselines (SDPA cuDNN, "
                f"SDPA flash) timed in the same run, before each shape's candidates.\n\n")
        (a.out / "tune_flash.md").write_text(head + _markdown(df) + "\n")
        df.to_json(a.out / "tune_flash.json", orient="records", indent=1)

    for name, b, h, s, d in SWEEP:
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        base = {kind: do_bench(sdpa(kind, q, k, v), warmup=25, rep=100, return_mode="median")
                for kind in ("cudnn", "flash")}
        ref = sdpa("cudnn", q, k, v)()
        for c in cands:
            if not _fits(c, d):
                continue
            key = (json.dumps(c, sort_keys=True), d)
            row = {"shape": name, **c}
            if key in broken:
                row["note"] = broken[key]
            else:
                try:
                    o = _launch(c, q, k, v)
                    err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                    if err > 1e-2:
                        row["note"] = f"wrong output (rel. error {err:.3g})"
                    else:
                        ms = do_bench(lambda c=c, q=q, k=k, v=v: _launch(c, q, k, v), warmup=25, rep=100,
                                      return_mode="median")
                        row.update(ms=ms, tflops=tflops(b, h, s, s, d, ms), vs_cudnn=base["cudnn"] / ms,
                                   vs_flash=base["flash"] / ms)
                except Exception as e:  # noqa: BLE001
                    row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            rows.append(row)
        best = max((r for r in rows if r["shape"] == name and "ms" in r), key=lambda r: r["tflops"], default=None)
        print(f"{name}: cudnn {tflops(b, h, s, s, d, base['cudnn']):.0f} flash {tflops(b, h, s, s, d, base['flash']):.0f}"
              f" best {best and round(best['tflops'])} TFLOP/s {best}", flush=True)
        for kind, ms in base.items():
            rows.append({"shape": name, "baseline": kind, "ms": ms, "tflops": tflops(b, h, s, s, d, ms)})
        write()
    for name, b, h, sq, skv, d in [] if a.sweep_only else WORKLOADS:
        q = torch.randn(b, h, sq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(b, h, skv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        base = {kind: do_bench(sdpa(kind, q, k, v), warmup=25, rep=100, return_mode="median")
                for kind in ("cudnn", "flash")}
        for path in (None, False, True):
            row = {"shape": name, "autotuned": {None: "default", False: "pointers", True: "descriptors"}[path]}
            try:
                ms = do_bench(lambda q=q, k=k, v=v, path=path: triton_flash(q, k, v, tma=path), warmup=25, rep=100, return_mode="median")
                row.update(ms=ms, tflops=tflops(b, h, sq, skv, d, ms), vs_cudnn=base["cudnn"] / ms,
                           vs_flash=base["flash"] / ms)
            except Exception as e:  # noqa: BLE001
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            rows.append(row)
            print(row, flush=True)
        write()
    import pandas as pd

    df = pd.DataFrame(rows)
    print(df.sort_values(["shape", "tflops"], ascending=[True, False]).groupby("shape").head(6).to_string())


if __name__ == "__main__":
    main()
