"""FLUX.1 [dev]: a 12B rectified-flow transformer, 19 double-stream blocks (image and text streams, joint
attention) then 38 single-stream blocks over the concatenated tokens; guidance-distilled (one pass per step)."""

from __future__ import annotations

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class FluxDev(PipelineWorkload):
    name = "flux-dev"
    description = "FLUX.1-dev: 12B MM-DiT, 19 double- and 38 single-stream blocks, joint attention (d = 128), T5 512"
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    site_rules = (SiteRule(r"^transformer\.(single_)?transformer_blocks\.\d+\.attn$", "joint"),)
    spatial_factor = 16  # VAE 8 × 2x2 packing
    pipeline_class = "FluxPipeline"
    components = {"transformer": "diffusers:FluxTransformer2DModel", "vae": "diffusers:AutoencoderKL",
                  "text_encoder": "transformers:CLIPTextModel", "text_encoder_2": "transformers:T5EncoderModel"}
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "t5"}
