"""Analyses: pure functions from loaded runs to tidy DataFrames (no torch, no printing, no plotting), one module
per topic; ``TABLES`` (``registry.py``) lists those `mmchar study` writes."""

from .advise import advice_table
from .communication import communication_table, sequence_parallel_table
from .decoder import decoder_table
from .diff import check_gate, diff_table, regressions, unpaired_runs, work_mismatch
from .experts import experts_table
from .findings import findings, findings_markdown
from .launch import launch_table
from .mechanisms import crossover_table, load_bench, mechanisms_table
from .modules import module_tree
from .phases import phase_table
from .projections import projections_table
from .registry import TABLES
from .roofline import roofline_table
from .scaling import scaling_fits, scaling_points, scaling_table
from .sequence import sequence_table
from .step_structure import step_structure_table
from .tables import (attention_site_table, breakdown_table, comparison_table, is_noisy, run_labels, run_table,
                     stage_table, top_kernels_table, work_fields, work_key)
from .timeline import step_timeline

__all__ = ["TABLES", "advice_table", "attention_site_table", "breakdown_table", "check_gate", "communication_table",
           "comparison_table", "crossover_table", "decoder_table", "diff_table", "experts_table", "findings",
           "findings_markdown", "is_noisy", "launch_table", "load_bench", "mechanisms_table", "module_tree",
           "phase_table", "projections_table", "regressions", "roofline_table", "run_labels", "run_table",
           "scaling_fits", "scaling_points", "scaling_table", "sequence_parallel_table", "sequence_table",
           "stage_table", "step_structure_table", "step_timeline", "top_kernels_table", "unpaired_runs",
           "work_fields", "work_key", "work_mismatch"]
