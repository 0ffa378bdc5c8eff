"""DeepFloyd IF stage I (IF-I-XL, 4.3B): a pixel-space UNet that denoises a 64×64 RGB image directly, no
autoencoder, conditioned on 77 T5-XXL tokens: the study's Imagen-like cascaded text-to-image model.

Its attention is not cross attention in the SD sense: each SimpleCrossAttn block projects the text tokens into
extra keys and values (diffusers' "added KV") and attends from the image tokens to text and image tokens at
once, one call whose keys are 77 + H·W long. docs/conventions.md counts that as ``joint``; the site rule below
says so, so the length test does not call it ``cross``. Stage II and III (the super-resolution UNets) are not part
of this workload.
"""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


@register_workload
class IFStageI(PipelineWorkload):
    name = "if-stage1"
    description = "DeepFloyd IF-I-XL: 4.3B pixel-space UNet at 64 px, added-KV joint attention, T5-XXL text encoder"
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "unet"
    stages = ("text_encoder", "denoiser", "scheduler")  # pixels out of the UNet: no decoder
    attention_sites = ("joint", "text")
    site_rules = (SiteRule(r"^unet\.(down_blocks|up_blocks)\.\d+\.attentions\.\d+$", "joint"),
                  SiteRule(r"^unet\.mid_block\.attentions\.\d+$", "joint"))
    spatial_factor = 8  # three 2× downsamplings of the pixel UNet
    pipeline_class = "IFPipeline"
    components = {"unet": "diffusers:UNet2DConditionModel", "text_encoder": "transformers:T5EncoderModel"}
    tokenizers = {"tokenizer": "t5"}

    def extra_components(self, config: dict[str, Any]) -> dict[str, Any]:
        return dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
