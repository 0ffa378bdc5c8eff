"""The diffusers adapter: route each attention module's core call to a registry backend, inside a context.

Each diffusers attention module's processor is wrapped (the module's `set_processor`, what
`set_attn_processor` calls per module); the wrapper marks "this
module is computing attention" in a thread-local, and a replacement of ``F.scaled_dot_product_attention``,
installed only while a swap context is open, sends the processor's own core call to the backend. Outside
wrapped modules the replacement defers to the original function at once. Leaving the context restores every
processor and the original function. The wrapper is chosen over a TorchFunctionMode because a mode sees every
torch call inside the processor (projections, reshapes: ~20 per attention call), not only the core.

The routed call is on the hot path of launch-bound steps (SD 1.5: 32 attention calls in a 27 ms step on an
H200), so the swap must cost under 1 % of a step: each layer resolves its backend once per kind of call (mask,
causal, self or cross) and every later call costs one dict lookup and the backend call, with no profiler scope
unless the full profile is annotating (benchmarks/bench_swap_overhead.py measures it per backend).
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

from mmchar.backends import (ORIGINAL_SDPA, AttentionBackend, LinearBackend, default_softmax_backend, get_backend,
                             require_backend)
from mmchar.errors import BackendUnavailableError, BackendUnsupportedError
from mmchar.scopes import attention_label, attention_site, compile_site_rules


class _Current(threading.local):
    """The route of the attention module whose processor is running on this thread (None outside them)."""

    route: LayerRoute | None = None


_local = _Current()
_install_lock = threading.Lock()
_installed = {False: 0, True: 0}  # open swap contexts by whether a compiled model may call F.sdpa inside them


def _routed_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """F.sdpa while a swap is open: a wrapped module's core call goes to its layer's backend (one lookup of the
    backend resolved for this kind of call), any other call to PyTorch's own function at once."""
    route = _local.route
    if route is None or dropout_p:  # outside wrapped modules, or training-time dropout no backend takes
        return ORIGINAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
    if enable_gqa:
        key, value = _one_kv_head_per_query_head(query, key, value)
    try:
        backend = route.routes[(attn_mask is None, is_causal, query.shape[-2] == key.shape[-2])]
    except KeyError:
        backend = route.resolve(query, key, value, attn_mask, is_causal)
    route.ncalls += 1
    _local.route = None  # a backend that calls F.sdpa itself must reach the original
    try:
        if route.state.instrumented:
            return route.attend_instrumented(backend, query, key, value, attn_mask, is_causal, scale)
        return backend(query, key, value, causal=is_causal, scale=scale, mask=attn_mask,
                       hidden_states=route.hidden_states)
    finally:
        _local.route = route


def _routed_sdpa_compile_safe(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              enable_gqa=False):
    """The router while a torch.compile'd model may call F.sdpa: Dynamo traces it, and a compiled model keeps its
    own attention (never routed), so it returns before touching the thread-local."""
    if torch.compiler.is_compiling():
        return ORIGINAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)
    return _routed_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def _one_kv_head_per_query_head(query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention's shared k/v heads repeated: backends take one k/v head per query head."""
    if key.shape[-3] == query.shape[-3]:
        return key, value
    rep = query.shape[-3] // key.shape[-3]
    return key.repeat_interleave(rep, dim=-3), value.repeat_interleave(rep, dim=-3)


def _install(compile_safe: bool = False) -> None:
    with _install_lock:
        _installed[compile_safe] += 1
        _set_router()


def _uninstall(compile_safe: bool = False) -> None:
    with _install_lock:
        _installed[compile_safe] -= 1
        _set_router()


def _set_router() -> None:
    if _installed[True]:
        F.scaled_dot_product_attention = _routed_sdpa_compile_safe
    elif _installed[False]:
        F.scaled_dot_product_attention = _routed_sdpa
    else:
        F.scaled_dot_product_attention = ORIGINAL_SDPA


def attention_scope_label(site: str, module_path: str, backend: str, q: torch.Tensor, k: torch.Tensor,
                          v: torch.Tensor, causal: bool, key_tokens: int | None = None) -> str:
    """The profiler label of one attention-core call (`mmchar.scopes.attention_label`, whose reader parses it).
    ``key_tokens``: the keys the call attends to when they are not all in ``k`` (a sequence-parallel ring)."""
    skv = k.shape[-2] if key_tokens is None else key_tokens
    return attention_label(site, module_path, backend, q.shape, skv, v.shape[-1], causal, q.element_size())


@dataclass
class SwapState:
    """What a swap context learned: each layer's backend and attention site, and layers it could not take."""

    backend: str
    fallback: str | None
    annotate: bool = False  # open an attention-core profiler scope around each core call (full profile)
    layer_backend: dict[str, str] = field(default_factory=dict)
    layer_site: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    # layers whose later calls of another kind (decode after prefill, a mask) went to the fallback, and why
    later_fallback: dict[str, str] = field(default_factory=dict)
    # layers whose native linear attention (SANA) a softmax backend replaced: the model's maths changed there
    math_changed: dict[str, str] = field(default_factory=dict)
    # the denoiser's token sequence split over ranks (mmchar.sequence_shard.SequenceShard), self-attention
    # computed across them; None on one device
    shard: Any = None
    # calls leave the one-lookup path: the full profile's scopes, or a sequence-parallel split (kept as a plain
    # attribute, read on every call, by __setattr__)
    instrumented: bool = field(default=False, init=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in ("annotate", "shard"):
            object.__setattr__(self, "instrumented", bool(getattr(self, "annotate", False)
                                                          or getattr(self, "shard", None) is not None))

    def calls(self, processors: list[LayerRoute]) -> dict[str, int]:
        """Attention-core calls per module path since the routes' counters were last reset."""
        return {p.module_path: p.ncalls for p in processors if p.ncalls}

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
        self.ncalls = 0  # attention-core calls routed (the runner reads them per step)
        self.hidden_states: torch.Tensor | None = None  # the host layer's input (WERSA's filter source)
        self._has_context = False  # the processor was handed encoder states (cross or joint attention)
        self.inner: Any = None
        self.native_reason: str | None = None  # why calls of this layer kept the library's own attention
        # (no mask, causal, Sq == Skv) of a call -> the backend instance that takes calls of that kind: resolved
        # on the first call of each kind, then one lookup per call (here, and inlined in `_routed_sdpa`)
        self.routes: dict[tuple[bool, bool, bool], AttentionBackend] = {}

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
               scale: float | None) -> torch.Tensor:
        """One core call of this layer (transformers' attention interface, SANA's linear core; diffusers'
        F.sdpa calls take the same steps in `_routed_sdpa`)."""
        try:
            backend = self.routes[(mask is None, causal, q.shape[-2] == k.shape[-2])]
        except KeyError:
            backend = self.resolve(q, k, v, mask, causal)
        self.ncalls += 1
        if self.state.instrumented:
            return self.attend_instrumented(backend, q, k, v, mask, causal, scale)
        return backend(q, k, v, causal=causal, scale=scale, mask=mask, hidden_states=self.hidden_states)

    def resolve(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                causal: bool) -> AttentionBackend:
        """The backend of a kind of call not seen before: the layer's own (bound on its first call), else the
        fallback for a later kind the backend cannot take (decode after prefill, a mask ...)."""
        kind = (mask is None, causal, q.shape[-2] == k.shape[-2])
        if self.backend is None:
            self._bind(q, k, v, mask, causal)
            backend = self.backend
        else:
            backend = self._kind_route(q, k, v, mask, causal)
        if kind[2] or not self.backend.routes_by_state:  # decode steps of a stateful backend: asked every time
            self.routes[kind] = backend
        return backend

    def attend_instrumented(self, backend: AttentionBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor | None, causal: bool, scale: float | None) -> torch.Tensor:
        """A call under the full profile's attention-core scope, or across a sequence-parallel group's ranks."""
        name = backend.name
        shard = self.state.shard
        if shard is not None and self.site != "cross" and shard.takes(q, k, self._has_context):
            # self-attention of a sequence-parallel forward: over every rank's tokens, this rank's rows back
            def local(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor, is_causal: bool = False,
                      scale: float | None = None) -> torch.Tensor:
                return self._core(backend, name, q_, k_, v_, None, is_causal, scale)

            return shard.attend(self.module_path, q, k, v, mask, causal, scale, local,
                                lambda skv: self._scope(name, q, k, v, causal, skv), backend)
        return self._core(backend, name, q, k, v, mask, causal, scale)

    def attend_rotary_linear(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor | None:
        """SANA-Video's core call (`AttentionBackend.rotary_linear`) on this layer's backend, under the same
        attention-core scope as `attend`: q, k projected [B, N, H, D] (φ and RoPE applied here, only for a backend
        with that form), v [B, H, N, D]; None when the backend has no such form."""
        try:
            backend = self.routes[(True, False, q.shape[1] == k.shape[1])]
        except KeyError:
            backend = self.resolve(q.transpose(1, 2), k.transpose(1, 2), v, None, False)
        if type(backend).rotary_linear is AttentionBackend.rotary_linear:
            return None
        if self.state.shard is not None:
            raise BackendUnsupportedError(f"{self.module_path}: sequence parallelism does not split SANA-Video's "
                                          "rotary linear attention; run it on one GPU")
        fq, fk = torch.relu(q), torch.relu(k)
        q_rot, k_rot = (_rope_pairs(t, *rotary_emb).transpose(1, 2) for t in (fq, fk))
        fq, fk = fq.transpose(1, 2), fk.transpose(1, 2)
        self.ncalls += 1
        with self._scope(backend.name, fq, fk, v, False):
            return backend.rotary_linear(fq, fk, q_rot, k_rot, v)

    def reset_calls(self) -> None:
        self.ncalls = 0

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
            return backend(q, k, v, causal=causal, scale=scale, mask=mask, hidden_states=self.hidden_states)

    def _kind_route(self, q, k, v, mask, causal) -> AttentionBackend:
        """The layer's backend when it takes this kind of call, else the fallback (recorded), else an error."""
        reason = self.backend.unsupported(q, k, v, causal=causal, mask=mask)
        if reason is None:
            return self.backend
        if self._fallback_cls is not None:
            fallback = self._fallback_cls(self.module_path, self._seed)
            why = fallback.unsupported(q, k, v, causal=causal, mask=mask)
            if why is None:
                self.state.later_fallback[self.module_path] = f"{fallback.name} for calls {self.backend_name} " \
                                                              f"cannot take: {reason}"
                return fallback
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
        # diffusers filters cross_attention_kwargs by inspect.signature(processor.__call__) on every call: the
        # instance attribute (what attribute access finds) is the inner processor's own bound __call__, so that
        # costs exactly what it costs the original (a wrapper with __wrapped__ cost ~2 µs more to unwrap, a cached
        # __signature__ ~15 µs less); calling the processor uses the class's __call__, the route
        self.__call__ = inner.__call__
        self._linear_core = type(inner).__name__ in LINEAR_CORE_PROCESSORS and state.backend != "sdpa"

    def __getattr__(self, name: str) -> Any:  # processors expose attributes some models read
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        prev = _local.route
        _local.route = self
        self.called = True
        self.hidden_states = hidden_states
        if self.state.shard is not None:  # which calls the sequence split takes
            context = kwargs.get("encoder_hidden_states", args[0] if args else None)
            self._has_context = isinstance(context, torch.Tensor)
        try:
            if self._linear_core:
                return self._linear_attention(attn, hidden_states, *args, **kwargs)
            return self.inner(attn, hidden_states, *args, **kwargs)
        finally:
            _local.route = prev
            self.hidden_states = None

    def _linear_attention(self, attn: Any, hidden_states: torch.Tensor,
                          encoder_hidden_states: torch.Tensor | None = None,
                          attention_mask: torch.Tensor | None = None,
                          rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """SANA's linear self-attention (diffusers' SanaLinearAttnProcessor2_0) with its core — relu features,
        φ(q)·(φ(K)ᵀV) / φ(q)·Σφ(k), computed by the processor itself without F.sdpa — sent to the layer's backend:
        ``linear`` computes the same maths; a softmax backend replaces it (the run records the layer's backend).
        SANA-Video's (SanaLinearAttnProcessor3_0) turns φ(q) and φ(k) by RoPE in the numerator only: a backend
        with that form (`AttentionBackend.rotary_linear`) computes it; any other attends over the rotated
        projections with its own maths, recorded as a change."""
        src = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(src), attn.to_v(src)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        b, n, _ = q.shape
        q, k, v = (t.unflatten(-1, (attn.heads, -1)) for t in (q, k, v))  # [B, N, H, D]
        what = f"{type(self.inner).__name__}'s linear attention"
        if rotary_emb is None:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
            out = self.attend(q, k, v, None, False, None)
        else:
            v = v.transpose(1, 2)
            out = self.attend_rotary_linear(q, k, v, rotary_emb)
            if out is None:  # no such form: the backend's own attention over the rotated projections
                out = self.attend(*(_rope_pairs(t, *rotary_emb).transpose(1, 2) for t in (q, k)), v, None, False, None)
            what += " (RoPE on the numerator)"
        if not isinstance(self.backend, LinearBackend):  # another maths in place of the model's own
            self.state.math_changed[self.module_path] = (f"{what} replaced by {self.backend_name}'s "
                                                         f"{self.backend.mechanism} over the projections")
        out = out.transpose(1, 2).reshape(b, n, -1).to(hidden_states.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """SanaLinearAttnProcessor3_0's rotation of adjacent channel pairs ([B, N, H, D] with [1, N, 1, D] tables, in
    the tables' precision, back to x's dtype), as the processor computes it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).to(x.dtype)


# processors that compute a linear-attention core themselves (no F.sdpa call): routed by RoutedProcessor._linear_attention
LINEAR_CORE_PROCESSORS = ("SanaLinearAttnProcessor2_0", "SanaLinearAttnProcessor3_0")

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
        compile_safe: a torch.compile'd model may call F.sdpa while the swap is open (``--compile``): the router
            first asks whether it is being traced (two more calls per attention call), so compiled graphs keep
            their own attention.
    """

    def __init__(self, pipe: Any, components: list[str], backend: str, device: torch.device, *,
                 fallback: str | None = None, site_rules: list[tuple[re.Pattern[str], str]] | None = None,
                 seed: int = 0, cross_backend: str | None = None, shard: Any = None,
                 compile_safe: bool = False) -> None:
        backend_cls = require_backend(backend, device)
        self._compile_safe = compile_safe
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
            _install(self._compile_safe)
        except BaseException:
            for module, original in done:
                module.set_processor(original)
            self._restore_transformers()
            self._unhook_shard()
            raise
        self._active = True
        return self.state

    def reset_calls(self) -> None:
        """Start counting attention-core calls afresh (the runner counts the timed pass's)."""
        for _, _, wrapped in self._modules:
            wrapped.reset_calls()
        for route in self._hf_routes.values():
            route.reset_calls()

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
        _uninstall(self._compile_safe)
        self._unhook_shard()
        for module, original, _ in self._modules:
            module.set_processor(original)
        self._restore_transformers()


def swap_attention(pipe: Any, components: list[str], backend: str, device: torch.device, *,
                   fallback: str | None = None, site_rules: list[tuple[re.Pattern[str], str]] | None = None,
                   seed: int = 0, cross_backend: str | None = None, shard: Any = None,
                   compile_safe: bool = False) -> AttentionSwap:
    """``with swap_attention(pipe, ["unet"], "flash", device) as state:`` (see `AttentionSwap`)."""
    return AttentionSwap(pipe, components, backend, device, fallback=fallback, site_rules=site_rules, seed=seed,
                         cross_backend=cross_backend, shard=shard, compile_safe=compile_safe)


@functools.lru_cache(maxsize=1)
def measure_dispatch_overhead_us(compile_safe: bool = False, calls: int = 200, rounds: int = 9) -> float:
    """Host time the swap adds to one attention call: the module's forward with the wrapped (``sdpa``) minus
    with its original processor, per call.

    Measured on a tiny diffusers attention module, so the attention itself is negligible, and through the
    module's forward, so diffusers' own per-call work on the processor (it inspects the processor's signature)
    is counted as it happens in a model. In a launch-bound denoiser step this host time is latency: the step's
    overhead is this times the attention calls per step. Timed in the thread's CPU time, interleaved, median of
    the rounds: other processes on the host change the wall time of a 100 µs call by more than the effect. Measured
    once per process (it depends on the host and mmchar, not on the model): compare's backends share it. It is
    the routing's cost (to `sdpa`, through the router a run installs: ``compile_safe`` under ``--compile``); a
    fused backend adds its kernel switches (~1 µs), measured per backend by benchmarks/bench_swap_overhead.py.
    """
    import statistics
    import time

    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=8, heads=1, dim_head=8)
    hs = torch.randn(1, 4, 8)
    original = attn.processor
    wrapped = RoutedProcessor(original, "probe", SwapState(backend="sdpa", fallback=None), get_backend("sdpa"), None,
                              [], 0)

    def per_call(proc: Any) -> float:
        attn.set_processor(proc)
        t0 = time.thread_time()
        for _ in range(calls):
            attn(hs)
        return (time.thread_time() - t0) / calls * 1e6

    diffs = []
    with torch.inference_mode():
        _install(compile_safe)
        try:
            per_call(wrapped), per_call(original)
            for r in range(rounds):  # interleaved, order alternating, so drifts hit both alike
                if r % 2:
                    w, o = per_call(wrapped), per_call(original)
                else:
                    o, w = per_call(original), per_call(wrapped)
                diffs.append(w - o)
        finally:
            _uninstall(compile_safe)
            attn.set_processor(original)
    return max(statistics.median(diffs), 0.0)
