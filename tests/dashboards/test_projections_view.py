"""The projection-backends view: per workload, each projection backend's step as stacked gemm / memory / other
kernels / idle, the speedup over dense above it, variants that ran out of memory marked with their state; a page
without projection variants leaves it off, and the figure alone says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmchar.analysis import projections_table
from mmchar.dashboards import build_figures
from mmchar.dashboards.projections import NO_RUNS, VIEW, projections_figure
from mmchar.dashboards.registry import VIEWS
from mmchar.store import load_runs

H100_RUNS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "projections" / "h100-2026-12-06" / "runs"


def test_stacked_step_per_projection_backend_with_the_oom_marked(runs, projection_run):
    # the fixture's math run (the compare baseline) with an fp8 variant and a memoryformer one that ran out of memory
    mf = projection_run("sd15-math+memoryformer", "memoryformer", status="oom")
    mf.meta.update(linear_state_bytes_total=30_000_000_000, linear_state_bytes_planned=92_000_000_000)
    fig = build_figures([*runs, projection_run(), mf])["projections"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["gemm", "memory", "other kernels", "idle (host)"]
    assert fig.layout.barmode == "stack"
    gemm, memory, other, idle = bars
    assert list(gemm.x[1]) == ["math", "math+fp8", "math+memoryformer"] and set(gemm.x[0]) == {"sd15"}
    # the fixture's step: 40 ms (the fp8 run 50 ms), no busy record of the step: all kernels, gemm 30 % of them
    assert gemm.y[0] == pytest.approx(12.0) and gemm.y[1] == pytest.approx(15.0) and gemm.y[2] != gemm.y[2]
    assert other.y[0] == pytest.approx(28.0) and idle.y[0] == 0.0 and memory.y[0] == 0.0
    speed = next(t for t in fig.data if t.name == "speedup over dense")
    assert list(speed.text) == ["0.80× dense"] and list(speed.y) == [50.0]
    oom = next(t for t in fig.data if t.name == "out of memory / failed")
    assert list(oom.text) == ["OOM"] and list(oom.x[1]) == ["math+memoryformer"]
    assert oom.customdata[0][1] == "92.00 GB needed, 30.00 GB drawn" and "out of memory" in oom.customdata[0][2]
    assert oom.customdata[0][0] == "sd15-math+memoryformer"  # the run id in the hover
    # the relative y-axis: each bar over its dense run's step
    rel = fig.layout.updatemenus[0].buttons[1]
    assert rel.label == "× dense step" and rel.args[0]["y"][0][:2] == pytest.approx([0.3, 0.375])


def test_the_view_follows_projection_variants_and_the_empty_figure_says_so(runs, projection_run):
    assert VIEW in VIEWS and VIEW.table == "projections" and VIEW.marked
    assert "projections" not in build_figures(runs)  # backends compared, but no projection backend
    assert "projections" in build_figures([*runs, projection_run()])
    empty = projections_figure(projections_table([]))
    assert NO_RUNS in json.dumps(empty.to_plotly_json()["layout"]["annotations"]) and not empty.data


def test_noisy_projection_runs_are_hatched(runs, projection_run):
    fp8 = projection_run()
    fp8.meta["noise"] = {"noisy": True, "reasons": ["load"]}
    fig = build_figures([*runs, fp8])["projections"]
    gemm = fig.data[0]
    assert list(gemm.marker.pattern.shape) == ["", "/"] and "noisy" in fig.layout.title.text


@pytest.mark.skipif(not H100_RUNS.is_dir(), reason="needs the repository's committed projection runs")
def test_the_committed_h100_runs_draw_both_workloads_and_wans_oom():
    fig = build_figures(load_runs([H100_RUNS]))["projections"]
    gemm = fig.data[0]
    assert list(gemm.x[0]) == ["sd15"] * 3 + ["wan2.1-1.3b"] * 3
    idle = fig.data[3]
    assert idle.y[1] > 100.0  # SD 1.5 under fp8: the host holds the step (111 ms idle of 129)
    oom = next(t for t in fig.data if t.name == "out of memory / failed")
    assert list(oom.x[0]) == ["wan2.1-1.3b"] and list(oom.x[1]) == ["cudnn+memoryformer"]
