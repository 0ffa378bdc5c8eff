"""HunyuanVideo T2V 13B as diffusers builds it (HunyuanVideoPipeline): a guidance-distilled MM-DiT whose 20
dual-stream blocks (video and text streams, joint attention) and 40 single-stream blocks attend over every video
token and the 256 LLM text tokens at once (118 800 + 256 tokens at 129 frames, 720x1280, 24 heads x 128), a causal
3D VAE (8x spatial, 4x temporal) whose mid-block attention spans all latent frames under a frame-causal mask, and
two text encoders: a LLaVA-Llama-3-8B decoder (LlamaModel; its third-last hidden state, the prompt template's 95
tokens cropped) refined by a 2-block token refiner inside the transformer, and CLIP ViT-L/14's pooled output. The
guidance is embedded (one transformer pass per step); configs/full.json holds every number's source.

At the full preset's size the VAE decodes 33 x 90 x 160 latents: its mid-block attention over all 475 200 of them
at once (with a dense frame-causal mask) does not fit a GPU, which is why diffusers' own example turns VAE tiling
on; profile the full preset with ``--vae-tiling`` as users run it.

The Llama-3 tokenizer needs files; ours is built offline (`llama3_tokenizer`): Llama-3's pre-tokenizer pattern and
special tokens over a word-level vocabulary, so sequence lengths and padding behave as with the real 128k-token
vocabulary (the prompt template is the 95 tokens the pipeline crops), only the ids differ."""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.build import llama3_tokenizer as build_llama3_tokenizer
from mmchar.workloads.pipeline import TOKENIZERS, PipelineWorkload

def llama3_tokenizer(name: str, models: dict[str, Any]) -> Any:
    """LLaVA-Llama-3's tokenizer with no files (`mmchar.workloads.build.llama3_tokenizer`: EOS and padding
    ``<|end_of_text|>``, right padding; the pipeline crops the template from the left)."""
    return build_llama3_tokenizer(models.get("text_encoder" + name.removeprefix("tokenizer"), {}),
                                  eos="<|end_of_text|>", max_length=8192)


TOKENIZERS["llama3"] = llama3_tokenizer


@register_workload
class HunyuanVideo(PipelineWorkload):
    name = "hunyuanvideo"
    aliases = ("hunyuan-video",)
    description = ("HunyuanVideo T2V 13B: 20 dual- + 40 single-stream blocks, joint attention over video + 256 LLM "
                   "tokens (24 x 128), causal 3D VAE, Llama-3 8B + CLIP-L text encoders")
    task = "text-to-video"
    modality = "video"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    site_rules = (
        # dual-stream blocks (video + text streams) and single-stream blocks: one attention over all tokens
        SiteRule(r"^transformer\.(single_)?transformer_blocks\.\d+\.attn$", "joint"),
        # the token refiner's self-attention over the LLM's text tokens
        SiteRule(r"^transformer\.context_embedder\.", "text"),
        # the VAE's mid-block attention: every latent frame's pixels at once, frame-causal mask
        SiteRule(r"^vae\.(encoder|decoder)\.mid_block\.attentions\.\d+$", "joint"),
    )
    spatial_factor = 16  # VAE 8 x patch 2
    temporal_factor = 4
    pipeline_class = "HunyuanVideoPipeline"
    components = {"transformer": "diffusers:HunyuanVideoTransformer3DModel",
                  "vae": "diffusers:AutoencoderKLHunyuanVideo",
                  "text_encoder": "transformers:LlamaModel", "text_encoder_2": "transformers:CLIPTextModel"}
    tokenizers = {"tokenizer": "llama3", "tokenizer_2": "clip"}
