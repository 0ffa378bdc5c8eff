"""Wan 2.1 text-to-video, 1.3B and 14B: a DiT whose self-attention runs over every video token at once (joint
spatio-temporal; 32 760 tokens at 81 frames, 480x832) plus cross attention to 512 umT5 tokens."""

from __future__ import annotations

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.pipeline import PipelineWorkload


class _Wan(PipelineWorkload):
    task = "text-to-video"
    modality = "video"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "cross", "text")
    site_rules = (SiteRule(r"^transformer\.blocks\.\d+\.attn1$", "joint"),)
    spatial_factor = 16  # VAE 8 × patch 2
    temporal_factor = 4
    pipeline_class = "WanPipeline"
    components = {"transformer": "diffusers:WanTransformer3DModel", "vae": "diffusers:AutoencoderKLWan",
                  "text_encoder": "transformers:UMT5EncoderModel"}
    tokenizers = {"tokenizer": "t5"}

    def denoiser_calls_per_step(self, params: Params) -> int:
        return 2 if params.guidance > 1 else 1  # WanPipeline runs the conditional and unconditional passes apart


@register_workload
class Wan13B(_Wan):
    name = "wan2.1-1.3b"
    description = "Wan 2.1 T2V 1.3B: 30-layer DiT, joint self-attention over all video tokens (d = 128), umT5 cross"
    config_folder = "configs/1.3b"


@register_workload
class Wan14B(_Wan):
    name = "wan2.1-14b"
    description = "Wan 2.1 T2V 14B: 40-layer DiT, 40 heads x 128, joint self-attention over all video tokens"
    config_folder = "configs/14b"
