"""LlamaGen text-to-image (Parti-like), as LlamaGen is: autoregressive VQ image tokens from LlamaGen's GPT-XL (a
Llama decoder with its caption embedder inside: 777,678,080 parameters) over 120 flan-T5-XL caption tokens, with
classifier-free guidance batched beside each prompt and LlamaGen's static KV cache (``--kv-cache dynamic`` for
transformers' growing one), then LlamaGen's VQ-16 decoder (its 512-channel attention blocks included: 4 attention
calls per decode); `prefill` (the caption prefix) and `decode` (one token per call) reported apart. The models are
`models.py`'s, the generation `pipeline.py`'s; configs/full.json holds every number's source."""

from __future__ import annotations

from typing import Any

import torch

from mmchar.errors import InvalidParameterError, WeightsError
from mmchar.scopes import SiteRule
from mmchar.target import StageRoot, Target
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params, Workload
from mmchar.workloads.llamagen.pipeline import KV_CACHES


@register_workload
class LlamaGen(Workload):
    name = "llamagen"
    description = ("LlamaGen-XL T2I (778M with its caption embedder): GPT over 120 T5 caption tokens + VQ-16 image "
                   "tokens, CFG, static KV cache (--kv-cache), VQ decoder with attention")
    task = "text-to-image"
    modality = "image"
    paradigm = "transformer"
    architecture = "autoregressive"
    stages = ("text_encoder", "generator", "decoder")
    attention_sites = ("causal", "spatial", "text")  # the GPT's, the VQ's (encoder and decoder), T5's
    site_rules = (SiteRule(r"^transformer\.model\.layers\.\d+\.self_attn$", "causal"),)
    spatial_factor = 16  # the VQ tokenizer's downsampling
    components = {"text_encoder": "transformers:T5EncoderModel",
                  "transformer": "mmchar.workloads.llamagen.models:LlamaGenTransformer",
                  "vqvae": "mmchar.workloads.llamagen.models:LlamaGenVQModel"}
    generation_options = {"kv_cache": KV_CACHES}  # static (LlamaGen's own, the presets' default) or dynamic

    def check(self, p: Params) -> None:
        super().check(p)
        tokens = (p.height // self.spatial_factor) * (p.width // self.spatial_factor)
        if p.steps > tokens:
            raise InvalidParameterError(f"steps={p.steps}: {self.name} generates one image token per step, "
                                        f"{tokens} at {p.height}x{p.width}; use --steps {tokens} or fewer")

    def build(self, config: dict[str, Any]) -> Target:
        from transformers import T5Tokenizer

        from mmchar.workloads.llamagen.pipeline import LlamaGenPipeline

        if config.get("weights"):
            raise WeightsError("llamagen builds from its configuration only: its checkpoints are not a diffusers "
                               "pipeline folder (--weights applies to diffusers workloads)")
        device, dtype, params = self.runtime(config)
        gen = config["generation"]
        parts = self.build_components(config, device, dtype)
        pipe = LlamaGenPipeline(T5Tokenizer(), parts["text_encoder"], parts["transformer"], parts["vqvae"],
                                downsample=self.spatial_factor, top_k=gen["top_k"], kv_cache=gen["kv_cache"])

        def run(steps: int) -> Any:
            g = torch.Generator(device=device).manual_seed(params.seed)
            return pipe([params.prompt] * params.batch, params.height, params.width, num_tokens=steps,
                        guidance_scale=params.guidance, generator=g)

        roots = [StageRoot("text_encoder", "text_encoder"),
                 StageRoot("generator", "transformer", phases=("prefill", "decode")),
                 StageRoot("decoder", "vqvae", "decode")]
        return Target(name=self.name, pipe=pipe, run=run, steps=params.steps, config=config, device=device,
                      dtype=dtype, stage_roots=roots, site_rules=list(self.site_rules))
