"""ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b): UNet3DConditionModel with temporal layers."""

from __future__ import annotations

from mmchar.workloads import register_workload
from mmchar.workloads.latent_diffusion import LatentDiffusionWorkload


@register_workload
class ModelScopeT2V(LatentDiffusionWorkload):
    name = "modelscope-t2v"
    description = "ModelScope T2V 1.7B: UNet3D with spatial, temporal and cross attention (Make-A-Video-like)"
    task = "text-to-video"
    modality = "video"
    attention_sites = ("spatial", "temporal", "cross", "text")
    unet_class = "UNet3DConditionModel"
    pipeline_class = "TextToVideoSDPipeline"
