"""CogVideoX 2B and 5B: an expert-adaLN DiT whose one attention per block runs over all video and text tokens
together (joint attention over 17 550 video + 226 text tokens at 49 frames, 480x720)."""

from __future__ import annotations

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


class _CogVideoX(PipelineWorkload):
    task = "text-to-video"
    modality = "video"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    site_rules = (SiteRule(r"^transformer\.transformer_blocks\.\d+\.attn1$", "joint"),)
    spatial_factor = 16  # VAE 8 × patch 2
    temporal_factor = 4
    pipeline_class = "CogVideoXPipeline"
    components = {"transformer": "diffusers:CogVideoXTransformer3DModel", "vae": "diffusers:AutoencoderKLCogVideoX",
                  "text_encoder": "transformers:T5EncoderModel"}
    tokenizers = {"tokenizer": "t5"}


@register_workload
class CogVideoX2B(_CogVideoX):
    name = "cogvideox-2b"
    description = "CogVideoX-2B: 30-layer DiT, joint attention over video + 226 T5 tokens (d = 64), 3D VAE"
    config_folder = "configs/2b"


@register_workload
class CogVideoX5B(_CogVideoX):
    name = "cogvideox-5b"
    description = "CogVideoX-5B: 42-layer DiT with 3D RoPE, joint attention over video + 226 T5 tokens (d = 64)"
    config_folder = "configs/5b"
