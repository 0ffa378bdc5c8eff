"""The one attention-backend registry.

A backend is a class constructed once per attention module (so it may own per-layer state, seeded from the
module path) and called with q, k, v as [B, H, S, D] plus keyword-only ``causal``, ``scale``, ``mask`` and
the module's input ``hidden_states``. It declares its constraints and whether it is installed here. Adapters
(`mmchar.swap`) route each attention module's core call to it. Third-party packages register backends
through the ``mmchar.backends`` entry-point group (``name = "pkg.module:BackendClass"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmchar.errors import MmcharError
from mmchar.registry import ClassRegistry, unavailable_reason

ENTRY_POINT_GROUP = "mmchar.backends"

# The function itself, taken at import: while a swap is open F.scaled_dot_product_attention is mmchar's router,
# and backends that defer to PyTorch must reach the original.
ORIGINAL_SDPA = F.scaled_dot_product_attention


@dataclass(frozen=True)
class Constraints:
    """What a backend can take; `AttentionBackend.unsupported` checks a call against it."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] | None = None  # None: any
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    mask: bool = True
    causal: bool = True
    min_capability: tuple[int, int] | None = None  # CUDA compute capability

    def describe(self) -> str:
        parts = [f"devices {'/'.join(self.devices)}"]
        if self.dtypes:
            parts.append("dtypes " + "/".join(str(d).removeprefix("torch.") for d in self.dtypes))
        if self.max_head_dim or self.head_dim_multiple > 1:
            hd = f"head dim ≤ {self.max_head_dim}" if self.max_head_dim else "head dim"
            parts.append(hd + (f", multiple of {self.head_dim_multiple}" if self.head_dim_multiple > 1 else ""))
        if not self.mask:
            parts.append("no mask")
        if not self.causal:
            parts.append("no causal")
        if self.min_capability:
            parts.append(f"sm{self.min_capability[0]}{self.min_capability[1]}+")
        return "; ".join(parts)


MECHANISMS = ("softmax", "linear attention", "recurrence", "local linear")


class AttentionBackend:
    """Base of every backend. Subclasses set the class attributes and implement ``__call__``."""

    name: ClassVar[str]
    description: ClassVar[str]
    constraints: ClassVar[Constraints] = Constraints()
    changes_math: ClassVar[bool] = False  # True for linear attention, WERSA: a speed study, not a quality claim
    # reads the host layer's hidden states over the whole sequence (WERSA's filter source); a sequence-parallel
    # layer holds only its rank's chunk of them
    reads_hidden_states: ClassVar[bool] = False
    # every output depends on the whole sequence through a carried state (a bidirectional recurrence): checks run
    # the backend and its reference on a prefix of the sequence, not on a slice of the queries against all keys
    whole_sequence: ClassVar[bool] = False
    # what the backend computes, for the study's mechanisms table (one of MECHANISMS): softmax attention, linear
    # attention (kernel feature maps: linear, fla, wersa), a gated recurrence (mlstm, rwkv7), local linear
    # regression (lla: softmax plus a per-query ridge correction, quadratic like softmax)
    mechanism: ClassVar[str] = "softmax"
    # whether the backend takes or refuses a call with fewer queries than keys by what it carries from earlier
    # calls (a recurrence's state decides which KV-cache decode steps it continues): the swap then asks
    # `unsupported` on every such call instead of caching the first answer for the kind of call
    routes_by_state: ClassVar[bool] = False
    # bench-attn times a backend only when its worst relative error per query row against its own fp32 reference
    # is below this: exact kernels differ by their dtype's rounding; quantised ones (sage) by more, by design
    check_tolerance: ClassVar[float] = 2e-2
    # bench-attn times it when no --backends is given (False: another route to kernels the others time already)
    benched_by_default: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs
    install_hint: ClassVar[str | None] = None  # how to get them, when not `pip install <module>`

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        self.module_path = module_path
        self.seed = seed

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` here, or None when it can."""
        return unavailable_reason(cls.requires, cls.install_hint, cls.constraints.devices,
                                  cls.constraints.min_capability, device)

    def unsupported(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                    mask: torch.Tensor | None) -> str | None:
        """Why this backend cannot take this call (checked on a module's first call), or None."""
        c = self.constraints
        d = q.shape[-1]
        if c.dtypes is not None and q.dtype not in c.dtypes:
            return f"dtype {str(q.dtype).removeprefix('torch.')} (takes {'/'.join(str(t).removeprefix('torch.') for t in c.dtypes)})"
        if c.max_head_dim is not None and d > c.max_head_dim:
            return f"head dim {d} > {c.max_head_dim}"
        if d % c.head_dim_multiple:
            return f"head dim {d} is not a multiple of {c.head_dim_multiple}"
        if mask is not None and not c.mask:
            return "attention mask not supported"
        if causal and not c.causal:
            return "causal attention not supported"
        return None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 scale: float | None = None, mask: torch.Tensor | None = None,
                 hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor | None:
        """The fp32 specification of this backend's maths (benchmarks check outputs against it); None when the
        backend is its own reference."""
        from mmchar.kernels.triton_flash.reference import triton_flash_ref

        return triton_flash_ref(q.float(), k.float(), v.float(), causal=causal)

    def eager(self) -> Any:
        """A plain-PyTorch implementation of the same maths in the input dtype (benchmarks time it as the
        baseline of kernels that change the maths), called as ``fn(q, k, v, causal=..., hidden_states=...)``,
        or None."""
        return None

    def rotary_linear(self, q: torch.Tensor, k: torch.Tensor, q_rot: torch.Tensor, k_rot: torch.Tensor,
                      v: torch.Tensor) -> torch.Tensor | None:
        """SANA-Video's linear attention (diffusers' SanaLinearAttnProcessor3_0), where RoPE turns the numerator's
        features only: ``q_rot·Σ k_rot vᵀ / (q·Σ k + ε)`` over all keys, features already mapped ([B, H, S, d]:
        φ(q), φ(k) and their rotations). None: the backend has no such form, and the route gives it the rotated
        projections as its own attention instead (recorded as a change of the model's maths). A backend has the
        form when it overrides this method; the route does not call the base."""
        return None

    def variants(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                 hidden_states: torch.Tensor | None = None) -> list[tuple[str, str, Callable[[], Callable[[], Any]]]]:
        """bench-attn's extra rows of this backend at a shape, ``(label, note, build)``: ``build()`` prepares its
        inputs outside the timed call and returns the call to time (as a peer's builder does, `bench_peers`): the
        kernel without the backend's adapter, or the kernel in the setting a peer is compared in. None here."""
        return []

    def cost(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool) -> tuple[float, float]:
        """(FLOPs, minimum bytes) of one call (docs/conventions.md, "FLOPs and bytes")."""
        from mmchar.flops import attention_cost

        return attention_cost(list(q.shape), list(k.shape), list(v.shape), causal, q.element_size())


_BACKENDS: ClassRegistry[AttentionBackend] = ClassRegistry("backend", ENTRY_POINT_GROUP, AttentionBackend)
_REGISTRY = _BACKENDS.classes  # name -> class (tests register and remove throw-away backends here)


def register_backend(cls: type[AttentionBackend]) -> type[AttentionBackend]:
    """Class decorator adding a backend to the registry under ``cls.name``."""
    return _BACKENDS.register(cls)


def backend_names() -> list[str]:
    return _BACKENDS.names()


def get_backend(name: str) -> type[AttentionBackend]:
    return _BACKENDS.get(name)


def require_backend(name: str, device: torch.device) -> type[AttentionBackend]:
    """The backend class, or an error saying why it cannot run on ``device``."""
    return _BACKENDS.require(name, device)


def default_softmax_backend(device: torch.device) -> str:
    """The best softmax backend available on ``device`` (cross attention's default under linear backends)."""
    for name in ("cudnn", "flash", "efficient", "sdpa", "math"):
        if name in _REGISTRY and _REGISTRY[name].unavailable_reason(device) is None:
            return name
    return "math"


# ---------------------------------------------------------------------------------------------------------
# The SDPA family. On CUDA each calls F.scaled_dot_product_attention with only its own kernel switched on, for
# the call alone: measured on an H200 host in SD 1.5's launch-bound step, `torch.ops.aten.<kernel>(...)` costs
# ~13 µs more per call than F.sdpa (the JIT schema path and nine boxed outputs), and `sdpa_kernel(...)` ~10 µs
# (a generator context manager); flipping PyTorch's own switches directly costs a few C calls.

_HALF = (torch.float16, torch.bfloat16)
# (read, write) of PyTorch's switch of each F.sdpa kernel, by the names torch.nn.attention.sdpa_kernel sets
_SDP_SWITCHES = {name: (getattr(torch._C, f"_get_{name}_sdp_enabled"), getattr(torch._C, f"_set_sdp_use_{name}"))
                 for name in ("flash", "mem_efficient", "cudnn", "math", "overrideable")
                 if hasattr(torch._C, f"_get_{name}_sdp_enabled") and hasattr(torch._C, f"_set_sdp_use_{name}")}


def pinned_sdpa(kernel: str) -> Callable[..., torch.Tensor]:
    """F.scaled_dot_product_attention restricted to PyTorch's ``kernel`` (``flash``, ``mem_efficient``, ``cudnn``)
    for each call, every switch restored after it: what ``sdpa_kernel`` does, at a fraction of its host cost."""
    switches = tuple(_SDP_SWITCHES.values())
    wanted = tuple(name == kernel for name in _SDP_SWITCHES)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
               scale: float | None) -> torch.Tensor:
        before = [get() for get, _ in switches]
        for (_, put), on in zip(switches, wanted):
            put(on)
        try:
            return ORIGINAL_SDPA(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
        finally:
            for (_, put), on in zip(switches, before):
                put(on)

    return attend


@register_backend
class SdpaBackend(AttentionBackend):
    name = "sdpa"
    description = "PyTorch's own F.scaled_dot_product_attention choice (cuDNN on Hopper in torch 2.11): the default"
    constraints = Constraints()
    benched_by_default = False  # it is one of cudnn / flash / efficient / math

    def unsupported(self, q, k, v, *, causal, mask):
        return None

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        return ORIGINAL_SDPA(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


@register_backend
class MathBackend(AttentionBackend):
    name = "math"
    description = "unfused softmax attention (matmul, softmax, matmul) in the input dtype: the pre-flash baseline"
    constraints = Constraints()

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        if causal:  # top-left aligned, as F.scaled_dot_product_attention's is_causal
            sq, sk = q.shape[-2], k.shape[-2]
            keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return torch.matmul(scores.softmax(dim=-1), v)


def _sdpa_params(q, k, v, mask, causal):
    return torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, causal, False)


class _FusedSDPA(AttentionBackend):
    """A fused SDPA kernel; calls with a mask go through F.sdpa pinned to this backend (it aligns the mask)."""

    sdp_kernel: ClassVar[str]  # its name among PyTorch's F.sdpa switches (`_SDP_SWITCHES`)
    can_use: ClassVar[Callable[..., bool] | None] = None

    def unsupported(self, q, k, v, *, causal, mask):
        reason = super().unsupported(q, k, v, causal=causal, mask=mask)
        if reason is None and q.is_cuda and self.can_use is not None:
            try:
                ok = type(self).can_use(_sdpa_params(q, k, v, mask, causal), False)
            except (RuntimeError, TypeError, AttributeError):
                ok = True
            if not ok:
                d = q.shape[-1]
                reason = (f"PyTorch's {self.name} kernel refuses this call (q {tuple(q.shape)}, k {tuple(k.shape)}, "
                          f"head dim {d}, dtype {str(q.dtype).removeprefix('torch.')}, mask {mask is not None})")
        return reason

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        super().__init__(module_path, seed)
        self._pinned = pinned_sdpa(self.sdp_kernel)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        return self._pinned(q, k, v, mask, causal, scale)


@register_backend
class FlashBackend(_FusedSDPA):
    name = "flash"
    description = "PyTorch SDPA's FlashAttention-2 kernel (CUDA), or its flash kernel for the CPU"
    constraints = Constraints(max_head_dim=256, head_dim_multiple=8)
    can_use = staticmethod(torch.backends.cuda.can_use_flash_attention)
    sdp_kernel = "flash"

    def unsupported(self, q, k, v, *, causal, mask):
        if q.is_cuda and q.dtype not in _HALF:
            return f"dtype {str(q.dtype).removeprefix('torch.')} (flash on CUDA takes float16/bfloat16)"
        if q.is_cuda and mask is not None:
            return "attention mask not supported by the CUDA flash kernel"
        return super().unsupported(q, k, v, causal=causal, mask=mask) if q.is_cuda else None

    @classmethod
    def unavailable_reason(cls, device):
        reason = super().unavailable_reason(device)
        if reason is None and device.type == "cuda":
            if not torch.backends.cuda.is_flash_attention_available():
                return "this PyTorch build has no flash attention kernel"
            if torch.cuda.get_device_capability(device) < (8, 0):
                return "needs compute capability 8.0+"
        return reason

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        if not q.is_cuda:  # the CPU's flash kernel, whatever F.sdpa's CPU selection would pick
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=mask,
                                                                              scale=scale)[0]
        return self._pinned(q, k, v, mask, causal, scale)


@register_backend
class EfficientBackend(_FusedSDPA):
    name = "efficient"
    description = "PyTorch SDPA's memory-efficient (xFormers / CUTLASS) kernel"
    constraints = Constraints(devices=("cuda",), min_capability=(5, 0))
    can_use = staticmethod(torch.backends.cuda.can_use_efficient_attention)
    sdp_kernel = "mem_efficient"


@register_backend
class CudnnBackend(_FusedSDPA):
    name = "cudnn"
    description = "PyTorch SDPA's cuDNN attention kernel (the default on Hopper in torch 2.11)"
    constraints = Constraints(devices=("cuda",), dtypes=_HALF, head_dim_multiple=8, min_capability=(8, 0))
    can_use = staticmethod(torch.backends.cuda.can_use_cudnn_attention)
    sdp_kernel = "cudnn"

    @classmethod
    def unavailable_reason(cls, device):
        reason = super().unavailable_reason(device)
        if reason is None and not torch.backends.cudnn.is_available():
            return "cuDNN is not available in this PyTorch build"
        return reason



@register_backend
class TritonFlashBackend(AttentionBackend):
    name = "triton-flash"
    description = "mmchar's Triton softmax attention (online softmax, fp32 accumulation, autotuned for Hopper)"
    constraints = Constraints(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16), max_head_dim=256, mask=False)
    requires = ("triton",)

    @classmethod
    def unavailable_reason(cls, device):
        import os

        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":  # Triton's interpreter (tests)
            try:
                importlib.import_module("triton")
            except ImportError:
                return "needs the Python package 'triton' (pip install triton)"
            return None
        return super().unavailable_reason(device)

    def unsupported(self, q, k, v, *, causal, mask):
        if v.shape[-1] != q.shape[-1]:
            return f"value head dim {v.shape[-1]} differs from the query's {q.shape[-1]}"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        from mmchar.kernels.triton_flash.kernel import triton_flash

        return triton_flash(q, k, v, causal=causal, scale=scale)


@register_backend
class FlexBackend(AttentionBackend):
    name = "flex"
    description = "PyTorch FlexAttention (torch.compile'd on CUDA; eager on the CPU), causal through a block mask"
    constraints = Constraints(mask=False, max_head_dim=256)
    _compiled: ClassVar[Any] = None

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        super().__init__(module_path, seed)
        self._masks: dict[tuple[int, int, str], Any] = {}

    @classmethod
    def unavailable_reason(cls, device):
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return "this PyTorch has no torch.nn.attention.flex_attention"
        return super().unavailable_reason(device)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        fn = flex_attention
        if q.is_cuda:
            if FlexBackend._compiled is None:  # one compiled kernel family per process, as FlexAttention intends
                import torch._dynamo

                # one graph per head dim, mask kind and dtype (a sweep or a UNet has several): more than dynamo's
                # default of 8 before it silently falls back to the unfused eager path
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
                FlexBackend._compiled = torch.compile(flex_attention)  # dynamic after the first new shape
            fn = FlexBackend._compiled
        block_mask = None
        if causal:
            key = (q.shape[-2], k.shape[-2], str(q.device))
            block_mask = self._masks.get(key)
            if block_mask is None:
                block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, key[0], key[1],
                                               device=q.device)
                self._masks[key] = block_mask
        return fn(q, k, v, block_mask=block_mask, scale=scale)


def _triton_usable(x: torch.Tensor) -> bool:
    """Kernels run on CUDA; on the CPU the backends take their PyTorch path (the kernels' own tests run them
    in Triton's interpreter directly)."""
    return x.is_cuda


@register_backend
class LinearBackend(AttentionBackend):
    name = "linear"
    description = ("non-causal / causal linear attention, ReLU feature map (SANA's), fp32 accumulation; Triton on "
                   "CUDA, plain PyTorch on the CPU")
    constraints = Constraints(max_head_dim=256, mask=False)
    changes_math = True
    mechanism = "linear attention"
    feature = "relu"
    eps = 1e-6
    rotary_eps = 1e-15  # SanaLinearAttnProcessor3_0's own

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        if _triton_usable(q):
            from mmchar.kernels.linear_attn.kernel import linear_attn

            return linear_attn(q, k, v, causal=causal, feature=self.feature, eps=self.eps)
        from mmchar.kernels.linear_attn.reference import linear_attn_eager

        return linear_attn_eager(q, k, v, causal=causal, feature=self.feature, eps=self.eps)

    def unsupported(self, q, k, v, *, causal, mask):
        if causal and q.shape[-2] != k.shape[-2]:
            return "causal linear attention needs as many queries as keys"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def reference(self, q, k, v, *, causal=False):
        from mmchar.kernels.linear_attn.reference import linear_attn_ref

        return linear_attn_ref(q, k, v, causal=causal, feature=self.feature, eps=self.eps)

    def eager(self):
        from mmchar.kernels.linear_attn.reference import linear_attn_eager

        def run(q, k, v, *, causal=False, hidden_states=None):
            return linear_attn_eager(q, k, v, causal=causal, feature=self.feature, eps=self.eps)

        return run

    def rotary_linear(self, q, k, q_rot, k_rot, v):
        """The numerator by the same kernel on the caller's features (``identity``, unnormalised), the normaliser
        φ(q)·Σφ(k) (one einsum, fp32) beside it."""
        if _triton_usable(q):
            from mmchar.kernels.linear_attn.kernel import linear_attn as numerator
        else:
            from mmchar.kernels.linear_attn.reference import linear_attn_eager as numerator
        num = numerator(q_rot, k_rot, v, feature="identity", normalize=False)
        den = torch.einsum("bhtd,bhd->bht", q.float(), k.float().sum(dim=2)).add_(self.rotary_eps)
        return (num.float() / den.unsqueeze(-1)).to(q.dtype)

    def cost(self, q, k, v, *, causal):
        from mmchar.flops import linear_attention_cost

        b, h, sq, d = q.shape
        return linear_attention_cost(b, h, sq, k.shape[-2], d, v.shape[-1], q.element_size())

    def variants(self, q, k, v, *, causal, hidden_states=None):
        """Causal: the kernel without the normaliser, beside fla's ``normalize=False`` fast path (like for like)."""
        if not causal or type(self) is not LinearBackend:
            return []
        from mmchar.kernels.linear_attn.kernel import linear_attn

        return [("normalize off", "the kernel without the division by φ(q)·z: fla's normalize=False maths",
                 lambda: partial(linear_attn, q, k, v, causal=True, feature=self.feature, eps=self.eps,
                                 normalize=False))]


@register_backend
class FlaBackend(LinearBackend):
    name = "fla"
    description = ("flash-linear-attention's causal chunk kernel (fla-core), on the same ReLU feature maps as "
                   "`linear`: the peer `linear`'s causal kernel is measured against")
    constraints = Constraints(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32),
                              max_head_dim=256, mask=False)
    requires = ("fla",)
    install_hint = "pip install 'mmchar[fla]', i.e. fla-core"

    def unsupported(self, q, k, v, *, causal, mask):
        if not causal:
            return "fla's linear-attention kernels are causal only"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        from fla.ops.linear_attn import chunk_linear_attn

        from mmchar.kernels.linear_attn.reference import feature_map

        # fla takes [B, T, H, D], applies no feature map, scales q (1.0 here: the maps carry no scale) and
        # normalises by q·Σk itself
        fq, fk = (feature_map(t, self.feature).transpose(1, 2) for t in (q, k))
        out, _ = chunk_linear_attn(fq, fk, v.transpose(1, 2), scale=1.0, normalize=True)
        return out.transpose(1, 2)

    def eager(self):
        return None  # `linear (eager)` is the eager row of the same maths


@register_backend
class SageBackend(AttentionBackend):
    """SageAttention 1.0.6 (Zhang et al., ICLR 2025), the registry's Triton release: QKᵀ in INT8 with per-block
    scales, PV in fp16, keys smoothed by their mean over the sequence (softmax is unchanged by it; SageAttention
    subtracts it in place from the caller's k, so the mean is taken out here, on a new tensor, and the package's
    own smoothing is off). Softmax attention, approximated: ``changes_math``."""

    name = "sage"
    description = ("SageAttention 1.0.6: softmax attention with INT8-quantised QKᵀ (per-block scales, smoothed "
                   "keys) and fp16 PV, its Triton kernels; the output changes by the quantisation")
    constraints = Constraints(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32),
                              max_head_dim=128, mask=False)
    changes_math = True
    requires = ("sageattention",)
    install_hint = "pip install 'mmchar[sage]'"
    check_tolerance = 5e-2  # INT8 QKᵀ (not yet measured on a GPU here: the bound SageAttention's accuracy claims allow)
    head_dims: ClassVar[tuple[int, ...]] = (64, 96, 128)

    def unsupported(self, q, k, v, *, causal, mask):
        if q.shape[-1] not in self.head_dims or v.shape[-1] != q.shape[-1]:
            return f"head dim {q.shape[-1]} (value {v.shape[-1]}): SageAttention takes {'/'.join(map(str, self.head_dims))}"
        if causal and q.shape[-2] != k.shape[-2]:
            return "SageAttention's causal form needs as many queries as keys"
        if k.shape[1] != q.shape[1]:
            return "SageAttention here takes one k/v head per query head"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        from sageattention import sageattn

        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        k = k - k.mean(dim=2, keepdim=True)  # its smooth_k, without writing into the caller's keys
        return sageattn(q, k, v, tensor_layout="HND", is_causal=causal, sm_scale=scale, smooth_k=False)


@register_backend
class WersaBackend(AttentionBackend):
    name = "wersa"
    description = ("WERSA: content-adaptive Haar filter on q/k + random features + normalised linear attention "
                   "+ LayerNorm (L = 2, m = 256); fused Triton passes on CUDA, plain PyTorch on the CPU")
    constraints = Constraints(max_head_dim=256, mask=False)
    changes_math = True
    mechanism = "linear attention"
    reads_hidden_states = True
    levels = 2
    features = 256

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        super().__init__(module_path, seed)
        self.params: Any = None
        self.notes: dict[str, Any] = {}

    def unsupported(self, q, k, v, *, causal, mask):
        if v.shape[-1] != q.shape[-1]:
            return f"value head dim {v.shape[-1]} differs from the query's {q.shape[-1]} (WERSA's LayerNorm is over d)"
        if causal and q.shape[-2] != k.shape[-2]:
            return "causal WERSA needs as many queries as keys"
        if self.params is not None and self.params.causal and (not causal or q.shape[-2] != k.shape[-2]):
            return (f"a causal WERSA layer takes whole sequences; this call has {q.shape[-2]} queries against "
                    f"{k.shape[-2]} keys (a KV-cache decode step), which WERSA has no recurrent form for")
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def _prepare(self, q: torch.Tensor, k: torch.Tensor, causal: bool,
                 hidden_states: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Filter sources (the host's hidden states, or q / k with heads merged) and the layer's parameters."""
        import zlib

        from mmchar.kernels.wersa.reference import WersaParams, merge_heads

        # self-attention filters q and k by the host's hidden states; when those do not cover the tokens (joint
        # text+image attention, added key/values) q and k each use their own heads merged (docs/kernels/wersa.md,
        # "Inputs")
        x = hidden_states
        same = k.shape[2] == q.shape[2]
        host = same and x is not None and x.dim() == 3 and x.shape[0] == q.shape[0] and x.shape[1] == q.shape[2]
        x_q = x if host else merge_heads(q)
        x_k = None if host else merge_heads(k)
        if self.params is None:  # per-layer parameters, seeded from the module path
            layer_seed = zlib.crc32(self.module_path.encode()) ^ self.seed
            self.params = WersaParams(x_q.shape[-1], q.shape[-1], levels=self.levels, features=self.features,
                                      seed=layer_seed, causal=causal).to(device=q.device, dtype=q.dtype).eval()
            self.notes = {"filter_source": "hidden_states" if host else "q with heads merged",
                          "levels": self.params.levels, "features": self.features,
                          "wersa_causal_wavelet": False if causal else None}
        return x_q, x_k

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        x_q, x_k = self._prepare(q, k, causal, hidden_states)
        if _triton_usable(q):
            from mmchar.kernels.wersa.kernel import fused_unsupported, wersa

            why = fused_unsupported(q.shape[-1], q.is_cuda)
            if why is None:
                return wersa(q, k, v, self.params, x_q=x_q, x_k=x_k)
            from mmchar.kernels.wersa.reference import wersa_eager

            self.notes["path"] = f"plain PyTorch (fused kernels: {why})"
            return wersa_eager(q, k, v, self.params, x_q=x_q, x_k=x_k)
        from mmchar.kernels.wersa.reference import wersa_ref

        return wersa_ref(q, k, v, self.params, x_q=x_q, x_k=x_k)

    def reference(self, q, k, v, *, causal=False):
        from mmchar.kernels.wersa.reference import wersa_ref

        import copy

        x_q, x_k = self._prepare(q, k, causal, None)
        params = copy.deepcopy(self.params).float()  # the layer's own parameters stay in their dtype
        return wersa_ref(q.float(), k.float(), v.float(), params, x_q=x_q.float(),
                         x_k=None if x_k is None else x_k.float())

    def eager(self):
        from mmchar.kernels.wersa.reference import wersa_eager

        def run(q, k, v, *, causal=False, hidden_states=None):
            x_q, x_k = self._prepare(q, k, causal, hidden_states)
            return wersa_eager(q, k, v, self.params, x_q=x_q, x_k=x_k)

        return run

    def cost(self, q, k, v, *, causal):
        from mmchar.flops import wersa_cost

        b, h, sq, d = q.shape
        return wersa_cost(b, h, sq, k.shape[-2], d, self.features, h * d, 0 if causal else self.levels,
                          q.element_size())


def describe_backends(device: torch.device) -> list[dict[str, Any]]:
    """One row per registered backend: name, description, constraints, availability on ``device`` and why."""
    return _BACKENDS.describe(device, lambda cls: {"mechanism": cls.mechanism, "changes_math": cls.changes_math})


__all__ = ["AttentionBackend", "Constraints", "MECHANISMS", "MmcharError", "backend_names", "default_softmax_backend",
           "describe_backends", "get_backend", "register_backend", "require_backend"]



# the sequence mixers beyond softmax and linear attention (mLSTM, RWKV-7, LLA) register themselves here, last
from mmchar import mixers as _mixers  # noqa: E402,F401
# diffusers' own attention dispatcher, one `diffusers:<name>` backend per dispatcher backend (none without diffusers)
from mmchar import diffusers_backends as _diffusers_backends  # noqa: E402,F401
