"""The two registries: `mmchar study` writes one CSV per ``analysis.TABLES`` entry, and every dashboard view
declares the table it draws, by a name the study knows or by the function of a table the study does not write."""

from __future__ import annotations

import re

from mmchar.analysis import TABLES
from mmchar.cli import main
from mmchar.dashboards.registry import VIEWS
from mmchar.dashboards.view import View


def test_every_view_draws_a_table_the_study_knows_or_computes_its_own():
    for view in VIEWS:
        assert isinstance(view, View)
        if isinstance(view.table, str):
            assert view.table in TABLES, f"{view.key}: no analysis table {view.table!r}"
        else:
            assert callable(view.table) and view.table not in TABLES.values(), view.key  # a study table goes by name
        assert view.title and view.note and callable(view.figure), view.key


def test_view_keys_are_unique_section_ids():
    keys = [view.key for view in VIEWS]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z_]+", k) for k in keys)  # an HTML id and a PNG's file stem


def test_study_writes_one_csv_per_table_and_the_page_in_view_order(every_view_runs, tmp_path):
    store = tmp_path / "every-view"  # where the fixture wrote its runs
    out = tmp_path / "study"
    assert main(["study", str(store), "-o", str(out)]) == 0
    assert sorted(p.stem for p in out.glob("*.csv")) == sorted(TABLES)
    page = (out / "dashboard.html").read_text()
    sections = re.findall(r'<section id="(\w+)"><h2>([^<]*)</h2>', page)
    assert sections[0] == ("overview", "Overview")
    assert sections[1:] == [(v.key, v.title) for v in VIEWS]  # the fixture gives every view data
