"""Analyses: pure functions from loaded runs to tidy DataFrames (no torch, no printing, no plotting)."""

from .tables import (attention_site_table, breakdown_table, comparison_table, run_table, stage_table,
                     top_kernels_table)

__all__ = ["attention_site_table", "breakdown_table", "comparison_table", "run_table", "stage_table",
           "top_kernels_table"]
