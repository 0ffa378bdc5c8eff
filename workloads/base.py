"""The workload interface: a registered, named generation with presets, stages and attention sites.

A workload is one folder (``workloads/<family>/``) holding ``workload.py`` and ``configs/<preset>.json``;
nothing outside it names it (docs/adding-a-workload.md). The JSON holds the published configuration with the
source of every number (``"sources"``); the ``full`` preset also holds the published sizes (``"published"``: the
denoiser's headline size, and every component's exact count with its source, which the tests hold the
configuration to) and the attention calls `mmchar bench-attn` times (``"bench"``). Only ``sources``,
``defaults``, ``models``, ``call`` and ``generation`` enter a run's resolved configuration, so the other two never
change a config hash.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any, ClassVar

from mmchar.devices import DTYPE_NAMES, resolve_device, resolve_dtype
from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.scopes import SiteRule
from mmchar.target import Target


@dataclass(frozen=True)
class Params:
    """The user-facing knobs of one generation; ``None`` in a CLI override means "the preset's value"."""

    height: int
    width: int
    frames: int | None  # None for image workloads
    steps: int
    batch: int
    guidance: float  # > 1 enables classifier-free guidance, which doubles the denoiser batch
    seed: int
    prompt: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Params:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PARAM_NAMES = tuple(f.name for f in fields(Params))

# The memory options users reach for (diffusers' own switches); recorded in the config only when one is on.
MEMORY_OPTIONS = ("vae_tiling", "vae_slicing", "cpu_offload")

# Generation settings a user may choose per run (a CLI flag each: ``kv_cache`` is ``--kv-cache``), with what each
# is a setting of. A workload that has one declares it with its choices (`Workload.generation_options`) and its
# presets' ``generation`` block holds the default; every other workload refuses it.
GENERATION_OPTIONS = {"kv_cache": "KV cache"}


class Workload(ABC):
    """Base of every workload. Subclasses set the class attributes and implement `build`."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # other names the CLI accepts (runs record ``name``)
    description: ClassVar[str]
    task: ClassVar[str]  # text-to-image, text-to-video, image-to-video
    modality: ClassVar[str]  # image, video
    paradigm: ClassVar[str]  # diffusion, transformer
    architecture: ClassVar[str]  # unet, dit, masked-token, autoregressive
    stages: ClassVar[tuple[str, ...]]
    attention_sites: ClassVar[tuple[str, ...]]
    site_rules: ClassVar[tuple[SiteRule, ...]] = ()
    config_package: ClassVar[str]  # the package holding the preset folder: the class's own (`__init_subclass__`)
    config_folder: ClassVar[str] = "configs"  # several sizes of one family share a package: configs/<size>
    components: ClassVar[dict[str, str]] = {}  # model component -> "diffusers:Class" or "transformers:Class"
    # generation settings of `GENERATION_OPTIONS` it takes, with their choices ({"kv_cache": ("static", "dynamic")});
    # the presets' ``generation`` block holds each one's default, so the resolved configuration records what ran
    generation_options: ClassVar[dict[str, tuple[str, ...]]] = {}
    # --cpu-offload: the workload's build installs diffusers' model offload (`PipelineWorkload`); others refuse it
    cpu_offload: ClassVar[bool] = False
    spatial_factor: ClassVar[int] = 8  # height and width must divide by it (the VAE's downsampling)
    temporal_factor: ClassVar[int] = 1  # a video VAE compressing time k-fold takes k·n + 1 frames

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The presets sit beside the module that defines the class, so the folder alone says where they are; a
        # class body may still name another package (a workload kept outside mmchar.workloads).
        super().__init_subclass__(**kwargs)
        if "config_package" not in cls.__dict__:
            cls.config_package = cls.__module__.rpartition(".")[0]

    def presets(self) -> list[str]:
        folder = resources.files(self.config_package).joinpath(*self.config_folder.split("/"))
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))

    def preset_config(self, preset: str) -> dict[str, Any]:
        if preset not in self.presets():
            raise UnknownNameError("preset", preset, self.presets(), context=f" of {self.name}")
        path = resources.files(self.config_package).joinpath(*self.config_folder.split("/"), f"{preset}.json")
        return json.loads(path.read_text())

    def resolve(self, preset: str = "tiny", *, dtype: str | None = None, device: str | None = None,
                weights: str | None = None, memory: dict[str, bool] | None = None,
                generation: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """The full configuration of a run: preset model configs plus checked parameters.

        ``generation``: settings of `GENERATION_OPTIONS` chosen for this run (``None`` values: the preset's); they
        replace the preset's ``generation`` entries in the resolved configuration.

        Raises:
            UnknownNameError: unknown preset, parameter or generation setting value.
            InvalidParameterError: a size the model cannot take; a generation setting the workload does not have.
        """
        cfg = self.preset_config(preset)
        unknown = set(overrides) - set(PARAM_NAMES)
        if unknown:
            raise UnknownNameError("parameter", sorted(unknown)[0], PARAM_NAMES)
        params = dict(cfg["defaults"])
        params.update({k: v for k, v in overrides.items() if v is not None})
        if self.modality != "video":
            if overrides.get("frames") is not None:
                raise InvalidParameterError(f"{self.name} generates images: --frames does not apply")
            params["frames"] = None
        p = Params.from_dict(params)
        self.check(p)
        from mmchar.workloads.build import check_steps

        check_steps(cfg.get("models", {}).get("scheduler"), p.steps, self.name)
        dev = resolve_device(device)  # recorded resolved, so a default and its explicit spelling hash alike
        memory = {k: True for k, v in (memory or {}).items() if v}
        bad = set(memory) - set(MEMORY_OPTIONS)
        if bad:
            raise UnknownNameError("memory option", sorted(bad)[0], MEMORY_OPTIONS)
        if memory.get("cpu_offload") and not self.cpu_offload:
            raise InvalidParameterError(f"--cpu-offload: {self.name} is not a diffusers pipeline with model offload; "
                                        "run it without")
        if memory.get("cpu_offload") and dev.type != "cuda":
            raise InvalidParameterError("--cpu-offload moves models between the CPU and a GPU; it needs --device cuda")
        chosen = self.check_generation(generation)
        if chosen:
            cfg = {**cfg, "generation": {**cfg.get("generation", {}), **chosen}}
        return {"workload": self.name, "preset": preset, "params": p.to_dict(), "device": str(dev),
                "dtype": DTYPE_NAMES[resolve_dtype(dtype, dev)],
                "weights": weights, "models": cfg["models"], "sources": cfg.get("sources", {}),
                # what kind of model this is, for analyses over many runs (not part of a run's identity)
                "family": {"paradigm": self.paradigm, "modality": self.modality, "task": self.task,
                           "architecture": self.architecture},
                **{k: cfg[k] for k in ("call", "generation") if k in cfg}, **({"memory": memory} if memory else {})}

    def check_generation(self, generation: dict[str, Any] | None) -> dict[str, Any]:
        """The generation settings chosen (``None`` values dropped), each one this workload has, with a valid value.

        Raises:
            UnknownNameError: a setting mmchar does not know, or a value not among the workload's choices.
            InvalidParameterError: a setting this workload does not have (the workloads that have it are named).
        """
        chosen = {k: v for k, v in (generation or {}).items() if v is not None}
        for key, value in chosen.items():
            if key not in GENERATION_OPTIONS:
                raise UnknownNameError("generation setting", key, GENERATION_OPTIONS)
            flag, what = "--" + key.replace("_", "-"), GENERATION_OPTIONS[key]
            choices = self.generation_options.get(key)
            if choices is None:
                from mmchar.workloads import get_workload, workload_names

                takers = [n for n in workload_names() if key in get_workload(n).generation_options]
                raise InvalidParameterError(f"{flag} {value}: {self.name} has no {what} to choose (it is a "
                                            f"{self.architecture} {self.paradigm} model); {flag} applies to "
                                            f"{', '.join(takers) or 'no workload'}")
            if value not in choices:
                raise UnknownNameError(f"{flag} value", str(value), choices)
        return chosen

    def check(self, p: Params) -> None:
        f = self.spatial_factor
        for dim in ("height", "width"):
            v = getattr(p, dim)
            if v < f or v % f:
                raise InvalidParameterError(f"{dim}={v} is not a positive multiple of {f} (the VAE factor of {self.name}); "
                                            f"use e.g. {max(f, round(v / f) * f)}")
        if self.modality == "video" and (p.frames is None or p.frames < 1):
            raise InvalidParameterError(f"frames={p.frames} must be at least 1")
        k = self.temporal_factor
        if self.modality == "video" and k > 1 and (p.frames - 1) % k:
            raise InvalidParameterError(f"frames={p.frames}: {self.name}'s VAE compresses time {k}x; use {k}n+1 frames "
                                        f"(e.g. {(p.frames - 1) // k * k + 1} or {(p.frames - 1) // k * k + 1 + k})")
        for name in ("steps", "batch"):
            if getattr(p, name) < 1:
                raise InvalidParameterError(f"{name}={getattr(p, name)} must be at least 1")
        check_guidance(p.guidance)

    def parameter_count(self, preset: str = "full") -> dict[str, int]:
        """Parameters per model component of a preset, counted on the meta device (no memory, no weights) and
        cached per configuration: listing every workload stays fast."""
        from mmchar.environment import cache_dir
        from mmchar.workloads.build import count_parameters, model_class

        models = self.preset_config(preset)["models"]
        specs = {name: [spec, models[name]] for name, spec in self.components.items()}
        key = f"{self.name}/{preset}/" + hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:12]
        path = cache_dir() / "parameters.json"
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key not in cache:
            cache[key] = {name: count_parameters(model_class(spec), cfg) for name, (spec, cfg) in specs.items()}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(cache, indent=1, sort_keys=True))
            except OSError:
                pass  # a read-only home: counted again next time
        return cache[key]

    def runtime(self, config: dict[str, Any]) -> tuple[Any, Any, Params]:
        """(torch device, torch dtype, Params) of a resolved configuration."""
        device = resolve_device(config["device"])
        return device, resolve_dtype(config["dtype"], device), Params.from_dict(config["params"])

    def build_components(self, config: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
        """Every model component of the preset, built offline on the meta device and materialised, seeded, on
        ``device`` (`build.build_module`). Under ``--cpu-offload`` each then waits on the CPU, so the card holds
        one component at a time while building too (FLUX.2-dev's 112 GB of models on an 80 GB card): the
        random weights are drawn on the device either way, the same numbers as without offload."""
        from mmchar.workloads.build import build_module, model_class

        seed = config["params"]["seed"]
        offload = config.get("memory", {}).get("cpu_offload")  # only a workload that installs offload resolves it
        parts = {}
        for name, spec in self.components.items():
            part = build_module(model_class(spec), config["models"][name], device, dtype, seed)
            parts[name] = part.to("cpu") if offload else part
        return parts

    @abstractmethod
    def build(self, config: dict[str, Any]) -> Target:
        """Build the pipeline on ``config["device"]`` (random weights, or ``config["weights"]``) as a Target."""


def check_guidance(guidance: float | None) -> None:
    """Classifier-free guidance scales below 0 mean nothing (at most 1 turns guidance off)."""
    if guidance is not None and not guidance >= 0:
        raise InvalidParameterError(f"guidance={guidance:g} must be at least 0 (a scale of 1 or less turns "
                                    "classifier-free guidance off; 7.5 is usual)")


def config_hash(config: dict[str, Any]) -> str:
    """Six hex digits identifying a resolved configuration (backend included), stable across runs."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:6]
