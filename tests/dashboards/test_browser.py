"""The dashboard as a user sees it: loaded in headless Chromium (no console error, no network request, every view
drawn with data, a screenshot kept), and `mmchar dashboard --png` writing one PNG per view.

A missing browser skips these tests on a developer's machine; with CI set (`.ci/run` installs Debian's chromium),
it is a failure.
"""

from __future__ import annotations

import os

import pytest

from mmchar.cli import main
from mmchar.dashboards import write_dashboard
from mmchar.dashboards.png import find_browser
from mmchar.dashboards.registry import VIEWS

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {what} for the dashboard browser tests (.ci/run installs it)")
        pytest.skip(f"{what} not installed")


@pytest.fixture
def browser():
    path = find_browser()
    _need("a Chromium (Debian's chromium)", path is not None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright (the test extra)", False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_dashboard_in_headless_chromium(every_view_runs, tmp_path, browser):
    page_path = write_dashboard(every_view_runs, tmp_path / "dash.html")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_path.as_uri())
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length > 0")
    # points per figure as plotly.js drew them (_fullData: arrays decoded; _length: a cartesian trace's point
    # count, ids / labels: a sunburst's sectors)
    drawn = page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot')).map(
        d => [d.id, (d._fullData || []).reduce((n, t) => n + (t.visible === false ? 0
              : (t._length || (t.ids || t.labels || []).length || 0)), 0)]))""")
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors
    assert [u for u in requests if not u.startswith("file:")] == []  # offline: nothing but the file itself
    expected = {f"fig-{view.key}" for view in VIEWS}
    assert set(drawn) == expected
    assert all(n > 0 for n in drawn.values()), str(drawn)  # every view holds data points
    assert shot.stat().st_size > 50_000


def test_png_per_view_from_the_cli(every_view_runs, tmp_path, capsys):
    _need("a Chromium (Debian's chromium)", find_browser() is not None)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        _need("kaleido (the test extra)", False)
    store = every_view_runs[0].path.parent
    out = tmp_path / "png"
    assert main(["dashboard", str(store), "-o", str(tmp_path / "d.html"), "--png", str(out)]) == 0
    assert "PNGs" in capsys.readouterr().out
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert pngs == sorted(view.key for view in VIEWS)
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
