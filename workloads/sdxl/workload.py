"""Stable Diffusion XL 1.0 base: two CLIP text encoders, a 2.6B UNet with micro-conditioning, the SDXL VAE."""

from __future__ import annotations

from typing import Any

from mmchar.workloads import register_workload
from mmchar.workloads.latent_diffusion import LatentDiffusionWorkload


@register_workload
class SDXL(LatentDiffusionWorkload):
    name = "sdxl"
    description = "Stable Diffusion XL base 1.0: UNet (2.6B) with 10-block transformer stacks, CLIP ViT-L + bigG"
    task = "text-to-image"
    modality = "image"
    attention_sites = ("spatial", "cross", "text")
    pipeline_class = "StableDiffusionXLPipeline"
    components = {"unet": "diffusers:UNet2DConditionModel", "vae": "diffusers:AutoencoderKL",
                  "text_encoder": "transformers:CLIPTextModel",
                  "text_encoder_2": "transformers:CLIPTextModelWithProjection"}
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "clip"}

    def extra_components(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"add_watermarker": False}
