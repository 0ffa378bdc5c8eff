"""Dashboards: Plotly views over ``mmchar.analysis`` tables, written as one offline HTML page."""

from .png import write_pngs
from .report import build_figures, render_dashboard, write_dashboard

__all__ = ["build_figures", "render_dashboard", "write_dashboard", "write_pngs"]
