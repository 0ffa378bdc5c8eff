"""PixArt-Σ XL-2 1024: a 0.6B DiT with cross attention to 300 T5-XXL tokens (the study's transformer-denoiser
text-to-image family)."""

from __future__ import annotations

from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class PixArtSigma(PipelineWorkload):
    name = "pixart-sigma"
    description = "PixArt-Σ XL-2 1024: DiT (0.6B, d = 72) with cross attention to 300 T5-XXL tokens"
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("spatial", "cross", "text")
    spatial_factor = 16  # VAE 8 × patch 2
    pipeline_class = "PixArtSigmaPipeline"
    components = {"transformer": "diffusers:PixArtTransformer2DModel", "vae": "diffusers:AutoencoderKL",
                  "text_encoder": "transformers:T5EncoderModel"}
    tokenizers = {"tokenizer": "t5"}
