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

import hashlib
import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmchar.kernels.memory_layer.reference import TAU, TEMPERATURE
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
    model's: code outside the layer reads their dtype and device), its module path, the run's seed and (keyword
    ``role``) the layer's role. A backend that overrides ``__init__`` without a ``role`` keyword is constructed
    without it.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    constraints: ClassVar[LinearConstraints] = LinearConstraints()
    op_class: ClassVar[str] = "gemm"  # the class of every kernel under a replaced layer (one of OP_CLASSES)
    changes_math: ClassVar[bool] = False  # True for table lookups: a speed study, not a quality claim
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs
    install_hint: ClassVar[str | None] = None

    def __init__(self, layer: torch.nn.Linear, module_path: str = "", seed: int = 0, *, role: str = "other") -> None:
        self.layer = layer
        self.module_path = module_path
        self.seed = seed
        self.role = role  # the layer's role (`mmchar.linear_swap.linear_role`): attn-proj, ffn or other

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

    def prepare(self, x: torch.Tensor) -> None:
        """Build per-layer state (a quantised copy of the weight ...) on the layer's first call, once
        `unsupported` accepted it: only then are the device and dtype it runs in known (CPU offload moves weights
        at the call). An error here (a CUDA OOM) propagates: the run records it."""

    @property
    def state_bytes(self) -> int:
        """Bytes of the per-layer state this backend holds on the device beside the model's own weights (a
        quantised copy, hashed tables): 0 unless a backend says otherwise. The swap records it per layer
        (`LinearSwapState.layer_state_bytes`)."""
        return 0

    @classmethod
    def planned_state_bytes(cls, layer: torch.nn.Linear, role: str = "other") -> int:
        """The bytes `state_bytes` will report for ``layer``, known before the state is built: a run that runs out
        of memory while building it still records what it needed (`LinearSwapState.planned_state_bytes`)."""
        return 0

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


def _layer_seed(seed: int, module_path: str) -> int:
    """A 63-bit generator seed from the run's seed and the layer's module path: the same tables in every run."""
    digest = hashlib.sha256(f"{seed}\0{module_path}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class MemoryFormerBackend(ProjectionBackend):
    """MemoryFormer's Memory Layer (Ding et al., NeurIPS 2024, arXiv 2411.12992) in place of each linear layer: the
    input cut into K = in_features / τ chunks of τ dims, each chunk's sign bits picking one of 2^τ rows of its own
    table, the rows weighted by the bucket probability Π σ(2|z|/t) and summed, plus the layer's bias
    (`mmchar.kernels.memory_layer.reference` follows the paper step by step). τ = 8, t = 1.

    Tables: K × 2^τ × out_features elements per layer, random (std 1/√K, so the output's scale does not grow with
    K), in the layer's dtype on its device, drawn from a generator seeded by the run's seed and the module path
    (the same tables in every run on one device kind). They are large (a 1536 → 6144 layer: 192 × 256 × 6144 bf16
    elements, 604 MB): `state_bytes` reports them, and a CUDA OOM while drawing them propagates as
    torch.OutOfMemoryError (the run records OOM). The Triton kernel runs on CUDA, the eager form (a loop over the
    K tables) on the CPU.

    The Memory Block. The paper replaces the FFN by ML₁ (d → K·(τ+2)), a LayerNorm, and ML₂ hashing τ+2 bits per
    chunk, with no activation. A swap replaces each nn.Linear on its own and keeps the model's activation and FFN
    width, so the closest faithful form is: the FFN's first layer (role ``ffn``, in < out) is a plain Memory Layer
    to the model's own hidden width (4d, not the paper's 1.25d); the FFN's second layer (role ``ffn``, in > out:
    the contraction) normalises its input (LayerNorm, no affine) before hashing, as the block's ML₂ does, but
    hashes τ bits per chunk: the paper's two extra bits pair with its narrow hidden width, and the models' 4d
    widths (6144, 8960, 12288) are multiples of 8, not of 10 (τ + 2 would leave every such layer dense). The
    activation between them stays. Attention projections and other layers are plain Memory Layers (the paper's
    Q, K, V).

    A layer whose in_features is not a multiple of τ is not taken (`unsupported` says why): it runs as the
    model's own dense layer, and the run names it.
    """

    name = "memoryformer"
    description = ("MemoryFormer's Memory Layer (NeurIPS 2024): sign-bit hashing of 8-dim chunks into per-layer "
                   "random tables, weighted gather-sum (Triton on CUDA); FFN second layers hash their normalised input")
    op_class = "memory"
    changes_math = True  # random tables: a speed study, not a quality claim
    tau: ClassVar[int] = TAU
    temperature: ClassVar[float] = TEMPERATURE

    def __init__(self, layer: torch.nn.Linear, module_path: str = "", seed: int = 0, *, role: str = "other") -> None:
        super().__init__(layer, module_path, seed, role=role)
        n_in, n_out = layer.in_features, layer.out_features
        # the FFN's contraction (its second layer): the Memory Block's ML₂
        self.block_second = role == "ffn" and n_in > n_out
        self.chunk = self.tau
        self.tables: torch.Tensor | None = None
        self._why: str | None = None
        if n_in % self.chunk:
            self._why = f"in_features {n_in} is not a multiple of {self.chunk} (the Memory Layer hashes tau = " \
                        f"{self.chunk} bits per chunk)"
            return
        k = n_in // self.chunk
        weight = layer.weight
        gen = torch.Generator(device=weight.device)
        gen.manual_seed(_layer_seed(seed, module_path))
        tables = torch.empty((k, 1 << self.chunk, n_out), dtype=weight.dtype, device=weight.device)
        tables.normal_(0.0, 1.0 / k**0.5, generator=gen)
        self.tables = tables

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        why = super().unavailable_reason(device)
        if why is None and device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "its CUDA path is a Triton kernel: needs triton (pip install triton)"
        return why

    @property
    def state_bytes(self) -> int:
        return 0 if self.tables is None else self.tables.numel() * self.tables.element_size()

    @classmethod
    def planned_state_bytes(cls, layer: torch.nn.Linear, role: str = "other") -> int:
        n_in, n_out = layer.in_features, layer.out_features
        return 0 if n_in % cls.tau else (n_in // cls.tau) * (1 << cls.tau) * n_out * layer.weight.element_size()

    def unsupported(self, x: torch.Tensor) -> str | None:
        return self._why or super().unsupported(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from mmchar.kernels.memory_layer.reference import memory_layer_eager

        if self.tables is None:
            raise RuntimeError(f"{self.module_path}: memoryformer cannot take this layer: {self._why}")
        kw = {"tau": self.chunk, "temperature": self.temperature, "normalize": self.block_second}
        if x.is_cuda:
            from mmchar.kernels.memory_layer.kernel import memory_layer

            return memory_layer(x, self.tables, self.layer.bias, **kw)
        return memory_layer_eager(x, self.tables, self.layer.bias, **kw)

    def cost(self, x: torch.Tensor) -> tuple[float, float]:
        """The Memory Layer's adds and multiplies and its unique bytes (`memory_layer_cost`: the gathers' L2
        traffic, tokens·K·out elements, is what limits it, not these bytes)."""
        from mmchar.kernels.memory_layer.reference import memory_layer_cost

        return memory_layer_cost(x.numel() // x.shape[-1], self.layer.in_features, self.layer.out_features,
                                 self.chunk, x.element_size(), self.layer.weight.element_size(),
                                 normalize=self.block_second, bias=self.layer.bias is not None)


register_projection_backend(MemoryFormerBackend)


class Fp8Backend(ProjectionBackend):
    """FP8 linear layers as practitioners get them: torchao's float8 dynamic activation + weight quantisation with
    per-row scales (``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``), each call quantising its
    activations and multiplying in FP8 on the tensor cores (``torch._scaled_mm``), output in the layer's dtype.

    Per layer, a quantised copy of the weight (1 byte per element plus an fp32 scale per output row) is made on
    the layer's first call; the model's own weight stays (the swap restores it), so the run holds both:
    `state_bytes` counts the copy. The output differs from dense by FP8 rounding: `mmchar compare` records how
    much (final latents' cosine against the dense baseline).
    """

    name = "fp8"
    description = "torchao float8 dynamic activation + weight, per-row scales (torch._scaled_mm; sm89+, bf16)"
    constraints = LinearConstraints(devices=("cuda",), dtypes=(torch.bfloat16,), features_multiple=16,
                                    min_capability=(8, 9))
    requires = ("torchao",)
    install_hint = "pip install 'mmchar[fp8]'"
    changes_math = True  # FP8-rounded weights and activations: outputs change, as `sage`'s do by INT8 QKᵀ

    def __init__(self, layer: torch.nn.Linear, module_path: str = "", seed: int = 0, *, role: str = "other") -> None:
        super().__init__(layer, module_path, seed, role=role)
        self.quantised: torch.nn.Linear | None = None

    def _quantise(self) -> torch.nn.Linear:
        """A new nn.Linear sharing the layer's weight and bias, quantised in place by torchao (which swaps in a
        new FP8 weight: the model's layer is never touched)."""
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        src = self.layer
        lin = torch.nn.Linear(src.in_features, src.out_features, bias=src.bias is not None, device="meta")
        lin.weight = torch.nn.Parameter(src.weight.detach(), requires_grad=False)
        if src.bias is not None:
            lin.bias = torch.nn.Parameter(src.bias.detach(), requires_grad=False)
        # activation_value_lb: torchao scales a row by its max |x| / 448, so an all-zero row (the zero padding
        # of Wan's 512 text tokens, fed to every cross-attention k / v projection) quantises as 0 / 0 = NaN and
        # the whole generation turns NaN (wan2.1-1.3b on an H100, 2026-12-06); a floor on the row maximum keeps
        # zero rows zero and changes no other row
        quantize_(lin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=1e-12,
                                                                 set_inductor_config=False))
        return lin

    def prepare(self, x: torch.Tensor) -> None:
        self.quantised = self._quantise()

    @property
    def state_bytes(self) -> int:
        if self.quantised is None:
            return 0
        w = self.quantised.weight
        parts = [getattr(w, name, None) for name in ("qdata", "scale")]
        if all(isinstance(t, torch.Tensor) for t in parts):
            return sum(t.numel() * t.element_size() for t in parts)
        return self.planned_state_bytes(self.layer, self.role)

    @classmethod
    def planned_state_bytes(cls, layer: torch.nn.Linear, role: str = "other") -> int:
        return layer.in_features * layer.out_features + 4 * layer.out_features  # e4m3 weight, fp32 row scales

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantised(x)


register_projection_backend(Fp8Backend)


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
