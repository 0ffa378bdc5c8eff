"""A Phenaki-style masked video-token transformer (text-to-video, transformer paradigm): MaskGIT parallel
decoding of every video token at once; its configuration is our own (configs/full.json says so and why)."""

from __future__ import annotations

from typing import Any

import torch

from mmchar.errors import InvalidParameterError, WeightsError
from mmchar.scopes import SiteRule
from mmchar.target import StageRoot, Target
from mmchar.workloads import register_workload
from mmchar.workloads.base import Workload


@register_workload
class MaskedVideo(Workload):
    name = "phenaki-like"
    description = "Phenaki-style masked video-token transformer (1.9B, our configuration): joint attention over all video tokens, MaskGIT decoding"
    task = "text-to-video"
    modality = "video"
    paradigm = "transformer"
    architecture = "masked-token"
    stages = ("text_encoder", "generator", "decoder")
    attention_sites = ("joint", "cross", "text")
    site_rules = (SiteRule(r"^transformer\.blocks\.\d+\.attn1$", "joint"),)
    spatial_factor = 8
    components = {"text_encoder": "transformers:T5EncoderModel",
                  "transformer": "mmchar.workloads.phenaki.pipeline:MaskedVideoTransformer", "vqvae": "diffusers:VQModel"}

    def resolve(self, preset: str = "tiny", **kw: Any) -> dict[str, Any]:
        config = super().resolve(preset, **kw)
        p, limit = config["params"], config["models"]["transformer"]["max_tokens"]
        tokens = p["frames"] * (p["height"] // self.spatial_factor) * (p["width"] // self.spatial_factor)
        if tokens > limit:
            raise InvalidParameterError(f"{p['frames']} frames at {p['height']}x{p['width']} are {tokens} video tokens; "
                                        f"the transformer's position table holds {limit}: use fewer frames or pixels")
        return config

    def build(self, config: dict[str, Any]) -> Target:
        from transformers import T5Tokenizer

        from mmchar.workloads.phenaki.pipeline import MaskedVideoPipeline

        if config.get("weights"):
            raise WeightsError(f"{self.name} builds from its configuration only (--weights applies to diffusers workloads)")
        device, dtype, params = self.runtime(config)
        parts = self.build_components(config, device, dtype)
        pipe = MaskedVideoPipeline(T5Tokenizer(), parts["text_encoder"], parts["transformer"], parts["vqvae"],
                                   max_text_tokens=config["generation"]["max_text_tokens"],
                                   downsample=self.spatial_factor)

        def run(steps: int) -> Any:
            g = torch.Generator(device=device).manual_seed(params.seed)
            return pipe([params.prompt] * params.batch, params.frames, params.height, params.width, steps,
                        guidance_scale=params.guidance, generator=g)

        roots = [StageRoot("text_encoder", "text_encoder"), StageRoot("generator", "transformer", phases=("step",)),
                 StageRoot("decoder", "vqvae", "decode")]
        return Target(name=self.name, pipe=pipe, run=run, steps=params.steps, config=config, device=device,
                      dtype=dtype, stage_roots=roots, site_rules=list(self.site_rules))
