"""A LlamaGen-style text-to-image pipeline (Parti's paradigm: autoregressive image tokens) built from existing
layers: a T5 text encoder, a caption projection, a Llama decoder over [caption prefix, image tokens] with a KV
cache and classifier-free guidance, and a VQ decoder.

LlamaGen (Sun et al., 2024, github.com/FoundationVision/LlamaGen) uses 2D RoPE on image tokens; this pipeline
uses the Llama decoder's 1D RoPE, which costs the same and keeps the shapes (the workload studies time, not
samples).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


class CaptionProjection(nn.Module):
    """T5 hidden states -> the decoder's width (LlamaGen's caption embedder: Linear, GELU, Linear)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(in_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LlamaGenPipeline:
    """``pipe(prompt, height, width, num_tokens, guidance_scale, generator)`` -> images [B, 3, H, W] in [0, 1].

    Components (the stage roots): ``text_encoder`` (T5 encoder), ``transformer`` (LlamaForCausalLM: the generator;
    call 0 is the prefill, each later call decodes one token), ``vqvae`` (VQModel, decoded from code indices).
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, caption_projection: nn.Module, transformer: nn.Module,
                 vqvae: nn.Module, *, max_text_tokens: int, downsample: int, top_k: int) -> None:
        self.tokenizer, self.text_encoder, self.caption_projection = tokenizer, text_encoder, caption_projection
        self.transformer, self.vqvae = transformer, vqvae
        self.max_text_tokens, self.downsample, self.top_k = max_text_tokens, downsample, top_k
        self.components = {"text_encoder": text_encoder, "transformer": transformer, "vqvae": vqvae}
        params = inspect.signature(transformer.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def set_progress_bar_config(self, **_: Any) -> None:  # the pipeline shows none
        pass

    def _prefix(self, prompts: list[str], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_text_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        hidden = self.text_encoder(input_ids=ids).last_hidden_state
        return self.caption_projection(hidden.to(dtype))

    @torch.inference_mode()
    def __call__(self, prompt: list[str], height: int, width: int, num_tokens: int | None = None,
                 guidance_scale: float = 7.5, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        dtype = next(self.transformer.parameters()).dtype
        b = len(prompt)
        gh, gw = height // self.downsample, width // self.downsample
        total = gh * gw
        n = total if num_tokens is None else min(num_tokens, total)
        embed = self.transformer.get_input_embeddings()
        cond = self._prefix(prompt, device, dtype)
        guided = guidance_scale > 1  # classifier-free guidance: a null-caption sequence beside each prompt's
        inputs: dict[str, Any] = {"inputs_embeds": torch.cat([cond, torch.zeros_like(cond)]) if guided else cond}
        cache = None
        codes = torch.zeros(b, total, dtype=torch.long, device=device)
        for i in range(n):
            out = self.transformer(**inputs, use_cache=True, **({self._cache_kw: cache} if cache is not None else {}))
            cache = out.past_key_values
            logits = out.logits[:, -1].float()
            if guided:
                logits = logits[b:] + guidance_scale * (logits[:b] - logits[b:])
            if self.top_k and self.top_k < logits.shape[-1]:
                kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            codes[:, i] = token[:, 0]
            inputs = {"inputs_embeds": embed(torch.cat([token, token]) if guided else token)}
        latent_channels = self.vqvae.config.vq_embed_dim or self.vqvae.config.latent_channels
        image = self.vqvae.decode(codes.view(b, gh, gw), force_not_quantize=True,
                                  shape=(b, gh, gw, latent_channels)).sample
        return (image.float().clamp(-1, 1) + 1) / 2
