"""The one projection-backend registry: what computes the generating model's linear layers.

The second swap point beside attention (`mmchar.backends`): a projection backend replaces ``nn.Linear`` layers of
the denoiser / generator (`mmchar.linear_swap` routes them), shaped like an attention backend: a class per
mechanism, constructed once per layer (so it may own per-layer state such as a quantised copy of the weights or
hashed memory tables, seeded from the module path), with constraints and availability, registered here or
through the ``mmchar.projection_backends`` entry-point group. ``dense`` is the model's own layers and the default.

Which layers a swap replaces is a scope (`LINEAR_SCOPES`): the projections of attention modules (q, k, v, out),
the feed-forward blocks' layers, or every linear layer of the generating model. The kernels a replaced layer
launches are attributed as the backend's ``op_class`` (``gemm`` for dense and FP8 matrix multiplies, ``memory``
for table lookups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmchar.registry import ClassRegistry, unavailable_reason
from mmchar.schema import DEFAULT_LINEAR_BACKEND, OP_CLASSES

ENTRY_POINT_GROUP = "mmchar.projection_backends"
# which linear layers of the generating model a projection backend replaces (--linear-scope)
LINEAR_SCOPES = ("attn-proj", "ffn", "all")


@dataclass(frozen=True)
class LinearConstraints:
    """What a projection backend can take; `ProjectionBackend.unsupported` checks a layer's call against it."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] | None = None  # None: any
    features_multiple: int = 1  # in and out features must be multiples of it (FP8 matrix multiplies: 16)
    min_capability: tuple[int, int] | None = None

    def describe(self) -> str:
        parts = [f"devices {'/'.join(self.devices)}"]
        if self.dtypes:
            parts.append("dtypes " + "/".join(str(d).removeprefix("torch.") for d in self.dtypes))
        if self.features_multiple > 1:
            parts.append(f"features multiple of {self.features_multiple}")
        if self.min_capability:
            parts.append(f"sm{self.min_capability[0]}{self.min_capability[1]}+")
        return "; ".join(parts)


class ProjectionBackend:
    """Base of every projection backend: subclasses set the class attributes and implement ``__call__``.

    Constructed once per replaced layer, on the layer's first call, with that layer (its weight and bias stay the
    model's: code outside the layer reads their dtype and device), its module path and the run's seed.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    constraints: ClassVar[LinearConstraints] = LinearConstraints()
    op_class: ClassVar[str] = "gemm"  # the class of every kernel under a replaced layer (one of OP_CLASSES)
    changes_math: ClassVar[bool] = False  # True for table lookups: a speed study, not a quality claim
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs
    install_hint: ClassVar[str | None] = None

    def __init__(self, layer: torch.nn.Linear, module_path: str = "", seed: int = 0) -> None:
        self.layer = layer
        self.module_path = module_path
        self.seed = seed

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` here, or None when it can."""
        c = cls.constraints
        return unavailable_reason(cls.requires, cls.install_hint, c.devices, c.min_capability, device)

    def unsupported(self, x: torch.Tensor) -> str | None:
        """Why this backend cannot take this layer's call (checked on the layer's first call), or None: the layer
        then runs as the model's own, and the run says why."""
        c = self.constraints
        if c.dtypes is not None and x.dtype not in c.dtypes:
            return f"dtype {str(x.dtype).removeprefix('torch.')} (takes " \
                   f"{'/'.join(str(t).removeprefix('torch.') for t in c.dtypes)})"
        if c.features_multiple > 1:
            n_in, n_out = self.layer.in_features, self.layer.out_features
            if n_in % c.features_multiple or n_out % c.features_multiple:
                return f"features {n_in} -> {n_out} are not multiples of {c.features_multiple}"
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cost(self, x: torch.Tensor) -> tuple[float, float]:
        """(FLOPs, minimum bytes) of one call on ``x`` (docs/conventions.md, "FLOPs and bytes"): by default a dense
        layer's, 2·tokens·in·out and the input, weight and output read or written once."""
        from mmchar.flops import linear_cost

        return linear_cost(x.numel() // x.shape[-1], self.layer.in_features, self.layer.out_features,
                           x.element_size(), self.layer.weight.element_size())


class DenseBackend(ProjectionBackend):
    """The model's own layers: a swap under it replaces nothing (its calls cost nothing extra) and records which
    layers a scope covers."""

    name = DEFAULT_LINEAR_BACKEND
    description = "the model's own linear layers (cuBLAS / the CPU's GEMM): the default"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.layer.weight, self.layer.bias)


def _check(cls: type[ProjectionBackend]) -> None:
    if cls.op_class not in OP_CLASSES:
        raise ValueError(f"projection backend {cls.name!r}: op class {cls.op_class!r} is not one of {OP_CLASSES}")
    if "::" in cls.name:  # the profiler label's separator (mmchar.scopes.projection_label)
        raise ValueError(f"projection backend {cls.name!r}: a name may not contain '::'")


_BACKENDS: ClassRegistry[ProjectionBackend] = ClassRegistry("projection backend", ENTRY_POINT_GROUP,
                                                            ProjectionBackend, _check)
_REGISTRY = _BACKENDS.classes  # name -> class (tests register and remove throw-away backends here)


def register_projection_backend(cls: type[ProjectionBackend]) -> type[ProjectionBackend]:
    """Class decorator adding a projection backend to the registry under ``cls.name``."""
    return _BACKENDS.register(cls)


register_projection_backend(DenseBackend)


def projection_backend_names() -> list[str]:
    return _BACKENDS.names()


def get_projection_backend(name: str) -> type[ProjectionBackend]:
    return _BACKENDS.get(name)


def require_projection_backend(name: str, device: torch.device) -> type[ProjectionBackend]:
    """The backend class, or an error saying why it cannot run on ``device``."""
    return _BACKENDS.require(name, device)


def describe_projection_backends(device: torch.device) -> list[dict[str, Any]]:
    """One row per registered projection backend: name, description, constraints, op class, availability."""
    return _BACKENDS.describe(device, lambda cls: {"op_class": cls.op_class, "changes_math": cls.changes_math})
