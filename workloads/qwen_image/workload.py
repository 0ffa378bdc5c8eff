"""Qwen-Image (20B) as diffusers builds it (QwenImagePipeline): an MMDiT of 60 dual-stream blocks, each running
one joint attention over the image tokens and the text tokens (24 heads x 128; 6 889 + ~10 tokens at the 1328 x 1328
default), a Wan-style causal VAE used on single frames (8x spatial, 16 latent channels, 2x2 packing), and the
Qwen2.5-VL-7B decoder as text encoder (its last hidden state; the prompt template's 34 leading tokens dropped).
Guidance is true classifier-free guidance: with a scale above 1 the pipeline runs the transformer twice per step,
once on the prompt and once on the negative prompt (" ", as Qwen-Image's README recommends), not batched.
configs/full.json holds every number's source.

The Qwen2 tokenizer needs files; ours is built offline (`qwen2_tokenizer`): Qwen2's own pre-tokenizer split and the
chat special tokens over a word-level vocabulary, one token per piece, so the template's prefix is the 34 tokens the
pipeline drops and a prompt's length is about the real byte-level BPE's (common English words are one token in
both); only the ids differ. Text-to-image runs no image through the text encoder, so no image processor is needed."""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.build import word_level_tokenizer
from mmchar.workloads.pipeline import TOKENIZERS, PipelineWorkload

# the special tokens of Qwen2.5's chat template (ids 1-3 here; every other piece is <unk>, id 0)
_QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# the negative prompt Qwen-Image's README passes when there is nothing to remove
NEGATIVE_PROMPT = " "


def qwen2_tokenizer(name: str, models: dict[str, Any]) -> Any:
    """A Qwen2-style fast tokenizer with no files: transformers' Qwen2 pre-tokenizer split, one token per piece
    over a word-level vocabulary (``<unk>`` and the chat special tokens, ids < 4, so tiny text encoders need a
    vocabulary of at least 4), right padding, no BOS (as Qwen2's)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab = {"<unk>": 0, **{s: i + 1 for i, s in enumerate(_QWEN2_SPECIALS)}}
    tok = word_level_tokenizer(vocab, PRETOKENIZE_REGEX)
    encoder = models.get("text_encoder" + name.removeprefix("tokenizer"), {})
    length = encoder.get("text_config", encoder).get("max_position_embeddings", 32768)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>", padding_side="right", model_max_length=length)


TOKENIZERS["qwen2"] = qwen2_tokenizer


@register_workload
class QwenImage(PipelineWorkload):
    name = "qwen-image"
    aliases = ("qwenimage",)
    description = ("Qwen-Image 20B: 60 dual-stream MMDiT blocks, joint attention (24 x 128), Qwen2.5-VL-7B text "
                   "encoder, true CFG (two passes per step)")
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    # every block attends over the image and text tokens together (one call per block)
    site_rules = (SiteRule(r"^transformer\.transformer_blocks\.\d+\.attn$", "joint"),)
    spatial_factor = 16  # VAE 8 x 2x2 packing
    pipeline_class = "QwenImagePipeline"
    components = {"transformer": "diffusers:QwenImageTransformer2DModel", "vae": "diffusers:AutoencoderKLQwenImage",
                  "text_encoder": "transformers:Qwen2_5_VLForConditionalGeneration"}
    tokenizers = {"tokenizer": "qwen2"}

    def call_kwargs(self, p: Params, steps: int) -> dict[str, Any]:
        # Qwen-Image is not guidance-distilled: the scale is true_cfg_scale, which takes effect only with a negative
        # prompt (" " per the README); guidance_scale is for guidance-embedding models and stays unset
        kw: dict[str, Any] = dict(prompt=[p.prompt] * p.batch, height=p.height, width=p.width,
                                  num_inference_steps=steps, true_cfg_scale=p.guidance, output_type="pt")
        if p.guidance > 1:
            kw["negative_prompt"] = [NEGATIVE_PROMPT] * p.batch
        return kw

    def denoiser_calls_per_step(self, params: Params) -> int:
        return 2 if params.guidance > 1 else 1  # the prompt's and the negative prompt's passes run apart
