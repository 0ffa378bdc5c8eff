"""Latent-diffusion workloads with a CLIP text encoder, a VAE and a UNet: the family SD 1.5 and ModelScope T2V share."""

from __future__ import annotations

from typing import ClassVar

from mmchar.workloads.pipeline import PipelineWorkload


class LatentDiffusionWorkload(PipelineWorkload):
    paradigm = "diffusion"
    architecture = "unet"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    unet_class: ClassVar[str]  # a diffusers model class name
    tokenizers = {"tokenizer": "clip"}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "unet_class" in cls.__dict__:
            cls.components = {"unet": f"diffusers:{cls.unet_class}", "vae": "diffusers:AutoencoderKL",
                              "text_encoder": "transformers:CLIPTextModel"}
