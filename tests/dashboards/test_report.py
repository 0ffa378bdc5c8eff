"""The dashboard page: self-contained, offline, every view drawn, failed runs listed."""

from __future__ import annotations

import json
import re

import pytest
from plotly.offline import get_plotlyjs

import mmchar
from mmchar.dashboards import build_figures, write_dashboard
from mmchar.dashboards.palette import OP_CLASS_COLORS
from mmchar.dashboards.report import SECTIONS
from mmchar.schema import OP_CLASSES
from mmchar.store import Run, load_runs, write_run

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB"  # as conftest.py's OOM run records it


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


def test_every_view_has_data_and_is_in_the_page(every_view_runs, tmp_path):
    runs = every_view_runs
    figures = build_figures(runs)
    assert list(figures) == [key for key, *_ in SECTIONS]
    for key, fig in figures.items():
        data = json.loads(fig.to_json())["data"]
        assert data and any(len(t.get("x") or t.get("ids") or []) for t in data), key
    page = write_dashboard(runs, tmp_path / "dash.html").read_text()
    multi = figures["multi_gpu"].data
    assert [t.name for t in multi] == ["communication", "compute and the rest"]
    assert list(multi[0].y) == [0.0, 0.05] and list(multi[1].y) == [40.0, 24.95]  # 1 GPU, then 2 GPUs
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
    assert list(attention.y) == pytest.approx([0.3, 0.3, 0.3])  # spatial + cross summed per run
    assert all(t.marker.color == OP_CLASS_COLORS[t.name] for t in fig.data)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["denoiser", "decoder"]
    assert set(OP_CLASS_COLORS) == set(OP_CLASSES)


def test_roofline_view_puts_each_op_class_under_the_recorded_roof(runs):
    fig = build_figures(runs)["roofline"]
    roof = next(t for t in fig.data if t.name.startswith("roof"))
    assert max(roof.y) == pytest.approx(800.0) and roof.name == "roof: NVIDIA H100 80GB HBM3"
    conv = next(t for t in fig.data if t.name == "conv")  # 1.6e11 FLOP in 400 us = 400 TFLOP/s at 400 FLOP/B
    assert sorted(conv.y) == pytest.approx([400.0] * 6) and set(conv.x) == {400.0, 360.0}  # 3 runs × 2 stages
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_sequence_view_shows_one_steps_calls_of_the_chosen_run(runs):
    fig = build_figures(runs)["sequence"]
    q, kv = fig.data[0], fig.data[1]
    assert list(q.y) == [4096, 4096] and list(kv.y) == [4096, 77]  # one step: its spatial and its cross call
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["sd15-flash", "sd15-flash-1024", "sd15-math"]
    assert fig.layout.yaxis.type == "log" and {t.name for t in fig.data[2:]} == {"spatial", "cross"}


def test_scaling_view_draws_each_varied_parameter_with_its_exponent(runs):
    fig = build_figures(runs)["scaling"]
    (line,) = fig.data  # sd15 · flash at height 512 and 1024: 40 -> 160 ms per step, k = 2
    assert list(line.x) == [512.0, 1024.0] and list(line.y) == [40.0, 160.0] and "k = 2.00" in line.name
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["height"]


def test_modules_view_is_a_sunburst_coloured_by_op_class(runs):
    fig = build_figures(runs)["modules"]
    sb = fig.data[0]
    assert sb.type == "sunburst" and list(sb.ids[:2]) == ["denoiser", "denoiser/unet"]
    assert sb.values[0] == pytest.approx(1.0)  # 400 + 300 + 200 + 100 us of the denoiser, in ms
    assert sb.marker.colors[1] == OP_CLASS_COLORS["conv"]  # conv has the most time under unet
    assert {t.name for t in fig.data[1:]} == {"conv"}
    assert len(fig.layout.updatemenus[0].buttons) == 3


def test_timeline_view_has_a_lane_per_op_class_of_one_step(runs):
    fig = build_figures(runs)["timeline"]
    assert [t.name for t in fig.data] == ["conv", "gemm"]  # step 0 of the fixture's denoiser: a conv, then a gemm
    conv, gemm = fig.data
    assert list(conv.base) == [0.0] and list(gemm.base) == [0.001] and list(gemm.x) == [0.3]
    assert len(fig.layout.updatemenus[0].buttons) == 3


def test_comparison_view_absent_without_comparisons(runs):
    figures = build_figures([r for r in runs if "compare" not in r.meta])
    assert "comparison" not in figures and "op_classes" in figures


def test_hundred_runs_keep_trace_counts_small(tmp_path, make_run):
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

    write_run(tmp_path / "s", Run(meta={"run_id": "w-linear-x", "status": "ok", "workload": "w", "backend": "linear",
                                        "backend_changes_math": True}))
    write_run(tmp_path / "s", Run(meta={"run_id": "w-flash-x", "status": "ok", "workload": "w", "backend": "flash",
                                        "backend_changes_math": False}))
    html = write_dashboard(load_runs([tmp_path / "s"]), tmp_path / "r.html").read_text()
    assert "linear: replace self-attention with other mathematics" in html and "flash: replace" not in html
