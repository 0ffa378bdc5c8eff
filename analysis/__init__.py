"""Analyses: pure functions from loaded runs to tidy DataFrames (no torch, no printing, no plotting)."""

from .diff import diff_table, regressions
from .findings import findings, findings_markdown
from .study import (communication_table, launch_table, module_tree, phase_table, roofline_table, scaling_points, scaling_table,
                    sequence_parallel_table, sequence_table, step_timeline)
from .tables import (attention_site_table, breakdown_table, comparison_table, run_table, stage_table,
                     top_kernels_table)

__all__ = ["attention_site_table", "breakdown_table", "communication_table", "comparison_table", "diff_table", "findings", "findings_markdown",
           "launch_table", "module_tree", "phase_table", "regressions", "roofline_table", "run_table", "scaling_points",
           "scaling_table", "sequence_parallel_table", "sequence_table", "stage_table", "step_timeline", "top_kernels_table"]
