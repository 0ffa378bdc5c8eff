"""SDXL base 1.0 as the MLPerf Inference text-to-image benchmark runs it (mlcommons/inference text_to_image/): the
`sdxl` workload's architecture, unchanged, at the benchmark's settings (1024x1024, 20 Euler steps, guidance 8.0, its
fixed negative prompt), so the study's numbers line up with a published industry benchmark."""

from __future__ import annotations

from mmchar.workloads import register_workload
from mmchar.workloads.sdxl.workload import SDXL


@register_workload
class MLPerfSDXL(SDXL):
    name = "mlperf-sdxl"
    description = "SDXL base 1.0 at MLPerf Inference text-to-image settings: 1024 px, 20 Euler steps, guidance 8"
