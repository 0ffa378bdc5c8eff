"""Every view of the dashboard, in page order (the PNG export writes the same ones). Adding a view is one module
declaring its ``VIEW`` and one entry here (docs/adding-an-analysis-or-view.md)."""

from __future__ import annotations

from . import (advice, attention_sites, busy_idle, comparison, decoder, experts, mechanisms, modules, multi_gpu,
               op_classes, projections, roofline, scaling, sequence, stage_times, step_structure, timeline,
               top_kernels)
from .view import View

VIEWS: tuple[View, ...] = (
    op_classes.VIEW, stage_times.VIEW, attention_sites.VIEW, top_kernels.VIEW, busy_idle.VIEW, comparison.VIEW,
    mechanisms.VIEW, projections.VIEW, modules.VIEW, step_structure.VIEW, decoder.VIEW, experts.VIEW, sequence.VIEW,
    scaling.VIEW, timeline.VIEW, multi_gpu.VIEW, roofline.VIEW, advice.VIEW,
)
