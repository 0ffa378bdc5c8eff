"""The attention-mechanisms view: step latency per backend grouped by workload, attention's share of the step under
it, kind, speedup and run id in the hover; a page without comparisons leaves it off, and the figure alone says so."""

from __future__ import annotations

import json

import pytest

from mmchar.analysis import mechanisms_table
from mmchar.dashboards import build_figures
from mmchar.dashboards.mechanisms import NO_RUNS, VIEW, mechanisms_figure
from mmchar.dashboards.registry import VIEWS


def _group(make_run, prefix, workload, height, steps_ms):
    """A compare group: cuDNN first (the baseline), then the other backends; ``steps_ms``: backend -> step ms."""
    base = f"{prefix}-cudnn"
    cmp = {"group": f"g-{prefix}", "baseline_run_id": base, "baseline_backend": "cudnn"}
    runs = []
    for backend, ms in steps_ms.items():
        r = make_run(f"{prefix}-{backend}", backend, compare=None if backend == "cudnn" else cmp, workload=workload,
                     height=height, step_ms=ms)
        r.meta["backend_changes_math"] = backend != "cudnn"
        r.meta["backend_mechanism"] = {"mlstm": "recurrence", "rwkv7": "recurrence", "lla": "local linear"}.get(
            backend, "softmax")
        runs.append(r)
    return runs


def test_grouped_step_bars_per_backend_and_the_attention_share_panel(make_run):
    runs = (_group(make_run, "wan", "wan2.1-1.3b", 480, {"cudnn": 100.0, "mlstm": 50.0, "lla": 125.0})
            + _group(make_run, "wan256", "wan2.1-1.3b", 256, {"cudnn": 30.0, "mlstm": 20.0})
            + _group(make_run, "sd", "sd15", 512, {"cudnn": 40.0, "rwkv7": 80.0}))
    fig = build_figures(runs)["mechanisms"]
    names = [t.name for t in fig.data]
    # one trace per backend in each panel, the legend once per backend with its kind
    assert names == ["cudnn (softmax)"] * 2 + ["mlstm (recurrence)"] * 2 + ["lla (local linear)"] * 2 + \
        ["rwkv7 (recurrence)"] * 2
    assert [t.showlegend for t in fig.data] == [True, False] * 4
    assert [t.yaxis for t in fig.data] == ["y", "y2"] * 4
    cudnn_ms, cudnn_share, mlstm_ms, _, lla_ms, *_ = fig.data
    # two shapes of one workload are told apart by the field they differ in
    assert list(cudnn_ms.x) == ["wan2.1-1.3b h=480", "wan2.1-1.3b h=256", "sd15"]
    assert list(cudnn_ms.y) == [100.0, 30.0, 40.0] and list(mlstm_ms.y) == [50.0, 20.0]
    assert list(mlstm_ms.x) == ["wan2.1-1.3b h=480", "wan2.1-1.3b h=256"] and list(lla_ms.x) == ["wan2.1-1.3b h=480"]
    # the fixture's denoiser: attention 300 of 1000 us
    assert list(cudnn_share.y) == pytest.approx([0.3, 0.3, 0.3])
    run_id, kind, speedup, share, ms = mlstm_ms.customdata[0]
    assert (run_id, kind, speedup, ms) == ("wan-mlstm", "recurrence", "2.00× over cudnn", 50.0)
    assert lla_ms.customdata[0][2] == "0.80× over cudnn" and "%{customdata[0]}" in mlstm_ms.hovertemplate
    assert fig.layout.barmode == "group"


def test_the_view_follows_the_comparison_and_the_empty_figure_says_so(runs):
    assert VIEW in VIEWS and VIEW.table == "mechanisms"
    assert "mechanisms" in build_figures(runs)  # the fixture's math / flash comparison
    assert "mechanisms" not in build_figures([r for r in runs if "compare" not in r.meta])
    empty = mechanisms_figure(mechanisms_table([]))
    assert NO_RUNS in json.dumps(empty.to_plotly_json()["layout"]["annotations"]) and not empty.data
    assert empty.layout.title.text.endswith(NO_RUNS)
