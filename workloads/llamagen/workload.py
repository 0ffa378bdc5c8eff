"""LlamaGen text-to-image (Parti-like): autoregressive VQ image tokens from a Llama decoder with a KV cache and
classifier-free guidance; `prefill` (the caption prefix) and `decode` (one token per call) reported apart."""

from __future__ import annotations

from typing import Any

import torch

from mmchar.errors import InvalidParameterError, WeightsError
from mmchar.scopes import SiteRule
from mmchar.target import StageRoot, Target
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params, Workload
from mmchar.workloads.build import build_module


@register_workload
class LlamaGen(Workload):
    name = "llamagen"
    description = "LlamaGen-XL T2I (775M): Llama decoder over 120 T5 caption tokens + VQ-16 image tokens, CFG, KV cache"
    task = "text-to-image"
    modality = "image"
    paradigm = "transformer"
    architecture = "autoregressive"
    stages = ("text_encoder", "generator", "decoder")
    attention_sites = ("causal", "text")
    site_rules = (SiteRule(r"^transformer\.model\.layers\.\d+\.self_attn$", "causal"),)
    spatial_factor = 16  # the VQ tokenizer's downsampling
    components = {"text_encoder": "transformers:T5EncoderModel", "transformer": "transformers:LlamaForCausalLM",
                  "vqvae": "diffusers:VQModel"}

    def check(self, p: Params) -> None:
        super().check(p)
        tokens = (p.height // self.spatial_factor) * (p.width // self.spatial_factor)
        if p.steps > tokens:
            raise InvalidParameterError(f"steps={p.steps}: {self.name} generates one image token per step, "
                                        f"{tokens} at {p.height}x{p.width}; use --steps {tokens} or fewer")

    def build(self, config: dict[str, Any]) -> Target:
        from transformers import T5Tokenizer

        from mmchar.workloads.llamagen.pipeline import CaptionProjection, LlamaGenPipeline

        if config.get("weights"):
            raise WeightsError("llamagen builds from its configuration only: its checkpoints are not a diffusers "
                               "pipeline folder (--weights applies to diffusers workloads)")
        device, dtype, params = self.runtime(config)
        models, seed, gen = config["models"], params.seed, config["generation"]
        parts = self.build_components(config, device, dtype)
        proj = build_module(CaptionProjection, {"in_dim": models["text_encoder"]["d_model"],
                                                "dim": models["transformer"]["hidden_size"]}, device, dtype, seed)
        pipe = LlamaGenPipeline(T5Tokenizer(), parts["text_encoder"], proj, parts["transformer"], parts["vqvae"],
                                max_text_tokens=gen["max_text_tokens"], downsample=self.spatial_factor,
                                top_k=gen["top_k"])

        def run(steps: int) -> Any:
            g = torch.Generator(device=device).manual_seed(params.seed)
            return pipe([params.prompt] * params.batch, params.height, params.width, num_tokens=steps,
                        guidance_scale=params.guidance, generator=g)

        roots = [StageRoot("text_encoder", "text_encoder"),
                 StageRoot("generator", "transformer", phases=("prefill", "decode")),
                 StageRoot("decoder", "vqvae", "decode")]
        return Target(name=self.name, pipe=pipe, run=run, steps=params.steps, config=config, device=device,
                      dtype=dtype, stage_roots=roots, site_rules=list(self.site_rules))
