"""Stable Diffusion 3 Medium: an MMDiT whose every block attends over image and text tokens together (joint
attention), three text encoders (CLIP-L, CLIP-G, T5-XXL), rectified-flow sampling."""

from __future__ import annotations

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class SD3Medium(PipelineWorkload):
    name = "sd3-medium"
    description = "Stable Diffusion 3 Medium: MMDiT (2B), joint image+text attention, CLIP-L + CLIP-G + T5-XXL"
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    site_rules = (SiteRule(r"^transformer\.transformer_blocks\.\d+\.attn2?$", "joint"),)
    spatial_factor = 16  # VAE 8 × patch 2
    pipeline_class = "StableDiffusion3Pipeline"
    components = {"transformer": "diffusers:SD3Transformer2DModel", "vae": "diffusers:AutoencoderKL",
                  "text_encoder": "transformers:CLIPTextModelWithProjection",
                  "text_encoder_2": "transformers:CLIPTextModelWithProjection",
                  "text_encoder_3": "transformers:T5EncoderModel"}
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5"}
