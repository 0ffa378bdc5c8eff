"""`mmchar advise`: for measured runs, what to try next and what it should buy. Each opportunity is a projection
from what the run recorded (`mmchar.analysis.advise`), shown with its model, its inputs and its stated error, so a
projection is never mistaken for a measurement. Reads run stores only: no torch. With ``--validate RUN`` it measures
the run's top opportunities for real (`mmchar.validate`, which runs `mmchar profile` processes: only that path
needs torch) and shows projected against measured step latency; a measured ``validation.csv`` in a run's store (or
its ``validate/`` folder), or one named by ``--validated``, fills the table's measured column."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmchar.cli import app
from mmchar.cli.common import check_format, check_output_file, read_runs, say_noisy, write_atomic
from mmchar.cli.options import Fmt, RunsArg
from mmchar.cli.output import print_frame, say, warn
from mmchar.errors import InvalidParameterError

# what the terminal table shows of each opportunity (csv / json and -o: every column, the full run id); the measured
# step where a validating run measured any of a run's options
SHOWN = ("rank", "kind", "option", "projected_step_ms", "saving_ms", "saving_pct", "projected_e2e_ms", "error",
         "model")
# what the terminal shows of a validation (csv / json: every column of validation.csv)
VALIDATION_SHOWN = ("rank", "kind", "option", "projected_step_ms", "measured_step_ms", "error_pct", "baseline_step_ms",
                    "ratio_error_pct", "error", "status", "why", "validating_run")
DEFAULT_TOP = 3


@app.command()
def advise(paths: RunsArg,
           bench: Annotated[Optional[list[Path]], typer.Option("--bench", help="A `mmchar bench-attn` table (attention.json, or its folder) for the attention backend swap: each call at the other backend's measured time for its shape (default: a cost model from the roofs). Repeatable.", show_default=False)] = None,
           target_gpu: Annotated[Optional[str], typer.Option("--target-gpu", help="Also project each run onto this GPU (a key of analysis/data/gpus.json: h100-sxm, h200, b200, l40s, a100-80gb).", show_default=False)] = None,
           skip_fraction: Annotated[float, typer.Option("--skip-fraction", help="Step caching: the share of denoising steps assumed skipped (0 to 1).")] = 0.3,
           fmt: Fmt = "table",
           output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Also write every column of the advice to this file (CSV; JSON with --format json).", show_default=False)] = None,
           validate: Annotated[bool, typer.Option("--validate", help="Measure the top opportunities of one RUN for real: one `mmchar profile` run each of the run's work with only that option changed; print projected against measured step latency and write validation.csv beside those runs.")] = False,
           top: Annotated[Optional[int], typer.Option("--top", help=f"With --validate: how many opportunities, best first (default {DEFAULT_TOP}).", show_default=False)] = None,
           store: Annotated[Optional[Path], typer.Option("--store", help="With --validate: the store of the validating runs and validation.csv (default: a validate/ folder in the run's store, where `mmchar advise` finds it again).", show_default=False)] = None,
           validated: Annotated[Optional[list[Path]], typer.Option("--validated", help="A validation.csv (or its folder) written by --validate into another --store: fills the measured column. Repeatable; the one in a run's store or its validate/ folder is read anyway.", show_default=False)] = None) -> int:
    """Rank optimisation opportunities of measured runs by projected denoiser-step saving: CUDA graphs,
    channels-last, FP8 linear layers, another attention backend, step caching, their combinations, another GPU;
    each with the model it used, the inputs it read and its stated error. With --validate, measure them."""
    from mmchar.analysis import advice_table
    from mmchar.analysis.advise import check_target_gpu, read_validation
    from mmchar.analysis.mechanisms import load_bench

    check_format(fmt)
    targets = [check_target_gpu(target_gpu)] if target_gpu is not None else []
    if not 0.0 <= skip_fraction < 1.0:
        raise InvalidParameterError(f"--skip-fraction {skip_fraction:g} is not a share of the steps; give 0 to < 1")
    if not validate and (top is not None or store is not None):
        raise InvalidParameterError(f"{'--top' if top is not None else '--store'} applies with --validate: "
                                    "`mmchar advise --validate RUN --top N --store DIR`")
    if validate and top is not None and top < 1:
        raise InvalidParameterError(f"--top {top}: validate at least one opportunity")
    if output is not None:
        check_output_file(output, "advice.csv")
    rows = load_bench(bench) if bench else None  # a bad --bench path fails before anything is read
    measured = read_validation(validated, strict=True) if validated else None  # likewise a bad --validated
    loaded = read_runs(paths)
    table = advice_table(loaded, bench=rows, targets=targets, skip_fraction=skip_fraction, validation=measured)
    if validate:
        return _validate(loaded, paths, table, top or DEFAULT_TOP, store, fmt, output)
    if output is not None:
        _write_table(table, output, fmt)
    if table.empty:
        warn("no run measured ok among these: nothing to advise on")
        return 0
    if fmt != "table":
        print_frame(table, fmt=fmt)
    else:
        for run_id, part in table.groupby("run_id", sort=False):
            first = part.iloc[0]
            step = (f"{first['step_key']} {first['step_ms']:.2f} ms, e2e {first['e2e_ms']:.1f} ms"
                    if first["step_ms"] == first["step_ms"] else "no timed step")
            cols = list(SHOWN)
            if part["measured_step_ms"].notna().any():  # a validating run measured some: beside the projection
                cols.insert(cols.index("projected_step_ms") + 1, "measured_step_ms")
            shown = part[cols].copy()
            shown["error"] = shown["error"].str.replace(r" \(.*", "", regex=True)  # the checks: --format csv
            print_frame(shown.round(2), title=f"{first['label']} ({first['device']}): {step}: projections, not "
                        f"measurements ({run_id})", truncate=("model", "error"))
        say("model, inputs and the checks behind each stated error: --format csv / json (or -o FILE)")
    say_noisy(loaded)
    if output is not None:
        say(f"wrote {len(table)} rows to {output}", fmt)
    return 0


def _write_table(table: Any, output: Path, fmt: str) -> None:
    if fmt == "json":
        write_atomic(output, lambda p: p.write_text(table.to_json(orient="records", indent=2) + "\n"))
    else:
        write_atomic(output, lambda p: table.to_csv(p, index=False))


def _validate(loaded: list[Any], paths: list[Path], table: Any, top: int, store: Optional[Path], fmt: str,
              output: Optional[Path]) -> int:
    """`--validate`: the run's top opportunities measured (`mmchar.validate`), then the table of projected against
    measured step latency. Exit 1 when a validating run failed (its row says why); an opportunity that cannot run
    here (refused, not runnable) is a row saying why, not a failure."""
    from mmchar.analysis.advise import (BASELINE_KIND, VALIDATION_FILE, read_validation, validation_files,
                                        with_measured)
    from mmchar.store import check_writable
    from mmchar.validate import MEASURED, NOT_RUNNABLE, REFUSED, STEP_CACHE_KIND, default_store, validate

    if len(loaded) != 1:
        names = ", ".join(r.run_id for r in loaded[:3]) + (" ..." if len(loaded) > 3 else "")
        raise InvalidParameterError(f"--validate measures one run's opportunities; {', '.join(map(str, paths))} "
                                    f"holds {len(loaded)} runs ({names}): name one run folder")
    run = loaded[0]
    if table.empty:
        raise InvalidParameterError(f"{run.run_id} is {run.status}: there is no measurement to validate against")
    dest = store if store is not None else default_store(run)
    check_writable(dest)
    machine = fmt == "table"  # csv / json on stdout stay machine-readable: progress goes nowhere then
    tell = say if machine else (lambda message: None)
    tell(f"validating the top {top} opportunities of {run.run_id} into {dest}: one `mmchar profile` run each, "
         "the run's work with only that option changed ...")

    def note(i: int, n: int, opp: Any) -> None:
        tell(f"[{i + 1}/{n}] {opp.row['kind']} {opp.row['option']}: measuring ...")

    def done(i: int, n: int, row: dict[str, Any]) -> None:
        if row["status"] == MEASURED:
            proj = row["projected_step_ms"]
            vs = (f"projected {proj:.2f} ms, error {row['error_pct']:+.1f} %" if proj == proj
                  else "no projection: it did not apply")
            if row["kind"] == BASELINE_KIND:
                vs = f"the unchanged work again: drift {row['error_pct']:+.1f} %"
            elif row["ratio_error_pct"] == row["ratio_error_pct"]:
                vs += f"; against the baseline measured again ({row['baseline_step_ms']:.2f} ms): " \
                      f"{row['ratio_error_pct']:+.1f} %"
            tell(f"[{i + 1}/{n}] {row['kind']} {row['option']}: {row['step_key']} {row['measured_step_ms']:.2f} ms, "
                 f"{row['step_ms']:.2f} ms before ({vs}): {row['validating_run']}")
        elif row["status"] in (REFUSED, NOT_RUNNABLE):
            tell(f"[{i + 1}/{n}] {row['kind']} {row['option']}: {row['status']}: {row['why']}")
        else:
            warn(f"[{i + 1}/{n}] {row['kind']} {row['option']}: the validating run {row['validating_run']} is "
                 f"{row['status']}: {row['why']}")

    result = validate(run, table, top, dest, note=note, done=done)  # validation.csv written after each
    if result.empty:
        warn(f"{run.run_id} has no opportunity to validate (no timed step: nothing was projected)")
        return 0
    path = dest / VALIDATION_FILE
    if output is not None:  # the advice with every measurement of the run's options, this one's last (it wins)
        _write_table(with_measured(table, read_validation([*validation_files([run]), path])), output, fmt)
    if fmt != "table":
        print_frame(result, fmt=fmt)
    else:
        shown = result[list(VALIDATION_SHOWN)].copy()
        shown["error"] = shown["error"].fillna("").astype(str).str.replace(r" \(.*", "", regex=True)
        shown = shown.rename(columns={"error": "stated error", "error_pct": "error %", "baseline_step_ms": "baseline ms",
                                      "ratio_error_pct": "ratio error %"})
        first = table.iloc[0]
        print_frame(shown.round(2), title=f"{first['label']} ({first['device']}): {first['step_key']} "
                    f"{first['step_ms']:.2f} ms measured by the run; projected against measured with each option "
                    f"({run.run_id})", truncate=("why",))
        if (result["kind"] == STEP_CACHE_KIND).any():  # its baseline ms differs from the other rows' on purpose
            say(f"{STEP_CACHE_KIND} rows: baseline and measured ms are means over the generation's steps (computed "
                "and skipped, as its projection is); the other rows' are medians")
        say(f"wrote {path}" + (f" and {output}" if output is not None else ""))
    noisy = [r for r in result["validating_run"][result["noisy"] == "yes"]]
    if noisy:
        warn(f"measured under noise (`mmchar runs {dest}` says why): {', '.join(noisy)}")
    say_noisy(loaded)
    return 1 if (~result["status"].isin([MEASURED, REFUSED, NOT_RUNNABLE])).any() else 0
