"""A masked video-token transformer in the style of Phenaki (Villegas et al., 2022), built from existing layers:
a T5 text encoder, a bidirectional transformer (diffusers' BasicTransformerBlock: self-attention over every video
token of the clip, cross attention to the text) predicting masked VQ codes in parallel with MaskGIT's cosine
schedule and classifier-free guidance, and a VQ decoder applied frame by frame.

The configuration is our own (documented in configs/full.json): Phenaki's C-ViViT tokenizer compresses time
too and decodes with a space-time transformer; here each frame has its own tokens and a 2D VQ decoder, which
keeps the transformer's joint attention over frames x height x width tokens, the part the study is about.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class MaskedVideoTransformer(ModelMixin, ConfigMixin):
    """Codes (mask id = codebook_size) of a [frames, h, w] token grid + text states -> logits over the codebook."""

    @register_to_config
    def __init__(self, codebook_size: int = 8192, max_tokens: int = 4096, num_layers: int = 22,
                 num_attention_heads: int = 16, attention_head_dim: int = 128, cross_attention_dim: int = 2048) -> None:
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.embed = nn.Embedding(codebook_size + 1, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_tokens, dim))
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(dim, num_attention_heads, attention_head_dim, cross_attention_dim=cross_attention_dim,
                                  activation_fn="geglu", attention_bias=True) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size)

    def forward(self, codes: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.embed(codes) + self.pos[:, : codes.shape[1]]
        for block in self.blocks:
            x = block(x, encoder_hidden_states=encoder_hidden_states)
        return self.head(self.norm(x))


class MaskedVideoPipeline:
    """``pipe(prompt, frames, height, width, steps, guidance_scale, generator)`` -> video [B, F, 3, H, W] in [0, 1]."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, transformer: MaskedVideoTransformer,
                 vqvae: nn.Module, *, max_text_tokens: int, downsample: int) -> None:
        self.tokenizer, self.text_encoder, self.transformer, self.vqvae = tokenizer, text_encoder, transformer, vqvae
        self.max_text_tokens, self.downsample = max_text_tokens, downsample
        self.components = {"text_encoder": text_encoder, "transformer": transformer, "vqvae": vqvae}

    def set_progress_bar_config(self, **_: Any) -> None:
        pass

    @torch.inference_mode()
    def __call__(self, prompt: list[str], frames: int, height: int, width: int, steps: int,
                 guidance_scale: float = 7.5, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        dtype = next(self.transformer.parameters()).dtype
        b, h, w = len(prompt), height // self.downsample, width // self.downsample
        n = frames * h * w
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.max_text_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        text = self.text_encoder(input_ids=ids).last_hidden_state.to(dtype)
        guided = guidance_scale > 1  # classifier-free guidance: a null text beside each prompt's
        if guided:
            text = torch.cat([text, torch.zeros_like(text)])
        mask_id = self.transformer.config.codebook_size
        codes = torch.full((b, n), mask_id, dtype=torch.long, device=device)
        for i in range(steps):
            logits = self.transformer(torch.cat([codes, codes]) if guided else codes, text).float()
            if guided:
                logits = logits[b:] + guidance_scale * (logits[:b] - logits[b:])
            probs = torch.softmax(logits, -1)
            sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(b, n)
            confidence = torch.gather(probs, -1, sampled[..., None])[..., 0]
            masked = codes == mask_id
            codes = torch.where(masked, sampled, codes)
            confidence = torch.where(masked, confidence, torch.full_like(confidence, float("inf")))
            remask = math.floor(n * math.cos(math.pi / 2 * (i + 1) / steps))  # MaskGIT's cosine schedule
            if remask > 0:
                lowest = torch.topk(confidence, remask, dim=-1, largest=False).indices
                codes.scatter_(1, lowest, mask_id)
        codes = codes.clamp(max=mask_id - 1)  # any code still masked after the last step decodes as a real one
        latent_channels = self.vqvae.config.vq_embed_dim or self.vqvae.config.latent_channels
        video = self.vqvae.decode(codes.view(b * frames, h, w), force_not_quantize=True,
                                  shape=(b * frames, h, w, latent_channels)).sample
        return ((video.float().clamp(-1, 1) + 1) / 2).view(b, frames, *video.shape[1:])
