"""The experts view and table on a hand-made run with two MoE layers (tests/dashboards/conftest.py: `moe_run`)."""

from __future__ import annotations

import pytest

from mmchar.analysis import TABLES
from mmchar.dashboards import experts as experts_view


def test_the_table_splits_the_layers_time_by_part(make_run, moe_run):
    table = TABLES["experts"]([moe_run(), make_run("plain", "flash")])  # the dense run has no rows
    assert list(table["part"]) == ["routing", "expert 0", "expert 1", "shared"]
    assert list(table["time_us"]) == [24.0, 80.0, 60.0, 40.0] and list(table["calls"]) == [4, 2, 2, 2]
    assert list(table["ms_per_step"]) == pytest.approx([0.024, 0.080, 0.060, 0.040])  # one profiled step
    assert table["share"].sum() == pytest.approx(1.0) and table["share"].iloc[1] == pytest.approx(80 / 204)
    assert table["load_vs_mean"].iloc[1:3].tolist() == pytest.approx([80 / 70, 60 / 70])
    assert table["load_vs_mean"].iloc[[0, 3]].isna().all() and set(table["moe_layers"]) == {2}
    assert set(table["run_id"]) == {"hidream-flash"}


def test_a_run_recorded_without_containers_reads_indexed_experts_as_a_list(moe_run):
    old = moe_run()
    del old.meta["moe_layers"]["containers"], old.meta["moe_layers"]["stages"]
    assert list(TABLES["experts"]([old])["part"]) == ["routing", "expert 0", "expert 1", "shared"]
    fused = moe_run()
    fused.meta["moe_layers"]["containers"] = {"denoiser": {"experts": "fused"}}
    assert list(TABLES["experts"]([fused])["part"]) == ["routing", "experts", "shared"]  # no per-expert modules


def test_the_figure_stacks_one_trace_per_part_and_says_when_there_is_nothing(make_run, moe_run):
    fig = experts_view.experts_figure(TABLES["experts"]([moe_run(), moe_run("hidream-cudnn", step_ms=50.0)]))
    assert [t.name for t in fig.data] == ["routing", "expert 0", "expert 1", "shared"]
    assert list(fig.data[0].x) == pytest.approx([0.024, 0.024]) and len(fig.data[0].y) == 2
    assert "1.14x the routed experts' mean" in fig.data[1].customdata[0][3]
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["ms per step", "share"]
    assert fig.data[0].marker.color == experts_view.op_class_color("routing")
    empty = experts_view.experts_figure(TABLES["experts"]([make_run("plain", "flash")]))
    assert not empty.data and experts_view.NO_RUNS in empty.layout.title.text
