"""Where a mixture-of-experts layer routes tokens: the scopes whose kernels are op class ``routing``.

A routed FFN (HiDream-I1's ``MOEFeedForwardSwiGLU``, Mixtral- and Qwen-MoE-style blocks) spends time beside its
experts' GEMMs on choosing and moving tokens: the gate's logits, softmax and top-k, the sort and count that group
tokens by expert (HiDream's counts go to the host: a sync every layer), the gathers that feed each expert and the
scatter that combines their outputs. Kernel names cannot tell that work from any other softmax or gather, so it is
found by structure instead, as attention cores are by scope: a *MoE module* is one with a child holding the routed
experts (``experts``, or a module list named ``...experts``) and a gate (a child named for ``gate`` or ``router``).
Its routing work is

- every kernel whose innermost module is the MoE module itself (dispatch and combine are written in its forward)
  or lies under one of its children that holds no expert (the gate or router, a shared expert's gate);
- the copies (op class ``memory``: gathers, index and scatter) whose innermost module is an experts container
  itself: fused expert implementations (transformers 5's ``MixtralExperts``) gather and scatter tokens in their
  own forward, beside the expert GEMMs, which stay ``gemm``.

The experts' own compute (under ``experts.<i>`` or a shared expert) keeps its class: the study asks what routing
costs beside it. Random weights route tokens as an untrained gate does (near-uniform load), so routing's share and
the experts' token balance are valid for the structure, not the trained model's data-dependent balance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

_EXPERTS = re.compile(r"experts$", re.IGNORECASE)
_GATE = re.compile(r"gate|router", re.IGNORECASE)
_EXPERT_CHILD = re.compile(r"expert", re.IGNORECASE)


@dataclass(frozen=True)
class RoutingScope:
    """One MoE module (dotted path, with its component's name first, as the trace's module ranges name it) and
    the names of its children that hold experts (their compute is not routing)."""

    path: str
    experts: tuple[str, ...]
    containers: tuple[str, ...]  # children named ``...experts``: their own forward's copies are dispatch

    def holds(self, module_path: str, op_class: str) -> bool:
        """Whether a kernel of ``op_class`` whose innermost module is ``module_path`` is this layer's routing."""
        if module_path == self.path:
            return True
        if not module_path.startswith(self.path + "."):
            return False
        child, _, rest = module_path[len(self.path) + 1:].partition(".")
        if child not in self.experts:
            return True
        return not rest and child in self.containers and op_class == "memory"


def _is_container(name: str, child: torch.nn.Module) -> bool:
    """The child that holds the routed experts: ``experts`` (a list of expert modules, or one fused module), or a
    list of modules whose name ends in ``experts`` (``local_experts``); a shared expert is one module, not this."""
    return name.lower() == "experts" or (bool(_EXPERTS.search(name)) and not _GATE.search(name)
                                         and isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)))


def _is_expert_child(name: str) -> bool:
    return bool(_EXPERT_CHILD.search(name)) and not _GATE.search(name)


def moe_scopes(model: torch.nn.Module, prefix: str) -> list[RoutingScope]:
    """The MoE modules of ``model`` (see the module docstring), paths prefixed with ``prefix``."""
    scopes = []
    for path, module in model.named_modules(prefix=prefix):
        children = dict(module.named_children())
        names = list(children)
        containers = tuple(n for n in names if _is_container(n, children[n]))
        if containers and any(_GATE.search(n) for n in names):
            scopes.append(RoutingScope(path, tuple(n for n in names if _is_expert_child(n)), containers))
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
