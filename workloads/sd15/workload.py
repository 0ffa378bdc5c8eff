"""Stable Diffusion 1.5: CLIP ViT-L/14 text encoder, UNet2DConditionModel (860M), AutoencoderKL, DDIM."""

from __future__ import annotations

from typing import Any

from mmchar.workloads import register_workload
from mmchar.workloads.latent_diffusion import LatentDiffusionWorkload


@register_workload
class SD15(LatentDiffusionWorkload):
    name = "sd15"
    description = "Stable Diffusion 1.5: latent UNet text-to-image (the study's SD family)"
    task = "text-to-image"
    modality = "image"
    attention_sites = ("spatial", "cross", "text")
    unet_class = "UNet2DConditionModel"
    pipeline_class = "StableDiffusionPipeline"

    def extra_components(self, config: dict[str, Any]) -> dict[str, Any]:
        return dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
