"""Cut a time window out of a profiler trace, for a test fixture small enough to commit.

    python benchmarks/foreign/trim_trace.py SRC DST --start-us A --end-us B

Keeps the trace's top-level fields and metadata events, every host event that starts in [A, B) (A and B in µs
from the first event), the ``ProfilerStep#N`` ranges that overlap the window (whole, so steps stay steps), and
the device activities those host events launched (by ``args.correlation``), or, where an activity has no
correlation, that start in the window. Flow arrows are dropped: mmchar and HTA follow ``args.correlation``.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

DEVICE = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset", "mtia_ccp_events", "cuda_profiler_range"}


def trim(data: dict, start_us: float, end_us: float) -> dict:
    events = data["traceEvents"]
    t0 = min(float(e["ts"]) for e in events if e.get("ph") == "X")
    a, b = t0 + start_us, t0 + end_us
    host, device, meta = [], [], []
    for e in events:
        if e.get("ph") == "M":
            meta.append(e)
        elif e.get("ph") == "X":
            (device if str(e.get("cat", "")).lower() in DEVICE else host).append(e)
    kept = [e for e in host if a <= float(e["ts"]) < b
            or (str(e.get("name", "")).startswith("ProfilerStep#")
                and float(e["ts"]) < b and float(e["ts"]) + float(e.get("dur", 0)) > a)]
    launched = {(e.get("args") or {}).get("correlation") for e in kept} - {None}
    for e in device:
        corr = (e.get("args") or {}).get("correlation")
        if corr in launched or (corr is None and a <= float(e["ts"]) < b):
            kept.append(e)
    return {**{k: v for k, v in data.items() if k != "traceEvents"}, "traceEvents": meta + kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--start-us", type=float, required=True)
    ap.add_argument("--end-us", type=float, required=True)
    a = ap.parse_args()
    raw = gzip.open(a.src, "rb").read() if a.src.suffix == ".gz" else a.src.read_bytes()
    out = json.dumps(trim(json.loads(raw), a.start_us, a.end_us), separators=(",", ":")).encode()
    a.dst.write_bytes(gzip.compress(out, mtime=0) if a.dst.suffix == ".gz" else out)
    print(f"{a.dst}: {len(out) / 1e3:.0f} kB of JSON, {a.dst.stat().st_size / 1e3:.0f} kB on disk")


if __name__ == "__main__":
    main()
