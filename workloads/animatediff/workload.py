"""AnimateDiff: Stable Diffusion 1.5 with motion modules (temporal attention) inserted after every spatial block;
the UNet becomes a UNetMotionModel."""

from __future__ import annotations

from mmchar.workloads import register_workload
from mmchar.workloads.latent_diffusion import LatentDiffusionWorkload


@register_workload
class AnimateDiff(LatentDiffusionWorkload):
    name = "animatediff"
    description = "AnimateDiff v1.5-2: SD 1.5 UNet + motion adapter (temporal attention over 16 frames)"
    task = "text-to-video"
    modality = "video"
    attention_sites = ("spatial", "temporal", "cross", "text")
    pipeline_class = "AnimateDiffPipeline"
    components = {"unet": "diffusers:UNet2DConditionModel", "motion_adapter": "diffusers:MotionAdapter",
                  "vae": "diffusers:AutoencoderKL", "text_encoder": "transformers:CLIPTextModel"}
