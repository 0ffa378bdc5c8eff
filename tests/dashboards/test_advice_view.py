"""The advice view: per run (a dropdown), `mmchar advise`'s ranked opportunities as horizontal bars of projected step
saving labelled with the option, each with its stated error (error bar and text, or "unvalidated"), the model and
inputs in the hover, a measured saving beside the projected one where the table has one, and an empty state that
says why no run has advice."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmchar.analysis import advice_table
from mmchar.dashboards import build_figures, write_dashboard
from mmchar.dashboards.advice import NO_ADVICE, NOT_STATED, VIEW, advice_figure, error_status
from mmchar.dashboards.registry import VIEWS


def _bars(fig, name="projected saving"):
    return [t for t in fig.data if t.type == "bar" and t.name == name]


def test_ranked_savings_per_run_with_their_stated_error(runs, advised_run):
    a, b = advised_run(), advised_run("sd15-flash-1024-advised", height=1024, step_ms=160.0, busy_ms=150.0)
    table = advice_table([*runs, a, b])
    fig = build_figures([*runs, a, b])["advice"]
    projected = _bars(fig)
    assert len(projected) == 2 and fig.layout.barmode == "group"
    first = projected[0]
    assert first.orientation == "h" and first.visible is True and projected[1].visible is False
    # the first run's ranked rows in rank order, the largest saving on top (rank 1 at y=0, the axis reversed)
    mine = table[(table["run_id"] == a.run_id) & table["saving_ms"].notna()].sort_values("rank")
    assert list(first.x) == pytest.approx(list(mine["saving_ms"]))
    assert list(fig.layout.yaxis.ticktext) == [f"{int(r)}. {o}" for r, o in zip(mine["rank"], mine["option"])]
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]
    # every bar says its error: a validated model's ±N % (and an error bar of that share of the projected step), an
    # unvalidated one says so and has no error bar
    for text, err, (_, row) in zip(first.text, first.error_x.array, mine.iterrows()):
        status = "unvalidated" if row["error"].startswith("unvalidated") else row["error"].split(" (")[0]
        assert text.endswith("· " + status)
        if status == "unvalidated":
            assert err is None
        else:
            assert err == pytest.approx(float(status.strip("±% ")) / 100 * row["projected_step_ms"])
    assert any(t.endswith("· ±17 %") for t in first.text) and any(t.endswith("· unvalidated") for t in first.text)
    # the hover: the model and the inputs the projection read, the run's id, and that it is not a measurement
    hover = json.dumps(first.customdata[0])
    assert "denoiser calls reuse a cached output" in hover and "passes.steps 20" in hover and a.run_id in hover
    assert "projected, not measured" in first.hovertemplate
    # rows that do not apply are not drawn (the fixture's kernels hold no cuDNN layout transform)
    assert not any("--channels-last" == t.split(". ", 1)[1] for t in fig.layout.yaxis.ticktext)
    # one run at a time: the dropdown switches the traces, the ticks and the title
    menu = fig.layout.updatemenus[0]
    labels = list(dict.fromkeys(table.loc[table["run_id"].isin([a.run_id, b.run_id]), "label"]))
    assert [btn.label for btn in menu.buttons] == labels and "h=1024" in labels[1]
    second = menu.buttons[1].args
    assert second[0]["visible"] == [False, True] and labels[1] in second[1]["title.text"]
    assert "160.00 ms" in second[1]["title.text"]


def test_a_measured_row_is_drawn_beside_its_projection(advised_run):
    table = advice_table([advised_run()])
    # no measured row (the column all NaN), or a table from before `advise --validate` (no column): no measured bars
    assert not _bars(advice_figure(table), "measured saving")
    assert not _bars(advice_figure(table.drop(columns=["measured_step_ms", "validating_run"], errors="ignore")),
                     "measured saving")
    ranked = table["saving_ms"].notna()
    graphs = table.index[table["option"] == "--cuda-graphs"][0]
    table["measured_step_ms"] = np.nan  # as `advise --validate` fills it: measured where a run of the option exists
    table["validating_run"] = None
    table.loc[graphs, ["measured_step_ms", "validating_run"]] = [35.0, "sd15-graphs-run"]
    fig = advice_figure(table)
    measured = _bars(fig, "measured saving")
    assert len(measured) == 1 and measured[0].orientation == "h"
    order = list(table[ranked].sort_values("rank")["option"])
    at = order.index("--cuda-graphs")
    assert measured[0].x[at] == pytest.approx(5.0)  # 40 ms measured down to 35 ms
    assert sum(x == x for x in measured[0].x) == 1 and measured[0].text[at] == "measured 5.0 ms"
    projected = table.loc[graphs, "projected_step_ms"]
    assert f"projection off by {(projected - 35.0) / 35.0 * 100:+.1f} %" in measured[0].customdata[at]
    assert "measured by sd15-graphs-run" in measured[0].customdata[at][-1]
    # the two traces share the dropdown's visibility
    fig2 = advice_figure(pd.concat([table, advice_table([advised_run("other", height=1024)])],
                                   ignore_index=True))
    assert [btn.args[0]["visible"] for btn in fig2.layout.updatemenus[0].buttons] == [[True, True, False],
                                                                                       [False, False, True]]


def test_error_status_is_never_empty():
    assert error_status("±17 % (cudnn -> flash ...)") == ("±17 %", pytest.approx(0.17))
    assert error_status("unvalidated (no committed run)")[0] == "unvalidated"
    assert error_status("")[0] == NOT_STATED and error_status(float("nan"))[0] == NOT_STATED


def test_a_projection_without_an_error_says_so(advised_run):
    table = advice_table([advised_run()])
    table["error"] = ""
    fig = advice_figure(table)
    assert all(t.endswith("· " + NOT_STATED) for t in _bars(fig)[0].text)


def test_empty_state_says_why_no_run_has_advice(runs):
    assert VIEW in VIEWS and VIEW.table == "advice" and VIEW.marked
    # the standard runs recorded no step in the light profile: advice has rows, none ranked
    fig = build_figures(runs)["advice"]
    assert NO_ADVICE in fig.layout.title.text and NO_ADVICE in fig.layout.annotations[0].text
    why = fig.data[0]
    ok = [r for r in runs if r.status == "ok"]
    assert list(why.y) == list(dict.fromkeys(advice_table(runs)["label"])) and len(why.y) == len(ok)
    assert all("no timed step" in t for t in why.text) and set(why.customdata) == {r.run_id for r in ok}
    empty = advice_figure(advice_table([]))
    assert not empty.data and NO_ADVICE in empty.layout.annotations[0].text
    # no ok run at all: the view is left off the page
    assert "advice" not in build_figures([r for r in runs if r.status != "ok"])


def test_noisy_runs_are_hatched_and_the_page_holds_the_view(advised_run, tmp_path):
    noisy = advised_run(noise=["load"])
    fig = build_figures([noisy])["advice"]
    bars = _bars(fig)[0]
    assert set(bars.marker.pattern.shape) == {"/"} and "noisy" in fig.layout.title.text
    assert "noisy: load" in bars.customdata[0][-1]
    assert not fig.layout.updatemenus  # one run: no dropdown
    page = write_dashboard([noisy], tmp_path / "d.html").read_text()
    assert 'id="fig-advice"' in page and "<h2>Advice</h2>" in page
