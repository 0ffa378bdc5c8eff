"""The commands that turn runs into something to look at: the study folder (every table, the findings and the
dashboard), the dashboard alone, and the runs' traces in TensorBoard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmchar.cli import app
from mmchar.cli.common import check_output_file, check_output_folder, read_runs, write_atomic
from mmchar.cli.options import RunsArg
from mmchar.cli.output import print_frame, say
from mmchar.errors import MmcharError


@app.command()
def study(paths: RunsArg,
          output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the tables, findings and dashboard.")] = Path("study"),
          bench: Annotated[Optional[list[Path]], typer.Option("--bench", help="A `mmchar bench-attn` table (attention.json, or its folder): also write crossover.csv, the sequence length from which each backend beats cuDNN. Repeatable.", show_default=False)] = None) -> None:
    """Every analysis of the study as CSV, the findings summary and the dashboard, from run stores only."""
    from mmchar import analysis as an
    from mmchar.dashboards import write_dashboard

    check_output_folder(output)
    loaded = read_runs(paths)
    rows = an.load_bench(bench) if bench else None  # a bad --bench path fails before anything is written
    output.mkdir(parents=True, exist_ok=True)
    for name, fn in an.TABLES.items():
        table = fn(loaded)
        write_atomic(output / f"{name}.csv", lambda p, t=table: t.to_csv(p, index=False))
    if rows is not None:
        cross = an.crossover_table(rows)
        write_atomic(output / "crossover.csv", lambda p: cross.to_csv(p, index=False))
    found = an.findings(loaded)
    text = an.findings_markdown(found)
    write_atomic(output / "findings.md", lambda p: p.write_text(text))
    write_atomic(output / "dashboard.html", lambda p: write_dashboard(loaded, p, title="mmchar study"))
    print_frame(found[["question", "answer"]], title=f"findings ({len(loaded)} runs)")
    tables = len(an.TABLES) + (rows is not None)
    say(f"wrote {tables} tables, findings.md and dashboard.html to {output}")


@app.command()
def dashboard(runs: RunsArg,
              output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
              title: Annotated[str, typer.Option(help="Page title.")] = "mmchar report",
              png: Annotated[Optional[Path], typer.Option("--png", help="Also write one PNG per view into this folder "
                                                          "(needs kaleido and a Chromium).")] = None) -> None:
    """Write an interactive, self-contained offline HTML dashboard of runs."""
    from mmchar.dashboards import write_dashboard, write_pngs

    check_output_file(output, "report.html")
    if png is not None:
        check_output_folder(png, "--png")
    loaded = read_runs(runs)
    write_atomic(output, lambda p: write_dashboard(loaded, p, title=title))
    say(f"dashboard of {len(loaded)} runs: {output.resolve()}")
    if png is not None:
        written = write_pngs(loaded, png)
        say(f"{len(written)} PNGs ({', '.join(p.stem for p in written)}): {png.resolve()}")


@app.command()
def tensorboard(runs: RunsArg, port: Annotated[int, typer.Option(help="Port to serve on.")] = 6006) -> None:
    """Open runs' traces in TensorBoard's profiler plugin (needs the `tensorboard` extra)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("torch_tb_profiler") is None:
        raise MmcharError("TensorBoard's profiler plugin is not installed; pip install 'mmchar[tensorboard]'")
    loaded = [r for r in read_runs(runs, kernels=False) if r.trace_path is not None]
    if not loaded:
        raise MmcharError("none of these runs holds a trace (slim copies and --no-trace runs have none)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmchar-tb-") as tmp:
        logdir = Path(tmp)
        for r in loaded:  # the plugin wants <logdir>/<run>/<worker>.pt.trace.json.gz
            (logdir / r.run_id).mkdir()
            (logdir / r.run_id / "mmchar.pt.trace.json.gz").symlink_to(r.trace_path.resolve())
        say(f"serving {len(loaded)} traces from {logdir} on http://localhost:{port} (Ctrl-C stops)")
        subprocess.run([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)],
                       check=False)

