"""Attribution speed on a big trace: a real H100 trace tiled to >= 1M events, parsed and attributed.

The source trace (benchmarks/data/sd15-full-flash-h100.trace.json.gz: SD 1.5, 512 px, flash attention, two
denoising steps, ~31k events) is repeated with shifted timestamps, correlation and external ids until it
holds ``--events`` events, written as .json.gz, then parsed and attributed in a fresh process whose wall
time and peak resident memory are measured (the bar: >= 1M events in < 30 s and < 4 GB on a 2-core CPU).

    python benchmarks/bench_attribution.py [--events 1000000] [--trace PATH]

Prints a table and writes benchmarks/results/attribution_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_TRACE = HERE / "data" / "sd15-full-flash-h100.trace.json.gz"

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from mmchar.trace import parse_trace
from mmchar.attribution import attribute
t1 = time.perf_counter()
trace = parse_trace(sys.argv[1])
t2 = time.perf_counter()
att = attribute(trace)
t3 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"events": trace.n_events, "rows": len(att.kernels), "parse_s": t2 - t1, "attribute_s": t3 - t2,
                  "total_s": t3 - t1, "peak_rss_bytes": rss,
                  "classes": att.kernels.groupby("op_class", observed=True)["dur_us"].sum().round(1).to_dict()}))
"""


def tile(src: dict, target_events: int) -> dict:
    events = [e for e in src["traceEvents"] if e.get("ph") == "X"]
    span = max(e["ts"] + e.get("dur", 0) for e in events) - min(e["ts"] for e in events) + 1000.0
    max_corr = max(((e.get("args") or {}).get("correlation", 0) or 0) for e in events) + 1
    max_ext = max(((e.get("args") or {}).get("External id", 0) or 0) for e in events) + 1
    copies = -(-target_events // len(events))
    out = []
    for i in range(copies):
        for e in events:
            e2 = dict(e)
            e2["ts"] = e["ts"] + i * span
            args = e.get("args")
            if args and ("correlation" in args or "External id" in args):
                args = dict(args)
                if "correlation" in args:
                    args["correlation"] = args["correlation"] + i * max_corr
                if "External id" in args:
                    args["External id"] = args["External id"] + i * max_ext
                e2["args"] = args
            out.append(e2)
    tiled = {k: v for k, v in src.items() if k != "traceEvents"}
    tiled["traceEvents"] = out
    return tiled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    with gzip.open(a.trace, "rt") as f:
        src = json.load(f)
    tiled = tile(src, a.events)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiled.pt.trace.json.gz"
        with gzip.open(path, "wt", compresslevel=1) as f:
            json.dump(tiled, f)
        size = path.stat().st_size
        n = len(tiled["traceEvents"])
        del tiled, src
        res = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r.update(date=datetime.now(timezone.utc).isoformat(), source_trace=Path(a.trace).name, gz_bytes=size,
             cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), python=platform.python_version())
    try:
        import orjson  # noqa: F401

        r["json_parser"] = "orjson"
    except ImportError:
        r["json_parser"] = "json (stdlib)"
    lines = [f"# Attribution speed ({r['date'][:10]}, {r['cores']}-core {r['cpu']}, Python {r['python']}, {r['json_parser']})",
             "", f"Source: `{r['source_trace']}` tiled to {n:,} events ({size / 2**20:.0f} MiB gzip).", "",
             "| events | kernel rows | parse s | attribute s | total s | peak RSS GiB | bar |", "|---|---|---|---|---|---|---|",
             f"| {r['events']:,} | {r['rows']:,} | {r['parse_s']:.1f} | {r['attribute_s']:.1f} | {r['total_s']:.1f} | "
             f"{r['peak_rss_bytes'] / 2**30:.2f} | < 30 s and < 4 GiB: "
             f"{'met' if r['total_s'] < 30 and r['peak_rss_bytes'] < 4 * 2**30 else 'MISSED'} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attribution_speed.md").write_text(text)
    (out / "attribution_speed.json").write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
