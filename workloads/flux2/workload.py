"""FLUX.2 [dev] as diffusers builds it (Flux2Pipeline): a 32B rectified-flow transformer of 8 double-stream blocks
(image and text streams, one joint attention) then 48 single-stream blocks over the concatenated tokens (48 heads x
128; 4 096 image + 512 text tokens at 1024 x 1024), modulation shared across blocks, a 32-channel VAE whose latents
are 2x2-patchified (16x in all) and batch-normalised, and Mistral-Small-3.1-24B (Mistral3ForConditionalGeneration,
Pixtral vision tower included) as text encoder: hidden states 10, 20 and 30 of its 40 layers, stacked into a
15 360-wide text stream. Guidance-distilled: the scale is embedded, one transformer pass per step.
configs/full.json holds every number's source.

The pipeline's tokenizer is Mistral-Small's processor (PixtralProcessor: the Mistral tokenizer, a Pixtral image
processor and the chat template), which needs files; a text-to-image call uses only its chat template and tokenizer
(`apply_chat_template` on the text messages), and transformers 5.25's PixtralProcessor requires torchvision even
for that, so ours (`mistral_tokenizer`) is the tokenizer alone, built offline with the chat template: a word-level
vocabulary over a tekken-like pre-tokenizer split with Mistral's control tokens, and a template of our own in
Mistral's system-prompt / instruction format. The prompt pads to max_sequence_length (512), so the text stream has
the real length whatever the vocabulary; only the ids differ."""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.workloads import register_workload
from mmchar.workloads.build import word_level_tokenizer
from mmchar.workloads.pipeline import TOKENIZERS, PipelineWorkload

# Mistral's control tokens the chat format and Pixtral's image input use, at ids of our own below 20 ([IMG] at 10,
# the image_token_index of Mistral-Small-3.1's config); every other piece is <unk> (id 0)
_MISTRAL_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[IMG]": 10, "[IMG_BREAK]": 12,
                     "[IMG_END]": 13, "<pad>": 11, "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18}
# a GPT-4-style split (tekken's pre-tokenizer is of this kind): words with their leading space, single digits,
# punctuation runs, newlines, other whitespace
_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# system message then the user's prompt, as Mistral's instruction format writes them (content may be a string or
# a list of {"type": "text", ...} parts, as Flux2Pipeline's format_input sends them)
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}")


def mistral_tokenizer(name: str, models: dict[str, Any]) -> Any:
    """A Mistral-style fast tokenizer with no files and the chat template: one token per pre-tokenizer piece over
    a word-level vocabulary (ids < 20, so tiny text encoders need a vocabulary of at least 20), BOS from the
    template, padding right (the pipeline pads to max_length)."""
    from transformers import PreTrainedTokenizerFast

    encoder = models.get("text_encoder" + name.removeprefix("tokenizer"), {})
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level_tokenizer(_MISTRAL_SPECIALS, _SPLIT), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="right", chat_template=_CHAT_TEMPLATE,
        model_max_length=encoder.get("text_config", {}).get("max_position_embeddings", 131072))


TOKENIZERS["mistral"] = mistral_tokenizer


@register_workload
class Flux2Dev(PipelineWorkload):
    name = "flux2-dev"
    aliases = ("flux.2-dev",)
    description = ("FLUX.2 [dev]: 32B MM-DiT, 8 double- and 48 single-stream blocks, joint attention (48 x 128), "
                   "Mistral-Small-3.1 24B text encoder, 512 tokens")
    task = "text-to-image"
    modality = "image"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "text")
    site_rules = (SiteRule(r"^transformer\.(single_)?transformer_blocks\.\d+\.attn$", "joint"),)
    spatial_factor = 16  # VAE 8 x 2x2 patchification
    pipeline_class = "Flux2Pipeline"
    components = {"transformer": "diffusers:Flux2Transformer2DModel", "vae": "diffusers:AutoencoderKLFlux2",
                  "text_encoder": "transformers:Mistral3ForConditionalGeneration"}
    tokenizers = {"tokenizer": "mistral"}
