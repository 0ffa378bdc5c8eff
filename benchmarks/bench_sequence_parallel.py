"""Sequence-parallel attention at the video DiTs' shapes: Ulysses and ring over N GPUs against one GPU's SDPA,
with the bytes each rank moves. Launch with torchrun (NCCL on GPUs, gloo on the CPU for a smoke run):

    torchrun --nproc-per-node 2 benchmarks/bench_sequence_parallel.py --out benchmarks/results/sequence_parallel
    torchrun --nproc-per-node 2 benchmarks/bench_sequence_parallel.py --device cpu --small --out /tmp/sp   # smoke

Rank 0 times the single-device baseline on the whole sequence first (same run, same GPU model), then every rank
runs each scheme on its chunk; the table (ms per call, speedup over one device, bytes sent per rank, output
agreement with the baseline on rank 0's rows) is written as sp-<N>.md/json by rank 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmchar.sequence_parallel import ring_attention, ulysses_attention

SHAPES = [  # name, B, H, S, D: one self-attention call of each model's denoiser at its default size
    ("wan2.1-1.3b 480p x81", 1, 12, 32760, 128),
    ("cogvideox-5b 480p x49 (joint)", 2, 48, 17776, 64),
]
SMALL = [("small", 1, 4, 2048, 64), ("small, 3 heads", 1, 3, 2048, 64)]


def _time(fn, device: torch.device, reps: int = 10, collective: bool = True) -> float:
    """ms per call; ``collective``: every rank runs ``fn`` together (a barrier lines them up first)."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if collective:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny shapes (a CPU smoke run)")
    a = ap.parse_args()
    cuda = a.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, p = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    for name, b, h, s, d in SMALL if a.small else SHAPES:
        s -= s % p  # whole chunks
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d, device=device, dtype=dtype, generator=g) for _ in range(3))
        chunk = slice(rank * (s // p), (rank + 1) * (s // p))
        lq, lk, lv = (t[:, :, chunk].contiguous() for t in (q, k, v))
        base_ms = _time(lambda: F.scaled_dot_product_attention(q, k, v), device, collective=False) if rank == 0 \
            else None  # rank 0 alone, while the others wait at the barrier below
        ref = F.scaled_dot_product_attention(q, k, v)[:, :, chunk] if rank == 0 else None
        dist.barrier()
        local_bytes = lq.numel() * lq.element_size()
        schemes = {"ring": (lambda: ring_attention(lq, lk, lv), 2 * local_bytes * (p - 1))}
        if h % p == 0:  # 4 all-to-alls (q, k, v out; o back), each sending (P-1)/P of the local tensor
            schemes["ulysses"] = (lambda: ulysses_attention(lq, lk, lv), 4 * local_bytes * (p - 1) // p)
        for scheme, (fn, sent) in schemes.items():
            try:
                ms = _time(fn, device)
                out = fn()
                err = None if ref is None else ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                note = ""
            except torch.OutOfMemoryError as e:  # noted per row; the other schemes go on
                ms, err, note = None, None, f"out of memory: {str(e).splitlines()[0][:80]}"
            rows.append({"shape": name, "B": b, "H": h, "S": s, "D": d, "ranks": p, "scheme": scheme, "ms": ms,
                         "one_device_ms": base_ms, "speedup": (base_ms / ms) if base_ms and ms else None,
                         "bytes_sent_per_rank": sent, "rel_err_rank0": err, "note": note})
        del q, k, v
    if rank == 0:
        a.out.mkdir(parents=True, exist_ok=True)
        dev = torch.cuda.get_device_name(device) if cuda else "cpu"
        head = (f"# Sequence-parallel attention on {p} × {dev} ({time.strftime('%Y-%m-%d')})\n\ntorch "
                f"{torch.__version__}, {'NCCL' if cuda else 'gloo'}, {str(dtype).removeprefix('torch.')}; ms per call "
                f"(mean of 10 after 2 warm-ups); one_device_ms: SDPA on the whole sequence on rank 0's device, same "
                f"run; rel_err_rank0: against it on rank 0's rows.\n\n")
        cols = list(rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join("" if r[c] is None else (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]))
                                    for c in cols) + " |" for r in rows]
        (a.out / f"sp-{p}.md").write_text(head + "\n".join(lines) + "\n")
        (a.out / f"sp-{p}.json").write_text(json.dumps(rows, indent=1))
        print("\n".join(lines), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
