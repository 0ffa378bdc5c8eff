"""Every table of `mmchar study`, in the order it writes them: the one list the study command, the dashboard's
views and the committed-outputs test read. Adding an analysis is one topic module with its table function and
one entry here (docs/adding-an-analysis-or-view.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from mmchar.store import Run

from .advise import advice_table
from .communication import communication_table, sequence_parallel_table
from .decoder import decoder_table
from .experts import experts_table
from .launch import launch_table
from .mechanisms import mechanisms_table
from .modules import module_tree
from .phases import phase_table
from .projections import projections_table
from .roofline import roofline_table
from .scaling import scaling_table
from .sequence import sequence_table
from .step_structure import step_structure_table
from .tables import attention_site_table, breakdown_table, comparison_table, run_table, stage_table

Table = Callable[[Sequence[Run]], pd.DataFrame]

# name (the CSV's file stem) -> the function of the loaded runs that computes it
TABLES: dict[str, Table] = {
    "runs": run_table,                              # one row per run: identity, parameters, status, noise verdict
    "breakdown": breakdown_table,                   # every run's breakdown.csv stacked: stage × op class × site
    "stages": stage_table,                          # latency (timed pass) and busy / idle (light profile) per stage
    "comparison": comparison_table,                 # backends against their group's baseline: speedups, agreement
    "mechanisms": mechanisms_table,                 # each backend's step, attention share, kind, speedup over cuDNN
    "projections": projections_table,               # each projection backend's step, gemm / memory share, vs dense
    "attention_sites": attention_site_table,        # attention time per site and its share of the stage's attention
    "sequence": sequence_table,                     # every attention call's shape and its unfused score bytes
    "roofline": roofline_table,                     # op classes' achieved rates under the run's calibrated roofs
    "launch": launch_table,                         # busy fraction and kernel lengths: launch-bound stages
    "phases": phase_table,                          # gemm and attention per phase: prefill, decode, diffusion step
    "scaling": scaling_table,                       # fitted exponent of latency against each swept parameter
    "modules": module_tree,                         # one step's kernel time up the module hierarchy
    "decoder": decoder_table,                       # the decoder's share of e2e and its time by sub-class
    "step_structure": step_structure_table,         # who ran each step (experts) and how guidance reached it
    "experts": experts_table,                       # routed MoE layers: routing vs each expert vs the shared one
    "communication": communication_table,           # collectives' time, payload and overlap with compute
    "sequence_parallel": sequence_parallel_table,   # step latency over 1, 2, 4 ... GPUs: speedup, efficiency
    "advice": advice_table,                         # optimisation opportunities, ranked by projected step saving
}
