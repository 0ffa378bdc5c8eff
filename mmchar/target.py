"""What the runner profiles: a pipeline object, how to call it, and where its stages start.

Workloads (``mmchar.workloads``) and the Python API (`mmchar.profile(pipe, ...)`) both produce a `Target`;
the runner knows nothing else about models.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mmchar.routing import RoutingScope, moe_scopes
from mmchar.schema import PHASES, STAGES, STEP_STAGES
from mmchar.scopes import SiteRule, compile_site_rules


@dataclass(frozen=True)
class StageRoot:
    """A method whose calls delimit a stage: ``getattr(pipe, component).<method>``.

    Each call of the method is one interval of ``stage``; for the denoiser each call is one step
    (``calls_per_step`` > 1 for pipelines that run the denoiser several times per step).
    """

    stage: str
    component: str
    method: str = "forward"
    calls_per_step: int = 1
    phases: tuple[str, ...] = ()  # generator: ("prefill", "decode") (first call, the rest) or ("step",)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
        if self.phases and (self.stage != "generator" or not set(self.phases) <= set(PHASES)):
            raise ValueError(f"phases {self.phases} apply to the generator stage only, from {PHASES}")


@dataclass
class Target:
    """One generation to profile.

    Args:
        name: workload key, or ``"pipeline"`` for a user's own pipeline.
        pipe: the pipeline object (its components are the stage roots' owners).
        run: ``run(steps) -> output`` runs one whole generation with ``steps`` denoising steps, seeded
            identically on every call, and returns the pipeline output.
        stage_roots: where each stage starts and ends.
        steps: the denoising steps of the timed pass.
        config: the resolved configuration, stored verbatim in meta.json.
        device: where the pipeline runs.
        dtype: the compute dtype of the pipeline.
        site_rules: module-path rules for attention sites, tried before DEFAULT_SITE_RULES.
    """

    name: str
    pipe: Any
    run: Callable[[int], Any]
    stage_roots: list[StageRoot]
    steps: int
    config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    site_rules: list[SiteRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Every target times its scheduler's steps as the ``scheduler`` stage when the pipeline has one (a
        diffusers scheduler's ``step``), so ``host`` is only what lies outside the model and scheduler calls."""
        scheduler = getattr(self.pipe, SCHEDULER_COMPONENT, None)
        if callable(getattr(scheduler, "step", None)) and not any(r.stage == "scheduler" for r in self.stage_roots):
            self.stage_roots = [*self.stage_roots, StageRoot("scheduler", SCHEDULER_COMPONENT, "step")]

    def component(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def step_roots(self) -> list[StageRoot]:
        """The roots of the step stage (the denoiser, a token model's generator): Wan 2.2's two experts are two."""
        return [r for r in self.stage_roots if r.stage in STEP_STAGES]

    def step_components(self) -> list[str]:
        """The components the step stage runs, once each, in root order."""
        return list(dict.fromkeys(r.component for r in self.step_roots()))

    def all_site_rules(self) -> list[tuple[re.Pattern[str], str]]:
        return compile_site_rules(self.site_rules)

    def routing_scopes(self, skip: tuple[str, ...] = ()) -> list[RoutingScope]:
        """The mixture-of-experts layers of every stage root's model (`mmchar.routing`), paths as the trace's
        module ranges name them (component first); ``skip``: components the profile leaves without module ranges
        (compiled, graph replays), where no kernel could be placed in a layer."""
        scopes: list[RoutingScope] = []
        seen: set[int] = set()
        for root in self.stage_roots:
            comp = self.component(root.component)
            if root.component not in skip and isinstance(comp, torch.nn.Module) and id(comp) not in seen:
                seen.add(id(comp))
                scopes += moe_scopes(comp, root.component, root.stage)
        return scopes


SCHEDULER_COMPONENT = "scheduler"  # diffusers pipelines keep their scheduler under this name

# Component names of diffusers pipelines, by stage. Denoiser and decoder names come first in diffusers' own
# pipelines; anything else that is an nn.Module is left out (safety checkers, feature extractors).
_DENOISER_NAMES = ("unet", "transformer", "prior", "transformer_2", "unet_2")
_TEXT_PREFIX = "text_encoder"
_DECODER_NAMES = ("vae", "vqvae", "movq", "vqgan")


def is_step_component(name: str) -> bool:
    """Whether the pipeline component called ``name`` is the generating model (the denoiser, or a token model's
    generator, which token workloads take from the same names): the one place that maps names to that stage."""
    return name in _DENOISER_NAMES


def discover_stage_roots(pipe: Any) -> list[StageRoot]:
    """Stage roots of any diffusers pipeline, taken from its components.

    Text encoders run `forward`, denoisers `forward` (one call per step with classifier-free guidance
    batched), VAEs / VQ models `decode` (and `encode`, as the image encoder of image-conditioned pipelines).
    """
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError("expected a diffusers pipeline (an object with a .components dict)")
    roots: list[StageRoot] = []
    for name, comp in components.items():
        if not isinstance(comp, torch.nn.Module):
            continue
        if name.startswith(_TEXT_PREFIX):
            roots.append(StageRoot("text_encoder", name))
        elif name == "image_encoder":
            roots.append(StageRoot("image_encoder", name))
        elif is_step_component(name):
            roots.append(StageRoot("denoiser", name))
        elif name in _DECODER_NAMES:
            if hasattr(comp, "decode"):
                roots.append(StageRoot("decoder", name, "decode"))
            if hasattr(comp, "encode"):
                roots.append(StageRoot("image_encoder", name, "encode"))
    if not any(r.stage == "denoiser" for r in roots):
        names = ", ".join(components) or "(none)"
        raise TypeError(f"found no denoiser among the pipeline's components ({names}); expected one of {_DENOISER_NAMES}")
    return roots
