"""Where a mixture-of-experts layer routes tokens: the scopes whose kernels are op class ``routing``.

A routed FFN (HiDream-I1's ``MOEFeedForwardSwiGLU``, Mixtral- and Qwen-MoE-style blocks) spends time beside its
experts' GEMMs on choosing and moving tokens: the gate's logits, softmax and top-k, the sort and count that group
tokens by expert (HiDream's counts go to the host: a sync every layer), the gathers that feed each expert and the
scatter that combines their outputs. Kernel names cannot tell that work from any other softmax or gather, so it is
found by structure instead, as attention cores are by scope: a *MoE module* is one with a child holding the routed
experts (``experts``, or a module list named ``...experts``) and a gate (a child named for ``gate`` or ``router``).
Its routing work is

- every kernel under a gate child (the gate or router, a shared expert's gate);
- every kernel whose innermost module is the MoE module itself (dispatch and combine are written in its forward),
  where all its children are gates and experts: a layer that also holds attention, a dense MLP or norms beside its
  router and experts (Gemma 4's decoder layer) holds a MoE rather than being one, and its own forward keeps its
  classes;
- the copies (op class ``memory``: gathers, index and scatter) whose innermost module is a fused experts container
  itself: fused implementations (transformers 5's ``MixtralExperts``) gather and scatter tokens in their own
  forward, beside the expert GEMMs, which stay ``gemm``.

Everything else under the layer keeps its class: the experts' compute (``experts.<i>``, a fused container's GEMMs,
a shared expert: ``shared_experts``, ``shared_mlp``) and any child that is neither a gate nor an expert (a latent
projection, a norm). Random weights route tokens as an untrained gate does (near-uniform load), so routing's share
and the experts' token balance are valid for the structure, not the trained model's data-dependent balance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the read side (attribution of stored traces, analyses) runs without torch
    import torch

_EXPERTS = re.compile(r"experts$", re.IGNORECASE)
_GATE = re.compile(r"gate|router", re.IGNORECASE)
_EXPERT_CHILD = re.compile(r"expert|^shared_", re.IGNORECASE)  # shared_mlp: HunYuan-MoE's shared expert


@dataclass(frozen=True)
class RoutingScope:
    """One MoE module: its dotted path (component first, as the trace's module ranges name it), the stage its
    component runs in, and its children by role (see the module docstring)."""

    path: str
    stage: str
    gates: tuple[str, ...]
    experts: tuple[str, ...]  # every child holding experts: the routed ones' containers and shared experts
    containers: dict[str, str]  # the routed experts' children: "list" (one module per expert) or "fused"
    pure: bool  # every child a gate or an expert: the module's own forward is dispatch and combine

    def holds(self, module_path: str, op_class: str) -> bool:
        """Whether a kernel of ``op_class`` whose innermost module is ``module_path`` is this layer's routing."""
        if module_path == self.path:
            return self.pure
        if not module_path.startswith(self.path + "."):
            return False
        child, _, rest = module_path[len(self.path) + 1:].partition(".")
        if child in self.gates:
            return True
        return not rest and self.containers.get(child) == "fused" and op_class == "memory"


def _module_lists() -> tuple[type, ...]:
    from torch import nn

    return (nn.ModuleList, nn.ModuleDict)


def _is_container(name: str, child: torch.nn.Module) -> bool:
    """The child that holds the routed experts: ``experts`` (a list of expert modules, or one fused module), or a
    list of modules whose name ends in ``experts`` (``local_experts``); a shared expert is one module, not this."""
    return name.lower() == "experts" or (bool(_EXPERTS.search(name)) and not _GATE.search(name)
                                         and isinstance(child, _module_lists()))


def _is_expert_child(name: str) -> bool:
    return bool(_EXPERT_CHILD.search(name)) and not _GATE.search(name)


def moe_scopes(model: torch.nn.Module, prefix: str, stage: str) -> list[RoutingScope]:
    """The MoE modules of ``model`` (see the module docstring), paths prefixed with ``prefix``."""
    scopes = []
    for path, module in model.named_modules(prefix=prefix):
        children = dict(module.named_children())
        containers = {n: "list" if isinstance(c, _module_lists()) else "fused"
                      for n, c in children.items() if _is_container(n, c)}
        gates = tuple(n for n in children if _GATE.search(n))
        if containers and gates:
            experts = tuple(n for n in children if _is_expert_child(n))
            scopes.append(RoutingScope(path, stage, gates, experts, containers,
                                       pure=set(children) <= set(gates) | set(experts)))
    return scopes


def routing_mask(module_paths: Sequence[str], op_classes: Sequence[str], scopes: Iterable[RoutingScope]) -> list[bool]:
    """For each kernel (innermost module, op class so far), whether it is routing work of one of ``scopes``."""
    scopes = list(scopes)
    if not scopes:
        return [False] * len(module_paths)
    memo: dict[tuple[str, str], bool] = {}
    out = []
    for path, cls in zip(module_paths, op_classes):
        key = (path, cls)
        if key not in memo:
            memo[key] = bool(path) and any(s.holds(path, cls) for s in scopes)
        out.append(memo[key])
    return out


def moe_layers_record(scopes: Sequence[RoutingScope]) -> dict[str, Any]:
    """meta.json ``moe_layers``: each layer's path and stage, and the children by role (the layers of one stage's
    model share their structure: the names are their union; the routed experts' containers per stage)."""
    containers: dict[str, dict[str, str]] = {}
    for s in scopes:
        containers.setdefault(s.stage, {}).update(s.containers)
    return {"count": len(scopes), "paths": [s.path for s in scopes], "stages": [s.stage for s in scopes],
            "gates": sorted({g for s in scopes for g in s.gates}),
            "experts": sorted({e for s in scopes for e in s.experts}),
            "containers": {stage: dict(sorted(c.items())) for stage, c in containers.items()}}
