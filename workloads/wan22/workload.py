"""Wan 2.2 text-to-video: T2V-A14B, a mixture of two 14B DiT experts switched by timestep, and TI2V-5B, a dense
5B DiT over the Wan 2.2 VAE's 16x16-compressed latents; plus the MLPerf Inference v6.0 text-to-video benchmark,
which runs T2V-A14B at its own settings.

T2V-A14B is diffusers' `WanPipeline` with ``transformer`` (the high-noise expert) and ``transformer_2`` (the
low-noise expert) and the pipeline setting ``boundary_ratio`` (0.875): a step whose timestep t is at least
``boundary_ratio * num_train_timesteps`` runs ``transformer`` at ``guidance_scale``, every later step runs
``transformer_2`` at ``guidance_scale_2``. Only one expert runs per step, so a step costs what a 14B Wan 2.1 step
costs while both experts' weights stay resident (27B). Both experts are the denoiser stage: diffusers names the
second one ``transformer_2``, which `discover_stage_roots` already counts as a denoiser, so each expert is a
denoiser root of its own, both with the pipeline's two calls per step (conditional and unconditional apart).

TI2V-5B (text-to-video mode here) is one transformer and ``expand_timesteps=True``: the timestep is given per
latent token (the image-to-video mode's first-frame tokens would take t = 0), so the time embedding runs over
every token.

The pipeline settings (``boundary_ratio``, ``expand_timesteps``: the model_index.json of a diffusers checkpoint)
are the preset's ``generation`` block, passed to the pipeline as it is built (and when loading ``--weights``);
``guidance_scale_2`` is a fixed call argument (``call``).

Both experts are denoiser stage roots sharing one step count (`mmchar.instrument.StageTimer`): a step is numbered
by the generation's step, whichever expert ran it, and the run records which expert ran each step
(``step_components`` in meta.json); `mmchar bench-linear` counts one expert's linear layers per step.
"""

from __future__ import annotations

from typing import Any

from mmchar.scopes import SiteRule
from mmchar.target import StageRoot
from mmchar.workloads import register_workload
from mmchar.workloads.base import Params
from mmchar.workloads.wan.workload import _Wan

# WanPipeline.__init__ settings that a checkpoint keeps in model_index.json: the preset's "generation" block
PIPELINE_SETTINGS = ("boundary_ratio", "expand_timesteps")


class _Wan22(_Wan):
    """Wan 2.1's pipeline and traits (two denoiser calls per step with guidance), with Wan 2.2's pipeline settings
    and both experts' self-attention on the joint site."""

    site_rules = (SiteRule(r"^transformer(_2)?\.blocks\.\d+\.attn1$", "joint"),)

    def extra_components(self, config: dict[str, Any]) -> dict[str, Any]:
        generation = config.get("generation", {})
        return {k: generation[k] for k in PIPELINE_SETTINGS if k in generation}


@register_workload
class Wan22T2VA14B(_Wan22):
    name = "wan2.2-t2v-a14b"
    description = ("Wan 2.2 T2V-A14B: two 14B DiT experts (high / low noise) switched at t = 875, one per step; "
                   "joint self-attention over all video tokens, umT5 cross")
    config_folder = "configs/a14b"
    spatial_factor = 16  # VAE 8 x patch 2
    components = {"transformer": "diffusers:WanTransformer3DModel",
                  "transformer_2": "diffusers:WanTransformer3DModel",
                  "vae": "diffusers:AutoencoderKLWan", "text_encoder": "transformers:UMT5EncoderModel"}

    def stage_roots(self, pipe: Any, params: Params) -> list[StageRoot]:
        """Both experts are denoiser roots (each one's calls are denoiser calls, two per step with guidance)."""
        roots = super().stage_roots(pipe, params)
        experts = {r.component for r in roots if r.stage == "denoiser"}
        missing = {"transformer", "transformer_2"} - experts
        if missing:
            raise TypeError(f"{self.name}: the pipeline lacks the expert(s) {sorted(missing)}; a Wan 2.2 A14B "
                            "pipeline has transformer (high noise) and transformer_2 (low noise)")
        return roots


@register_workload
class MLPerfWan22(Wan22T2VA14B):
    name = "mlperf-wan2.2"
    description = ("MLPerf Inference v6.0 text-to-video: Wan 2.2 T2V-A14B at 720p, 81 frames, 20 steps, "
                   "guidance 4.0 / 3.0 (the reference implementation's settings)")
    config_folder = "configs/mlperf"


@register_workload
class Wan22TI2V5B(_Wan22):
    name = "wan2.2-ti2v-5b"
    description = ("Wan 2.2 TI2V-5B (text-to-video): 30-layer DiT, 24 heads x 128, over the Wan 2.2 VAE "
                   "(16x16x4 compression, 48 channels); per-token timesteps")
    config_folder = "configs/ti2v-5b"
    spatial_factor = 32  # VAE 16 x patch 2
    components = {"transformer": "diffusers:WanTransformer3DModel", "vae": "diffusers:AutoencoderKLWan",
                  "text_encoder": "transformers:UMT5EncoderModel"}
