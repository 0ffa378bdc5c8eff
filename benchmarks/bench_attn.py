"""Attention backends on workload shapes and an S sweep (see mmchar/bench_attn.py); writes a table with ratios
against SDPA cuDNN and SDPA flash measured in the same run.

    python benchmarks/bench_attn.py [--device cuda] [--only workloads|sweep] [--backends a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmchar import bench_attn
from mmchar.devices import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", choices=["workloads", "sweep"], default=None)
    ap.add_argument("--backends", default=None)
    ap.add_argument("--max-seq", type=int, default=65536)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention"))
    a = ap.parse_args()
    print(bench_attn.benchmark(resolve_device(a.device), a.only, a.backends.split(",") if a.backends else None,
                               a.max_seq, Path(a.out), progress=lambda m: print(m, flush=True)))


if __name__ == "__main__":
    main()
