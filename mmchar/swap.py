"""The diffusers adapter: route each attention module's core call to a registry backend, inside a context.

Each diffusers attention module's processor is wrapped (the module's `set_processor`, what
`set_attn_processor` calls per module); the wrapper marks "this
module is computing attention" in a thread-local, and a replacement of ``F.scaled_dot_product_attention``,
installed only while a swap context is open, sends the processor's own core call to the backend. Outside
wrapped modules the replacement defers to the original function at once. Leaving the context restores every
processor and the original function. The wrapper is chosen over a TorchFunctionMode because a mode sees every
torch call inside the processor (projections, reshapes: ~20 per attention call), not only the core.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mmchar.backends import ORIGINAL_SDPA, AttentionBackend, default_softmax_backend, get_backend, require_backend
from mmchar.errors import BackendUnavailableError, BackendUnsupportedError
from mmchar.target import compile_site_rules

ATTN_SCOPE_PREFIX = "mmchar.attn::"

_local = threading.local()
_install_lock = threading.Lock()
_install_count = 0


def _routed_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if torch.compiler.is_compiling():  # --compile: a compiled model keeps its own attention (never routed)
        return ORIGINAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
    proc = getattr(_local, "current", None)
    if proc is None or dropout_p:  # outside wrapped modules, or training-time dropout no backend takes
        return ORIGINAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # grouped-query: backends take one k/v head per q head
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, dim=-3), value.repeat_interleave(rep, dim=-3)
    _local.current = None  # a backend that calls F.sdpa itself must reach the original
    try:
        return proc.attend(query, key, value, attn_mask, is_causal, scale)
    finally:
        _local.current = proc


def _install() -> None:
    global _install_count
    with _install_lock:
        if _install_count == 0:
            F.scaled_dot_product_attention = _routed_sdpa
        _install_count += 1


def _uninstall() -> None:
    global _install_count
    with _install_lock:
        _install_count -= 1
        if _install_count == 0:
            F.scaled_dot_product_attention = ORIGINAL_SDPA


def attention_scope_label(site: str, module_path: str, backend: str, q: torch.Tensor, k: torch.Tensor,
                          v: torch.Tensor, causal: bool, key_tokens: int | None = None) -> str:
    """The profiler label of one attention-core call; `mmchar.trace` parses it back (site, shapes, FLOPs).
    ``key_tokens``: the keys the call attends to when they are not all in ``k`` (a sequence-parallel ring)."""
    b, h, sq, d = q.shape
    skv = k.shape[-2] if key_tokens is None else key_tokens
    return (f"{ATTN_SCOPE_PREFIX}{site}::{module_path}::{backend}::"
            f"{b},{h},{sq},{skv},{d},{v.shape[-1]}::{int(causal)}::{q.element_size()}")


@dataclass
class SwapState:
    """What a swap context learned: each layer's backend and attention site, and layers it could not take."""

    backend: str
    fallback: str | None
    annotate: bool = False  # open an attention-core profiler scope around each core call (full profile)
    layer_backend: dict[str, str] = field(default_factory=dict)
    layer_site: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # attention-core calls per module path
    # layers whose later calls of another kind (decode after prefill, a mask) went to the fallback, and why
    later_fallback: dict[str, str] = field(default_factory=dict)
    # layers whose native linear attention (SANA) a softmax backend replaced: the model's maths changed there
    math_changed: dict[str, str] = field(default_factory=dict)
    # the denoiser's token sequence split over ranks (mmchar.sequence_shard.SequenceShard), self-attention
    # computed across them; None on one device
    shard: Any = None

    def check_routed(self, processors: list[RoutedProcessor]) -> None:
        """Layers whose processor ran but never called F.scaled_dot_product_attention compute attention their
        own way (e.g. diffusers' classic AttnProcessor): no backend reaches them. Under the default ``sdpa``
        they keep their own code (recorded as ``native:<processor>``); a chosen backend cannot take them."""
        for p in processors:
            if p.called and p.backend is None:
                name = p.native_reason or type(p.inner).__name__
                self.layer_backend[p.module_path] = f"native:{name}"
                if self.backend != "sdpa":
                    self.unsupported[p.module_path] = f"{name}: computed without a route to the backend"

    def raise_if_unsupported(self) -> None:
        if not self.unsupported:
            return
        items = sorted(self.unsupported.items())
        listed = "; ".join(f"{p}: {why}" for p, why in items[:4]) + (f"; and {len(items) - 4} more" if len(items) > 4 else "")
        raise BackendUnsupportedError(f"backend {self.backend!r} cannot take {len(items)} attention layer(s): {listed}; "
                                      "pass --fallback BACKEND to run those layers on another backend")


class LayerRoute:
    """One attention module's route to its backend instance: binds the backend on the first call (site,
    constraints, fallback, cross backend), then sends every core call there, inside an attention-core profiler
    scope while the swap annotates. Both adapters (diffusers processors, transformers' attention interface)
    route through it."""

    def __init__(self, module_path: str, state: SwapState, backend_cls: type[AttentionBackend],
                 fallback_cls: type[AttentionBackend] | None, site_rules: list[tuple[re.Pattern[str], str]], seed: int,
                 cross_cls: type[AttentionBackend] | None = None):
        self.module_path = module_path
        self.state = state
        self._backend_cls, self._fallback_cls, self._cross_cls = backend_cls, fallback_cls, cross_cls
        self._rules = site_rules
        self._seed = seed
        self.backend: AttentionBackend | None = None
        self.backend_name = ""
        self.site = ""
        self.called = False
        self._hidden_states: torch.Tensor | None = None
        self._has_context = False  # the processor was handed encoder states (cross or joint attention)
        self.inner: Any = None
        self.native_reason: str | None = None  # why calls of this layer kept the library's own attention
        self._kind: tuple[bool, bool, bool] | None = None  # (no mask, causal, Sq == Skv) of the first call
        self._by_kind: dict[tuple[bool, bool, bool], tuple[AttentionBackend, str]] = {}  # later kinds' routes

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
               scale: float | None) -> torch.Tensor:
        kind = (mask is None, causal, q.shape[-2] == k.shape[-2])
        if self.backend is None:
            self._bind(q, k, v, mask, causal)
            self._kind = kind
        backend, name = self.backend, self.backend_name
        if kind != self._kind:  # a later call of another kind (a mask, decode after prefill ...): its own route
            route = self._by_kind.get(kind)
            if route is None:
                route = self._kind_route(q, k, v, mask, causal)
                self._by_kind[kind] = route
            backend, name = route
        calls = self.state.calls
        calls[self.module_path] = calls.get(self.module_path, 0) + 1
        shard = self.state.shard
        if shard is not None and self.site != "cross" and shard.takes(q, k, self._has_context):
            # self-attention of a sequence-parallel forward: over every rank's tokens, this rank's rows back
            def local(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor, is_causal: bool = False,
                      scale: float | None = None) -> torch.Tensor:
                return self._core(backend, name, q_, k_, v_, None, is_causal, scale)

            return shard.attend(self.module_path, q, k, v, mask, causal, scale, local,
                                lambda skv: self._scope(name, q, k, v, causal, skv), backend)
        return self._core(backend, name, q, k, v, mask, causal, scale)

    def _scope(self, name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
               key_tokens: int | None = None) -> Any:
        """The attention-core profiler scope of one call while the swap annotates (full profile), else nothing."""
        if not self.state.annotate:
            return contextlib.nullcontext()
        return torch.profiler.record_function(
            attention_scope_label(self.site, self.module_path, name, q, k, v, causal, key_tokens))

    def _core(self, backend: AttentionBackend, name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None, causal: bool, scale: float | None) -> torch.Tensor:
        with self._scope(name, q, k, v, causal):
            return backend(q, k, v, causal=causal, scale=scale, mask=mask, hidden_states=self._hidden_states)

    def _kind_route(self, q, k, v, mask, causal) -> tuple[AttentionBackend, str]:
        """The layer's backend when it takes this kind of call, else the fallback (recorded), else an error."""
        reason = self.backend.unsupported(q, k, v, causal=causal, mask=mask)
        if reason is None:
            return self.backend, self.backend_name
        if self._fallback_cls is not None:
            fallback = self._fallback_cls(self.module_path, self._seed)
            why = fallback.unsupported(q, k, v, causal=causal, mask=mask)
            if why is None:
                self.state.later_fallback[self.module_path] = f"{fallback.name} for calls {self.backend_name} " \
                                                              f"cannot take: {reason}"
                return fallback, fallback.name
            reason = f"{reason}; fallback {fallback.name}: {why}"
        raise BackendUnsupportedError(f"backend {self.backend_name!r} cannot take a later call of {self.module_path}: "
                                      f"{reason}; pass --fallback BACKEND or another backend")

    def _bind(self, q, k, v, mask, causal) -> None:
        self.site = attention_site(self.module_path, self._rules, cross=q.shape[-2] != k.shape[-2])
        self.state.layer_site[self.module_path] = self.site
        cls = self._backend_cls
        if cls.changes_math and self.site == "cross" and self._cross_cls is not None:
            cls = self._cross_cls  # linear attention and WERSA replace self-attention; cross keeps softmax
        backend = cls(self.module_path, self._seed)
        reason = backend.unsupported(q, k, v, causal=causal, mask=mask)
        if reason is not None:
            if self._fallback_cls is None:
                self.state.unsupported[self.module_path] = reason
                backend = get_backend("math")(self.module_path, self._seed)  # finish the warm-up, then report
            else:
                backend = self._fallback_cls(self.module_path, self._seed)
                why = backend.unsupported(q, k, v, causal=causal, mask=mask)
                if why is not None:
                    self.state.unsupported[self.module_path] = f"{reason}; fallback {backend.name}: {why}"
        self.backend, self.backend_name = backend, backend.name
        self.state.layer_backend[self.module_path] = backend.name


class RoutedProcessor(LayerRoute):
    """Wraps one diffusers attention module's processor; its F.sdpa core call goes to the module's backend."""

    def __init__(self, inner: Any, module_path: str, state: SwapState, backend_cls: type[AttentionBackend],
                 fallback_cls: type[AttentionBackend] | None, site_rules: list[tuple[re.Pattern[str], str]], seed: int,
                 cross_cls: type[AttentionBackend] | None = None):
        super().__init__(module_path, state, backend_cls, fallback_cls, site_rules, seed, cross_cls)
        self.inner = inner
        # diffusers filters cross_attention_kwargs by inspect.signature(processor.__call__): show it the inner
        # processor's signature (the instance attribute is what attribute access finds; calls use the class's).
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._forward(*args, **kwargs)

        # __wrapped__, not a cached __signature__: diffusers then pays what it pays for the original processor
        # (a cached signature would make swapped layers faster than the model's own, by ~15 µs per call)
        self.__call__ = functools.update_wrapper(call, inner.__call__)

    def __getattr__(self, name: str) -> Any:  # processors expose attributes some models read
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self._forward(attn, hidden_states, *args, **kwargs)

    def _forward(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        prev = getattr(_local, "current", None)
        _local.current = self
        self.called = True
        self._hidden_states = hidden_states
        context = kwargs.get("encoder_hidden_states", args[0] if args else None)
        self._has_context = isinstance(context, torch.Tensor)
        try:
            if type(self.inner).__name__ in LINEAR_CORE_PROCESSORS and self.state.backend != "sdpa":
                return self._linear_core(attn, hidden_states, *args, **kwargs)
            return self.inner(attn, hidden_states, *args, **kwargs)
        finally:
            _local.current = prev
            self._hidden_states = None

    def _linear_core(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """SANA's linear self-attention (diffusers' SanaLinearAttnProcessor2_0) with its core — relu features,
        φ(q)·(φ(K)ᵀV) / φ(q)·Σφ(k), computed by the processor itself without F.sdpa — sent to the layer's backend:
        ``linear`` computes the same maths; a softmax backend replaces it (the run records the layer's backend)."""
        src = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(src), attn.to_v(src)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        b, n, _ = q.shape
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
        out = self.attend(q, k, v, None, False, None)
        if not self.backend.changes_math:  # a softmax backend in place of the model's own linear attention
            self.state.math_changed[self.module_path] = (f"{type(self.inner).__name__}'s linear attention replaced "
                                                         f"by {self.backend_name}'s softmax attention")
        out = out.transpose(1, 2).reshape(b, n, -1).to(hidden_states.dtype)
        return attn.to_out[1](attn.to_out[0](out))

# processors that compute a linear-attention core themselves (no F.sdpa call): routed by RoutedProcessor._linear_core
LINEAR_CORE_PROCESSORS = ("SanaLinearAttnProcessor2_0",)

TRANSFORMERS_IMPLEMENTATION = "mmchar"
_active_transformers: dict[int, LayerRoute] = {}  # id(attention module) -> its route, while a swap is open


def _transformers_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface function for ``attn_implementation="mmchar"``: q, k, v [B, H, S, d] in,
    (out [B, S, H, d], None) out; the module's route decides the backend."""
    route = _active_transformers.get(id(module))
    if route is not None and any(kwargs.get(a) is not None for a in ("position_bias", "softcap", "s_aux")):
        # relative position biases (T5), logit soft-capping, attention sinks: no backend of the registry takes
        # them, so the layer keeps transformers' own SDPA path; check_routed records it (or refuses it when a
        # backend was chosen)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        route.called = True
        route.native_reason = "transformers attention with a position bias / soft-cap / sinks"
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if key.shape[1] != query.shape[1]:  # grouped-query attention: one k/v head per query head for the backends
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    is_causal = bool(is_causal and query.shape[2] > 1 and attention_mask is None)
    if route is None:  # a model switched to "mmchar" outside a swap: PyTorch's own attention
        out = ORIGINAL_SDPA(query, key, value, attn_mask=attention_mask, is_causal=is_causal, scale=scaling)
    else:
        route.called = True
        out = route.attend(query, key, value, attention_mask, is_causal, scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_transformers() -> bool:
    """Register the "mmchar" attention implementation (and sdpa-style masks for it) once; False without transformers."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(TRANSFORMERS_IMPLEMENTATION, _transformers_attention)
    AttentionMaskInterface.register(TRANSFORMERS_IMPLEMENTATION, sdpa_mask)
    return True


def transformers_models(pipe: Any, components: list[str]) -> list[tuple[str, Any]]:
    """The named components that are transformers models (text encoders, token models)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return []
    return [(n, getattr(pipe, n)) for n in components if isinstance(getattr(pipe, n, None), PreTrainedModel)]


def attention_site(module_path: str, rules: list[tuple[re.Pattern[str], str]], *, cross: bool) -> str:
    """The attention site of a module: the first module-path rule that matches, else cross or spatial by the call.

    The one place sites are decided, for swapped layers and for attention the profiler sees unswapped (text
    encoders, VAEs): it looks only at the module's path and whether the keys' length differs from the
    queries' (``cross``), so it is identical for every backend.
    """
    for pattern, site in rules:
        if pattern.search(module_path):
            return site
    return "cross" if cross else "spatial"


def attention_modules(pipe: Any, components: list[str]) -> list[tuple[str, Any]]:
    """(dotted path, module) of every diffusers attention module (one with a processor) in the components."""
    out = []
    for name in components:
        comp = getattr(pipe, name, None)
        if not isinstance(comp, torch.nn.Module):
            continue
        for path, module in comp.named_modules(prefix=name):
            if hasattr(module, "set_processor") and hasattr(module, "processor"):
                out.append((path, module))
    return out


class AttentionSwap:
    """Route the attention of ``pipe``'s ``components`` to ``backend`` while entered; re-enterable.

    The wrapped processors (and the backend instances they own) are built once, so a compare can enter and
    leave several backends' swaps in turn without rebuilding per-layer state.

    Args:
        pipe: a diffusers pipeline (or any object whose attributes are the components).
        components: component names whose attention modules are swapped (the swap scope).
        backend: a registry name.
        device: checked against the backend's constraints before anything is wrapped.
        fallback: backend for layers ``backend`` cannot take; without it such layers are collected in
            ``state.unsupported`` (and computed by ``math`` so the pass finishes) for one error.
        site_rules: module-path rules for attention sites (see `attention_site`); default: the built-in rules.
        seed: seeds per-layer backend state (with the module path).
        cross_backend: softmax backend of cross attention under backends that change the maths (linear,
            WERSA); default the best softmax backend available.
        shard: a `mmchar.sequence_shard.SequenceShard` of one swapped model: while entered, its token sequence
            is split over the process group's ranks and its self-attention computed across them.
    """

    def __init__(self, pipe: Any, components: list[str], backend: str, device: torch.device, *,
                 fallback: str | None = None, site_rules: list[tuple[re.Pattern[str], str]] | None = None,
                 seed: int = 0, cross_backend: str | None = None, shard: Any = None) -> None:
        backend_cls = require_backend(backend, device)
        fallback_cls = require_backend(fallback, device) if fallback else None
        cross_cls = require_backend(cross_backend or default_softmax_backend(device), device)
        self.state = SwapState(backend=backend, fallback=fallback, shard=shard)
        self._shard_hooks: Any = None
        rules = compile_site_rules() if site_rules is None else site_rules
        hf = transformers_models(pipe, components)
        hf_names = {n for n, _ in hf}
        self._modules: list[tuple[Any, Any, RoutedProcessor]] = [
            (module, module.processor,
             RoutedProcessor(module.processor, path, self.state, backend_cls, fallback_cls, rules, seed, cross_cls))
            for path, module in attention_modules(pipe, [c for c in components if c not in hf_names])]
        # transformers models: any submodule may be handed to the attention interface; routes are made up front
        self._hf_models = [(model, getattr(model.config, "_attn_implementation", None)) for _, model in hf]
        self._hf_routes = {id(m): LayerRoute(path, self.state, backend_cls, fallback_cls, rules, seed, cross_cls)
                           for name, model in hf for path, m in model.named_modules(prefix=name)}
        if hf and not _register_transformers():
            raise BackendUnavailableError("transformers is not installed: its models cannot be swapped")
        self._active = False

    def __enter__(self) -> SwapState:
        if self._active:
            raise RuntimeError("this attention swap is already active")
        done: list[tuple[Any, Any]] = []
        try:
            for module, original, wrapped in self._modules:
                module.set_processor(wrapped)
                done.append((module, original))
            for model, _ in self._hf_models:
                model.set_attn_implementation(TRANSFORMERS_IMPLEMENTATION)
            _active_transformers.update(self._hf_routes)
            if self.state.shard is not None:
                self._shard_hooks = self.state.shard.hooked()
                self._shard_hooks.__enter__()
            _install()
        except BaseException:
            for module, original in done:
                module.set_processor(original)
            self._restore_transformers()
            self._unhook_shard()
            raise
        self._active = True
        return self.state

    @property
    def processors(self) -> list[LayerRoute]:
        """Every route: diffusers processors, and the transformers modules that computed attention."""
        return [wrapped for _, _, wrapped in self._modules] + [r for r in self._hf_routes.values() if r.called]

    def _restore_transformers(self) -> None:
        for key in self._hf_routes:
            _active_transformers.pop(key, None)
        for model, previous in self._hf_models:
            if previous is not None:
                model.set_attn_implementation(previous)

    def _unhook_shard(self) -> None:
        if self._shard_hooks is not None:
            self._shard_hooks.__exit__(None, None, None)
            self._shard_hooks = None

    def __exit__(self, *exc: Any) -> None:
        self._active = False
        _uninstall()
        self._unhook_shard()
        for module, original, _ in self._modules:
            module.set_processor(original)
        self._restore_transformers()


def swap_attention(pipe: Any, components: list[str], backend: str, device: torch.device, *,
                   fallback: str | None = None, site_rules: list[tuple[re.Pattern[str], str]] | None = None,
                   seed: int = 0, cross_backend: str | None = None, shard: Any = None) -> AttentionSwap:
    """``with swap_attention(pipe, ["unet"], "flash", device) as state:`` (see `AttentionSwap`)."""
    return AttentionSwap(pipe, components, backend, device, fallback=fallback, site_rules=site_rules, seed=seed,
                         cross_backend=cross_backend, shard=shard)


def measure_dispatch_overhead_us(calls: int = 300, rounds: int = 9) -> float:
    """Host time the swap adds to one attention call: the module's forward with the wrapped (``sdpa``) minus
    with its original processor, per call.

    Measured on a tiny diffusers attention module, so the attention itself is negligible, and through the
    module's forward, so diffusers' own per-call work on the processor (it inspects the processor's signature)
    is counted as it happens in a model. In a launch-bound denoiser step this host time is latency: the step's
    overhead is this times the attention calls per step.
    """
    import time

    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=8, heads=1, dim_head=8)
    hs = torch.randn(1, 4, 8)
    original = attn.processor
    wrapped = RoutedProcessor(original, "probe", SwapState(backend="sdpa", fallback=None), get_backend("sdpa"), None,
                              [], 0)

    def per_call(proc: Any) -> float:
        attn.set_processor(proc)
        t0 = time.perf_counter()
        for _ in range(calls):
            attn(hs)
        return (time.perf_counter() - t0) / calls * 1e6

    wrapped_us, original_us = [], []
    with torch.inference_mode():
        _install()
        try:
            per_call(wrapped), per_call(original)
            for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
                wrapped_us.append(per_call(wrapped))
                original_us.append(per_call(original))
        finally:
            _uninstall()
            attn.set_processor(original)
    return max(min(wrapped_us) - min(original_us), 0.0)
