"""The commands over stored runs one at a time or side by side: list them (`runs`), export their breakdown as one
CSV (`export`), bring a foreign profiler trace in as a run (`analyze`), and diff two runs or stores (`diff`, the CI
gate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer

from mmchar.analysis.diff import MIN_US
from mmchar.cli import app
from mmchar.cli.common import check_format, check_output_file, read_runs, say_noisy, write_atomic
from mmchar.cli.options import Fmt, RunsArg, Store
from mmchar.cli.output import print_frame, say, warn
from mmchar.errors import InvalidParameterError, MmcharError, UnknownNameError


@app.command()
def export(runs: RunsArg,
           output: Annotated[Path, typer.Option("-o", "--output", help="CSV file to write.")] = Path("breakdown.csv"),
           ) -> None:
    """Write the tidy breakdown (run × stage × op class × attention site) of runs as one CSV."""
    from mmchar.analysis import breakdown_table

    check_output_file(output, "breakdown.csv")
    loaded = read_runs(runs, kernels=False)
    table = breakdown_table(loaded)
    write_atomic(output, lambda p: table.to_csv(p, index=False))
    say(f"wrote {len(table)} rows from {len(loaded)} runs to {output}")
    say_noisy(loaded)


@app.command()
def runs(paths: RunsArg,
         workload: Annotated[Optional[str], typer.Option(help="Only runs of this workload.")] = None,
         backend: Annotated[Optional[str], typer.Option(help="Only runs under this attention backend.")] = None,
         status: Annotated[Optional[str], typer.Option(help="Only runs with this status: ok, oom or error.")] = None,
         fmt: Fmt = "table") -> None:
    """List runs with their key parameters and status (filter by workload, backend, status)."""
    from mmchar.analysis import run_table
    from mmchar.schema import RUN_STATUSES

    check_format(fmt)
    if status is not None and status not in RUN_STATUSES:
        raise UnknownNameError("status", status, RUN_STATUSES)
    loaded = read_runs(paths, kernels=False)
    table = run_table(loaded)
    for col, value in (("workload", workload), ("backend", backend), ("status", status)):
        if value is None:
            continue
        # a misspelt name answered "0 runs"; a registered one with no run here still does
        if col != "status" and value not in set(table[col]) and not _registered(col, value):
            raise UnknownNameError(col, value, set(table[col].dropna()), " in these runs")
        table = table[table[col] == value]
    if fmt != "table":  # machine-readable: every column, the full run id
        print_frame(table, title=_count(len(table)), fmt=fmt)
        return
    from mmchar.analysis.tables import device_short

    short = {r.run_id: device_short(r.meta) for r in loaded}
    shown = pd.DataFrame({
        "run": table["label"], "status": table["status"],
        "noisy": table["noisy"].map({True: "yes", False: "no"}).fillna("-"),
        "device": table["run_id"].map(short), "dtype": table["dtype"],
        "created": table["created"].fillna("").astype(str).str.slice(5, 16).str.replace("T", " "),
        # a column holding some runs' text holds the others' NaN (which is truthy): the first text is the note
        "note": [next((x for x in (e, n) if isinstance(x, str) and x), "")[:70]
                 for e, n in zip(table["error"], table["noise"])]})
    print_frame(shown, title=f"{_count(len(table))} (full ids: --format csv)", fmt=fmt, truncate=("note",))


def _count(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _registered(kind: str, name: str) -> bool:
    """Whether ``name`` is a registered workload or backend. The registries import torch (and the workloads
    diffusers), which the read side must not need: they are asked only for a name no listed run holds, and where
    they cannot be imported every name counts as registered (the filter then answers "0 runs", as it did)."""
    try:
        if kind == "workload":
            from mmchar.workloads import workload_names

            return name in workload_names()
        from mmchar.backends import backend_names

        return name in backend_names()
    except ImportError:
        return True


@app.command()
def analyze(traces: Annotated[list[Path], typer.Argument(help="PyTorch profiler traces (.json or .json.gz) that mmchar "
                                                         "did not record.", show_default=False)],
            store: Store = Path("runs"),
            stage: Annotated[str, typer.Option(help="The stage the traced code stands for (the step views read "
                                                    "denoiser or generator).")] = "denoiser",
            name: Annotated[Optional[str], typer.Option(help="Workload name of the run (default: from the file "
                                                             "name).")] = None) -> None:
    """Attribute foreign profiler traces (by aten op, and by module where the trace holds nn.Module events) into
    run folders that export, study, diff and the dashboard read."""
    from mmchar.analysis.summary import kernel_lines
    from mmchar.analyze import analyze_trace
    from mmchar.store import check_writable
    from mmchar.trace import check_trace_path

    check_writable(store)  # a file in its place, a run folder: refused as profile refuses them
    for path in traces:  # every name checked before the first run is written: a re-run then adds no duplicate
        check_trace_path(path)
    for path in traces:
        run = analyze_trace(path, store, stage=stage, name=name)
        k, meta = run.kernels, run.meta
        unit = "device kernels" if meta["rows"] == "device kernels" else "host ops (self time)"
        total = float(k["dur_us"].sum()) if len(k) else 0.0
        kind, model = meta["device"]["type"], meta["device"].get("name") or ""
        device = f"{kind} {model}" if model and model != kind else kind
        say(f"{run.run_id}: {len(k)} {unit} ({device}), {total / 1e3:.2f} ms over "
            f"{len(meta['profiled_steps'])} step(s)")
        if meta["backward_us"] and total:
            say(f"backward pass: {meta['backward_us'] / total:.1%} of the time (kernels.parquet phase = backward)")
        for line in kernel_lines(k):
            say(line)
        for gap in meta["unattributed"]:
            warn(f"{gap['count']} {gap['events']} not attributed: {gap['reason']}")
        if not run.meta["has_module_events"]:
            warn("the trace holds no nn.Module events: module paths are empty (record with with_stack=True, "
                 "with_modules=True for them)")
        say(f"run folder: {run.path}")


@app.command()
def diff(a: Annotated[Path, typer.Argument(help="Baseline: a run folder or a store.", show_default=False)],
         b: Annotated[Path, typer.Argument(help="New side: a run folder or a store.", show_default=False)],
         fail_above: Annotated[Optional[float], typer.Option("--fail-above", help="Exit 1 when a latency or class time grew by more than this percentage (0 or more), beyond both runs' spread and --min-us (CI gating).")] = None,
         min_us: Annotated[float, typer.Option("--min-us", help="Smallest growth in µs that --fail-above gates on (0 or more; latencies compare in µs too).")] = MIN_US,
         top: Annotated[int, typer.Option(help="Modules shown per pair (largest changes).")] = 10,
         output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write every difference as CSV.")] = None,
         fmt: Fmt = "table") -> int:
    """Diff two runs (or two stores, run by run, pairing runs that did the same work) by latency, op class and
    module; list the runs left unpaired and why."""
    from mmchar.analysis.diff import check_gate, diff_table, regressions, unpaired_runs, work_mismatch
    from mmchar.analysis.tables import is_noisy, run_labels

    check_format(fmt)
    check_gate(0.0 if fail_above is None else fail_above, min_us)
    if output is not None:
        check_output_file(output, "diff.csv")
    runs_a, runs_b = read_runs([a]), read_runs([b])
    same = {r.run_id for r in runs_a} & {r.run_id for r in runs_b}
    if same:  # `diff runs/ runs/` paired every run with itself: a table of zeros, read as "nothing changed"
        warn(f"{len(same)} run(s) on both sides ({', '.join(sorted(same)[:3])}{' ...' if len(same) > 3 else ''}) "
             "are compared with themselves: pass the baseline's and the new runs' stores")
    table, unpaired = diff_table(runs_a, runs_b), unpaired_runs(runs_a, runs_b)
    if table.empty:
        why = (f"{unpaired['run_id'].iloc[0]}: {unpaired['reason'].iloc[0]}" if len(unpaired)
               else "the paired runs hold no timings or kernel times")
        raise InvalidParameterError(f"no run of {b} did the work of a run of {a} ({why}); diff runs of one "
                                    "configuration, or two run folders to diff them anyway")
    if len(runs_a) == 1 and len(runs_b) == 1 and (note := work_mismatch(runs_a[0], runs_b[0])):
        warn(note)
    if output is not None:
        write_atomic(output, lambda p: table.to_csv(p, index=False))
    if fmt != "table":  # one table on stdout, every pair's rows with their run ids (what -o writes); it printed a
        print_frame(table, fmt=fmt)  # table per pair, which no csv or json reader takes as one document
        if len(unpaired):
            warn(f"{len(unpaired)} runs left unpaired: " + "; ".join(f"{r} ({why})" for r, why in
                                                                     zip(unpaired["run_id"], unpaired["reason"])))
    else:
        labels = run_labels(runs_a)  # what the pair ran, in short; then which two runs
        for pair, part in table.groupby("pair"):
            title = f"{labels.get(part['run_a'].iloc[0])}: {part['run_a'].iloc[0]} -> {part['run_b'].iloc[0]}"
            shown = part[part["level"] != "module"]
            mods = part[part["level"] == "module"]
            mods = mods.reindex((mods["b"] - mods["a"]).abs().sort_values(ascending=False).index).head(top)
            print_frame(pd.concat([shown, mods]).drop(columns=["pair", "run_a", "run_b"]).round(3), title=title)
        if len(unpaired):
            print_frame(unpaired[["side", "run_id", "reason", "closest"]],
                        title=f"{len(unpaired)} runs left unpaired")
    paired = set(table["run_a"]) | set(table["run_b"])
    upgraded = {r.meta.get("upgraded_from") for r in runs_a + runs_b if r.run_id in paired}
    if len(upgraded) > 1:
        warn("one side holds runs of schema version 1, whose host time still includes the scheduler's step calls "
             "(version 2 times them apart): their host and scheduler rows compare different things")
    noisy = [r.run_id for r in runs_a + runs_b if r.run_id in paired and is_noisy(r.meta)]
    if noisy:
        warn(f"{len(noisy)} of the diffed runs were measured under noise (`mmchar runs` says why); their "
             f"differences are not trustworthy: {', '.join(noisy[:3])}" + (" ..." if len(noisy) > 3 else ""))
    if fail_above is not None:
        gate = f"more than {fail_above:g}% beyond both runs' spread and {min_us:g} us"
        bad = regressions(table, fail_above, min_us)
        if not bad.empty:
            w = bad.sort_values("change_pct", ascending=False).iloc[0]
            what = " ".join(x for x in (w["level"], w["stage"], w["key"]) if x)
            raise MmcharError(f"{len(bad)} latencies or class times regressed by {gate} (worst: {what} "
                              f"{w['a']:.4g} -> {w['b']:.4g} {w['unit']}, +{w['change_pct']:.1f}%, "
                              f"{w['run_a']} -> {w['run_b']})")
        say(f"no latency or class time regressed by {gate}", fmt)
    return 0

