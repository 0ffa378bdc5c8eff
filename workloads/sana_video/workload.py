"""SANA-Video 2B at 480p: SANA's linear DiT carried to video. Its self-attention is linear (ReLU features, 20 heads
× 112, RoPE on the numerator) over every token of the clip at once (32 760 at 81 frames, 480x832: Wan 2.1's VAE,
8× spatial / 4× temporal, and a 1×2×2 patch), softmax cross attention to 300 Gemma-2 tokens, and a GLU feed-forward
with a temporal convolution: the study's linear-attention text-to-video model, beside Wan 2.1's softmax one at
the same token count."""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class SanaVideo(PipelineWorkload):
    name = "sana-video"
    aliases = ("sana-video-2b",)
    description = ("SANA-Video 2B 480p: linear-attention video DiT (20 heads x 112) over all video tokens, "
                   "Wan 2.1 VAE, Gemma-2 2B text encoder")
    task = "text-to-video"
    modality = "video"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "cross", "text")
    # the linear self-attention runs over frames × height × width at once: joint, as Wan's softmax attn1 (by its
    # shapes alone it would read as spatial)
    site_rules = (SiteRule(r"^transformer\.transformer_blocks\.\d+\.attn1$", "joint"),)
    spatial_factor = 32  # VAE 8 × patch 2 is 16, but SanaVideoPipeline.check_inputs takes multiples of 32 only
    temporal_factor = 4
    pipeline_class = "SanaVideoPipeline"
    components = {"transformer": "diffusers:SanaVideoTransformer3DModel", "vae": "diffusers:AutoencoderKLWan",
                  "text_encoder": "transformers:Gemma2Model"}
    tokenizers = {"tokenizer": "gemma"}

    def call_kwargs(self, p: Params, steps: int) -> dict[str, Any]:
        kw = super().call_kwargs(p, steps)
        kw["frames"] = kw.pop("num_frames")  # SanaVideoPipeline.__call__ names it `frames`
        return kw
