"""Workloads that are a diffusers pipeline assembled from parts: the one mechanism every such model family uses.

A subclass names the pipeline class, its model components ("diffusers:UNet2DConditionModel",
"transformers:T5EncoderModel", ...), its tokenizers and how a `Params` becomes call arguments; the preset JSON
holds one config per component (and the scheduler's). Building is offline: each model is constructed with
parameters on the meta device and materialised, seeded, on the target device; tokenizers need no files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from mmchar.errors import UnknownNameError
from mmchar.target import StageRoot, Target, discover_stage_roots
from mmchar.workloads.base import Params, Workload
from mmchar.workloads.build import clip_tokenizer, load_pipeline


def apply_memory_options(pipe: Any, memory: dict[str, bool], device: torch.device) -> None:
    """VAE tiling / slicing and model CPU offload, through the pipeline's own switches (what users turn on)."""
    vae = getattr(pipe, "vae", None) or getattr(pipe, "vqvae", None)
    for option, method in (("vae_tiling", "enable_tiling"), ("vae_slicing", "enable_slicing")):
        if memory.get(option):
            if vae is None or not hasattr(vae, method):
                from mmchar.errors import InvalidParameterError

                raise InvalidParameterError(f"--{option.replace('_', '-')}: this pipeline's VAE has no {method}()")
            getattr(vae, method)()
    if memory.get("cpu_offload"):
        pipe.enable_model_cpu_offload(device=device)


def _clip(name: str, models: dict[str, Any]) -> Any:
    # the text encoder beside it (tokenizer_2 -> text_encoder_2) sets the length
    encoder = models.get("text_encoder" + name.removeprefix("tokenizer"), {})
    return clip_tokenizer(encoder.get("max_position_embeddings", 77))


def _t5(name: str, models: dict[str, Any]) -> Any:
    from transformers import T5Tokenizer

    return T5Tokenizer()  # no files: ids < 104, so tiny T5 encoders need a vocabulary of at least 104


def _gemma(name: str, models: dict[str, Any]) -> Any:
    from transformers import GemmaTokenizer

    tok = GemmaTokenizer()  # no files: its special tokens only (ids < 5); a prompt pads to max_sequence_length
    tok.padding_side = "right"  # as SANA's conversion script sets it
    return tok


# Tokenizer kind -> factory(component name, the preset's model configs). Tokenizers need no files: a workload
# names a kind in `PipelineWorkload.tokenizers`; a kind of its own is one entry, added here or, to keep the
# workload one folder, by its workload.py (``TOKENIZERS["kind"] = factory``).
TOKENIZERS: dict[str, Callable[[str, dict[str, Any]], Any]] = {"clip": _clip, "t5": _t5, "gemma": _gemma}


class PipelineWorkload(Workload):
    pipeline_class: ClassVar[str]  # a diffusers pipeline class name
    tokenizers: ClassVar[dict[str, str]] = {}  # tokenizer component -> a kind of `TOKENIZERS`
    cpu_offload = True  # `apply_memory_options`: the pipeline's enable_model_cpu_offload

    def build(self, config: dict[str, Any]) -> Target:
        import diffusers

        device, dtype, params = self.runtime(config)
        pipe_cls = getattr(diffusers, self.pipeline_class)
        if config.get("weights"):
            pipe = load_pipeline(pipe_cls, config["weights"], dtype, device, **self.extra_components(config))
        else:
            models = config["models"]
            parts = self.build_components(config, device, dtype)
            for name, kind in self.tokenizers.items():
                parts[name] = self._tokenizer(kind, name, models)
            if "scheduler" in models:
                sched_cfg = dict(models["scheduler"])
                parts["scheduler"] = getattr(diffusers, sched_cfg.pop("_class_name")).from_config(sched_cfg)
            pipe = pipe_cls(**parts, **self.extra_components(config))
            if not config.get("memory", {}).get("cpu_offload"):
                # a pipeline may build a model of its own from the parts, on the CPU (AnimateDiff's
                # UNetMotionModel.from_unet2d): everything goes where the parts went
                pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        apply_memory_options(pipe, config.get("memory", {}), device)

        def run(steps: int) -> Any:
            generator = torch.Generator(device=device).manual_seed(params.seed)
            with torch.inference_mode():
                return pipe(**self.call_kwargs(params, steps), **config.get("call", {}), generator=generator)

        return Target(name=self.name, pipe=pipe, run=run, steps=params.steps, config=config, device=device,
                      dtype=dtype, stage_roots=self.stage_roots(pipe, params), site_rules=list(self.site_rules))

    def _tokenizer(self, kind: str, name: str, models: dict[str, Any]) -> Any:
        try:
            make = TOKENIZERS[kind]
        except KeyError:
            raise UnknownNameError("tokenizer kind", kind, TOKENIZERS) from None
        return make(name, models)

    def stage_roots(self, pipe: Any, params: Params) -> list[StageRoot]:
        """The pipeline's own components (`discover_stage_roots`); the VAE's encoder only where a task takes an
        image, and the denoiser's calls per step where the pipeline runs it more than once per step."""
        roots = []
        for r in discover_stage_roots(pipe):
            if r.stage == "image_encoder" and r.method == "encode" and self.task != "image-to-video":
                continue
            if r.stage == "denoiser":
                r = StageRoot(r.stage, r.component, r.method, self.denoiser_calls_per_step(params))
            roots.append(r)
        return roots

    def denoiser_calls_per_step(self, params: Params) -> int:
        return 1

    def call_kwargs(self, p: Params, steps: int) -> dict[str, Any]:
        """Call arguments from the user's parameters; the preset's fixed ones (``"call"`` in its JSON, e.g. the
        text length) are added to these."""
        kw: dict[str, Any] = dict(prompt=[p.prompt] * p.batch, height=p.height, width=p.width,
                                  num_inference_steps=steps, guidance_scale=p.guidance, output_type="pt")
        if self.modality == "video":
            kw["num_frames"] = p.frames
        return kw

    def extra_components(self, config: dict[str, Any]) -> dict[str, Any]:
        """Pipeline arguments besides the built parts (also passed when loading ``--weights``)."""
        return {}

