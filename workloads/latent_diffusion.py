"""Latent-diffusion workloads with a CLIP text encoder, a VAE and a UNet: the family SD 1.5 and ModelScope T2V share.

A subclass names its UNet and pipeline classes; building, weights loading and the call are shared.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mmchar.devices import resolve_device, resolve_dtype
from mmchar.target import StageRoot, Target
from mmchar.workloads.base import Params, Workload
from mmchar.workloads.build import build_module, clip_tokenizer, load_pipeline


class LatentDiffusionWorkload(Workload):
    paradigm = "diffusion"
    architecture = "unet"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    unet_class: ClassVar[str]  # a diffusers model class name
    pipeline_class: ClassVar[str]  # a diffusers pipeline class name

    def build(self, config: dict[str, Any]) -> Target:
        import diffusers
        from transformers import CLIPTextConfig, CLIPTextModel

        device = resolve_device(config["device"])
        dtype = resolve_dtype(config["dtype"], device)
        params = Params.from_dict(config["params"])
        pipe_cls = getattr(diffusers, self.pipeline_class)
        if config.get("weights"):
            pipe = load_pipeline(pipe_cls, config["weights"], dtype, device, **self._extra_components())
        else:
            models, seed = config["models"], params.seed
            sched_cfg = dict(models["scheduler"])
            scheduler = getattr(diffusers, sched_cfg.pop("_class_name")).from_config(sched_cfg)
            text_cfg = CLIPTextConfig(**models["text_encoder"])
            pipe = pipe_cls(
                vae=build_module(diffusers.AutoencoderKL, models["vae"], device, dtype, seed),
                text_encoder=build_module(CLIPTextModel, text_cfg, device, dtype, seed),
                tokenizer=clip_tokenizer(text_cfg.max_position_embeddings),
                unet=build_module(getattr(diffusers, self.unet_class), models["unet"], device, dtype, seed),
                scheduler=scheduler,
                **self._extra_components(),
            )
        pipe.set_progress_bar_config(disable=True)

        def run(steps: int) -> Any:
            generator = torch.Generator(device=device).manual_seed(params.seed)
            with torch.inference_mode():
                return pipe(**self.call_kwargs(params, steps), generator=generator)

        return Target(
            name=self.name, pipe=pipe, run=run, steps=params.steps, config=config, device=device, dtype=dtype,
            stage_roots=[StageRoot("text_encoder", "text_encoder"), StageRoot("denoiser", "unet"),
                         StageRoot("decoder", "vae", "decode")],
            site_rules=list(self.site_rules),
        )

    def call_kwargs(self, p: Params, steps: int) -> dict[str, Any]:
        return dict(prompt=[p.prompt] * p.batch, height=p.height, width=p.width, num_inference_steps=steps,
                    guidance_scale=p.guidance, output_type="pt")

    def _extra_components(self) -> dict[str, Any]:
        """Pipeline components besides the model ones (also passed when loading ``--weights``)."""
        return {}
