"""The dashboard page: self-contained, offline, every view drawn, failed runs listed."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

import mmchar
from mmchar.dashboards import build_figures, write_dashboard
from mmchar.dashboards.palette import OP_CLASS_COLORS
from mmchar.dashboards.report import SECTIONS
from mmchar.schema import OP_CLASSES
from mmchar.store import Run, load_runs, write_run

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB"


def make_run(run_id, backend, status="ok", compare=None, workload="sd15"):
    meta = {"run_id": run_id, "created": "2025-01-01T12:00:00", "status": status,
            "error": None if status == "ok" else (OOM_MESSAGE if status == "oom" else "RuntimeError: <bad> & co"),
            "workload": workload, "preset": "full", "backend": backend, "config_hash": "abc123",
            "config": {"params": {"height": 512, "width": 512, "frames": 1, "steps": 20, "batch": 1}},
            "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, "versions": {"torch": "2.11"}}
    if status != "ok":
        return Run(meta=meta)
    meta["timings"] = {"e2e": {"median_ms": 1000.0, "min_ms": 990.0, "max_ms": 1010.0, "n": 3},
                       "denoiser": {"median_ms": 800.0, "min_ms": 790.0, "max_ms": 810.0, "n": 3},
                       "denoiser_step": {"median_ms": 40.0, "min_ms": 39.0, "max_ms": 41.0, "n": 3},
                       "decoder": {"median_ms": 150.0, "min_ms": 149.0, "max_ms": 151.0, "n": 3}}
    meta["busy"] = {"denoiser": {"wall_ms": 800.0, "busy_ms": 700.0, "idle_ms": 100.0, "busy_frac": 0.875,
                                 "kernels": 5000},
                    "decoder": {"wall_ms": 150.0, "busy_ms": 149.0, "idle_ms": 1.0, "busy_frac": 149 / 150,
                                "kernels": 300}}
    meta["attention_time_us_per_step"] = 400.0 if backend == "math" else 100.0
    if compare:
        meta["compare"] = compare
    breakdown = pd.DataFrame([
        ("denoiser", "conv", "", 400.0, 0.4, 4), ("denoiser", "gemm", "", 300.0, 0.3, 3),
        ("denoiser", "attention", "spatial", 200.0, 0.2, 2), ("denoiser", "attention", "cross", 100.0, 0.1, 1),
        ("decoder", "conv", "", 90.0, 0.9, 9), ("decoder", "attention", "spatial", 10.0, 0.1, 1),
    ], columns=["stage", "op_class", "attn_site", "time_us", "share", "calls"])
    kernels = pd.DataFrame({
        "stage": ["denoiser"] * 4 + ["decoder"], "step": np.array([0, 0, 1, 1, -1], dtype="int32"),
        "module_path": "unet", "op_class": ["conv", "gemm", "attention", "attention", "conv"],
        "attn_site": ["", "", "spatial", "cross", ""], "aten_op": "aten::x", "launch_op": "aten::x",
        "kernel": ["conv_k", "gemm_k", "fmha_k", "fmha_k", "conv_k"], "ts_us": [0.0, 1.0, 2.0, 3.0, 4.0],
        "dur_us": [400.0, 300.0, 200.0, 100.0, 90.0], "input_shapes": "",
        "flops": [1.6e11, 1.2e11, np.nan, np.nan, 3.6e10], "bytes": [4e8, 3e8, np.nan, np.nan, 1e8]})
    meta["roofs"] = {"matmul_tflops": {"bf16": 800.0}, "copy_gbps": 3000.0}
    meta["config"]["dtype"] = "bf16"
    return Run(meta=meta, kernels=kernels, breakdown=breakdown)


@pytest.fixture
def runs(tmp_path):
    store = tmp_path / "runs"
    cmp = {"group": "sd15-512", "baseline_run_id": "sd15-math", "baseline_backend": "math", "max_abs_diff": 0.02,
           "cosine": 0.9999, "agrees": True}
    for run in (make_run("sd15-math", "math"), make_run("sd15-flash", "flash", compare=cmp),
                make_run("sd15-oom", "math", status="oom"), make_run("sd15-err", "flash", status="error")):
        write_run(store, run)
    return load_runs([store])


def test_page_is_self_contained_and_offline(runs, tmp_path):
    out = write_dashboard(runs, tmp_path / "out" / "dash.html", title="My study")
    page = out.read_text(encoding="utf-8")
    plotlyjs = get_plotlyjs()
    assert page.count(plotlyjs) == 1
    assert page.count("Copyright 2012-") == 1  # plotly.js's header comment: embedded exactly once
    rest = page.replace(plotlyjs, "")
    assert "<script src=" not in rest and "<link" not in rest and "cdn.plot.ly" not in rest
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", rest)
    assert "https://" not in rest and "http://" not in rest
    assert "My study" in rest and f"mmchar {mmchar.__version__}" in rest and "generated 20" in rest


def test_every_view_has_data_and_is_in_the_page(runs, tmp_path):
    figures = build_figures(runs)
    assert list(figures) == [key for key, *_ in SECTIONS]
    for key, fig in figures.items():
        data = json.loads(fig.to_json())["data"]
        assert data and any(len(t.get("x") or []) for t in data), key
    page = write_dashboard(runs, tmp_path / "dash.html").read_text()
    for key in figures:
        assert f'id="fig-{key}"' in page
    assert page.count("Plotly.newPlot(") == len(figures)


def test_failed_runs_listed_in_overview(runs, tmp_path):
    page = write_dashboard(runs, tmp_path / "dash.html").read_text()
    overview = page[page.index('<section id="overview">'):page.index('<section id="op_classes">')]
    assert "sd15-oom" in overview and OOM_MESSAGE in overview
    assert "sd15-err" in overview and "RuntimeError: &lt;bad&gt; &amp; co" in overview  # escaped
    assert "Failed runs (2)" in overview


def test_op_class_view_defaults_to_denoiser_with_shared_colours(runs):
    fig = build_figures(runs)["op_classes"]
    visible = [t for t in fig.data if t.visible]
    assert {t.name for t in visible} == {"conv", "gemm", "attention"}
    attention = next(t for t in visible if t.name == "attention")
    assert list(attention.y) == pytest.approx([0.3, 0.3])  # spatial + cross summed per run
    assert all(t.marker.color == OP_CLASS_COLORS[t.name] for t in fig.data)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["denoiser", "decoder"]
    assert set(OP_CLASS_COLORS) == set(OP_CLASSES)


def test_roofline_view_puts_each_op_class_under_the_recorded_roof(runs):
    fig = build_figures(runs)["roofline"]
    roof = next(t for t in fig.data if t.name.startswith("roof"))
    assert max(roof.y) == pytest.approx(800.0) and roof.name == "roof: NVIDIA H100 80GB HBM3"
    conv = next(t for t in fig.data if t.name == "conv")  # 1.6e11 FLOP in 400 us = 400 TFLOP/s at 400 FLOP/B
    assert sorted(conv.y) == pytest.approx([400.0, 400.0, 400.0, 400.0]) and set(conv.x) == {400.0, 360.0}
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_comparison_view_absent_without_comparisons(runs):
    figures = build_figures([r for r in runs if "compare" not in r.meta])
    assert "comparison" not in figures and "op_classes" in figures


def test_hundred_runs_keep_trace_counts_small(tmp_path):
    runs = [make_run(f"sd15-{i:03d}", "flash") for i in range(100)]
    figures = build_figures(runs)
    assert len(figures["op_classes"].data) == 3 + 2  # denoiser: conv, gemm, attention; decoder: conv, attention
    assert len(figures["top_kernels"].data) <= 1 + len(OP_CLASSES)
    assert len(figures["top_kernels"].layout.updatemenus[0].buttons) == 100
    assert len(figures["stage_times"].data) == 4 and len(figures["busy_idle"].data) == 2
    out = write_dashboard(runs, tmp_path / "big.html")
    assert out.stat().st_size < 12_000_000


def test_backends_that_change_the_maths_are_flagged(tmp_path):
    from mmchar.dashboards import write_dashboard
    from mmchar.store import Run, load_runs, write_run

    write_run(tmp_path / "s", Run(meta={"run_id": "w-linear-x", "status": "ok", "workload": "w", "backend": "linear",
                                        "backend_changes_math": True}))
    write_run(tmp_path / "s", Run(meta={"run_id": "w-flash-x", "status": "ok", "workload": "w", "backend": "flash",
                                        "backend_changes_math": False}))
    html = write_dashboard(load_runs([tmp_path / "s"]), tmp_path / "r.html").read_text()
    assert "linear: replace self-attention with other mathematics" in html and "flash: replace" not in html
