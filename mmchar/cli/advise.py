"""`mmchar advise`: for measured runs, what to try next and what it should buy. Each opportunity is a projection
from what the run recorded (`mmchar.analysis.advise`), shown with its model, its inputs and its stated error, so a
projection is never mistaken for a measurement. Reads run stores only: no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmchar.cli import app
from mmchar.cli.common import check_format, check_output_file, read_runs, say_noisy, write_atomic
from mmchar.cli.options import Fmt, RunsArg
from mmchar.cli.output import print_frame, say, warn
from mmchar.errors import InvalidParameterError

# what the terminal table shows of each opportunity (csv / json and -o: every column, the full run id)
SHOWN = ("rank", "kind", "option", "projected_step_ms", "saving_ms", "saving_pct", "projected_e2e_ms", "error",
         "model")


@app.command()
def advise(paths: RunsArg,
           bench: Annotated[Optional[list[Path]], typer.Option("--bench", help="A `mmchar bench-attn` table (attention.json, or its folder) for the attention backend swap: each call at the other backend's measured time for its shape (default: a cost model from the roofs). Repeatable.", show_default=False)] = None,
           target_gpu: Annotated[Optional[str], typer.Option("--target-gpu", help="Also project each run onto this GPU (a key of analysis/data/gpus.json: h100-sxm, h200, b200, l40s, a100-80gb).", show_default=False)] = None,
           skip_fraction: Annotated[float, typer.Option("--skip-fraction", help="Step caching: the share of denoising steps assumed skipped (0 to 1).")] = 0.3,
           fmt: Fmt = "table",
           output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Also write every column of the advice to this file (CSV; JSON with --format json).", show_default=False)] = None) -> None:
    """Rank optimisation opportunities of measured runs by projected denoiser-step saving: CUDA graphs,
    channels-last, FP8 linear layers, another attention backend, step caching, their combinations, another GPU;
    each with the model it used, the inputs it read and its stated error."""
    from mmchar.analysis import advice_table
    from mmchar.analysis.advise import check_target_gpu
    from mmchar.analysis.mechanisms import load_bench

    check_format(fmt)
    targets = [check_target_gpu(target_gpu)] if target_gpu is not None else []
    if not 0.0 <= skip_fraction < 1.0:
        raise InvalidParameterError(f"--skip-fraction {skip_fraction:g} is not a share of the steps; give 0 to < 1")
    if output is not None:
        check_output_file(output, "advice.csv")
    rows = load_bench(bench) if bench else None  # a bad --bench path fails before anything is read
    loaded = read_runs(paths)
    table = advice_table(loaded, bench=rows, targets=targets, skip_fraction=skip_fraction)
    if output is not None:
        if fmt == "json":
            write_atomic(output, lambda p: p.write_text(table.to_json(orient="records", indent=2) + "\n"))
        else:
            write_atomic(output, lambda p: table.to_csv(p, index=False))
    if table.empty:
        warn("no run measured ok among these: nothing to advise on")
        return
    if fmt != "table":
        print_frame(table, fmt=fmt)
    else:
        for run_id, part in table.groupby("run_id", sort=False):
            first = part.iloc[0]
            step = (f"{first['step_key']} {first['step_ms']:.2f} ms, e2e {first['e2e_ms']:.1f} ms"
                    if first["step_ms"] == first["step_ms"] else "no timed step")
            shown = part[list(SHOWN)].copy()
            shown["error"] = shown["error"].str.replace(r" \(.*", "", regex=True)  # the checks: --format csv
            print_frame(shown.round(2), title=f"{first['label']} ({first['device']}): {step}: projections, not "
                        f"measurements ({run_id})", truncate=("model",))
        say("model, inputs and the checks behind each stated error: --format csv / json (or -o FILE)")
    say_noisy(loaded)
    if output is not None and fmt == "table":  # csv / json on stdout stay machine-readable
        say(f"wrote {len(table)} rows to {output}")
