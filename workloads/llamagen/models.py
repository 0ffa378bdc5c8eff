"""LlamaGen's two models as built components (component specs ``mmchar.workloads.llamagen.models:<Class>``), each
parameter for parameter the published structure (github.com/FoundationVision/LlamaGen; configs/full.json holds the
counts and where they come from).

- `LlamaGenTransformer`: LlamaGen's GPT (autoregressive/models/gpt.py ``Transformer``, model_type ``t2i``) as one
  module: transformers' Llama decoder (token embedding, blocks, final norm, bias-free head) with LlamaGen's caption
  embedder inside it, as LlamaGen has it (``cls_embedding``), so the prefill projects the caption itself.
- `LlamaGenVQModel`: LlamaGen's VQ-16 tokenizer (tokenizer/tokenizer_image/vq_model.py) in diffusers' VQModel
  blocks. diffusers' Encoder / Decoder express LlamaGen's layout when the lowest-resolution level is an
  ``AttnDownEncoderBlock2D`` / ``AttnUpDecoderBlock2D`` (the preset says so): an attention block after each of
  that level's res blocks (2 in the encoder, 3 in the decoder) besides the mid block's. Those are diffusers'
  ``Attention`` modules: GroupNorm, q / k / v / out projections with biases (LlamaGen's 1x1 convolutions, the same
  parameters), one head over all channels, and a real ``F.scaled_dot_product_attention`` call that mmchar times,
  attributes and can swap (LlamaGen writes the same softmax(q·kᵀ/√c)·v with bmm and softmax). What diffusers'
  VQModel lacks is LlamaGen's codebook lookup, which l2-normalises the entries (``codebook_l2_norm``): that is the
  one method this class overrides.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import VQModel
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import LlamaForCausalLM


class CaptionEmbedder(nn.Module):
    """LlamaGen's caption embedder (gpt.py ``CaptionEmbedder``): T5 hidden states to the model width by a bias-free
    Linear, GELU (tanh), bias-free Linear (its ``MLP``). Its learned null caption, which classifier-free guidance
    puts in place of the prompt's, is a buffer there and here (``uncond_embedding``, [tokens, T5 width]), so not a
    parameter; it is drawn from a fixed seed so that every build of one configuration guides alike."""

    def __init__(self, in_dim: int, dim: int, tokens: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim, dim, bias=False)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("uncond_embedding", torch.randn(tokens, in_dim, generator=g) / in_dim ** 0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(caption)))


class LlamaGenTransformer(LlamaForCausalLM):
    """LlamaGen's text-to-image GPT: a Llama decoder whose prefill takes the caption's T5 states
    (``caption_states``, [B, caption_tokens, caption_dim]) through its own caption embedder, and whose decode calls
    take image-token ids (``input_ids``) through its token embedding. The config is a LlamaConfig plus
    ``caption_dim`` (T5's width) and ``caption_tokens`` (LlamaGen's ``cls_token_num``)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.caption_embedder = CaptionEmbedder(config.caption_dim, config.hidden_size, config.caption_tokens)

    def forward(self, input_ids: torch.Tensor | None = None, caption_states: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        if caption_states is not None:  # the prefill: the caption prefix, embedded by the model itself
            kwargs["inputs_embeds"] = self.caption_embedder(caption_states.to(self.caption_embedder.fc1.weight.dtype))
            input_ids = None
        return super().forward(input_ids=input_ids, **kwargs)


class LlamaGenVQModel(VQModel):
    """diffusers' VQModel in LlamaGen's VQ-16 layout (see the module docstring); ``decode`` takes code indices
    [B, h, w] and looks them up as LlamaGen's ``decode_code`` does, from the l2-normalised codebook (a float latent
    [B, C, h, w] goes through diffusers' own decode)."""

    @apply_forward_hook
    def decode(self, h: torch.Tensor, force_not_quantize: bool = True, return_dict: bool = True,
               shape: Any = None) -> DecoderOutput | tuple[torch.Tensor, ...]:
        if h.is_floating_point():
            return super().decode(h, force_not_quantize=force_not_quantize, return_dict=return_dict, shape=shape)
        codebook = F.normalize(self.quantize.embedding.weight, p=2, dim=-1)
        quant = codebook[h].permute(0, 3, 1, 2).contiguous()  # [B, h, w, C] -> [B, C, h, w]
        dec = self.decoder(self.post_quant_conv(quant))
        return DecoderOutput(sample=dec) if return_dict else (dec,)
