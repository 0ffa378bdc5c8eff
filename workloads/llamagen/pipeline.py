"""LlamaGen's text-to-image generation (Parti's paradigm: autoregressive image tokens), as LlamaGen's own sampler
runs it (autoregressive/sample/sample_t2i.py, autoregressive/models/generate.py): T5 caption states, a prefill of
the caption prefix through the GPT (its caption embedder inside), one image token per later call with
classifier-free guidance batched beside it (the learned null caption), top-k sampling, and the VQ decoder from
code indices. The models are `models.py`'s.

The KV cache is LlamaGen's by default: ``kv_cache="static"``, one cache per generation preallocated for the caption
and every image token (``setup_caches``: prefix + tokens, rounded up to a multiple of 8; 120 + 1024 = 1144 keys at
512x512), so every call, the prefill included, attends over all of its keys under a mask. ``kv_cache="dynamic"``
is transformers' growing cache: the prefill is causal over the prefix, and decode call i attends over prefix + i
keys (121 ... 1143 at 512x512).

Differences from LlamaGen that change no shape and no cost worth naming (the study measures time, not samples):
the Llama decoder's 1D RoPE on every position (LlamaGen: 2D RoPE on image tokens, none on the caption), and no
caption padding mask (LlamaGen left-pads the caption and masks the padding).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

KV_CACHES = ("static", "dynamic")  # generation.kv_cache: LlamaGen's own (static) first


def static_cache_length(text_tokens: int, image_tokens: int) -> int:
    """The keys of LlamaGen's static cache: ``setup_caches`` rounds prefix + image tokens up to a multiple of 8."""
    n = text_tokens + image_tokens
    return n + (-n) % 8


class LlamaGenPipeline:
    """``pipe(prompt, height, width, num_tokens, guidance_scale, generator)`` -> images [B, 3, H, W] in [0, 1].

    Components (the stage roots): ``text_encoder`` (T5 encoder), ``transformer`` (`LlamaGenTransformer`: the
    generator; call 0 is the prefill, each later call decodes one token), ``vqvae`` (`LlamaGenVQModel`, decoded from
    code indices). ``num_tokens`` below the image's token count stops early (a profiled generation of a few steps);
    the static cache is still sized for the whole image, so every call attends over as many keys as in a full one.
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, transformer: nn.Module, vqvae: nn.Module, *,
                 downsample: int, top_k: int, kv_cache: str = "static") -> None:
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache={kv_cache!r}: one of {', '.join(KV_CACHES)}")
        self.tokenizer, self.text_encoder, self.transformer, self.vqvae = tokenizer, text_encoder, transformer, vqvae
        self.text_tokens = transformer.config.caption_tokens
        self.downsample, self.top_k, self.kv_cache = downsample, top_k, kv_cache
        self.components = {"text_encoder": text_encoder, "transformer": transformer, "vqvae": vqvae}
        from transformers import LlamaForCausalLM  # the cache argument: `cache` in later transformers 5.x releases

        self._cache_kw = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters \
            else "past_key_values"

    def set_progress_bar_config(self, **_: Any) -> None:  # the pipeline shows none
        pass

    def _caption(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.text_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        return self.text_encoder(input_ids=ids).last_hidden_state

    def _static_cache(self, batch: int, length: int, device: torch.device, dtype: torch.dtype) -> Any:
        """LlamaGen's ``setup_caches``: every layer's keys and values allocated before the prefill (the generation's
        host work, as in LlamaGen, not the prefill's)."""
        from transformers import StaticCache

        cfg = self.transformer.config
        cache = StaticCache(config=cfg, max_cache_len=length)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        cache.early_initialization(batch, cfg.num_key_value_heads, head_dim, dtype, device)
        return cache

    @torch.inference_mode()
    def __call__(self, prompt: list[str], height: int, width: int, num_tokens: int | None = None,
                 guidance_scale: float = 7.5, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        dtype = next(self.transformer.parameters()).dtype
        b = len(prompt)
        gh, gw = height // self.downsample, width // self.downsample
        total = gh * gw
        n = total if num_tokens is None else min(num_tokens, total)
        caption = self._caption(prompt, device)
        guided = guidance_scale > 1  # classifier-free guidance: the null caption's sequence beside each prompt's
        if guided:
            null = self.transformer.caption_embedder.uncond_embedding.to(caption.dtype)
            caption = torch.cat([caption, null.expand_as(caption)])
        rows = caption.shape[0]
        cache = visible = None
        if self.kv_cache == "static":
            keys = static_cache_length(self.text_tokens, total)
            cache = self._static_cache(rows, keys, device, dtype)
            # LlamaGen's causal_mask: row p says which of the cache's keys position p sees (those up to p); additive,
            # in the model's dtype, which is what F.sdpa makes of LlamaGen's boolean one (and what every backend takes)
            visible = torch.full((keys, keys), float("-inf"), dtype=dtype, device=device).triu(1)
        inputs: dict[str, Any] = {"caption_states": caption}
        codes = torch.zeros(b, total, dtype=torch.long, device=device)
        pos = 0  # the cache position of the call's first token
        for i in range(n):
            extra: dict[str, Any] = {}
            if cache is not None:
                extra[self._cache_kw] = cache
            if visible is not None:  # every call attends over all of the static cache's keys, masked
                q = self.text_tokens if i == 0 else 1
                extra["attention_mask"] = visible[pos:pos + q][None, None].expand(rows, 1, q, visible.shape[1])
                pos += q
            out = self.transformer(**inputs, use_cache=True, **extra)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            logits = out.logits[:, -1].float()
            if guided:
                logits = logits[b:] + guidance_scale * (logits[:b] - logits[b:])
            if self.top_k and self.top_k < logits.shape[-1]:
                kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            codes[:, i] = token[:, 0]
            inputs = {"input_ids": torch.cat([token, token]) if guided else token}
        image = self.vqvae.decode(codes.view(b, gh, gw)).sample
        return (image.float().clamp(-1, 1) + 1) / 2
