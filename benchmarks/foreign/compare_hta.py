"""mmchar against Holistic Trace Analysis on traces neither of us recorded: HTA's own test data.

    python benchmarks/foreign/compare_hta.py HTA_CHECKOUT [--hta-python PY] [-o benchmarks/results/foreign]

HTA_CHECKOUT is a copy of github.com/facebookresearch/HolisticTraceAnalysis (its ``tests/data`` holds real V100,
A100, H100, MI250, MTIA, multi-rank NCCL, Triton and CPU-only traces, MIT licence). Without ``--hta-python`` the
script makes a virtual environment in mmchar's cache folder with HTA 0.5.0 from the package index (HTA pins its own pandas
and numpy, so it never shares mmchar's); `hta_reference.py` runs there.

Per trace, mmchar's `analyze` (the command's own code path) against HTA as its users call it:

* the raw sum of the trace's device activities, and mmchar's total (they must be equal on every device-kernel trace);
* HTA's kernel-type breakdown (COMPUTATION / COMMUNICATION / MEMORY and their overlaps, µs of interval union) next
  to the same partition computed from mmchar's kernel table, over the kernels HTA keeps (it drops the last
  profiler step and kernels whose launch is not in the trace): COMMUNICATION is mmchar's ``communication`` class,
  MEMORY is HTA's own definition (memcpy / memset / DMA names: mmchar's ``memory`` class is wider, it holds copy
  kernels too), COMPUTATION the rest; the largest difference of a category's percentage, in points;
* the compute/communication overlap (% of communication time) of both;
* mmchar's own view: the share of kernel time in no step, in the backward pass and in ``other``, and its op-class
  shares.

Writes ``hta-comparison.csv`` (every column) and ``hta-comparison.md`` (the table a person reads, with device,
versions and date) under the output folder, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from mmchar.analyze import analyze_trace
from mmchar.errors import MmcharError
from mmchar.intervals import overlap, partition, union
from mmchar.schema import BACKWARD_PHASE
from mmchar.trace import load_events

HTA_VERSION = "0.5.0"
TYPES = ("COMPUTATION", "COMMUNICATION", "MEMORY")
_DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"}
_MEMORY_NAME = r"^(?:Memcpy|Memset|dma)"  # HTA 0.5's MEMORY_KERNEL_RE


def hta_python() -> Path:
    """A virtual environment with HTA 0.5.0, made once under mmchar's cache folder (``$MMCHAR_CACHE``)."""
    from mmchar.environment import cache_dir

    venv = cache_dir() / f"hta-{HTA_VERSION}-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"HolisticTraceAnalysis=={HTA_VERSION}"], check=True)
    return py


def hta_figures(py: Path, traces: list[Path]) -> dict:
    script = Path(__file__).with_name("hta_reference.py")
    res = subprocess.run([str(py), str(script), *map(str, traces)], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    return json.loads(res.stdout)


def hta_types(kernels: pd.DataFrame) -> list[str]:
    """HTA's kernel type of each of mmchar's kernel rows: COMMUNICATION by mmchar's class, MEMORY by HTA's own
    name rule (memcpy / memset / DMA), COMPUTATION the rest."""
    memory = kernels["kernel"].astype(str).str.contains(_MEMORY_NAME, regex=True)
    comm = kernels["op_class"].astype(str) == "communication"
    return list(np.where(comm, "COMMUNICATION", np.where(memory, "MEMORY", "COMPUTATION")))


def hta_breakdown(kernels: pd.DataFrame) -> dict[str, float]:
    """HTA's kernel-type breakdown (µs of each combination of types running alone together, named as HTA names
    it: "COMPUTATION overlapping COMMUNICATION") of mmchar's kernel rows."""
    ts = kernels["ts_us"].to_numpy(float)
    parts = partition(np.stack([ts, ts + kernels["dur_us"].to_numpy(float)], axis=1), hta_types(kernels))
    return {" overlapping ".join(t for t in TYPES if t in on): us for on, us in parts.items()}


def hta_selection(events: list[dict]) -> tuple[set[tuple[float, str]], bool]:
    """The device activities HTA keeps by default (`Trace._filter_irrelevant_gpu_kernels`): with two or more
    profiler steps, those launched by a host event that starts before the last step does. Keys (ts, name);
    the flag says whether a filter applied."""
    steps = [e for e in events if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep")]
    device = [e for e in events if e.get("ph") == "X" and str(e.get("cat", "")).lower() in _DEVICE_CATS]
    if len({e["name"] for e in steps}) < 2:
        return {(float(e["ts"]), e.get("name", "")) for e in device}, False
    last = max(float(e["ts"]) for e in steps)
    launched = {(e.get("args") or {}).get("correlation") for e in events
                if e.get("ph") == "X" and str(e.get("cat", "")).lower() not in _DEVICE_CATS and float(e.get("ts", 0)) < last}
    launched.discard(None)
    return {(float(e["ts"]), e.get("name", "")) for e in device
            if (e.get("args") or {}).get("correlation") in launched}, True


def compare(path: Path, hta: dict, store: Path) -> dict:
    row: dict = {"trace": path.name, "hta_error": hta.get("error", "")}
    try:
        run = analyze_trace(path, store)
    except MmcharError as e:
        row["mmchar_error"] = str(e).replace(str(path), "the file").strip()[:90]
        return row
    events = load_events(path)["traceEvents"]
    k, meta = run.kernels, run.meta
    total = float(k["dur_us"].sum())
    kind, model = meta["device"]["type"], meta["device"].get("name") or ""
    row.update({"device": f"{kind} {model}" if model and model != kind else kind,
                "rows": meta["rows"], "events": len(events), "mmchar_rows": len(k), "mmchar_ms": total / 1e3})
    raw = sum(float(e.get("dur", 0)) for e in events
              if e.get("ph") == "X" and str(e.get("cat", "")).lower() in _DEVICE_CATS)
    row["raw_device_ms"] = raw / 1e3
    if total > 0:
        row["no_step"] = float(k.loc[k["step"] < 0, "dur_us"].sum()) / total
        row["backward"] = float(k.loc[k["phase"].astype(str) == BACKWARD_PHASE, "dur_us"].sum()) / total
        row["other"] = float(k.loc[k["op_class"].astype(str) == "other", "dur_us"].sum()) / total
        shares = k.groupby(k["op_class"].astype(str))["dur_us"].sum().sort_values(ascending=False) / total
        row["classes"] = ", ".join(f"{c} {s:.0%}" for c, s in shares.items() if s >= 0.005)
    row["unattributed"] = "; ".join(f"{u['count']} {u['events']}" for u in meta["unattributed"])
    if "error" in hta:
        return row
    hta_total = sum(hta["kernel_types_us"].values())
    row.update({"hta_kernels": hta["kernels"], "hta_no_iteration": hta["no_iteration_us"] / hta["kernel_us"]
                if hta["kernel_us"] else np.nan, "hta_overlap_pct": hta["comm_overlap_pct"]})
    if meta["rows"] != "device kernels" or not hta_total:
        row["note"] = "HTA times device events mmchar cannot attribute" if hta_total else "no device kernels"
        return row
    keep, filtered = hta_selection(events)
    sel = k[[(float(t), str(n)) in keep for t, n in zip(k["ts_us"], k["kernel"])]]
    ours = hta_breakdown(sel)
    our_total = sum(ours.values())
    labels = sorted(set(ours) | set(hta["kernel_types_us"]))
    diff = max(abs(100 * ours.get(c, 0.0) / our_total - 100 * hta["kernel_types_us"].get(c, 0.0) / hta_total)
               for c in labels) if our_total else np.nan
    for t in TYPES:  # each type's time, alone or overlapping others, as % of the union (the pie's slices summed)
        row[f"hta_{t.lower()}"] = 100 * sum(v for c, v in hta["kernel_types_us"].items() if t in c) / hta_total
        row[f"mmchar_{t.lower()}"] = 100 * sum(v for c, v in ours.items() if t in c) / our_total if our_total else np.nan
    row.update({"selected_rows": len(sel), "hta_filtered": filtered, "max_diff_pts": diff})
    kinds = np.asarray(hta_types(sel))
    if (kinds == "COMMUNICATION").any():
        ts = sel["ts_us"].to_numpy(float)
        spans = np.stack([ts, ts + sel["dur_us"].to_numpy(float)], axis=1)
        c_u, w_u = union(spans[kinds == "COMMUNICATION"]), union(spans[kinds == "COMPUTATION"])
        row["mmchar_overlap_pct"] = 100 * overlap(c_u, w_u) / sum(b - a for a, b in c_u)
    return row


def _fmt(x: object, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def markdown(df: pd.DataFrame, hta_version: str, source: str, note: str = "") -> str:
    lines = [
        "# mmchar vs Holistic Trace Analysis on HTA's test traces", "",
        f"Date {datetime.now(timezone.utc).date()}, mmchar {version('mmchar')}, HTA {hta_version} (pip), traces: "
        f"{source} (MIT licence); Python {platform.python_version()}, pandas {pd.__version__}; CPU only.",
        "Made by `python benchmarks/foreign/compare_hta.py HTA_CHECKOUT`; every column is in hta-comparison.csv.",
        *([note] if note else []), "",
        "`comp/comm/mem`: each HTA kernel type's time (alone or overlapping) as % of the kernels' union time, over "
        "the kernels HTA keeps (it drops the last profiler step and launches not in the trace); mmchar's from its "
        "kernel table by its `communication` class and HTA's memcpy/memset/DMA names. `Δ`: the largest difference of "
        "one HTA category (overlaps included) in points. `overlap`: compute/communication overlap, % of communication "
        "time. `no step`, `backward`, `other`: shares of mmchar's kernel time (all kernels). HTA reads timestamps and "
        "durations as whole microseconds (mmchar keeps the trace's fractions): on traces of many short kernels its "
        "union is a little shorter, the source of the differences under 1.2 points.", "",
        "| trace | device | rows | mmchar ms | raw ms | HTA comp/comm/mem % | mmchar comp/comm/mem % | Δ pts | "
        "overlap HTA / mmchar % | no step | backward | other | mmchar classes | not attributed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        r = {k: v for k, v in r.items() if not (isinstance(v, float) and v != v)}  # NaN: a field not measured
        if r.get("mmchar_error"):
            lines.append(f"| {r['trace']} | - | - | refused: {r['mmchar_error']} | | | | | | | | | | |")
            continue
        hta = "/".join(_fmt(r.get(f"hta_{t}"), ".0f") for t in ("computation", "communication", "memory"))
        ours = "/".join(_fmt(r.get(f"mmchar_{t}"), ".0f") for t in ("computation", "communication", "memory"))
        if r.get("note"):
            hta, ours = (hta if r.get("hta_computation") == r.get("hta_computation") else "-"), r["note"]
        if r.get("hta_error"):
            hta = "HTA: " + r["hta_error"][:40]
        lines.append(
            f"| {r['trace']} | {r['device']} | {r['rows']} | {_fmt(r['mmchar_ms'], '.2f')} | "
            f"{_fmt(r['raw_device_ms'], '.2f')} | {hta} | {ours} | {_fmt(r.get('max_diff_pts'))} | "
            f"{_fmt(r.get('hta_overlap_pct'))} / {_fmt(r.get('mmchar_overlap_pct'))} | {_fmt(r.get('no_step'), '.1%')} | "
            f"{_fmt(r.get('backward'), '.1%')} | {_fmt(r.get('other'), '.1%')} | {r.get('classes', '')} | "
            f"{r.get('unattributed') or ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hta_checkout", type=Path, help="a copy of the HolisticTraceAnalysis repository")
    ap.add_argument("--hta-python", type=Path, help="a Python with HolisticTraceAnalysis installed")
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/foreign"))
    ap.add_argument("--note", default="", help="a sentence for the table's header (e.g. which files were absent)")
    a = ap.parse_args()
    data = a.hta_checkout / "tests" / "data"
    traces = sorted(p for p in data.rglob("*.json*") if p.suffix in (".json", ".gz") and p.stat().st_size > 200)
    a.out.mkdir(parents=True, exist_ok=True)
    ref = hta_figures(a.hta_python or hta_python(), traces)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in traces:
            row = compare(p, ref["traces"][str(p)], Path(tmp) / "runs")
            row["trace"] = str(p.relative_to(data))
            rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(a.out / "hta-comparison.csv", index=False, float_format="%.4g")
    text = markdown(df, ref["hta_version"], f"HolisticTraceAnalysis tests/data ({len(traces)} files)", a.note)
    (a.out / "hta-comparison.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
