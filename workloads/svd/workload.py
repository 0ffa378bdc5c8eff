"""Stable Video Diffusion img2vid-XT: image-to-video with a CLIP image encoder, a spatio-temporal UNet (spatial,
temporal and image-cross attention) and a VAE whose decoder has temporal layers."""

from __future__ import annotations

from typing import Any

import torch

from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class SVD(PipelineWorkload):
    name = "svd"
    description = "Stable Video Diffusion img2vid-XT: UNet spatio-temporal (1.5B), CLIP ViT-H image conditioning"
    task = "image-to-video"
    modality = "video"
    paradigm = "diffusion"
    architecture = "unet"
    stages = ("image_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("spatial", "temporal", "cross")
    pipeline_class = "StableVideoDiffusionPipeline"
    components = {"unet": "diffusers:UNetSpatioTemporalConditionModel", "vae": "diffusers:AutoencoderKLTemporalDecoder",
                  "image_encoder": "transformers:CLIPVisionModelWithProjection"}

    def extra_components(self, config: dict[str, Any]) -> dict[str, Any]:
        from transformers import CLIPImageProcessor

        return {"feature_extractor": CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})}

    def call_kwargs(self, p: Params, steps: int) -> dict[str, Any]:
        # the conditioning image, as users pass it (a PIL image; the pipeline resizes it to 224 px for CLIP):
        # seeded noise at the output size, one per video (SVD takes no prompt)
        from PIL import Image

        g = torch.Generator().manual_seed(p.seed)
        images = [Image.fromarray((torch.rand(p.height, p.width, 3, generator=g) * 255).byte().numpy())
                  for _ in range(p.batch)]
        return dict(image=images if p.batch > 1 else images[0], height=p.height, width=p.width, num_frames=p.frames,
                    num_inference_steps=steps, max_guidance_scale=p.guidance, output_type="pt")
