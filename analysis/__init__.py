"""Analyses: pure functions from loaded runs to tidy DataFrames (no torch, no printing, no plotting)."""

from .diff import check_gate, diff_table, regressions, unpaired_runs, work_mismatch
from .findings import findings, findings_markdown
from .study import (communication_table, launch_table, module_tree, phase_table, roofline_table, scaling_points, scaling_table,
                    sequence_parallel_table, sequence_table, step_timeline)
from .tables import (attention_site_table, breakdown_table, comparison_table, is_noisy, run_labels, run_table,
                     stage_table, top_kernels_table, work_fields, work_key)

__all__ = ["attention_site_table", "breakdown_table", "check_gate", "communication_table", "comparison_table", "diff_table",
           "findings", "findings_markdown", "is_noisy", "launch_table", "module_tree", "phase_table", "regressions",
           "roofline_table", "run_labels", "run_table", "scaling_points", "scaling_table", "sequence_parallel_table",
           "sequence_table", "stage_table", "step_timeline", "top_kernels_table", "unpaired_runs", "work_fields",
           "work_key", "work_mismatch"]

# Every table of `mmchar study`, in the order it writes them (name = the CSV's file stem). The dashboard reads the
# same functions; adding an analysis = a module with its table function + one entry here.
TABLES = {"runs": run_table, "breakdown": breakdown_table, "stages": stage_table, "comparison": comparison_table,
          "attention_sites": attention_site_table, "sequence": sequence_table, "roofline": roofline_table,
          "launch": launch_table, "phases": phase_table, "scaling": scaling_table, "modules": module_tree,
          "communication": communication_table, "sequence_parallel": sequence_parallel_table}
__all__ += ["TABLES"]
