"""The dashboard page: self-contained, offline, every view drawn, failed runs listed."""

from __future__ import annotations

import json
import re

import pytest
from plotly.offline import get_plotlyjs

import mmchar
from mmchar.analysis.tables import run_labels
from mmchar.dashboards import build_figures, write_dashboard
from mmchar.dashboards.palette import OP_CLASS_COLORS
from mmchar.dashboards.registry import VIEWS
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
    assert list(figures) == [view.key for view in VIEWS]
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
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == [
        "sd15 flash bf16 h=512", "sd15 flash bf16 h=1024", "sd15 math bf16 h=512"]  # short labels, not run ids
    assert fig.layout.yaxis.type == "log" and {t.name for t in fig.data[2:]} == {"spatial", "cross"}


def test_scaling_view_draws_each_varied_parameter_with_its_exponent(runs, make_run):
    fig = build_figures(runs)["scaling"]
    (line,) = fig.data  # sd15 · flash at height 512 and 1024: two points are drawn but give no exponent
    assert list(line.x) == [512.0, 1024.0] and list(line.y) == [40.0, 160.0]
    assert "k =" not in line.name and line.name.endswith("(no exponent from 2 points)")
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["height"]
    fig = build_figures([*runs, make_run("sd15-flash-256", "flash", height=256, step_ms=10.0)])["scaling"]
    (line,) = fig.data  # 10 -> 40 -> 160 ms per step over 256, 512, 1024: k = 2
    assert list(line.x) == [256.0, 512.0, 1024.0] and line.name.endswith("(k = 2.00)")


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


def test_hundred_runs_keep_trace_counts_small(tmp_path, make_run, monkeypatch):
    from mmchar.dashboards import report
    from mmchar.store import with_added_columns

    runs = [make_run(f"sd15-{i:03d}", "flash") for i in range(100)]
    for run in runs:  # the columns load_run adds to a stored run, added once (not again by every kernel table)
        run.kernels = with_added_columns(run.kernels)
    drawn = []  # the figures of the page written below: the study's figures built once, for page and checks alike
    monkeypatch.setattr(report, "build_figures", lambda r: drawn.append(build_figures(r)) or drawn[-1])
    out = write_dashboard(runs, tmp_path / "big.html")
    (figures,) = drawn
    assert len(figures["op_classes"].data) == 3 + 2  # denoiser: conv, gemm, attention; decoder: conv, attention
    assert len(figures["top_kernels"].data) <= 1 + len(OP_CLASSES)
    assert len(figures["top_kernels"].layout.updatemenus[0].buttons) == 100
    assert len(figures["stage_times"].data) == 4 and len(figures["busy_idle"].data) == 2
    assert out.stat().st_size < 12_000_000


def test_backends_that_change_the_maths_are_flagged(tmp_path):
    from mmchar.dashboards import write_dashboard

    write_run(tmp_path / "s", Run(meta={"run_id": "w-linear-x", "status": "ok", "workload": "w", "backend": "linear",
                                        "backend_changes_math": True}))
    write_run(tmp_path / "s", Run(meta={"run_id": "w-flash-x", "status": "ok", "workload": "w", "backend": "flash",
                                        "backend_changes_math": False}))
    html = write_dashboard(load_runs([tmp_path / "s"]), tmp_path / "r.html").read_text()
    assert "linear: replace self-attention with other mathematics" in html and "flash: replace" not in html


LONG = "20261204-101500-a1b2c3"  # what a stored run id ends with: a timestamp and a hash


def _long_id_runs(make_run):
    """Every view's data, from runs whose ids are long: a comparison, a height sweep, two GPUs."""
    math_id, flash_id = f"sd15-math-{LONG}", f"sd15-flash-{LONG}"
    cmp = {"group": "sd15-512", "baseline_run_id": math_id, "baseline_backend": "math", "max_abs_diff": 0.02,
           "cosine": 0.9999, "agrees": True}
    return [make_run(math_id, "math"), make_run(flash_id, "flash", compare=cmp),
            make_run(f"sd15-flash-1024-{LONG}", "flash", height=1024, step_ms=160.0),
            make_run(f"sd15-flash-256-{LONG}", "flash", height=256, step_ms=10.0),
            make_run(f"sd15-flash-2gpu-{LONG}", "flash", step_ms=25.0, gpus=2)]


def _without(obj, keys=("customdata", "hovertemplate")):
    """A figure's JSON without its hover-only fields."""
    if isinstance(obj, dict):
        return {k: _without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_without(v, keys) for v in obj]
    return obj


def test_runs_are_named_by_short_labels_and_ids_stay_in_hover(make_run):
    runs = _long_id_runs(make_run)
    ids = [r.run_id for r in runs]
    id_of = {label: run_id for run_id, label in run_labels(runs).items()}
    figures = build_figures(runs)
    # no run here has a projection backend or MoE layers, so those views are left off (their own tests draw them)
    assert set(figures) == {view.key for view in VIEWS} - {"projections", "experts"}
    for key, fig in figures.items():
        full = fig.to_plotly_json()
        shown = json.dumps(_without(full), default=str)
        assert LONG not in shown, key  # axes, legends, dropdowns, titles, text: labels only
        assert any(i in json.dumps(full, default=str) for i in ids), key  # the ids are in the hover
    labels = {"sd15 math h=512 gpus=1", "sd15 flash h=512 gpus=1", "sd15 flash h=1024 gpus=1",
              "sd15 flash h=256 gpus=1", "sd15 flash h=512 gpus=2"}
    assert set(figures["stage_times"].data[0].x) == labels  # sweep points told apart by their varied fields
    assert set(figures["op_classes"].layout.xaxis.categoryarray) == labels
    assert set(figures["attention_sites"].data[0].x) == labels
    assert set(figures["busy_idle"].data[0].x[0]) == labels
    assert list(figures["comparison"].data[0].x[1]) == ["sd15 math h=512 gpus=1", "sd15 flash h=512 gpus=1"]
    for key in ("top_kernels", "modules", "sequence", "timeline"):  # dropdowns and titles name the label ...
        menu = figures[key].layout.updatemenus[0]
        assert set(b.label for b in menu.buttons) == labels, key
        assert figures[key].layout.title.text.endswith(menu.buttons[0].label), key
        for b in menu.buttons:  # ... and each run's hover its full id
            assert all(id_of[b.label] in h for h in b.args[0]["hovertemplate"]), key
    roofline = next(t for t in figures["roofline"].data if t.name == "conv")
    assert {t.split(" · ")[0] for t in roofline.text} == labels
    assert {c[2] for c in roofline.customdata} == set(ids)



CPU = {"type": "cpu", "name": "x86_64", "threads": 2}
REASON = "e2e varied 35% over 3 timed samples (coefficient of variation; threshold 10%) <load>"


def test_cpu_runs_are_not_called_gpu_busy(make_run):
    gpu, cpu = make_run("sd15-gpu", "flash"), make_run("sd15-cpu", "flash", device=CPU)
    fig = build_figures([gpu, cpu])["busy_idle"]
    assert [t.name for t in fig.data] == ["GPU busy", "CPU ops busy", "idle"]
    gpu_busy, cpu_busy, idle = fig.data
    rows = list(zip(*gpu_busy.x))  # (label, stage) per bar: the GPU run's busy bars on the GPU trace only
    assert [y is not None and y == y for y in gpu_busy.y] == [label.endswith("H100") for label, _ in rows]
    assert [y is not None and y == y for y in cpu_busy.y] == [label.endswith("cpu") for label, _ in rows]
    assert {c[2] for c, (label, _) in zip(idle.customdata, rows) if label.endswith("cpu")} == {"ops"}
    assert "GPU busy vs idle" not in fig.layout.title.text and "CPU op self time" in fig.layout.title.text
    only_cpu = build_figures([cpu])["busy_idle"]
    assert [t.name for t in only_cpu.data] == ["CPU ops busy", "idle"]
    assert "GPU" not in json.dumps(_without(only_cpu.to_plotly_json(), ("template",)))
    assert build_figures([gpu])["busy_idle"].layout.title.text.startswith("GPU busy vs idle")


def test_overview_counts_and_lists_noisy_runs(make_run, tmp_path):
    runs = [make_run("sd15-clean", "flash", noise=[]), make_run("sd15-noisy", "math", noise=[REASON]),
            make_run("sd15-old", "flash", height=1024), make_run("sd15-cpu-oom", "math", status="oom", device=CPU)]
    page = write_dashboard(runs, tmp_path / "dash.html").read_text()
    overview = page[page.index('<section id="overview">'):page.index('<section id="op_classes">')]
    card = re.search(r'card-label">noisy</div><div class="card-value">(\d+)</div><div class="card-detail">([^<]*)',
                     overview)
    assert card and card.group(1) == "1" and "of 2 judged" in card.group(2)
    listed = overview[overview.index("Noisy runs (1)"):]
    listed = listed[:listed.index("</table>")]
    assert "<td>sd15 math H100 bf16 h=512</td><td>sd15-noisy</td>" in listed and "&lt;load&gt;" in listed
    assert "sd15-clean" not in listed and "sd15-old" not in listed
    listing = overview[overview.index("<summary>All runs</summary>"):]
    heads = re.findall(r"<th>([^<]*)</th>", listing)
    assert heads[:9] == ["label", "run", "workload", "preset", "backend", "device", "dtype", "status", "noisy"]
    noisy_row = next(r for r in listing.split("<tr>") if "sd15-noisy" in r)
    assert '<td class="noisy">yes</td>' in noisy_row and "<td>bf16</td>" in noisy_row
    assert "<td>no</td>" in next(r for r in listing.split("<tr>") if "sd15-clean" in r)


def test_latency_views_mark_noisy_runs(make_run):
    cmp = {"group": "g", "baseline_run_id": "sd15-math", "baseline_backend": "math", "agrees": True}
    runs = [make_run("sd15-math", "math", noise=[]), make_run("sd15-flash", "flash", compare=cmp, noise=[REASON])]
    figures = build_figures(runs)
    for key in ("stage_times", "comparison"):
        fig = figures[key]
        for trace in fig.data:
            noisy = [str(x if isinstance(x, str) else x).startswith("sd15 flash") for x in
                     (trace.x if key == "stage_times" else trace.x[1])]
            assert [s == "/" for s in trace.marker.pattern.shape] == noisy, key
            assert [o < 1 for o in trace.marker.opacity] == noisy, key
            notes = [c[-1] for c in trace.customdata]
            assert [n.startswith("<br>noisy: e2e varied 35%") for n in notes] == noisy, key
            assert all("&lt;load&gt;" in n for n, f in zip(notes, noisy) if f), key
        assert "flagged noisy" in fig.layout.title.text, key
    clean = build_figures([make_run("sd15-math", "math", noise=[]), make_run("sd15-flash", "flash", compare=cmp)])
    assert "noisy" not in clean["stage_times"].layout.title.text
    assert not any(s for t in clean["stage_times"].data for s in t.marker.pattern.shape)


def test_scaling_view_one_point_per_configuration_noisy_points_crossed(make_run):
    runs = [make_run("h256", "flash", height=256, step_ms=10.0, noise=[]),
            make_run("h512", "flash", height=512, step_ms=40.0, noise=[]),
            make_run("h512-again", "flash", height=512, step_ms=44.0, noise=[]),
            make_run("h512-disturbed", "flash", height=512, step_ms=400.0, noise=[REASON]),
            make_run("h1024-disturbed", "flash", height=1024, step_ms=170.0, noise=[REASON])]
    fig = build_figures(runs)["scaling"]
    (line,) = fig.data  # one point per height, no zig-zag: 512 is the median of its clean runs
    assert list(line.x) == [256.0, 512.0, 1024.0] and list(line.y) == [10.0, 42.0, 170.0]
    assert list(line.marker.symbol) == ["circle", "circle", "x"]
    assert line.customdata[1][0] == "h512, h512-again" and "1 noisy left out" in line.customdata[1][1]
    assert line.customdata[2][2].startswith("<br>noisy: e2e varied") and line.customdata[0][2] == ""
    assert "flagged noisy" in fig.layout.title.text


def test_a_run_loaded_twice_is_drawn_once(runs, tmp_path):
    """The same store named twice (or a copy of it): each run is one bar, its shares still sum to 1."""
    twice = [*runs, *load_runs([runs[0].path.parent])]
    fig = build_figures(twice)["op_classes"]
    attention = next(t for t in fig.data if t.visible and t.name == "attention")
    assert list(attention.y) == pytest.approx([0.3, 0.3, 0.3]) and len(set(attention.x)) == 3
    stage_x = list(build_figures(twice)["stage_times"].data[0].x)
    assert len(stage_x) == len(set(stage_x)) == 3
    assert "· 5 runs</div>" in write_dashboard(twice, tmp_path / "d.html").read_text()
