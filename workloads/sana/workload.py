"""SANA 1.6B at 1024 px: a DiT whose self-attention is linear (ReLU features, 70 heads × 32) over the 1024
tokens of a 32× deep-compression autoencoder (DC-AE), softmax cross attention to 300 Gemma-2 tokens, and a
decoder-only LLM (Gemma-2 2B) as text encoder: the study's efficient-attention text-to-image model."""

from __future__ import annotations

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class Sana(PipelineWorkload):
    name = "sana-1.6b"
    aliases = ("sana",)  # the and SANA's own short name; runs record sana-1.6b
    description = "SANA 1.6B 1024 px: linear-attention DiT (70 heads x 32), DC-AE f32c32, Gemma-2 2B text encoder"
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("spatial", "cross", "text")
    site_rules = (SiteRule(r"^transformer\.transformer_blocks\.\d+\.attn1$", "spatial"),)
    spatial_factor = 32  # DC-AE 32 × patch 1
    pipeline_class = "SanaPipeline"
    components = {"transformer": "diffusers:SanaTransformer2DModel", "vae": "diffusers:AutoencoderDC",
                  "text_encoder": "transformers:Gemma2Model"}
    tokenizers = {"tokenizer": "gemma"}
