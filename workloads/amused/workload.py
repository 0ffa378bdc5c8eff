"""aMUSEd 512: Muse-style masked image-token transformer (the study's transformer text-to-image family): CLIP text
encoder, a U-ViT that predicts every masked VQ token in parallel over a few steps, VQ-GAN decoder."""

from __future__ import annotations

from typing import Any

from mmchar.target import StageRoot
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.pipeline import PipelineWorkload


class TokenPipelineWorkload(PipelineWorkload):
    """A token model shipped as a diffusers pipeline: its transformer is the `generator` stage (conventions:
    phases ``step`` for masked parallel decoding)."""

    paradigm = "transformer"
    stages = ("text_encoder", "generator", "scheduler", "decoder")
    generator_phases: tuple[str, ...] = ("step",)

    def stage_roots(self, pipe: Any, params: Params) -> list[StageRoot]:
        return [StageRoot("generator", r.component, r.method, r.calls_per_step, self.generator_phases)
                if r.stage == "denoiser" else r for r in super().stage_roots(pipe, params)]


@register_workload
class Amused(TokenPipelineWorkload):
    name = "amused"
    description = "aMUSEd 512 (Muse): masked VQ-token U-ViT, parallel decoding in 12 steps, CLIP-L text, VQ-GAN"
    task = "text-to-image"
    modality = "image"
    architecture = "masked-token"
    attention_sites = ("spatial", "cross", "text")
    spatial_factor = 32  # VQ downsampling × the U-ViT's own 2x downsample
    pipeline_class = "AmusedPipeline"
    components = {"transformer": "diffusers:UVit2DModel", "vqvae": "diffusers:VQModel",
                  "text_encoder": "transformers:CLIPTextModelWithProjection"}
    tokenizers = {"tokenizer": "clip"}
