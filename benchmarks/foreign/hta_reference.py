"""What Holistic Trace Analysis says about each trace: run in HTA's own virtual environment (HTA pins its own
pandas and numpy), by `compare_hta.py`; prints one JSON object, trace path -> HTA's figures.

    python hta_reference.py [--per-kernel] TRACE... > hta.json

Per trace: HTA's GPU kernel-type breakdown (COMPUTATION / COMMUNICATION / MEMORY and their overlaps, µs of
interval union, as `TraceAnalysis.get_gpu_kernel_breakdown` reports it), its compute/communication overlap (%
of communication time), and its per-kernel table's totals: kernel rows, their summed duration, and the duration
of those it assigned to no iteration (``iteration == -1``). A trace HTA cannot read is reported with its error.
With ``--per-kernel`` (the answers of mmchar's foreign-trace fixtures, tests/data/hta/): HTA keeps the last
profiler step too, traces are named by file name, and each gives ``per_kernel``: [correlation, iteration, kernel
type] of every device activity HTA ties to a launch.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path


def reference(path: Path, per_kernel: bool = False) -> dict:
    from hta.trace_analysis import TraceAnalysis
    from hta.utils.utils import get_kernel_type

    with tempfile.TemporaryDirectory() as tmp:  # HTA reads a folder of one trace per rank
        shutil.copy(path, tmp)
        ta = TraceAnalysis(trace_dir=tmp, include_last_profiler_step=per_kernel)
        types, _ = ta.get_gpu_kernel_breakdown(visualize=False)
        overlap = ta.get_comm_comp_overlap(visualize=False)
        (rank,) = ta.t.traces.keys()
        df = ta.t.get_trace(rank)
        gpu = df[df["stream"].ne(-1)]
        iteration = gpu["iteration"].fillna(-1) if "iteration" in gpu else None  # NaN: HTA found none either
        pct = overlap["comp_comm_overlap_pctg"].iloc[0] if len(overlap) else float("nan")
        out = {"rank": int(rank), "kernel_types_us": {str(r.kernel_type): float(r.sum) for r in types.itertuples()},
                "comm_overlap_pct": None if pct != pct else float(pct),
                "kernels": int(len(gpu)), "kernel_us": float(gpu["dur"].sum()),
                "no_iteration_us": None if iteration is None else float(gpu.loc[iteration.lt(0), "dur"].sum())}
        if per_kernel:
            names = ta.t.symbol_table.sym_table
            launched = gpu["correlation"].gt(0)
            out["per_kernel"] = [[int(c), int(i), get_kernel_type(names[n])] for c, i, n in
                                 zip(gpu.loc[launched, "correlation"], iteration[launched], gpu.loc[launched, "name"])]
        return out


def main(args: list[str]) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    per_kernel = "--per-kernel" in args
    out: dict = {"hta_version": version("HolisticTraceAnalysis"), "traces": {}}
    for p in (a for a in args if a != "--per-kernel"):
        key = Path(p).name if per_kernel else p
        try:
            out["traces"][key] = reference(Path(p), per_kernel)
        except Exception as e:  # noqa: BLE001 - HTA's own failure on a trace is a result to report
            out["traces"][key] = {"error": f"{type(e).__name__}: {e}"[:200]}
    json.dump(out, sys.stdout, indent=None if per_kernel else 1, separators=(",", ":") if per_kernel else None)


if __name__ == "__main__":
    main(sys.argv[1:])
