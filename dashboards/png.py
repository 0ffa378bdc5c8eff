"""One PNG per dashboard view, for papers and slides: each view's figure rendered by kaleido, which drives a
Chromium the machine already has (Debian's `chromium`: kaleido's own download would need the network)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import plotly.io as pio

from mmchar.errors import MmcharError
from mmchar.store import Run

from .registry import VIEWS
from .report import build_figures

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The Chromium kaleido will drive: $BROWSER_PATH, else the first of ``BROWSERS`` on PATH."""
    path = os.environ.get("BROWSER_PATH")
    if path and Path(path).exists():
        return path
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def write_pngs(runs: Sequence[Run], out_dir: str | os.PathLike[str], *, width: int = 1200,
               height: int = 560) -> list[Path]:
    """Write ``<view>.png`` for every view that has data (same figures as the HTML page).

    Raises:
        MmcharError: kaleido or a Chromium is missing (one line naming what to install).
    """
    try:
        import kaleido  # noqa: F401
    except ImportError as e:
        raise MmcharError("PNG export needs kaleido: pip install 'mmchar[png]'") from e
    browser = find_browser()
    if browser is None:
        raise MmcharError("PNG export needs a Chromium: install Debian's `chromium` (apt-get install chromium) or "
                          "set BROWSER_PATH to a Chrome/Chromium binary")
    os.environ["BROWSER_PATH"] = browser  # kaleido (choreographer) looks there before trying to download one
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = build_figures(runs)
    keys = [view.key for view in VIEWS if view.key in figures]
    written = [out / f"{key}.png" for key in keys]
    if keys:  # one kaleido session (one Chromium) for every view, not one per figure
        pio.write_images([figures[key] for key in keys], [str(p) for p in written], format="png", width=width,
                         height=height)
    return written
