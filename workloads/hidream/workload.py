"""HiDream-I1-Full (17B) as diffusers builds it (HiDreamImagePipeline): a sparse DiT of 16 dual-stream blocks (image
and text streams, one joint attention) then 32 single-stream blocks over the concatenated tokens (20 heads x 128;
4 096 image tokens at 1024 x 1024 beside 128 T5 + 128 Llama tokens and, per block, 128 tokens of one Llama layer),
whose image-stream FFNs are routed mixtures of experts (MOEFeedForwardSwiGLU: a MoEGate linear + softmax + top-2 over
4 routed SwiGLU experts, plus a shared expert), FLUX.1's 16-channel VAE (8x, 2x2 patches), and four text encoders:
two long-context CLIPs (CLIP-L, CLIP-G: their pooled projections), the T5-XXL encoder and Llama-3.1-8B-Instruct
(LlamaForCausalLM), whose 32 layer outputs all feed the transformer (one per block, the last one for blocks 32-47).
It is the suite's one model with routed MoE FFNs: beside the experts' GEMMs each such layer spends kernels on routing
(gate linear / softmax / topk, argsort + bincount dispatch, whose counts go to the host, gathers, and a
scatter_reduce combine; `mmchar.routing` classes them). Not guidance-distilled: with a scale above 1 the pipeline
runs true classifier-free guidance as one batch (negative prompt "" then the prompt, batch 2, one transformer call
per step). The pipeline calls the Llama with output_attentions=True; transformers 5's SDPA attention does not return
attention weights (it warns once and computes with SDPA), so the Llama's attention is the same kernel as without the
flag. configs/full.json holds every number's source.

Random weights: the gate routes tokens by what the random weights and inputs give, so timings and the routing work
per layer are valid for the structure, while the token balance across experts (how many tokens each expert GEMM
gets) is an untrained gate's near-uniform split, not the trained model's data-dependent one.

Size: HiDreamImagePipeline rescales any requested size to the area of its default (default_sample_size 128 x the
VAE's 8 = 1024², aspect ratio kept), so --height / --width alone would not change the image size. The workload sets
the pipeline's default_sample_size from the requested size, so the run generates at the size it records; at 1024²
that is the pipeline's own 128, unchanged.

The Llama-3.1 tokenizer needs files; ours (`llama31_tokenizer`) is built offline the way flux2's `mistral_tokenizer`
is: Llama-3's pre-tokenizer split and special tokens over a word-level vocabulary, ``<|begin_of_text|>`` prepended,
``<|eot_id|>`` as EOS and padding (the Instruct tokenizer's EOS, which the pipeline makes its pad token). The prompt
pads to max_sequence_length (128) for T5, Llama and both CLIPs, so every text stream has the real length whatever
the vocabulary; only the ids differ."""

from __future__ import annotations

import math
from typing import Any

from mmchar.scopes import SiteRule
from mmchar.target import Target
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.build import llama3_tokenizer as build_llama3_tokenizer
from mmchar.workloads.pipeline import TOKENIZERS, PipelineWorkload

def llama31_tokenizer(name: str, models: dict[str, Any]) -> Any:
    """Llama-3.1-Instruct's tokenizer with no files (`mmchar.workloads.build.llama3_tokenizer`): EOS and padding
    ``<|eot_id|>`` (the Instruct tokenizer's EOS, which HiDreamImagePipeline makes its pad token), right padding."""
    return build_llama3_tokenizer(models.get("text_encoder" + name.removeprefix("tokenizer"), {}),
                                  eos="<|eot_id|>", max_length=131072)


TOKENIZERS["llama31"] = llama31_tokenizer


def sample_size_for(height: int, width: int, vae_scale_factor: int) -> float:
    """The default_sample_size at which HiDreamImagePipeline's area rescaling keeps ``height`` x ``width``: the
    side of a square of their area, in latent pixels, rounded up to the next float where needed, so that the
    pipeline's scale factor is never below 1 and its rounding down to multiples of 16 gives the size back."""
    area = height * width
    size = math.sqrt(area) / vae_scale_factor
    if size == int(size) and (int(size) * vae_scale_factor) ** 2 == area:
        return int(size)
    while (size * vae_scale_factor) ** 2 < area:
        size = math.nextafter(size, math.inf)
    return size


@register_workload
class HiDreamI1(PipelineWorkload):
    name = "hidream-i1"
    aliases = ("hidream-i1-full", "hidream")
    description = ("HiDream-I1-Full 17B: sparse DiT, 16 dual- + 32 single-stream blocks with routed MoE FFNs "
                   "(4 experts, top-2, shared expert), CLIP-L + CLIP-G + T5-XXL + Llama-3.1-8B, true CFG as a batch")
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    # dual-stream blocks attend over image + text tokens together, single-stream blocks over the concatenation
    site_rules = (SiteRule(r"^transformer\.(double|single)_stream_blocks\.\d+\.block\.attn1$", "joint"),)
    spatial_factor = 16  # VAE 8 x 2x2 patches
    pipeline_class = "HiDreamImagePipeline"
    components = {"transformer": "diffusers:HiDreamImageTransformer2DModel", "vae": "diffusers:AutoencoderKL",
                  "text_encoder": "transformers:CLIPTextModelWithProjection",
                  "text_encoder_2": "transformers:CLIPTextModelWithProjection",
                  "text_encoder_3": "transformers:T5EncoderModel",
                  "text_encoder_4": "transformers:LlamaForCausalLM"}
    tokenizers = {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5", "tokenizer_4": "llama31"}

    def build(self, config: dict[str, Any]) -> Target:
        target = super().build(config)
        p = Params.from_dict(config["params"])
        pipe = target.pipe
        # the pipeline rescales every size to its default area (module docstring): make the requested size that area
        pipe.default_sample_size = sample_size_for(p.height, p.width, pipe.vae_scale_factor)
        return target

    # guidance > 1: the negative and the positive prompt go through the transformer as one batch of 2, once per
    # step (the base class's one call per step); guidance <= 1: batch 1
