"""The projection swap: route the generating model's linear layers to a projection backend, inside a context.

Each replaced ``nn.Linear`` gets an instance ``forward`` (the module, its path, its hooks and its parameters stay:
code outside the layer reads the weight's dtype, and the profiler's module ranges still name it) that calls the
layer's backend; leaving the context deletes it again. Under ``dense`` nothing is replaced: the swap only records
which layers the scope covers, so the default costs nothing per call.

A layer the backend cannot take (dtype, feature sizes: `ProjectionBackend.unsupported`, asked on its first call)
runs as the model's own from then on, and the run says which and why: unlike an attention layer, a dense linear
layer is always a faithful stand-in, so there is no --fallback to choose.

Linear calls are many (SD 1.5: hundreds per step against 32 attention calls), so a routed call costs one
attribute test and the backend call; the profiler scope whose label carries the backend's op class and cost
(`mmchar.scopes.projection_label`) opens only while the full profile is annotating.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmchar.errors import BackendUnsupportedError, InvalidParameterError, UnknownNameError
from mmchar.projections import (DEFAULT_LINEAR_BACKEND, LINEAR_SCOPES, ProjectionBackend,
                                require_projection_backend)
from mmchar.scopes import projection_label

# module class names and path parts that mark a feed-forward block (diffusers' FeedForward, transformers' *MLP,
# DiT's Mlp, HiDream's HiDreamImageFeedForwardSwiGLU experts and MOEFeedForwardSwiGLU layers, whose gate is a
# parameter, not a linear layer; Flux's single-stream blocks name their MLP input `proj_mlp`) and an attention module
# (diffusers' Attention has a processor; transformers' LlamaAttention ...): whole names only, since a UNet's
# CrossAttnDownBlock2D holds resnets too. An embedder (timestep, caption: `t_embedder.mlp`) is never a block's FFN.
_FFN_CLASS = re.compile(r"(FeedForward(SwiGLU)?|MLP|Mlp|FFN|Ffn)$")
_FFN_PART = {"ff", "ffn", "mlp", "feed_forward", "ff_context", "feedforward", "proj_mlp"}
_ATTN_CLASS = re.compile(r"Attention$")


def is_attention_module(module: nn.Module) -> bool:
    """An attention module: diffusers' (it has a processor) or any class named ``...Attention``."""
    return hasattr(module, "processor") or bool(_ATTN_CLASS.search(type(module).__name__))


def linear_role(path: str, modules: dict[str, nn.Module]) -> str:
    """``attn-proj``, ``ffn`` or ``other`` (timestep and conditioning embeddings, adaLN modulation, patch and
    output projections: replaced only under scope ``all``): what the linear layer at ``path`` does, by its own
    name and its nearest enclosing attention module, feed-forward block or embedder (``modules``: path -> module
    of the model it belongs to). Layers that serve attention and the MLP at once (Flux's fused ``proj_out``) are
    ``other``."""
    parts = path.split(".")
    if any("embed" in part for part in parts):
        return "other"
    for i in range(len(parts), 0, -1):
        part = parts[i - 1]
        ancestor = modules.get(".".join(parts[:i])) if i < len(parts) else None
        name = type(ancestor).__name__ if ancestor is not None else ""
        if ancestor is not None and is_attention_module(ancestor):
            return "attn-proj"
        if _FFN_CLASS.search(name) or part in _FFN_PART:
            return "ffn"
    return "other"


@dataclass
class LinearSwapState:
    """What a projection swap covers and learned: each layer's role and what ran it, layers it could not take."""

    backend: str
    scope: str
    annotate: bool = False  # open a projection scope around each routed call (full profile)
    layer_role: dict[str, str] = field(default_factory=dict)  # every linear layer of the generating models
    # the layers in scope that ran: the backend that ran them (under dense: every layer in scope)
    layer_backend: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)  # in scope, run as the model's own: why
    # the layers the backend took: bytes of its per-layer state beside the model's weights (tables, quantised
    # copies; `ProjectionBackend.state_bytes`), recorded when the layer's backend is built
    layer_state_bytes: dict[str, int] = field(default_factory=dict)
    # what that state comes to over every routed layer, known before any is built
    # (`ProjectionBackend.planned_state_bytes`): a run that runs out of memory building it records what it needed
    planned_state_bytes: int = 0

    @property
    def state_bytes_total(self) -> int:
        """The backend's state over every layer it took, in bytes."""
        return sum(self.layer_state_bytes.values())

    def state_meta(self) -> dict[str, Any]:
        """The run record's state entries (docs/run-schema.md): per layer and total as built (so far, in a run
        that failed building it) and as planned; nothing when the backend holds no state."""
        out: dict[str, Any] = {}
        if self.layer_state_bytes:
            out["linear_state_bytes"] = dict(sorted(self.layer_state_bytes.items()))
            out["linear_state_bytes_total"] = self.state_bytes_total
        if self.planned_state_bytes:
            out["linear_state_bytes_planned"] = self.planned_state_bytes
        return out


class _RoutedLinear:
    """A replaced layer's ``forward``: its backend, built on the layer's first call (on the device and in the
    dtype the layer runs in: CPU offload moves weights only then), or the layer's own forward once the backend
    refused it."""

    __slots__ = ("cls", "backend", "layer", "path", "state", "seed", "role", "checked")

    def __init__(self, cls: type[ProjectionBackend], layer: nn.Linear, path: str, state: LinearSwapState,
                 seed: int, role: str = "other") -> None:
        self.cls, self.layer, self.path, self.state, self.seed, self.role = cls, layer, path, state, seed, role
        self.backend: ProjectionBackend | None = None
        self.checked = False

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            raise BackendUnsupportedError(f"{self.path}: a linear layer called with more than its input "
                                          f"({len(args)} more arguments, keywords {sorted(kwargs)}); projection "
                                          "backends take nn.Linear's forward(input) only")
        if not self.checked:
            self._check(x)
        backend = self.backend
        if backend is None:
            return type(self.layer).forward(self.layer, x)
        if self.state.annotate:
            flops, nbytes = backend.cost(x)
            with torch.profiler.record_function(projection_label(backend.op_class, self.path, backend.name, flops,
                                                                 nbytes)):
                return backend(x)
        return backend(x)

    def _check(self, x: torch.Tensor) -> None:
        # built and prepared before the layer counts as checked: an error while building (a CUDA OOM drawing
        # tables) propagates, and a later call tries again rather than running the model's own layer unannounced
        backend = self.cls(self.layer, self.path, self.seed, role=self.role)
        why = backend.unsupported(x)
        if why is not None:
            self.state.unsupported[self.path] = why
            self.state.layer_backend[self.path] = DEFAULT_LINEAR_BACKEND
        else:
            backend.prepare(x)
            self.backend = backend
            self.state.layer_backend[self.path] = backend.name
            self.state.layer_state_bytes[self.path] = int(backend.state_bytes)
        self.checked = True


class LinearSwap:
    """Context replacing the in-scope linear layers of ``components`` (attributes of ``pipe``) by ``backend``.

    Re-enterable: the runner enters it for each pass; a layer's backend (and its state: quantised weights,
    tables) is built once, on the layer's first call. ``route`` False records the layers' roles only (a compiled
    model keeps its own layers).
    """

    def __init__(self, pipe: Any, components: list[str], backend: str, device: torch.device, *, scope: str = "all",
                 seed: int = 0, route: bool = True) -> None:
        if scope not in LINEAR_SCOPES:
            raise UnknownNameError("linear scope", scope, LINEAR_SCOPES)
        cls = require_projection_backend(backend, device)
        self.state = LinearSwapState(backend=backend, scope=scope)
        self.routes: list[tuple[nn.Linear, _RoutedLinear]] = []
        seen: set[int] = set()  # a model or layer reachable twice (a pipeline's alias) is swapped once
        for comp in components:
            model = getattr(pipe, comp, None)
            if not isinstance(model, nn.Module) or id(model) in seen:
                continue
            seen.add(id(model))
            modules = dict(model.named_modules())
            for path, layer in modules.items():
                if not isinstance(layer, nn.Linear) or id(layer) in seen:
                    continue
                seen.add(id(layer))
                full = f"{comp}.{path}"
                role = linear_role(path, modules)
                self.state.layer_role[full] = role
                if scope != "all" and role != scope:
                    continue
                if backend == DEFAULT_LINEAR_BACKEND or not route:
                    self.state.layer_backend[full] = DEFAULT_LINEAR_BACKEND  # nothing replaced: the model's own
                else:
                    self.routes.append((layer, _RoutedLinear(cls, layer, full, self.state, seed, role)))
                    self.state.planned_state_bytes += cls.planned_state_bytes(layer, role)
        if backend != DEFAULT_LINEAR_BACKEND and route and not self.routes:
            roles = sorted(set(self.state.layer_role.values()))
            raise InvalidParameterError(f"--linear-scope {scope} covers no linear layer of {', '.join(components)} "
                                        f"(roles there: {', '.join(roles) or 'no linear layers'}); pick another scope")
        self._depth = 0

    def __enter__(self) -> LinearSwapState:
        if self._depth == 0:
            taken = [r.path for layer, r in self.routes if "forward" in vars(layer)]
            if taken:  # checked before any layer is touched: a refusal leaves the model as it was
                raise BackendUnsupportedError(f"{taken[0]}: its forward is already replaced (another swap or a hook "
                                              "library); mmchar will not stack on it")
            for layer, route in self.routes:
                layer.forward = route
        self._depth += 1
        return self.state

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            for layer, route in self.routes:
                if vars(layer).get("forward") is route:
                    del layer.forward
