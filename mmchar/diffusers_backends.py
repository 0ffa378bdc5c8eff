"""diffusers' own attention dispatcher as mmchar backends: ``diffusers:<name>``, one per
``diffusers.models.attention_dispatch.AttentionBackendName`` value (``diffusers:native``, ``diffusers:_native_cudnn``,
``diffusers:flex``, ``diffusers:sage`` ...), so a study sets mmchar's kernels beside what diffusers gives its users.

Each backend hands the layer's q, k, v ([B, H, S, D], transposed to the dispatcher's [B, S, H, D] as views) to
``dispatch_attention_fn(..., backend=AttentionBackendName(name))`` and transposes the output back. The dispatcher's
native backends call ``torch.nn.functional.scaled_dot_product_attention``: inside a swap that is mmchar's router,
which clears its thread-local route for the backend's call, so they reach PyTorch's own function (no recursion).

The names are a static table (``SPECS``), not read from the enum at import: importing diffusers' dispatcher costs
about 1.5 s (diffusers, huggingface_hub, its optional-kernel probes) that every ``import mmchar.backends`` would pay,
and mmchar must import where diffusers is absent. The table is registered when a diffusers with an attention
dispatcher is installed (found on disk, not imported); tests/test_diffusers_backends.py checks it against the enum,
so a diffusers that adds a backend fails that test until the table names it. diffusers itself is imported on first
use: availability (``unavailable_reason``) or a call.

Availability, in order: the ``*_hub`` variants download their kernel from the Hugging Face Hub at first use
(diffusers' ``kernels`` integration), which mmchar never does: unavailable, naming the local variant to install;
the device and compute capability of the table (NPU, XLA and the CUDA-only kernels are unavailable elsewhere);
then what diffusers checks itself when a backend is selected (``_check_attention_backend_requirements``:
flash-attn, FA3, sageattention, xformers, torch_npu, torch_xla and their minimum versions), its message as the
reason; and a backend this diffusers' enum or dispatcher lacks (an older diffusers) says so.

Constraints (masks, dtypes, head dims) are those of diffusers' per-backend checks and of the kernels' own refusals:
every backend's signature takes ``attn_mask`` (``_AttentionBackendRegistry._supported_arg_names``), but most raise on
one, so the table says which take a mask. ``changes_math`` is True for the SageAttention family (INT8-quantised QKᵀ,
FP8/FP16 PV: the output changes); the others compute exact softmax attention.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from mmchar.backends import AttentionBackend, Constraints, register_backend

PREFIX = "diffusers:"
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Spec:
    """One dispatcher backend as mmchar sees it."""

    what: str  # the kernel, for the description
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] | None = None
    mask: bool = False
    mask_with_causal: bool = True  # False: diffusers refuses a mask together with is_causal
    causal: bool = True
    min_capability: tuple[int, int] | None = None
    head_dims: tuple[int, ...] | None = None  # only these head dims
    quantised: bool = False  # SageAttention: changes the output
    local: str | None = None  # a *_hub variant's local counterpart (what to install instead)


_CUDA = ("cuda",)
# value -> Spec, in the enum's order (diffusers 0.42)
SPECS: dict[str, Spec] = {
    "flash": Spec("flash-attn 2's flash_attn_func", _CUDA, _HALF),
    "flash_hub": Spec("flash-attn 2 from the kernels Hub", _CUDA, _HALF, local="flash"),
    "flash_varlen": Spec("flash-attn 2's flash_attn_varlen_func", _CUDA, _HALF),
    "flash_varlen_hub": Spec("flash-attn 2 varlen from the kernels Hub", _CUDA, _HALF, local="flash_varlen"),
    "flash_4_hub": Spec("flash-attn 4 (CuTe DSL) from the kernels Hub", _CUDA, _HALF, local="_flash_3"),
    "_flash_3": Spec("FlashAttention-3 (Hopper) flash_attn_interface", _CUDA, _HALF, min_capability=(9, 0)),
    "_flash_varlen_3": Spec("FlashAttention-3 varlen", _CUDA, _HALF, min_capability=(9, 0)),
    "_flash_3_hub": Spec("FlashAttention-3 from the kernels Hub", _CUDA, _HALF, min_capability=(9, 0), local="_flash_3"),
    "_flash_3_varlen_hub": Spec("FlashAttention-3 varlen from the kernels Hub", _CUDA, _HALF, min_capability=(9, 0),
                                local="_flash_varlen_3"),
    "aiter_fa2_hub": Spec("AITER's CK flash attention (ROCm) from the kernels Hub", _CUDA, (torch.bfloat16,),
                          local="flash"),
    # diffusers 0.42's flex drops is_causal when no mask is given (a block mask is built only beside a mask, which
    # it refuses with is_causal): causal calls are refused here rather than answered non-causally
    "flex": Spec("PyTorch FlexAttention, eager", causal=False),
    "native": Spec("F.scaled_dot_product_attention, PyTorch's own kernel choice", mask=True),
    "_native_cudnn": Spec("F.sdpa pinned to cuDNN attention", _CUDA, _HALF, mask=True, min_capability=(8, 0)),
    "_native_efficient": Spec("F.sdpa pinned to the memory-efficient kernel", _CUDA, mask=True, min_capability=(5, 0)),
    "_native_flash": Spec("F.sdpa pinned to PyTorch's flash kernel", dtypes=_HALF),
    "_native_math": Spec("F.sdpa pinned to the math (unfused) kernel", mask=True),
    "_native_npu": Spec("torch_npu's npu_fusion_attention (Ascend)", ("npu",), _HALF, mask=True, causal=False),
    "_native_xla": Spec("torch_xla's flash attention (TPU)", ("xla",)),
    "sage": Spec("SageAttention's sageattn (INT8 QK, kernel chosen by GPU)", _CUDA, _HALF, quantised=True),
    "sage_hub": Spec("SageAttention from the kernels Hub", _CUDA, _HALF, quantised=True, local="sage"),
    "sage_blackwell_hub": Spec("SageAttention3 (Blackwell FP4) from the kernels Hub", _CUDA, _HALF,
                               min_capability=(10, 0), head_dims=(64, 128), quantised=True, local="sage"),
    "sage_varlen": Spec("SageAttention varlen", _CUDA, _HALF, quantised=True),
    "_sage_qk_int8_pv_fp8_cuda": Spec("SageAttention INT8 QK, FP8 PV (CUDA)", _CUDA, _HALF, min_capability=(9, 0),
                                      quantised=True),
    "_sage_qk_int8_pv_fp8_cuda_sm90": Spec("SageAttention INT8 QK, FP8 PV (sm90 kernel)", _CUDA, _HALF,
                                           min_capability=(9, 0), quantised=True),
    "_sage_qk_int8_pv_fp16_cuda": Spec("SageAttention INT8 QK, FP16 PV (CUDA)", _CUDA, _HALF, min_capability=(8, 0),
                                       quantised=True),
    "_sage_qk_int8_pv_fp16_triton": Spec("SageAttention INT8 QK, FP16 PV (Triton)", _CUDA, _HALF,
                                         min_capability=(8, 0), quantised=True),
    "xformers": Spec("xFormers' memory_efficient_attention", _CUDA, mask=True, mask_with_causal=False),
}


def dispatcher_installed() -> bool:
    """Whether a diffusers with ``models/attention_dispatch.py`` is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec("diffusers")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "models" / "attention_dispatch.py").is_file() for p in spec.submodule_search_locations)


def _dispatcher() -> Any:
    """diffusers.models.attention_dispatch (imported on first use)."""
    import diffusers.models.attention_dispatch as dispatch

    return dispatch


def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except Exception:  # noqa: BLE001 - only for a message
        return "?"


class DiffusersBackend(AttentionBackend):
    """A backend of diffusers' attention dispatcher; subclasses (made by `_make`) set ``value`` and ``spec``."""

    value: ClassVar[str]
    spec: ClassVar[Spec]
    benched_by_default = False  # the native ones are PyTorch's SDPA kernels again: bench-attn times them when named

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        super().__init__(module_path, seed)
        self._dispatch: Any = None
        self._backend: Any = None
        self._takes_scale = True

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        s = cls.spec
        if s.local is not None:
            return (f"downloads its kernel from the Hugging Face Hub at first use, which mmchar "
                    f"does not do: use diffusers:{s.local}")
        reason = super().unavailable_reason(device)  # devices, compute capability
        if reason is not None:
            return reason
        try:
            dispatch = _dispatcher()
        except Exception as e:  # noqa: BLE001 - a broken diffusers must not break `mmchar backends`
            return f"diffusers' attention dispatcher failed to import: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        names = {m.value: m for m in dispatch.AttentionBackendName}
        if cls.value not in names:
            return (f"diffusers {_diffusers_version()} has no attention backend {cls.value!r} "
                    f"(pip install -U diffusers)")
        member = names[cls.value]
        registry = getattr(dispatch, "_AttentionBackendRegistry", None)
        if registry is not None and member not in registry._backends:
            return f"diffusers {_diffusers_version()} registers no function for attention backend {cls.value!r}"
        check = getattr(dispatch, "_check_attention_backend_requirements", None)
        if check is not None:
            try:
                check(member)
            except (RuntimeError, ImportError, ValueError) as e:
                return "diffusers says: " + (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None

    def unsupported(self, q, k, v, *, causal, mask):
        s = self.spec
        if s.head_dims is not None and q.shape[-1] not in s.head_dims:
            return f"head dim {q.shape[-1]} (takes {'/'.join(map(str, s.head_dims))})"
        if mask is not None and causal and not s.mask_with_causal:
            return "an attention mask together with causal attention is not supported"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def _resolve(self) -> None:
        dispatch = _dispatcher()
        self._dispatch = dispatch.dispatch_attention_fn
        self._backend = dispatch.AttentionBackendName(self.value)
        names = getattr(getattr(dispatch, "_AttentionBackendRegistry", None), "_supported_arg_names", {})
        self._takes_scale = "scale" in names.get(self._backend, {"scale"})

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        if self._dispatch is None:
            self._resolve()
        if scale is not None and not self._takes_scale:  # the backend drops `scale`: fold it into q instead
            q = q * (scale * math.sqrt(q.shape[-1]))
            scale = None
        if mask is not None:
            # F.sdpa's broadcasting, made explicit: diffusers reads a 2-D mask as [B, Skv] key padding
            while mask.ndim < 4:
                mask = mask.unsqueeze(0)
        out = self._dispatch(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                             is_causal=causal, scale=scale, backend=self._backend)
        return out.transpose(1, 2)


def _class_name(value: str) -> str:
    return "Diffusers_" + value.strip("_") + "_Backend"


def _make(value: str, spec: Spec) -> type[DiffusersBackend]:
    description = f"diffusers' attention dispatcher, backend {value!r}: {spec.what}"
    if spec.quantised:
        description += " (quantised QK: the output changes)"
    constraints = Constraints(devices=spec.devices, dtypes=spec.dtypes, mask=spec.mask, causal=spec.causal,
                              min_capability=spec.min_capability)
    return type(_class_name(value), (DiffusersBackend,), {
        "name": PREFIX + value, "value": value, "spec": spec, "description": description,
        "constraints": constraints, "changes_math": spec.quantised, "mechanism": "softmax",
        "__module__": __name__, "__doc__": description})


BACKENDS: dict[str, type[DiffusersBackend]] = {}
if dispatcher_installed():  # no diffusers, or one without a dispatcher (before 0.33): nothing registered
    for _value, _spec in SPECS.items():
        BACKENDS[PREFIX + _value] = register_backend(_make(_value, _spec))

__all__ = ["BACKENDS", "PREFIX", "SPECS", "DiffusersBackend", "Spec", "dispatcher_installed"]
