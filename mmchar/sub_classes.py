"""The one rule table that names what a kernel's time is *for* within its op class: ``sub_class``.

An op class says what kind of work a kernel does (`mmchar.taxonomy`); a sub-class names the structure a study
asks about, inside that class and beside it, never instead of it: a video VAE's ``conv3d`` and ``conv2d`` (both
``conv``), its causal ``pad`` (``memory``), ``upsample`` (``memory``) and norms (``group_norm``, ``layer_norm``,
``rms_norm``, and ``norm`` for a norm written out in elementwise ops), a DiT's ``rope`` (rotary position
embedding) and ``modulation`` (adaLN scale, shift and gate). Rows no rule names have ``""``.

Rules are tried in order, first match wins. A rule names a sub-class and up to five conditions, all of which must
hold (each a case-insensitive ``re.search`` pattern, or a set): the top-level aten op (read as the forward op it
differentiates, as `mmchar.taxonomy` reads it), the kernel name, the innermost module's dotted path, the row's op
class and stage, a test on the top-level op's recorded input dims (`SHAPE_TESTS`), and whether the innermost
module is an attention module itself (a module an attention core ran in: its own code, not its projections or
norms). All of it is in ``kernels.parquet`` (the stored columns), so `sub_classes` derives the column for a run
written before it existed (`mmchar.store.with_added_columns`).

What the trace can tell (docs/conventions.md, "Sub-class"): module paths come from module forwards, so a plain
function such as diffusers' ``apply_rotary_emb`` has no scope of its own; its ops run in the attention module that
called it. RoPE is therefore recognised as (a) anything under a module named for it (``rope``, ``rotary_emb``:
computing the frequency tables) and (b) the arithmetic an attention module does itself on per-head [B, H, S, D] or
[B, S, H, D] tensors (mul, add, sub, neg, the rotation's stack, its casts and slice copies), in the stages that
run transformers (text encoder, denoiser, generator); a VAE's attention module adds a residual on 4-D images, which
is why its stages are left out. Modulation is (a) the adaLN projection (``adaLN_modulation``, ``adaln_single``,
``norm*.linear`` / ``norm*.silu`` / ``norm*.emb``, Wan's ``time_proj`` linear) and (b) elementwise arithmetic of a
step stage that broadcasts a per-sample channel vector over tokens ([B, S, D] against [B, 1, D]: the scale, shift and
gate of every adaLN variant, wherever the model writes it: in the norm module, or in the block as Wan and PixArt
do). A residual add ([B, S, D] + [B, S, D]) and the fp32 casts around the modulation stay unnamed.

Extend the table with `add_rule` / `remove_rule` (they keep the cache in step). Each rule has a test with real op
names in tests/test_sub_classes.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from mmchar.schema import OP_CLASSES, STAGES, STEP_STAGES, SUB_CLASSES
from mmchar.taxonomy import forward_op

_DIMS = re.compile(r"\[([\d, ]*)\]")


def input_dims(shapes: str) -> list[tuple[int, ...]]:
    """The dims of each input in a profiler ``Input Dims`` string (``"[[2, 4096, 64], [], [64]]"``; ``[]`` for a
    scalar or non-tensor argument)."""
    return [tuple(int(x) for x in m.split(",") if x.strip()) for m in _DIMS.findall(shapes or "")]


def _rank(n: int) -> Callable[[list[tuple[int, ...]]], bool]:
    return lambda dims: bool(dims) and len(dims[0]) == n


def _token_broadcast(dims: list[tuple[int, ...]]) -> bool:
    """Two same-rank inputs (rank >= 3), one a per-sample channel vector broadcast over the other's tokens:
    [B, S, D] against [B, 1, D] (or [1, 1, D]); not a residual ([B, S, D] + [B, S, D]), not a channels-first
    bias ([B, C, H, W] + [B, C, 1, 1]), not RoPE's tables ([B, H, S, D] against [1, 1, S, D])."""
    tensors = [d for d in dims if d]
    if len(tensors) < 2:
        return False
    a, b = tensors[0], tensors[1]
    if len(a) != len(b) or len(a) < 3 or a == b:
        return False
    small, big = (a, b) if np.prod(a) <= np.prod(b) else (b, a)
    return (small[-1] == big[-1] > 1 and small[0] in (1, big[0]) and all(x == 1 for x in small[1:-1])
            and any(x > 1 for x in big[1:-1]))


def _sample_vector(dims: list[tuple[int, ...]]) -> bool:
    """The first input is one vector per sample, [B, D] or [B, 1, D] (an adaLN's conditioning, not tokens)."""
    return bool(dims) and len(dims[0]) >= 2 and dims[0][-1] > 1 and all(x == 1 for x in dims[0][1:-1])


# named tests on the top-level op's input dims (a rule's ``shape``)
SHAPE_TESTS: dict[str, Callable[[list[tuple[int, ...]]], bool]] = {
    "rank3": _rank(3),  # a conv1d's [N, C, L]
    "rank4": _rank(4),  # a conv2d's [N, C, H, W]; an attention module's per-head q or k
    "rank5": _rank(5),  # a conv3d's [N, C, T, H, W]
    "token_broadcast": _token_broadcast,
    "sample_vector": _sample_vector,
}

_UPSAMPLE = r"^aten::(_?upsample_\w+|upsample|interpolate|pixel_shuffle)$"
_CASTS = r"^aten::(to|_to_copy|type_as)$"


def attention_modules(kernels: pd.DataFrame) -> set[str]:
    """The module paths attention cores ran in (their rows' ``module_path``): the attention modules."""
    if "op_class" not in kernels.columns or "module_path" not in kernels.columns:
        return set()
    paths = kernels.loc[kernels["op_class"].astype(str) == "attention", "module_path"].astype(str)
    return set(paths.unique()) - {""}


def rotary_attention_modules(kernels: pd.DataFrame) -> set[str]:
    """The attention modules whose own code rotates per-head tensors: a ``mul`` of a rank-4 tensor by a tensor of
    another shape (x * cos: [B, H, S, D] by [S, D] or [1, 1, S, D]), in the module itself. A residual add on
    4-D images (IF's added-KV attention, a VAE's) is no such multiply."""
    attn = attention_modules(kernels)
    if not attn or "aten_op" not in kernels.columns or "input_shapes" not in kernels.columns:
        return set()
    k = kernels[kernels["module_path"].astype(str).isin(attn) & (kernels["aten_op"].astype(str) == "aten::mul")
                & (kernels["op_class"].astype(str) == "elementwise")]
    found = set()
    for path, shapes in set(zip(k["module_path"].astype(str), k["input_shapes"].astype(str))):
        dims = input_dims(shapes)
        if len(dims) >= 2 and len(dims[0]) == 4 and dims[1] and dims[1] != dims[0]:
            found.add(path)
    return found


def upsample_modules(kernels: pd.DataFrame) -> set[str]:
    """The modules an up-sampling op ran in itself (nn.Upsample, Wan's WanUpsample)."""
    if "aten_op" not in kernels.columns or "module_path" not in kernels.columns:
        return set()
    ops = kernels["aten_op"].astype(str)
    upsample = re.compile(_UPSAMPLE, re.I)
    hits = [op for op in ops.unique() if upsample.search(op)]
    return set(kernels.loc[ops.isin(hits), "module_path"].astype(str).unique()) - {""}


# named sets of modules a rule's ``within`` picks, each decided from the whole kernel table
MODULE_SETS: dict[str, Callable[[pd.DataFrame], set[str]]] = {
    "attention": attention_modules,
    "rotary_attention": rotary_attention_modules,
    "upsample": upsample_modules,
}

# the stages that run transformers with rotary embeddings (not the VAEs of the decoder and image encoder)
_ROPE_STAGES = ("text_encoder", "denoiser", "generator")


@dataclass(frozen=True)
class SubRule:
    sub_class: str
    aten: str | None = None  # pattern on the top-level aten op (its forward op for backward work)
    kernel: str | None = None  # pattern on the kernel name (GPU) or op name (CPU)
    module: str | None = None  # pattern on the innermost module's dotted path
    op_classes: tuple[str, ...] = ()  # the row's op class is one of these (any when empty)
    stages: tuple[str, ...] = ()  # the row's stage is one of these (any when empty)
    shape: str | None = None  # a `SHAPE_TESTS` name, on the top-level op's input dims
    within: str | None = None  # a `MODULE_SETS` name: the innermost module is one of that set's modules
    note: str = ""

    def __post_init__(self) -> None:
        if self.sub_class not in SUB_CLASSES:
            raise ValueError(f"sub-class {self.sub_class!r} is not one of {SUB_CLASSES}")
        if not (self.aten or self.kernel or self.module or self.shape or self.within):
            raise ValueError("a sub-class rule needs an aten, kernel, module, shape or module-set condition")
        if unknown := set(self.op_classes) - set(OP_CLASSES):
            raise ValueError(f"op classes {sorted(unknown)} are not among {OP_CLASSES}")
        if unknown := set(self.stages) - set(STAGES):
            raise ValueError(f"stages {sorted(unknown)} are not among {STAGES}")
        if self.shape is not None and self.shape not in SHAPE_TESTS:
            raise ValueError(f"shape test {self.shape!r} is not one of {sorted(SHAPE_TESTS)}")
        if self.within is not None and self.within not in MODULE_SETS:
            raise ValueError(f"module set {self.within!r} is not one of {sorted(MODULE_SETS)}")


_CONV = r"conv(olution)?(_transpose)?[123]?d?\b|_convolution|cudnn_convolution|mkldnn_convolution|slow_conv|miopen_conv"

SUB_RULES: list[SubRule] = [
    # convolutions by their dimensionality: the call (nn.Conv3d -> aten::conv3d) decides, and every kernel it
    # launches is its (cuDNN's layout transforms, a CPU's slow_conv3d copies); a generic convolution op (a foreign
    # trace's aten::convolution, a backward pass) by the rank of its input
    SubRule("conv3d", aten=r"^aten::(conv3d|conv_transpose3d)$"),
    SubRule("conv2d", aten=r"^aten::(conv2d|conv_transpose2d)$"),
    SubRule("conv1d", aten=r"^aten::(conv1d|conv_transpose1d)$"),
    SubRule("conv3d", aten=_CONV, op_classes=("conv",), shape="rank5"),
    SubRule("conv2d", aten=_CONV, op_classes=("conv",), shape="rank4"),
    SubRule("conv1d", aten=_CONV, op_classes=("conv",), shape="rank3"),
    # padding (memory): F.pad, nn.ZeroPad2d, the causal convolutions' own pads
    SubRule("pad", aten=r"^aten::(pad|constant_pad_nd|reflection_pad[123]d|replication_pad[123]d|_pad_circular|"
                        r"_pad_enum|zero_pad2d)$"),
    # up-sampling (memory): nn.Upsample and F.interpolate (nearest, nearest-exact, bilinear, trilinear),
    # pixel shuffle (DC-AE's decoder)
    SubRule("upsample", aten=_UPSAMPLE),
    # norms by their op (norm)
    SubRule("group_norm", aten=r"^aten::(group_norm|native_group_norm)$"),
    SubRule("layer_norm", aten=r"^aten::(layer_norm|native_layer_norm)$"),
    SubRule("rms_norm", aten=r"^aten::(rms_norm|_fused_rms_norm)$"),
    # RoPE: the frequency tables' modules (Wan's, HunyuanVideo's, LTX's ``rope``; transformers' ``rotary_emb``) ...
    SubRule("rope", module=r"(^|\.)(\w*_)?(rope|rotary)(_\w*)?(\.|$)"),
    # ... and the rotation applied in the attention module's own code, on per-head tensors (diffusers'
    # apply_rotary_emb and Wan's, transformers' apply_rotary_pos_emb: x * cos + rotate(x) * sin, the rotation's
    # stack or negation, the fp32 casts around it, the slice copies of the result)
    SubRule("rope", aten=r"^aten::(mul|add|sub|neg|addcmul|stack|to|_to_copy|type_as|copy_|empty_like|"
                         r"view_as_real|view_as_complex)$",
            op_classes=("elementwise", "memory"), stages=_ROPE_STAGES, shape="rank4", within="rotary_attention"),
    # adaLN modulation: the projection of the conditioning to scale, shift and gate ...
    SubRule("modulation", module=r"(^|\.)(adaLN_modulation|adaln_single)(\.|$)|(^|\.)norm\w*\.(linear|silu|emb)(\.|$)"),
    SubRule("modulation", module=r"(^|\.)time_proj$", op_classes=("gemm",)),  # Wan: a Linear to 6 x dim
    # ... and its application to the tokens (x * (1 + scale) + shift, gate * y), in the norm module or the block,
    # with the conditioning vector's own arithmetic in an adaLN norm module (1 + scale)
    SubRule("modulation", op_classes=("elementwise",), stages=STEP_STAGES, shape="token_broadcast"),
    SubRule("modulation", module=r"(^|\.)norm\w*$", op_classes=("elementwise",), stages=("denoiser",),
            shape="sample_vector"),
    # a causal convolution's temporal padding written as a concatenation: the cached (or repeated first) frames
    # prepended to its input, and the copy it keeps for the next chunk (Wan's WanCausalConv3d, CogVideoX's
    # CogVideoXCausalConv3d; the convolution itself runs in the module or its child)
    SubRule("pad", aten=r"^aten::(cat|concat|clone)$", module=r"(^|\.)\w*conv\w*$", op_classes=("memory",)),
    # a norm written out in elementwise ops: Wan's VAE (F.normalize x scale), diffusers' RMSNorm, a spatial norm's
    # scale and shift; with the dtype casts of an fp32 norm (Wan's FP32LayerNorm, its VAE's norms)
    SubRule("norm", module=r"(^|\.)\w*norm\w*$", op_classes=("elementwise", "norm")),
    SubRule("norm", aten=_CASTS, module=r"(^|\.)\w*norm\w*$", op_classes=("memory",)),
    # the casts around an up-sampling (Wan's WanUpsample interpolates in fp32)
    SubRule("upsample", aten=_CASTS, op_classes=("memory",), within="upsample"),
]


def add_rule(rule: SubRule, position: int | None = None) -> None:
    """Add a rule (``position=0``: before every built-in rule). Clears the cache."""
    SUB_RULES.insert(len(SUB_RULES) if position is None else position, rule)
    _compiled.cache_clear()
    sub_class.cache_clear()


def remove_rule(rule: SubRule) -> None:
    """Take ``rule`` out of the table. Clears the cache.

    Raises:
        ValueError: ``rule`` is not in the table.
    """
    try:
        SUB_RULES.remove(rule)
    except ValueError:
        raise ValueError(f"{rule!r} is not in the sub-class rule table") from None
    _compiled.cache_clear()
    sub_class.cache_clear()


def _re(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern, re.I) if pattern else None


@lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[SubRule, re.Pattern[str] | None, re.Pattern[str] | None, re.Pattern[str] | None], ...]:
    return tuple((r, _re(r.aten), _re(r.kernel), _re(r.module)) for r in SUB_RULES)


def rule_for(kernel: str, aten_op: str = "", module_path: str = "", op_class: str = "", stage: str = "",
             input_shapes: str = "", within: frozenset[str] = frozenset()) -> SubRule | None:
    """The rule that names a row (the first that matches), or None; the arguments as `sub_class` takes them."""
    op = forward_op(aten_op) if aten_op else ""
    dims: list[tuple[int, ...]] | None = None
    for rule, aten_re, kernel_re, module_re in _compiled():
        if rule.op_classes and op_class not in rule.op_classes:
            continue
        if rule.stages and stage not in rule.stages:
            continue
        if rule.within is not None and rule.within not in within:
            continue
        if aten_re is not None and not (op and aten_re.search(op)):
            continue
        if kernel_re is not None and not kernel_re.search(kernel):
            continue
        if module_re is not None and not (module_path and module_re.search(module_path)):
            continue
        if rule.shape is not None:
            if dims is None:
                dims = input_dims(input_shapes)
            if not SHAPE_TESTS[rule.shape](dims):
                continue
        return rule
    return None


@lru_cache(maxsize=65536)
def sub_class(kernel: str, aten_op: str = "", module_path: str = "", op_class: str = "", stage: str = "",
              input_shapes: str = "", within: frozenset[str] = frozenset()) -> str:
    """The sub-class of one row (see the module docstring), or ``""``: ``kernel`` its kernel (or CPU op) name,
    ``aten_op`` the top-level aten op, ``module_path`` the innermost module, ``op_class`` and ``stage`` the row's,
    ``input_shapes`` the top-level op's recorded input dims, ``within`` the names of the `MODULE_SETS` its module is
    in."""
    rule = rule_for(kernel, aten_op, module_path, op_class, stage, input_shapes, within)
    return rule.sub_class if rule is not None else ""


# the kernels.parquet columns a sub-class is derived from
_INPUTS = ("kernel", "aten_op", "module_path", "op_class", "stage", "input_shapes")


def sub_classes(kernels: pd.DataFrame) -> pd.Series:
    """The ``sub_class`` column of a kernel table (a category Series on its index), from its other columns; a
    column the table lacks reads as empty."""
    if kernels.empty:
        return pd.Series(pd.Categorical([]), index=kernels.index, dtype="category", name="sub_class")
    sets = {name: fn(kernels) for name, fn in MODULE_SETS.items()}
    cols = {c: (kernels[c].astype(str).to_numpy() if c in kernels.columns else np.full(len(kernels), ""))
            for c in _INPUTS}
    codes, uniques = pd.factorize(pd.MultiIndex.from_arrays([cols[c] for c in _INPUTS]))
    names = np.array([sub_class(k, a, m, o, s, x, frozenset(n for n, paths in sets.items() if m in paths))
                      for k, a, m, o, s, x in uniques], dtype=object)
    return pd.Series(pd.Categorical(names[codes]), index=kernels.index, name="sub_class")
