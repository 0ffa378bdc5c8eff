"""LTX-Video 2B (v0.9.0, diffusers' LTXPipeline): a 28-layer DiT whose self-attention runs over every video token at
once (joint spatio-temporal; 6 930 tokens at 161 frames, 480x704, 32 heads x 64) plus cross attention to 128 T5
tokens. Its VAE compresses 1:192 (32x32 spatial, 8x temporal, 128 channels, patch 1 in the transformer), so the
sequence is short for its resolution: the study's high-compression video model. Classifier-free guidance batches
the conditional and unconditional passes in one transformer call; configs/full.json holds every number's source.

One departure, for one-step runs only (``--steps 1``, ``--profile-steps 1``): the published scheduler stretches its
sigmas so that the last one is ``shift_terminal`` (0.1), which for a single sigma (1.0) divides 0 by 0 and makes the
step's timestep NaN (diffusers' LTXPipeline fails on it). A one-step schedule is left as it is (sigma 1.0, then 0);
every schedule of two or more steps is the published one."""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.target import Target
from mmchar.workloads import register_workload
from mmchar.workloads.pipeline import PipelineWorkload


def one_step_safe(scheduler: Any) -> None:
    """Let ``scheduler``'s terminal stretch leave a one-sigma schedule as it is (see the module docstring); longer
    schedules go through the scheduler's own stretch unchanged."""
    stretch = getattr(scheduler, "stretch_shift_to_terminal", None)
    if stretch is None or getattr(stretch, "_mmchar_one_step_safe", False):
        return

    def stretch_shift_to_terminal(t: Any) -> Any:
        return t if len(t) < 2 else stretch(t)

    stretch_shift_to_terminal._mmchar_one_step_safe = True  # type: ignore[attr-defined]
    scheduler.stretch_shift_to_terminal = stretch_shift_to_terminal


@register_workload
class LTXVideo(PipelineWorkload):
    name = "ltx-video"
    aliases = ("ltxv",)  # Lightricks' own short name
    description = ("LTX-Video 2B: 28-layer DiT, joint self-attention over all video tokens (32 x 64) of a 1:192 "
                   "VAE (32x32x8), T5 cross attention")
    task = "text-to-video"
    modality = "video"
    paradigm = "diffusion"
    architecture = "dit"
    stages = ("text_encoder", "denoiser", "scheduler", "decoder")
    attention_sites = ("joint", "cross", "text")
    site_rules = (SiteRule(r"^transformer\.transformer_blocks\.\d+\.attn1$", "joint"),)
    spatial_factor = 32  # VAE 32 x patch 1
    temporal_factor = 8
    pipeline_class = "LTXPipeline"
    components = {"transformer": "diffusers:LTXVideoTransformer3DModel", "vae": "diffusers:AutoencoderKLLTXVideo",
                  "text_encoder": "transformers:T5EncoderModel"}
    tokenizers = {"tokenizer": "t5"}

    def build(self, config: dict[str, Any]) -> Target:
        target = super().build(config)
        one_step_safe(target.pipe.scheduler)
        return target
